# The two commands: `make run` (the marketplace with demo data on http://127.0.0.1:8000) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench-catalog bench-inference clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/python scripts/run.py

test: $(VENV)/.installed
	$(BIN)/python scripts/test.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy accounts catalog moderation marketplace inference billing

bench-catalog: $(VENV)/.installed
	$(BIN)/python bench/catalog.py

# Needs wrk (apt-get install wrk), PostgreSQL and Redis on loopback; starts SeaweedFS, gunicorn and Celery itself.
bench-inference: $(VENV)/.installed
	$(BIN)/python bench/inference.py

clean:
	rm -rf var
