"""gunicorn settings for `make run` and the benchmarks."""

import os


def child_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    # Prometheus multiprocess mode: drop a dead worker's live gauges (its counters stay aggregated).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    # The hot path's metrics are tallied in memory (inference.metrics.Tally): apply the last second's before going.
    from inference import metrics

    metrics.flush()
