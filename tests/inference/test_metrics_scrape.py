"""/metrics after real /v2 calls: the request counter and latency by listing, version and status, queue and compute
time, batch rows and cache events, read back through Prometheus' own text parser."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inference.api_support import buyer_create, caches_clear, metering_keys_clear, publish_model
from tests.inference.onnx_factories import onnx_classifier_bytes


@pytest.fixture(autouse=True)
def _isolated():
    metering_keys_clear()
    caches_clear()
    yield
    metering_keys_clear()


def _scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_infer_calls_show_up_in_the_scrape(client, db, s3):
    version = publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="metrics-iris")
    buyer = buyer_create(listing=version.listing)
    outsider = buyer_create(listing=version.listing, subscribe=False)
    body = json.dumps({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]] * 3}]})
    labels = {"listing": "metrics-iris", "version": "1.0.0"}
    before = _scrape(client)

    for _ in range(2):
        response = client.post(
            "/v2/models/metrics-iris/infer", data=body, content_type="application/json", headers=buyer.headers
        )
        assert response.status_code == 200
    refused = client.post(
        "/v2/models/metrics-iris/infer", data=body, content_type="application/json", headers=outsider.headers
    )
    assert refused.status_code == 403
    after = _scrape(client)

    def delta(name: str, **extra: str) -> float:
        return _value(after, name, **extra) - _value(before, name, **extra)

    assert delta("inference_requests_total", status="200", **labels) == 2
    # Refused before a version was chosen: counted under the listing, with no version.
    assert delta("inference_requests_total", status="403", listing="metrics-iris", version="") == 1
    assert delta("inference_request_duration_seconds_count", **labels) == 2
    assert delta("inference_request_duration_seconds_sum", **labels) > 0
    # Only the calls that ran the model have queue and compute times.
    assert delta("inference_queue_duration_seconds_count", **labels) == 2
    assert delta("inference_compute_duration_seconds_count", **labels) == 2
    assert delta("inference_batch_rows_count", version=str(version.pk)) == 2
    assert delta("inference_batch_rows_sum", version=str(version.pk)) == 6
    assert delta("model_cache_events_total", event="load", tier="memory") >= 1
    assert delta("model_load_duration_seconds_count") >= 1
