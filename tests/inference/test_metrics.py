"""Prometheus metrics: the /metrics view, what the host, the batcher and the API record, and multiprocess mode."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from inference import dispatch, metrics
from inference.dispatch import ModelRef
from inference.host import model_host_reset
from tests.inference.onnx_factories import onnx_classifier_bytes

ROOT = Path(__file__).resolve().parents[2]


def _sample(name: str, labels: dict[str, str]) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_endpoint_exposes_serving_metrics(client, s3, settings):
    settings.INFERENCE_DISPATCH = "inline"
    model_host_reset()
    data = onnx_classifier_bytes()
    key = f"artifacts/metrics-tests/{uuid.uuid4().hex}/model.onnx"
    s3.put(key, data)
    ref = ModelRef(
        version_id=30_000_001, artifact_key=key, artifact_sha256=hashlib.sha256(data).hexdigest(), batchable=True
    )
    rows_before = _sample("inference_batch_rows_sum", {"version": "30000001"})
    provider_rows = _sample("inference_provider_rows_total", {"provider": "CPUExecutionProvider"})

    result = dispatch.infer(model=ref, inputs={"input": np.ones((3, 4), np.float32)}, output_names=None, deadline_s=5)
    metrics.request_observe(
        listing="acme-iris", version=ref.version_id, status=200, latency_s=0.004, queue_ms=0.1, compute_ms=0.2
    )
    metrics.request_observe(listing="acme-iris", version=ref.version_id, status=429, latency_s=0.001)

    assert _sample("inference_batch_rows_sum", {"version": "30000001"}) - rows_before == 3
    assert _sample("inference_provider_rows_total", {"provider": result.provider}) - provider_rows == 3
    response = client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    for line in (
        'inference_requests_total{listing="acme-iris",status="200",version="30000001"} 1.0',
        'inference_requests_total{listing="acme-iris",status="429",version="30000001"} 1.0',
        'inference_request_duration_seconds_count{listing="acme-iris",version="30000001"} 2.0',
        'inference_queue_duration_seconds_count{listing="acme-iris",version="30000001"} 1.0',
        'inference_compute_duration_seconds_count{listing="acme-iris",version="30000001"} 1.0',
        'inference_batch_rows_count{version="30000001"}',
        'model_provider_info{provider="CPUExecutionProvider",version="30000001"} 1.0',
        'model_cache_events_total{event="load",tier="memory"}',
        'model_cache_events_total{event="miss",tier="disk"}',
        "model_load_duration_seconds_count",
        "model_memory_bytes",
    ):
        assert line in text, line
    model_host_reset()


def _multiprocess_script(script: str, tmp_path) -> str:
    """Run ``script`` in a new interpreter with Django set up for multiprocess metrics; its standard output."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.test",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_multiprocess_mode_aggregates_every_process(tmp_path):
    """Two processes record cache events; a third renders /metrics with the sum (gunicorn with several workers)."""
    script = textwrap.dedent(
        """
        import multiprocessing, django
        django.setup()
        from django.test import Client
        from inference import metrics

        def record():
            metrics.cache_event("load", "memory")
            metrics.TALLY.observe(metrics.BATCH_ROWS.labels(version="5"), 4)  # as the batcher does
            metrics.flush()  # multiprocessing's children end with os._exit: no atexit hook applies the tally

        children = [multiprocessing.get_context("fork").Process(target=record) for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join()
        print(Client().get("/metrics").content.decode())
        """
    )
    stdout = _multiprocess_script(script, tmp_path)
    assert 'model_cache_events_total{event="load",tier="memory"} 2.0' in stdout
    assert 'inference_batch_rows_sum{version="5"} 8.0' in stdout


def test_a_gunicorn_worker_applies_its_tally_as_it_exits(tmp_path):
    """scripts/gunicorn_conf.py's worker_exit hook: what a worker tallied in its last second reaches the metric
    files (a child ended with os._exit, as gunicorn's workers end, runs no atexit hook)."""
    script = textwrap.dedent(
        """
        import importlib.util, multiprocessing, django
        django.setup()
        from django.test import Client
        from inference import metrics

        spec = importlib.util.spec_from_file_location("gunicorn_conf", "scripts/gunicorn_conf.py")
        gunicorn_conf = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gunicorn_conf)

        def serve_then_exit(hook):
            metrics.TALLY.observe(metrics.BATCH_ROWS.labels(version="6"), 3)
            if hook:
                gunicorn_conf.worker_exit(None, None)

        for hook in (True, False):
            child = multiprocessing.get_context("fork").Process(target=serve_then_exit, args=(hook,))
            child.start()
            child.join()
        print(Client().get("/metrics").content.decode())
        """
    )
    stdout = _multiprocess_script(script, tmp_path)
    assert 'inference_batch_rows_sum{version="6"} 3.0' in stdout  # the child without the hook lost its tally


def test_tallied_observations_expose_what_direct_ones_would():
    """The tally applies bucket counts and sums through prometheus_client's own attributes: same exposition."""
    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.1, 1.0)
    direct = Histogram("direct_seconds", "d", ["listing"], buckets=buckets, registry=registry).labels(listing="a")
    tallied = Histogram("tallied_seconds", "t", ["listing"], buckets=buckets, registry=registry).labels(listing="a")
    direct_count = Counter("direct_rows", "d", registry=registry)
    tallied_count = Counter("tallied_rows", "t", registry=registry)
    tally = metrics.Tally()

    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 3.0, 0.0):  # on a bound, between, above the last, zero
        direct.observe(value)
        tally.observe(tallied, value)
        direct_count.inc(2)
        tally.count(tallied_count, 2)
    assert registry.get_sample_value("tallied_rows_total") == 0  # not yet applied
    tally.flush()

    exposed = generate_latest(registry).decode()
    lines = [line for line in exposed.splitlines() if "_created" not in line]
    direct_lines = sorted(line for line in lines if line.startswith("direct_"))
    tallied_lines = sorted(line.replace("tallied_", "direct_") for line in lines if line.startswith("tallied_"))
    assert tallied_lines == direct_lines and len(direct_lines) == 8  # rows, 5 buckets, count, sum


def test_the_tally_reaches_the_metrics_within_its_interval_without_a_flush():
    child = metrics.PROVIDER_RUNS.labels(provider="tally-test")
    before = REGISTRY.get_sample_value("inference_provider_rows_total", {"provider": "tally-test"}) or 0.0

    metrics.TALLY.count(child, 3)

    deadline = time.monotonic() + metrics.Tally.FLUSH_INTERVAL_S * 5
    while (REGISTRY.get_sample_value("inference_provider_rows_total", {"provider": "tally-test"}) or 0.0) == before:
        assert time.monotonic() < deadline, "the tally thread never applied the count"
        time.sleep(0.05)
    assert REGISTRY.get_sample_value("inference_provider_rows_total", {"provider": "tally-test"}) == before + 3


def test_a_forked_child_starts_with_an_empty_tally(tmp_path):
    """What the parent tallied before a fork is the parent's to apply: a child that applied it too would count it
    twice (gunicorn forks its workers, multiprocessing its children)."""
    script = textwrap.dedent(
        """
        import multiprocessing, django
        django.setup()
        from django.test import Client
        from inference import metrics

        rows = metrics.PROVIDER_RUNS.labels(provider="fork-test")
        metrics.TALLY.count(rows, 5)  # tallied in the parent, not applied yet

        def record():
            metrics.TALLY.count(rows, 1)
            metrics.flush()

        child = multiprocessing.get_context("fork").Process(target=record)
        child.start()
        child.join()
        print(Client().get("/metrics").content.decode())  # the scrape applies the parent's tally
        """
    )
    stdout = _multiprocess_script(script, tmp_path)
    assert 'inference_provider_rows_total{provider="fork-test"} 6.0' in stdout
