"""Triton's own HTTP client (tritonclient.http) and plain requests against Django's live server: the binary
tensor extension and JSON both ways, metadata and health, errors, and concurrent idempotent replays."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from inference.models import InferenceError, UsageRecord
from inference.services import usage_flush
from tests.inference.api_support import buyer_create, caches_clear, metering_keys_clear, publish_model
from tests.inference.onnx_factories import onnx_classifier_bytes, onnx_identity_bytes

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


@pytest.fixture(autouse=True)
def _isolated():
    metering_keys_clear()
    caches_clear()
    yield
    metering_keys_clear()


@pytest.fixture
def iris(transactional_db, s3):
    return publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="iris")


@pytest.fixture
def buyer(iris):
    return buyer_create(listing=iris.listing)


@pytest.fixture
def triton(live_server):
    client = httpclient.InferenceServerClient(url=live_server.url.removeprefix("http://"), concurrency=4)
    yield client
    client.close()


def _ledger() -> tuple[int, int]:
    usage_flush()
    return UsageRecord.objects.count(), InferenceError.objects.count()


def test_health_and_metadata_through_tritonclient(triton, buyer):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("iris", headers=buyer.headers)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert triton.get_model_metadata("iris", model_version="1.0.0")["name"] == "iris"


@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, True), (True, False), (False, True)])
def test_infer_with_tritonclient(triton, buyer, binary_in, binary_out):
    tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary_in)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary_out),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary_out),
    ]
    result = triton.infer("iris", [tensor], outputs=outputs, headers=buyer.headers, request_id="mine")
    assert result.as_numpy("label").tolist() == [0, 2, 1]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    response = result.get_response()
    assert response["id"] == "mine" and response["model_version"] == "1.0.0"
    assert response["parameters"]["usage"]["units"] == 3
    assert _ledger() == (1, 0)
    assert UsageRecord.objects.get().units == 3


def test_tritonclient_default_outputs_come_back_binary(triton, buyer):
    tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    result = triton.infer("iris", [tensor], headers=buyer.headers, model_version="1.0.0")
    assert result.as_numpy("label").tolist() == [0, 2, 1]
    assert {o["name"] for o in result.get_response()["outputs"]} == {"label", "probabilities"}
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_and_fp16_tensors(triton, s3, transactional_db, binary):
    words = publish_model(s3=s3, onnx_bytes=onnx_identity_bytes("BYTES", (-1, 2)), slug="words")
    halves = publish_model(s3=s3, onnx_bytes=onnx_identity_bytes("FP16", (-1, 3)), slug="halves")
    buyer = buyer_create(listing=words.listing)
    from billing.services import plan_create, subscription_create

    publisher_plan = plan_create(
        listing=halves.listing, user=_listing_manager(halves.listing), name="Free", monthly_quota_units=None
    )
    subscription_create(organization=buyer.organization, user=buyer.user, plan=publisher_plan, accept_license=True)

    strings = np.array([["héllo", "wörld"], ["", "日本"]], dtype=object)
    tensor = httpclient.InferInput("x", [2, 2], "BYTES")
    tensor.set_data_from_numpy(strings, binary_data=binary)
    result = triton.infer(
        "words", [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)], headers=buyer.headers
    )
    got = result.as_numpy("y")
    assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in got.tolist()] == strings.tolist()

    values = np.array([[0.5, -1.25, 65504.0]], dtype=np.float16)
    tensor = httpclient.InferInput("x", [1, 3], "FP16")
    tensor.set_data_from_numpy(values, binary_data=True)  # JSON cannot carry FP16 through Triton's client
    result = triton.infer(
        "halves", [tensor], outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)], headers=buyer.headers
    )
    assert result.as_numpy("y").astype(np.float16).tolist() == values.tolist()
    assert _ledger() == (2, 0)


def _listing_manager(listing):
    from accounts.models import Membership, Role, User

    user = User.objects.create_user(email=f"manager-{listing.pk}@example.com", password="pass-Word-123")
    Membership.objects.create(organization=listing.organization, user=user, role=Role.OWNER)
    return user


def test_errors_reach_tritonclient_as_readable_exceptions(triton, buyer):
    tensor = httpclient.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("iris", [tensor], headers=buyer.headers)
    assert info.value.status() == "400"
    assert "Input 'input': expected shape [-1, 4], got [1, 3] (dimension 1 must be 4)." in str(info.value)
    with pytest.raises(InferenceServerException) as info:
        triton.infer("iris", [tensor], headers={"Authorization": "Bearer nope"})
    assert info.value.status() == "401" and "invalid" in str(info.value)
    assert _ledger() == (0, 1)


def test_kserve_v2_json_with_requests(live_server, buyer):
    response = requests.post(
        f"{live_server.url}/v2/models/iris/infer",
        json={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]},
        headers=buyer.headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Usage-Units"] == "1"
    assert {o["name"]: o["data"] for o in response.json()["outputs"]}["label"] == [0]
    assert _ledger() == (1, 0)


def test_ten_concurrent_replays_of_one_idempotency_key_record_once(live_server, buyer):
    url = f"{live_server.url}/v2/models/iris/infer"
    body = json.dumps({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": ROWS.tolist()}]})
    headers = {**buyer.headers, "Idempotency-Key": "batch-7", "Content-Type": "application/json"}
    start = threading.Barrier(10)

    def call(_: int) -> requests.Response:
        start.wait()
        return requests.post(url, data=body, headers=headers, timeout=20)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(call, range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    ok = [r for r in responses if r.status_code == 200]
    assert ok
    assert len({r.content for r in ok}) == 1
    assert len({r.headers["X-Request-Id"] for r in ok}) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.json()["code"] == "request_in_progress" and conflict.headers["Retry-After"] == "1"
    # Once finished, every retry replays it.
    again = requests.post(url, data=body, headers=headers, timeout=20)
    assert (
        again.status_code == 200 and again.content == ok[0].content and again.headers["Idempotent-Replayed"] == "true"
    )
    usage, errors = _ledger()
    assert usage == 1
    assert errors == statuses.count(409)
