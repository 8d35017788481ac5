"""Faults from the issue's list: Redis stopped, object storage stopped before a first load, a celery-mode worker
killed mid-request. Each ends with the right status, a clear JSON error, and the usage ledger exactly right."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from django.test import override_settings

from inference.models import InferenceError, UsageRecord
from inference.services import usage_flush
from tests.inference.api_support import buyer_create, caches_clear, metering_keys_clear, publish_model
from tests.inference.onnx_factories import onnx_classifier_bytes, onnx_identity_bytes, onnx_slow_loop_bytes
from tests.plugins.services import wait_for

BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


@pytest.fixture(autouse=True)
def _isolated():
    metering_keys_clear()
    caches_clear()
    yield
    metering_keys_clear()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throwaway redis-server of the test's own (never the shared one), without persistence."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        self.dir = tmp_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(up, timeout=10, message="redis-server did not start")
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _infer(client, buyer, *, slug: str = "iris", body: dict = BODY):
    return client.post(
        f"/v2/models/{slug}/infer", data=json.dumps(body), content_type="application/json", headers=buyer.headers
    )


def test_redis_stopped_fails_closed_with_503_and_no_usage(client, db, s3, own_redis, admission_order):
    iris = publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="iris")
    buyer = buyer_create(listing=iris.listing, quota=100)
    with override_settings(INFERENCE_REDIS_URL=own_redis.url):
        assert _infer(client, buyer).status_code == 200
        assert usage_flush().usage == 1

        own_redis.stop()
        started = time.monotonic()
        response = _infer(client, buyer)
        assert time.monotonic() - started < 2  # fails fast, not after a client timeout
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == "metering_unavailable" and "not run" in body["error"]
        assert int(response["Retry-After"]) > 0
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200

        # Redis comes back empty: calls work again and the quota restarts from the ledger.
        own_redis.start()
        assert _infer(client, buyer).status_code == 200
        assert (
            redis.Redis.from_url(own_redis.url).get(
                f"inf:quota:{buyer.subscription.pk}:{int(buyer.subscription.current_period_start.timestamp())}"
            )
            == b"2"
        )
        usage_flush()
    assert UsageRecord.objects.count() == 2
    assert InferenceError.objects.count() == 0  # the failed call could not be counted: Redis was the counter


def test_redis_stopped_a_lease_already_held_serves_at_most_its_lifetime(own_redis):
    """operations.md: with Redis down, calls a process was already granted by an admission lease are still admitted,
    for at most INFERENCE_ADMISSION_LEASE_MS; after that every call fails closed."""
    from datetime import timedelta

    from django.utils import timezone

    from inference.metering import Admission, MeteringUnavailable, RedisMetering

    backend = RedisMetering(own_redis.url, lease_ms=300)
    now = timezone.now()
    admission = Admission(
        api_key_id=1, rate_limit=1000, subscription_id=1, quota_units=None,
        period_start=now - timedelta(days=1), period_end=now + timedelta(days=29), units=1,
    )  # fmt: skip
    assert backend.admit(admission).outcome == "ok"  # granted a lease of 32 calls
    own_redis.stop()
    assert [backend.admit(admission).outcome for _ in range(5)] == ["ok"] * 5  # from the lease, no round trip
    time.sleep(0.35)
    with pytest.raises(MeteringUnavailable):
        backend.admit(admission)


def test_object_storage_down_before_a_first_load_is_503_and_cached_models_keep_serving(client, db, s3, settings):
    iris = publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="iris")
    # Bytes no other test uses, so nothing has them in the disk cache.
    fresh = publish_model(s3=s3, onnx_bytes=onnx_identity_bytes("FP32", (-1, 13), input_name="fresh"), slug="fresh")
    buyer = buyer_create(listing=iris.listing)
    buyer_fresh = buyer_create(listing=fresh.listing)
    assert _infer(client, buyer).status_code == 200  # iris is loaded now

    with override_settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}"):
        started = time.monotonic()
        response = _infer(client, buyer_fresh, slug="fresh", body={
            "inputs": [{"name": "fresh", "shape": [1, 13], "datatype": "FP32", "data": [0.0] * 13}]
        })  # fmt: skip
        assert response.status_code == 503, response.content
        assert response.json()["code"] == "model_unavailable"
        assert int(response["Retry-After"]) > 0
        assert time.monotonic() - started < 10
        for _ in range(3):
            assert _infer(client, buyer).status_code == 200
    usage_flush()
    assert UsageRecord.objects.filter(listing=iris.listing).count() == 4
    assert UsageRecord.objects.filter(listing=fresh.listing).count() == 0
    error = InferenceError.objects.get()
    assert (error.status, error.code, error.listing_id) == (503, "model_unavailable", fresh.listing_id)


def test_celery_worker_killed_mid_request_is_503_within_the_deadline_and_not_charged(
    live_server, s3, transactional_db, inference_worker_process
):
    slow = publish_model(s3=s3, onnx_bytes=onnx_slow_loop_bytes(iterations=3_000_000), slug="slow", batchable=False)
    buyer = buyer_create(listing=slow.listing, quota=1)
    deadline_s = 6.0
    outcome: dict = {}

    def call() -> None:
        started = time.monotonic()
        outcome["response"] = requests.post(
            f"{live_server.url}/v2/models/slow/infer",
            json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]},
            headers=buyer.headers,
            timeout=30,
        )
        outcome["elapsed"] = time.monotonic() - started

    with override_settings(INFERENCE_DEADLINE_S=deadline_s):
        thread = threading.Thread(target=call)
        thread.start()
        # Kill the worker once it holds the request (and has had time to load the model and start running it).
        wait_for(lambda: re.search(r"inference\.inference_run_many\[.*\] received", inference_worker_process.log()),
                 timeout=deadline_s, message="the worker never received the request")  # fmt: skip
        time.sleep(0.5)
        inference_worker_process.kill()
        thread.join(timeout=30)

    response = outcome["response"]
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "model_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert outcome["elapsed"] <= deadline_s + 1.0
    usage_flush()
    assert UsageRecord.objects.count() == 0
    assert list(InferenceError.objects.values_list("status", "code")) == [(503, "model_unavailable")]
    # Not charged: the quota of one unit is still there (the next call is admitted; no worker, so it fails too).
    metering = redis.Redis.from_url(live_server_redis_url())
    key = f"inf:quota:{buyer.subscription.pk}:{int(buyer.subscription.current_period_start.timestamp())}"
    assert metering.get(key) == b"0"


def live_server_redis_url() -> str:
    from django.conf import settings

    return settings.INFERENCE_REDIS_URL


def test_celery_a_call_sent_while_its_admission_travels_counts_only_when_admitted(
    client, db, s3, settings, inference_worker_factory
):
    """Celery mode, a model the workers found cheap: the request goes to a worker before the admission's answer is
    read (inference.dispatch.runs_cheaply). An admitted call is charged once, an idempotent replay not again, and
    a call over the quota is a 429 whose worker run counts for nothing."""
    from inference import dispatch

    inference_worker_factory(INFERENCE_BATCH_MIN_RUN_MS="50")  # every run of the classifier is far cheaper
    settings.INFERENCE_DISPATCH = "celery"
    version = publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="iris")
    buyer = buyer_create(listing=version.listing, quota=70)
    for _ in range(66):  # the worker's batcher measures one window of runs, and says so in its answers
        assert _infer(client, buyer).status_code == 200
    assert dispatch.runs_cheaply(dispatch.model_ref_from_version(version))

    headers = {**buyer.django_headers, "HTTP_IDEMPOTENCY_KEY": "order-1"}
    post = dict(path="/v2/models/iris/infer", data=json.dumps(BODY), content_type="application/json", **headers)
    first = client.post(**post)
    replay = client.post(**post)
    assert first.status_code == replay.status_code == 200 and replay.content == first.content
    assert [_infer(client, buyer).status_code for _ in range(4)] == [200, 200, 200, 429]

    usage_flush()
    assert UsageRecord.objects.count() == 70  # 66 + the idempotent call once + 3; nothing for the refused one
    assert list(InferenceError.objects.values_list("status", flat=True)) == [429]
