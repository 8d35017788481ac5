"""The /v2 API through Django's test client, inline dispatch: real PostgreSQL, Redis, SeaweedFS and ONNX Runtime.

After every call the ledger is flushed and checked: exactly one UsageRecord per successful inference, none for
anything else, and failed calls after authentication counted as InferenceError rows.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import pytest
from django.test import override_settings

from billing.services import subscription_cancel
from catalog.models import ListingStatus
from catalog.services import version_withdraw
from inference.models import InferenceError, UsageRecord
from inference.services import usage_flush
from inference.views import request_id_new
from tests.catalog.factories import ListingFactory
from tests.inference.api_support import add_version, buyer_create, caches_clear, metering_keys_clear, publish_model
from tests.inference.onnx_factories import helper, model_bytes, onnx_classifier_bytes, onnx_identity_bytes

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(autouse=True)
def _isolated():
    metering_keys_clear()
    caches_clear()
    yield
    metering_keys_clear()


@pytest.fixture
def iris(db, s3):
    return publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="iris")


@pytest.fixture
def buyer(iris):
    return buyer_create(listing=iris.listing)


def _body(rows=IRIS_ROWS, **extra) -> dict:
    rows = np.asarray(rows)
    return {
        "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}],
        **extra,
    }


def _post(client, path: str, payload: Any, *, key: str | None = None, headers: dict | None = None, **kwargs):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    return client.post(path, data=data, content_type="application/json", headers=all_headers, **kwargs)


def _infer(client, buyer, payload=None, *, slug: str = "iris", version: str | None = None, **kwargs):
    path = f"/v2/models/{slug}/versions/{version}/infer" if version else f"/v2/models/{slug}/infer"
    return _post(client, path, payload if payload is not None else _body(), key=buyer.raw_key, **kwargs)


def _ledger() -> tuple[int, int]:
    """(usage records, inference errors) after flushing the buffers."""
    usage_flush()
    return UsageRecord.objects.count(), InferenceError.objects.count()


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert response["X-Request-Id"]
    return body


# --- health and metadata ---------------------------------------------------------------------------


def test_health_and_server_metadata(client, db):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json()["extensions"] == ["binary_tensor_data"]


def test_model_metadata_lists_tensors_with_dynamic_dims(client, iris):
    response = client.get("/v2/models/iris")
    assert response.status_code == 200
    meta = response.json()
    assert meta["name"] == "iris" and meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"label": [-1], "probabilities": [-1, 3]}
    assert client.get("/v2/models/iris/versions/1.0.0").json()["version"] == "1.0.0"
    missing = client.get("/v2/models/iris/versions/7.0.0")
    assert missing.status_code == 404 and missing.json()["code"] == "version_not_found"
    assert client.get("/v2/models/nope").status_code == 404


def test_model_ready_after_the_first_call(client, buyer):
    assert client.get("/v2/models/iris/ready").status_code == 400
    assert _infer(client, buyer).status_code == 200
    assert client.get("/v2/models/iris/ready").status_code == 200
    assert client.get("/v2/models/iris/versions/1.0.0/ready").status_code == 200


# --- a successful call and its usage record ----------------------------------------------------------


def test_infer_json_returns_outputs_usage_and_one_usage_record(client, buyer, iris, admission_order):
    response = _infer(client, buyer, _body(id="client-42"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_name"] == "iris" and body["model_version"] == "1.0.0"
    assert body["id"] == "client-42"
    request_id = response["X-Request-Id"]
    assert len(request_id) == 32 and request_id != "client-42"
    assert response["X-Usage-Units"] == "2"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [2]
    assert outputs["label"]["data"] == [0, 2]  # setosa, virginica
    assert outputs["probabilities"]["shape"] == [2, 3]
    assert abs(sum(outputs["probabilities"]["data"][:3]) - 1) < 1e-5
    usage = body["parameters"]["usage"]
    assert usage["units"] == 2 and usage["compute_ms"] >= 0 and usage["queue_ms"] >= 0

    assert UsageRecord.objects.count() == 0  # buffered in Redis: no write on the hot path
    assert _ledger() == (1, 0)
    record = UsageRecord.objects.get()
    assert record.request_id == request_id
    assert (record.organization_id, record.api_key_id, record.subscription_id) == (
        buyer.organization.pk, buyer.api_key.pk, buyer.subscription.pk,
    )  # fmt: skip
    assert (record.listing_id, record.version_id, record.units) == (iris.listing_id, iris.pk, 2)
    assert record.provider == "CPUExecutionProvider"
    assert record.compute_ms == pytest.approx(usage["compute_ms"], abs=1e-3)


def test_request_ids_are_new_in_a_forked_child():
    """Request ids come from Python's generator, not the OS: a forked web worker must not repeat its parent's
    (the random module reseeds in the child; the usage ledger drops a repeated id as a duplicate)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write one id and leave at once (no pytest teardown in the child)
        os.write(write_end, request_id_new().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as stream:
        child_id = stream.read().decode()
    parent_ids = {request_id_new() for _ in range(3)}
    assert len(child_id) == 32 and int(child_id, 16) >= 0
    assert child_id not in parent_ids and len(parent_ids) == 3


def test_requested_outputs_only(client, buyer):
    response = _infer(client, buyer, _body(outputs=[{"name": "label"}]))
    assert [o["name"] for o in response.json()["outputs"]] == ["label"]


def test_binary_output_when_asked(client, buyer):
    response = _infer(client, buyer, _body(outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    json_size = int(response["Inference-Header-Content-Length"])
    head = json.loads(response.content[:json_size])
    (tensor,) = head["outputs"]
    assert tensor["parameters"]["binary_data_size"] == 2 * 3 * 4
    probabilities = np.frombuffer(response.content[json_size:], dtype="<f4").reshape(2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_local_backend_without_redis_writes_usage_directly(client, buyer):
    with override_settings(INFERENCE_REDIS_URL=""):
        response = _infer(client, buyer)
        assert response.status_code == 200
        assert UsageRecord.objects.filter(request_id=response["X-Request-Id"]).count() == 1
        assert _error(_infer(client, buyer, b"{"), 400, "malformed_request")
        assert InferenceError.objects.count() == 1


# --- versions ---------------------------------------------------------------------------------------


def test_versions_explicit_current_pinned_and_withdrawn(client, iris, s3, staff_user):
    listing = iris.listing
    newer = add_version(s3=s3, listing=listing, onnx_bytes=onnx_classifier_bytes(), version="1.1.0")
    listing.current_version = newer
    listing.save(update_fields=["current_version"])
    stable = buyer_create(listing=listing)
    pinned = buyer_create(listing=listing, pinned_version=iris)
    caches_clear()

    assert _infer(client, stable).json()["model_version"] == "1.1.0"
    assert _infer(client, pinned).json()["model_version"] == "1.0.0"
    assert _infer(client, stable, version="1.0.0").json()["model_version"] == "1.0.0"
    _error(_infer(client, stable, version="9.9.9"), 404, "version_not_found")

    version_withdraw(version=iris, actor=staff_user, reason="bad weights")
    # Within a second every process stops serving it (the listing cache lives that long).
    deadline = time.monotonic() + 1.5
    while _infer(client, stable, version="1.0.0").status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    body = _error(_infer(client, stable, version="1.0.0"), 404, "version_withdrawn")
    assert "withdrawn" in body["error"]
    _error(_infer(client, pinned), 404, "version_withdrawn")
    assert _infer(client, stable).json()["model_version"] == "1.1.0"
    usage, _errors = _ledger()
    assert usage == UsageRecord.objects.filter(version__version__in=["1.0.0", "1.1.0"]).count()


# --- keys, entitlements, privacy ---------------------------------------------------------------------


def test_missing_and_bad_keys_are_401_with_www_authenticate(client, iris):
    for headers in ({}, {"Authorization": "Bearer smk_aaaaaaaaaaaa_" + "x" * 40}, {"Authorization": "Basic abc"}):
        response = _post(client, "/v2/models/iris/infer", _body(), headers=headers)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["code"] in ("not_authenticated", "invalid_api_key")
    assert _ledger() == (0, 0)  # no organization known: nothing to count


def test_revoked_key_is_refused_within_a_second(client, buyer):
    from accounts.services import api_key_revoke

    assert _infer(client, buyer).status_code == 200
    api_key_revoke(api_key=buyer.api_key, user=buyer.user)
    revoked_at = time.monotonic()
    while _infer(client, buyer).status_code == 200:
        time.sleep(0.02)
    assert time.monotonic() - revoked_at <= 1.1
    _error(_infer(client, buyer), 401, "invalid_api_key")
    usage, _ = _ledger()
    assert usage == UsageRecord.objects.filter(api_key=buyer.api_key).count() >= 1


def test_key_without_inference_scope_is_403(client, iris):
    buyer = buyer_create(listing=iris.listing, scopes=("management",))
    _error(_infer(client, buyer), 403, "insufficient_scope")
    assert _ledger() == (0, 0)


def test_key_restricted_to_another_listing_is_403(client, iris, s3):
    other = publish_model(s3=s3, onnx_bytes=onnx_identity_bytes(), slug="other")
    buyer = buyer_create(listing=iris.listing, listing_ids=[other.listing_id])
    _error(_infer(client, buyer), 403, "key_not_allowed")
    assert _ledger() == (0, 1)


def test_no_subscription_is_403_with_the_listing_url(client, iris):
    buyer = buyer_create(listing=iris.listing, subscribe=False)
    body = _error(_infer(client, buyer), 403, "subscription_required")
    assert body["fields"]["subscribe_url"] == ["http://testserver/s/iris/"]
    assert "/s/iris/" in body["error"]
    assert _ledger() == (0, 1)


def test_canceled_subscription_stops_calls(client, buyer):
    assert _infer(client, buyer).status_code == 200
    subscription_cancel(subscription=buyer.subscription, user=buyer.user)
    caches_clear()
    _error(_infer(client, buyer), 403, "subscription_required")
    assert _ledger() == (1, 1)


def test_other_organizations_drafts_and_suspended_listings_are_404(client, iris, buyer, s3):
    # A draft of another organization: exists, with a version and a signature, but not public.
    draft = ListingFactory(slug="secret-draft")
    _error(_infer(client, buyer, slug="secret-draft"), 404, "model_not_found")
    assert client.get("/v2/models/secret-draft").status_code == 404
    # The same answer as for a listing that does not exist at all: nothing leaks.
    missing = _infer(client, buyer, slug="no-such-model")
    assert missing.json()["error"].replace("no-such-model", "X") == _infer(client, buyer, slug="secret-draft").json()[
        "error"
    ].replace("secret-draft", "X")
    assert draft.pk
    iris.listing.status = ListingStatus.SUSPENDED
    iris.listing.save(update_fields=["status"])
    caches_clear()
    _error(_infer(client, buyer), 404, "model_not_found")
    usage, errors = _ledger()
    assert usage == 0 and errors == 4


# --- bad input (issue: "Bad input and faults") --------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status", "code", "text"),
    [
        (b'{"inputs": [', 400, "malformed_request", "not valid JSON"),
        (_body() | {"inputs": [{**_body()["inputs"][0], "datatype": "FP64"}]}, 400, "invalid_input",
         "Input 'input': expected datatype FP32, got FP64."),
        (_body([[1, 2, 3], [4, 5, 6]]), 400, "invalid_input",
         "Input 'input': expected shape [-1, 4], got [2, 3] (dimension 1 must be 4)."),
        ({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3]}]}, 400, "invalid_input",
         "Input 'input': 'data' has 3 elements; shape [2, 4] needs 8."),
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, 400,
         "invalid_input", "Input 'features': the model has no input of this name (its inputs: 'input')."),
    ],
)  # fmt: skip
def test_bad_input_is_400_naming_the_input_and_never_charged(client, buyer, payload, status, code, text):
    assert _infer(client, buyer).status_code == 200
    body = _error(_infer(client, buyer, payload), status, code)
    assert text in body["error"]
    if code == "invalid_input":
        assert list(body["fields"]) == [text.split("'")[1]]
    assert _ledger() == (1, 1)
    error = InferenceError.objects.get()
    assert (error.status, error.code, error.organization_id) == (status, code, buyer.organization.pk)


def test_too_many_elements_is_400(client, buyer):
    with override_settings(INFERENCE_MAX_ELEMENTS=5):
        body = _error(_infer(client, buyer), 400, "too_many_elements")
    assert "The request has 8 elements; the limit is 5" in body["error"]
    assert _ledger() == (0, 1)


def test_oversized_body_is_413_before_reading_it(client, buyer):
    with override_settings(INFERENCE_MAX_BODY_BYTES=100):
        response = _infer(client, buyer)
        _error(response, 413, "body_too_large")
        # The declared length is enough: a client that lies about it is cut at the limit.
        assert "limit is 100" in response.json()["error"]
    assert _ledger() == (0, 0)


def test_model_that_rejects_valid_looking_input_is_422_and_refunded(client, db, s3, admission_order):
    # x: FP32 [-1, -1] + a constant of shape [4]: a [1, 3] tensor passes the signature, ONNX Runtime refuses it.
    from onnx import TensorProto, numpy_helper

    constant = numpy_helper.from_array(np.ones(4, dtype=np.float32), name="c")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])],
        initializer=[constant],
    )
    version = publish_model(s3=s3, onnx_bytes=model_bytes(graph), slug="adder")
    buyer = buyer_create(listing=version.listing, quota=5)
    payload = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    for _ in range(6):  # more calls than the quota: refunded every time
        _error(_infer(client, buyer, payload, slug="adder"), 422, "inference_failed")
    good = {"inputs": [{"name": "x", "shape": [5, 4], "datatype": "FP32", "data": [0.0] * 20}]}
    assert _infer(client, buyer, good, slug="adder").status_code == 200
    assert _ledger() == (1, 6)


# --- rate limit and quota --------------------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after(client, iris, admission_order):
    buyer = buyer_create(listing=iris.listing, rate_limit=3)
    statuses = [_infer(client, buyer).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = _infer(client, buyer)
    _error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1
    assert _ledger() == (3, 2)


def test_monthly_quota_is_429_with_retry_after_to_the_period_end(client, iris, admission_order):
    buyer = buyer_create(listing=iris.listing, quota=5)
    assert _infer(client, buyer).status_code == 200  # 2 units
    assert _infer(client, buyer).status_code == 200  # 4 units
    response = _infer(client, buyer)  # 6 > 5
    _error(response, 429, "quota_exceeded")
    remaining = (buyer.subscription.current_period_end - buyer.subscription.current_period_start).total_seconds()
    assert abs(int(response["Retry-After"]) - remaining) < 60
    assert _infer(client, buyer, _body(IRIS_ROWS[:1])).status_code == 200  # exactly 5
    assert _ledger() == (3, 1)
    assert sum(UsageRecord.objects.values_list("units", flat=True)) == 5


def test_quota_counts_what_the_ledger_already_holds(client, iris, admission_order):
    buyer = buyer_create(listing=iris.listing, quota=4)
    assert _infer(client, buyer).status_code == 200
    assert _ledger() == (1, 0)
    metering_keys_clear()  # Redis lost its counters (a restart): the ledger seeds them again
    assert _infer(client, buyer).status_code == 200
    _error(_infer(client, buyer), 429, "quota_exceeded")


def test_a_fast_key_is_admitted_from_leases_and_metered_exactly(client, iris, admission_order):
    """At 1,000 calls/s a key's calls are granted 32 at a time (INFERENCE_ADMISSION_LEASE_MS, 100 ms): one
    admission (Lua script) for the 33rd of 40 calls after the first; every call recorded once; the quota counter
    exact once the leases end."""
    from inference.metering import metering_backend
    from tests.inference.api_support import evalsha_calls, redis_client

    buyer = buyer_create(listing=iris.listing, quota=100_000, rate_limit=1000)
    redis = redis_client()
    from prometheus_client import REGISTRY

    from inference import metrics

    def admitted(way: str) -> float:
        metrics.flush()
        return REGISTRY.get_sample_value("inference_admissions_total", {"way": way}) or 0.0

    units = []
    by_redis, by_lease = admitted("redis"), admitted("lease")
    for n in range(40):
        if n == 1:  # the first call's admission also seeded the quota counter (a flush, scripts of its own)
            before = evalsha_calls()
        response = _infer(client, buyer)
        assert response.status_code == 200, response.content
        units.append(int(response["X-Usage-Units"]))
    assert evalsha_calls() - before == 1
    assert (admitted("redis") - by_redis, admitted("lease") - by_lease) == (2, 38)  # shown on /metrics
    assert _ledger() == (40, 0)
    backend = metering_backend()
    quota_key = next(key for key in redis.scan_iter("inf:quota:*") if f":{buyer.subscription.pk}:".encode() in key)
    assert int(redis.get(quota_key)) == 64 * 2  # two leases of 32 calls of 2 units, held
    backend.leases_release()
    assert int(redis.get(quota_key)) == sum(units) == 80


# --- idempotency ---------------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_stored_response_and_records_nothing(client, buyer, admission_order):
    headers = {"Idempotency-Key": "order-1"}
    first = _infer(client, buyer, headers=headers)
    second = _infer(client, buyer, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second["X-Request-Id"] == first["X-Request-Id"]
    assert second["X-Usage-Units"] == "2"
    assert second["Idempotent-Replayed"] == "true" and not first.has_header("Idempotent-Replayed")
    assert _ledger() == (1, 0)

    # The same key for a different request: 422, nothing run.
    _error(_infer(client, buyer, _body(IRIS_ROWS[:1]), headers=headers), 422, "idempotency_key_reused")
    # Another key runs again.
    assert _infer(client, buyer, headers={"Idempotency-Key": "order-2"}).content != first.content
    assert _ledger() == (2, 1)


def test_binary_responses_replay_byte_for_byte(client, buyer):
    payload = _body(parameters={"binary_data_output": True})
    first = _infer(client, buyer, payload, headers={"Idempotency-Key": "bin"})
    second = _infer(client, buyer, payload, headers={"Idempotency-Key": "bin"})
    assert first["Content-Type"] == second["Content-Type"] == "application/octet-stream"
    assert first["Inference-Header-Content-Length"] == second["Inference-Header-Content-Length"]
    assert first.content == second.content
    assert _ledger() == (1, 0)


def test_a_failed_idempotent_request_releases_the_key(client, buyer, admission_order):
    bad = _body([[1, 2, 3]])
    _error(_infer(client, buyer, bad, headers={"Idempotency-Key": "k"}), 400, "invalid_input")
    assert _infer(client, buyer, headers={"Idempotency-Key": "k"}).status_code == 200
    assert _ledger() == (1, 1)
