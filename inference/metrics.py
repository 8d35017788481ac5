"""Prometheus metrics of model serving, and the ``/metrics`` view.

Label conventions: ``listing`` is the listing slug. ``version`` is the version number ("1.0.0") on the request
metrics, which the API records, and the version's primary key (as a string) on the host, cache and batch metrics,
since the model host knows a version only by its id. Request metrics are recorded by the API
(:func:`request_observe`); cache, load and batch metrics by the host and the batcher, in whichever process
hosts the model (the web process in inline mode, the inference workers in celery mode).

Multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn with several workers, or workers on the
same machine as the web server), every process writes its samples to files there and the view aggregates them.
The variable must be set before ``prometheus_client`` is imported, so it is copied from settings here first;
set it in the environment of every process that serves. A gunicorn ``child_exit`` hook should call
``prometheus_client.multiprocess.mark_process_dead(worker.pid)`` so live gauges drop dead workers.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import threading
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

_MULTIPROC_DIR = settings.PROMETHEUS_MULTIPROC_DIR
if _MULTIPROC_DIR:
    os.makedirs(_MULTIPROC_DIR, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _MULTIPROC_DIR)

from prometheus_client import (  # noqa: E402  (after the environment is set)
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

logger = logging.getLogger(__name__)

# Latency buckets from 0.5 ms to 10 s: most models answer in a few milliseconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "inference_requests_total", "Inference calls by listing, version and HTTP status.", ["listing", "version", "status"]
)
REQUEST_LATENCY = Histogram(
    "inference_request_duration_seconds",
    "Time from request to response of /v2 infer calls.",
    ["listing", "version"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_TIME = Histogram(
    "inference_queue_duration_seconds",
    "Time a request waited for its batch to run.",
    ["listing", "version"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_TIME = Histogram(
    "inference_compute_duration_seconds",
    "ONNX Runtime time of the batch a request ran in.",
    ["listing", "version"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_ROWS = Histogram(
    "inference_batch_rows", "Rows in each executed batch (1 = not batched).", ["version"], buckets=_ROW_BUCKETS
)
CACHE_EVENTS = Counter(
    "model_cache_events_total",
    "Model cache events: hit, miss, load, evict; tier disk (artifact files) or memory (sessions).",
    ["event", "tier"],
)
MODEL_LOAD_TIME = Histogram(
    "model_load_duration_seconds", "Time to make a session: download (on a disk miss) and load.", buckets=_LOAD_BUCKETS
)
PROVIDER_INFO = Gauge(
    "model_provider_info",
    "1 for each loaded version and the execution provider its session really runs on.",
    ["version", "provider"],
    multiprocess_mode="livemax",
)
PROVIDER_RUNS = Counter(
    "inference_provider_rows_total", "Rows computed, by the execution provider that ran them.", ["provider"]
)
ADMISSIONS = Counter(
    "inference_admissions_total",
    "Admitted /v2 calls by where they were decided: redis (one round trip, which may grant a lease) or lease (from "
    "a lease this process holds, no round trip).",
    ["way"],
)
ADMITTED_BY_REDIS = ADMISSIONS.labels(way="redis")
ADMITTED_BY_LEASE = ADMISSIONS.labels(way="lease")
MEMORY_BYTES = Gauge(
    "model_memory_bytes", "Accounted bytes of the sessions held in memory.", multiprocess_mode="livesum"
)


class Tally:
    """Counts and observations of the hot path, gathered in this process's memory and applied to their metrics in
    one pass: every ``FLUSH_INTERVAL_S`` by a thread, before every scrape this process serves (``registry_collect``),
    at exit, and when ``flush()`` is called.

    In multiprocess mode each increment of a metric is a write to its memory-mapped file behind a lock and a
    ``getpid()`` system call (prometheus_client checks for a fork every time); a served call made eleven of them
    (a counter and three histograms of the request, the batch's rows and provider rows, the memory cache hit).
    Here a call costs one uncontended lock and a few dict updates; a second's calls become a handful of writes.
    What another process has tallied reaches a scrape within ``FLUSH_INTERVAL_S``.

    Histograms are tallied per bucket and applied to the child's bucket and sum values (``_buckets``, ``_sum``,
    ``_upper_bounds``: prometheus_client's own attributes, which ``Histogram.observe`` uses the same way;
    tests/inference/test_metrics.py compares the two paths' output).
    """

    FLUSH_INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Any, float] = {}  # counter child -> amount
        self._observed: dict[Any, list[float]] = {}  # histogram child -> [sum, count per bucket...]
        self._thread: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forked)
        atexit.register(self.flush)

    def count(self, child: Any, amount: float = 1.0) -> None:
        with self._lock:
            self._counts[child] = self._counts.get(child, 0.0) + amount
            if self._thread is None:
                self._start()

    def observe(self, child: Any, value: float) -> None:
        bucket = bisect.bisect_left(child._upper_bounds, value)  # the first bound >= value, as observe() picks
        with self._lock:
            tally = self._observed.get(child)
            if tally is None:
                tally = self._observed[child] = [0.0] * (len(child._upper_bounds) + 1)
            tally[0] += value
            tally[bucket + 1] += 1
            if self._thread is None:
                self._start()

    def flush(self) -> None:
        with self._lock:
            counts, observed = self._counts, self._observed
            self._counts, self._observed = {}, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, tally in observed.items():
            child._sum.inc(tally[0])
            for bucket, count in enumerate(tally[1:]):
                if count:
                    child._buckets[bucket].inc(count)

    def _start(self) -> None:  # with the lock held
        self._thread = threading.Thread(target=self._flush_loop, name="metrics-tally", daemon=True)
        self._thread.start()

    def _flush_loop(self) -> None:
        wait = threading.Event().wait
        while True:
            wait(self.FLUSH_INTERVAL_S)
            try:
                self.flush()
            except Exception:  # a metrics file that cannot be written must not end the thread
                logger.exception("Could not apply the tallied metrics")

    def _forked(self) -> None:
        # The parent applies what it tallied; the child starts empty, with its own lock and (on first use) thread.
        self._lock = threading.Lock()
        self._counts, self._observed = {}, {}
        self._thread = None


TALLY = Tally()


def flush() -> None:
    """Apply this process's tallied hot-path metrics now (a scrape of this process does it itself)."""
    TALLY.flush()


# Pre-bound children: label lookup costs a dict access and a lock; the hot path should not pay it each time.
_cache_children = {
    (event, tier): CACHE_EVENTS.labels(event=event, tier=tier)
    for event in ("hit", "miss", "load", "evict")
    for tier in ("disk", "memory")
}


def cache_event(event: str, tier: str) -> None:
    child = _cache_children[(event, tier)]
    if event == "hit" and tier == "memory":  # the one of every call: tallied; the rare ones show at once
        TALLY.count(child)
    else:
        child.inc()


# Labelled children of the request metrics, per (listing, version[, status]): ``labels()`` validates and joins
# the label values and takes a lock on every call, several microseconds a metric on each request. Bounded: cleared
# when it grows past what a deployment serves.
_REQUEST_CHILDREN_MAX = 10_000
_request_children: dict[tuple[str, str, int], Any] = {}
_timing_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}


def _request_counter(listing: str, version: str, status: int) -> Any:
    key = (listing, version, status)
    child = _request_children.get(key)
    if child is None:
        if len(_request_children) >= _REQUEST_CHILDREN_MAX:
            _request_children.clear()
        child = _request_children[key] = REQUESTS.labels(listing=listing, version=version, status=str(status))
    return child


def _timing_histograms(listing: str, version: str) -> tuple[Any, Any, Any]:
    key = (listing, version)
    children = _timing_children.get(key)
    if children is None:
        if len(_timing_children) >= _REQUEST_CHILDREN_MAX:
            _timing_children.clear()
        children = _timing_children[key] = (
            REQUEST_LATENCY.labels(listing=listing, version=version),
            QUEUE_TIME.labels(listing=listing, version=version),
            COMPUTE_TIME.labels(listing=listing, version=version),
        )
    return children


def request_observe(
    *,
    listing: str,
    version: str | int,
    status: int,
    latency_s: float,
    queue_ms: float | None = None,
    compute_ms: float | None = None,
) -> None:
    """Count one /v2 infer call; queue and compute times only for calls that ran the model."""
    version = str(version)
    TALLY.count(_request_counter(listing, version, status))
    latency, queue, compute = _timing_histograms(listing, version)
    TALLY.observe(latency, latency_s)
    if queue_ms is not None:
        TALLY.observe(queue, queue_ms / 1000.0)
    if compute_ms is not None:
        TALLY.observe(compute, compute_ms / 1000.0)


def registry_collect() -> bytes:
    """The text exposition of this process, or of all processes in multiprocess mode."""
    TALLY.flush()
    if _MULTIPROC_DIR:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=_MULTIPROC_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape endpoint (text exposition format). Meant for the internal network."""
    return HttpResponse(registry_collect(), content_type=CONTENT_TYPE_LATEST)
