"""Prometheus metrics: the /metrics view, what the host, the batcher and the API record, and multiprocess mode."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from inference import dispatch, metrics
from inference.dispatch import ModelRef
from inference.host import model_host_reset
from tests.inference.onnx_factories import onnx_classifier_bytes

ROOT = Path(__file__).resolve().parents[2]


def _sample(name: str, labels: dict[str, str]) -> float:
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
            metrics.BATCH_ROWS.labels(version="5").observe(4)

        children = [multiprocessing.get_context("fork").Process(target=record) for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join()
        print(Client().get("/metrics").content.decode())
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.test",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'model_cache_events_total{event="load",tier="memory"} 2.0' in out.stdout
    assert 'inference_batch_rows_sum{version="5"} 8.0' in out.stdout
