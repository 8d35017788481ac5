"""Settings for bench/inference.py only: the product's settings plus a URLconf with one bench-only view.

Never used by the product: ``DJANGO_SETTINGS_MODULE=bench.settings`` is set by the benchmark for the gunicorn and
Celery processes it starts, so everything else (middleware, metering, hosting, dispatch) is the product's own.
"""

from marketplace.settings import *  # noqa: F403

ROOT_URLCONF = "bench.bench_urls"
