"""dispatch.infer in both modes, one code path: inline (this process hosts the model) and celery (a real worker
subprocess on the inference queue), with deadlines, a killed worker, and warm on publish / evict on withdraw."""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
import uuid

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, multiprocess

from catalog import services as catalog_services
from catalog.models import VersionStatus
from inference import dispatch, runtime
from inference.dispatch import InferenceFailed, ModelRef, ModelUnavailable
from inference.host import model_host, model_host_reset
from tests.catalog.factories import VersionFactory
from tests.inference.onnx_factories import onnx_classifier_bytes, onnx_identity_bytes
from tests.inference.test_batching import _gather_model
from tests.plugins.services import wait_for

_version_ids = iter(range(20_000_000, 21_000_000))


@pytest.fixture(autouse=True)
def fresh_host():
    model_host_reset()
    yield
    model_host_reset()


def _ref(s3, data: bytes, **extra) -> ModelRef:
    key = f"artifacts/dispatch-tests/{uuid.uuid4().hex}/model.onnx"
    s3.put(key, data)
    return ModelRef(
        version_id=next(_version_ids), artifact_key=key, artifact_sha256=hashlib.sha256(data).hexdigest(), **extra
    )


def _expected(data: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    handle = runtime.session_create(model_bytes_or_path=data, prefer_gpu=False)
    return runtime.session_run(handle, inputs)


# --- model refs --------------------------------------------------------------------------------------------


def test_model_ref_is_batchable_only_with_the_validator_verdict_and_dynamic_first_dims():
    signature = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }
    report = {"metrics": {"batchable": True}}
    version = VersionFactory.build(
        pk=7, signature=signature, validation_report=report, max_batch_size=16, max_queue_delay_ms=3.5
    )
    ref = dispatch.model_ref_from_version(version)
    assert ref == ModelRef(7, version.artifact_key, version.artifact_sha256, 16, 3.5, True)
    assert ModelRef.from_dict(ref.to_dict()) == ref

    fixed_output = {**signature, "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2]}]}
    fixed = VersionFactory.build(signature=fixed_output, validation_report=report)
    assert not dispatch.model_ref_from_version(fixed).batchable
    refused = VersionFactory.build(signature=signature, validation_report={"metrics": {"batchable": False}})
    assert not dispatch.model_ref_from_version(refused).batchable


def test_tensors_round_trip_through_the_celery_encoding():
    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([[True, False]]),
        np.arange(6, dtype=np.float16).reshape(2, 3),
        np.arange(4, dtype=np.uint64),
        np.array([["a", "ü"], ["", "x y"]], dtype=object),
        np.arange(10, dtype=np.int64)[::2],  # not contiguous
    ]
    for array in arrays:
        decoded = dispatch.tensor_decode(dispatch.tensor_encode(array))
        assert decoded.shape == array.shape and decoded.dtype == array.dtype
        np.testing.assert_array_equal(decoded, array)


# --- inline ------------------------------------------------------------------------------------------------


def _infer_concurrently(ref: ModelRef, xs: list[np.ndarray]) -> list:
    """dispatch.infer from one thread per input, all at once; the results in input order."""
    results: list = [None] * len(xs)
    barrier = threading.Barrier(len(xs))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = dispatch.infer(model=ref, inputs={"input": xs[i]}, output_names=None, deadline_s=10)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_inline_infer_runs_on_this_process_host(s3, settings, tmp_path):
    settings.INFERENCE_DISPATCH = "inline"
    # Own disk cache: the same classifier bytes (same sha256) may already be cached by an earlier test.
    settings.MODEL_CACHE_DIR = str(tmp_path)
    data = onnx_classifier_bytes()
    ref = _ref(s3, data, batchable=True)
    x = np.random.default_rng(1).random((3, 4), dtype=np.float32) * 5

    assert not dispatch.model_ready(model=ref)
    result = dispatch.infer(model=ref, inputs={"input": x}, output_names=["probabilities"], deadline_s=10)

    assert set(result.outputs) == {"probabilities"}
    np.testing.assert_allclose(result.outputs["probabilities"], _expected(data, {"input": x})["probabilities"])
    assert result.provider == "CPUExecutionProvider" and result.batch_rows == 3
    assert result.compute_ms > 0 and result.queue_ms >= 0
    assert dispatch.model_ready(model=ref) and model_host().is_loaded(ref.version_id)


def test_a_model_runs_before_its_admission_only_inline_loaded_and_cheap(s3, settings):
    """runs_cheaply: a call may run while its admission travels only for a version this process hosts whose runs
    the batcher found cheaper than INFERENCE_BATCH_MIN_RUN_MS."""
    settings.INFERENCE_DISPATCH = "inline"
    settings.INFERENCE_BATCH_MIN_RUN_MS = 50.0  # every run of the classifier is far cheaper
    ref = _ref(s3, onnx_classifier_bytes(), batchable=True)
    x = {"input": np.ones((1, 4), dtype=np.float32)}

    assert not dispatch.runs_cheaply(ref)  # not loaded: the first call loads it after its admission
    dispatch.infer(model=ref, inputs=x, output_names=None, deadline_s=10)
    assert not dispatch.runs_cheaply(ref)  # loaded, but no window of runs has measured it yet
    for _ in range(64):
        dispatch.infer(model=ref, inputs=x, output_names=None, deadline_s=10)
    assert dispatch.runs_cheaply(ref)
    settings.INFERENCE_DISPATCH = "celery"
    assert not dispatch.runs_cheaply(ref)  # the run is a worker's, and no worker has said it is cheap


def test_celery_a_model_the_workers_found_cheap_is_sent_while_its_admission_travels(
    s3, inference_worker_factory, settings
):
    inference_worker_factory(INFERENCE_BATCH_MIN_RUN_MS="50")  # every run of the classifier is far cheaper
    settings.INFERENCE_DISPATCH = "celery"
    ref = _ref(s3, onnx_classifier_bytes(), batchable=True)
    x = {"input": np.ones((1, 4), dtype=np.float32)}

    dispatch.infer(model=ref, inputs=x, output_names=None, deadline_s=10)
    assert not dispatch.runs_cheaply(ref)  # answered, but the worker's batcher has not measured a window yet
    for _ in range(64):
        dispatch.infer(model=ref, inputs=x, output_names=None, deadline_s=10)
    assert dispatch.runs_cheaply(ref)
    assert not model_host().is_loaded(ref.version_id)  # the worker's measure, not this process's


def _worker_request(ref: ModelRef, x: np.ndarray) -> dict:
    payload = dispatch.request_encode(model=ref, inputs={"input": x}, output_names=None, deadline_at=time.time() + 10)
    return {"payload": payload, "reply_to": f"{dispatch.REPLY_KEY_PREFIX}test-{uuid.uuid4().hex}"}


def _worker_answer(request: dict) -> dispatch.InferResult:
    popped = dispatch._reply_client().blpop([request["reply_to"]], timeout=10)
    assert popped is not None, "no answer pushed"
    return dispatch.response_decode(json.loads(popped[1]))


def test_a_worker_runs_cheap_requests_of_loaded_models_itself_and_the_rest_on_its_run_threads(
    s3, settings, monkeypatch
):
    """message_serve (the inference_run_many task): no hand-off between threads for a cheap run of a loaded
    model; a model to load, or one worth batching, goes to the run threads and the caller returns at once."""
    settings.INFERENCE_BATCH_MIN_RUN_MS = 50.0  # every run of the classifier is far cheaper
    data = onnx_classifier_bytes()
    ref = _ref(s3, data, batchable=True)
    x = np.random.default_rng(4).random((2, 4), dtype=np.float32)
    ran_in: list[str] = []
    monkeypatch.setattr(dispatch, "requests_run", _recording(dispatch.requests_run, ran_in))

    first = _worker_request(ref, x)
    dispatch.message_serve([first])  # not loaded yet: loads on a run thread
    np.testing.assert_array_equal(_worker_answer(first).outputs["label"], _expected(data, {"input": x})["label"])
    assert ran_in[-1].startswith("inference")
    hosted = model_host().model_get(ref)
    for _ in range(64):  # one window of runs measures it cheap
        hosted.batcher.submit(inputs={"input": x}, output_names=None)
    assert hosted.batcher.cheap

    cheap = [_worker_request(ref, x) for _ in range(3)]
    dispatch.message_serve(cheap)
    assert ran_in[-1] == threading.current_thread().name  # this thread: Celery's own, with -P solo
    for request in cheap:
        np.testing.assert_array_equal(_worker_answer(request).outputs["label"], _expected(data, {"input": x})["label"])


def test_the_warm_task_returns_while_the_model_loads_on_a_run_thread(monkeypatch):
    """With -P solo the task runs on the worker's only receiving thread: a warm-up must not hold it for a load."""
    from inference import tasks

    loading, release = threading.Event(), threading.Event()
    loaded_in: list[str] = []

    def slow_warm(*, model: ModelRef) -> bool:
        loaded_in.append(threading.current_thread().name)
        loading.set()
        return release.wait(10)

    monkeypatch.setattr(dispatch, "model_warm", slow_warm)
    ref = ModelRef(next(_version_ids), "artifacts/warm/model.onnx", "0" * 64)
    tasks.model_warm(ref.version_id, ref.to_dict())  # the task's body, in this thread; it returns at once
    try:
        assert loading.wait(5) and loaded_in[0].startswith("inference")
        assert not release.is_set()  # the load is still going on, and the task has returned
    finally:
        release.set()


def test_a_worker_waits_for_a_free_run_thread(settings, monkeypatch):
    monkeypatch.setattr(dispatch, "_run_threads", None)
    monkeypatch.setattr(dispatch, "_run_slots", None)
    settings.INFERENCE_WORKER_THREADS = 1
    release = threading.Event()
    done: list[str] = []
    dispatch.run_threads_submit(lambda: (release.wait(10), done.append("first")))
    second = threading.Thread(target=dispatch.run_threads_submit, args=(lambda: done.append("second"),))
    second.start()
    second.join(0.3)
    assert second.is_alive() and done == []  # the only run thread is busy: the worker waits (messages stay queued)
    release.set()
    second.join(5)
    wait_for(lambda: done == ["first", "second"], timeout=5, message="both should run, in order")


def test_inline_input_that_ort_rejects_is_a_422(s3, settings):
    settings.INFERENCE_DISPATCH = "inline"
    ref = _ref(s3, _gather_model(), batchable=True)
    with pytest.raises(InferenceFailed) as excinfo:
        dispatch.infer(model=ref, inputs={"idx": np.array([42], dtype=np.int64)}, output_names=None, deadline_s=5)
    assert excinfo.value.status == 422 and excinfo.value.code == "inference_failed"
    assert "42" in excinfo.value.message


def test_inline_concurrent_requests_are_batched(s3, settings):
    settings.INFERENCE_DISPATCH = "inline"
    data = onnx_classifier_bytes()
    ref = _ref(s3, data, batchable=True, max_batch_size=64, max_queue_delay_ms=30)
    dispatch.model_warm(model=ref)
    xs = [np.full((1, 4), i / 4, dtype=np.float32) for i in range(24)]
    results = _infer_concurrently(ref, xs)

    assert max(r.batch_rows for r in results) > 1
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["label"], _expected(data, {"input": x})["label"])


# --- celery ------------------------------------------------------------------------------------------------


def test_celery_infer_runs_on_a_worker_with_the_same_results(s3, inference_worker_process):
    data = onnx_classifier_bytes()
    ref = _ref(s3, data, batchable=True)
    x = np.random.default_rng(2).random((5, 4), dtype=np.float32) * 5

    result = dispatch.infer(model=ref, inputs={"input": x}, output_names=None, deadline_s=10)

    expected = _expected(data, {"input": x})
    np.testing.assert_array_equal(result.outputs["label"], expected["label"])
    np.testing.assert_allclose(result.outputs["probabilities"], expected["probabilities"], rtol=1e-6)
    assert result.outputs["label"].dtype == np.int64 and result.provider == "CPUExecutionProvider"
    assert result.batch_rows == 5
    assert not model_host().is_loaded(ref.version_id)  # the worker hosts it, not this process

    # Round trip on a warm worker (the figure the benchmark compares with a bare view).
    timings = []
    for _ in range(60):
        started = time.perf_counter()
        dispatch.infer(model=ref, inputs={"input": x[:1]}, output_names=None, deadline_s=10)
        timings.append((time.perf_counter() - started) * 1000)
    print(f"celery round trip: p50 {statistics.median(timings):.2f} ms, max {max(timings):.2f} ms")

    with pytest.raises(InferenceFailed):  # the worker's 422 comes back as a 422
        gather = _ref(s3, _gather_model())
        dispatch.infer(model=gather, inputs={"idx": np.array([99], dtype=np.int64)}, output_names=None, deadline_s=10)

    # Without a Redis result backend the answer comes through Celery's result backend (and is deleted after).
    via_backend = dispatch._infer_celery_backend(model=ref, inputs={"input": x}, output_names=None, deadline_s=10)
    np.testing.assert_array_equal(via_backend.outputs["label"], expected["label"])


def test_celery_messages_go_straight_to_redis_or_through_apply_async_on_other_brokers(
    s3, inference_worker_process, monkeypatch, settings
):
    from inference.tasks import inference_run_many

    data = onnx_classifier_bytes()
    ref = _ref(s3, data)
    x = np.random.default_rng(3).random((2, 4), dtype=np.float32)
    sent: list[str] = []
    publisher = dispatch._publisher(settings.INFERENCE_QUEUE)
    assert publisher is not None  # the test broker is Redis
    monkeypatch.setattr(publisher, "send", _recording(publisher.send, sent, "direct"))
    monkeypatch.setattr(inference_run_many, "apply_async", _recording(inference_run_many.apply_async, sent, "kombu"))

    direct = dispatch.infer(model=ref, inputs={"input": x}, output_names=None, deadline_s=10)
    monkeypatch.setattr(dispatch, "_publisher", lambda queue: None)  # as with RabbitMQ or the filesystem broker
    via_kombu = dispatch.infer(model=ref, inputs={"input": x}, output_names=None, deadline_s=10)

    assert sent == ["direct", "kombu"]
    for result in (direct, via_kombu):
        np.testing.assert_array_equal(result.outputs["label"], _expected(data, {"input": x})["label"])


def _recording(function, calls: list[str], name: str | None = None):
    """``function``, appending ``name`` (by default the calling thread's name) to ``calls`` on every call."""

    def recorded(*args, **kwargs):
        calls.append(name or threading.current_thread().name)
        return function(*args, **kwargs)

    return recorded


def test_celery_concurrent_requests_each_get_their_own_rows(s3, inference_worker_process):
    data = onnx_classifier_bytes()
    ref = _ref(s3, data, batchable=True, max_batch_size=64, max_queue_delay_ms=5)
    dispatch.infer(model=ref, inputs={"input": np.ones((1, 4), np.float32)}, output_names=None, deadline_s=10)
    xs = [np.full((1 + i % 2, 4), i / 4, dtype=np.float32) for i in range(16)]
    results = _infer_concurrently(ref, xs)

    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["label"], _expected(data, {"input": x})["label"])


def test_celery_storage_down_on_first_load_is_a_503_from_the_worker(s3, inference_worker_factory, settings):
    worker = inference_worker_factory(S3_ENDPOINT_URL="http://127.0.0.1:9")  # the worker cannot reach storage
    settings.INFERENCE_DISPATCH = "celery"
    ref = _ref(s3, onnx_identity_bytes(output_name=f"y_{uuid.uuid4().hex[:8]}"))  # in no cache yet

    with pytest.raises(ModelUnavailable) as excinfo:
        dispatch.infer(model=ref, inputs={"x": np.ones((1, 4), np.float32)}, output_names=None, deadline_s=20)

    assert excinfo.value.retry_after >= 1 and "object storage" in excinfo.value.message
    assert worker.alive()


def test_celery_killed_worker_is_a_503_within_the_deadline(s3, inference_worker_factory, settings):
    worker = inference_worker_factory()
    settings.INFERENCE_DISPATCH = "celery"
    ref = _ref(s3, onnx_identity_bytes())
    x = np.ones((1, 4), np.float32)
    dispatch.infer(model=ref, inputs={"x": x}, output_names=None, deadline_s=10)
    worker.kill()

    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as excinfo:
        dispatch.infer(model=ref, inputs={"x": x}, output_names=None, deadline_s=1.5)
    elapsed = time.monotonic() - started

    assert excinfo.value.status == 503 and excinfo.value.retry_after >= 1
    assert 1.4 <= elapsed < 4

    # The request the caller gave up on expired with its deadline; a new worker serves the next ones.
    time.sleep(0.2)
    inference_worker_factory()
    result = dispatch.infer(model=ref, inputs={"x": x * 2}, output_names=None, deadline_s=10)
    np.testing.assert_array_equal(result.outputs["y"], x * 2)


# --- warm on publish, evict on withdraw ----------------------------------------------------------------------


def _approved_version(s3, data: bytes):
    key = f"artifacts/dispatch-tests/{uuid.uuid4().hex}/model.onnx"
    s3.put(key, data)
    signature = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    return VersionFactory(
        status=VersionStatus.APPROVED,
        published_at=None,
        artifact_key=key,
        artifact_size=len(data),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
        signature=signature,
        validation_report={"metrics": {"batchable": True}},
    )


@pytest.mark.django_db
def test_inline_publish_warms_this_process_and_withdraw_evicts(
    s3, settings, staff_user, django_capture_on_commit_callbacks
):
    settings.INFERENCE_DISPATCH = "inline"
    version = _approved_version(s3, onnx_identity_bytes())

    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.version_publish(version=version, actor=staff_user)
    wait_for(lambda: model_host().is_loaded(version.pk), message="the published version was not warmed")

    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.version_withdraw(version=version, actor=staff_user, reason="retired")
    assert not model_host().is_loaded(version.pk)


def _worker_loads(directory) -> float:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("model_cache_events_total", {"event": "load", "tier": "memory"}) or 0.0


def _worker_evictions(directory) -> float:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return registry.get_sample_value("model_cache_events_total", {"event": "evict", "tier": "memory"}) or 0.0


@pytest.mark.django_db
def test_celery_publish_warms_every_worker_and_withdraw_evicts_everywhere(
    s3, settings, staff_user, inference_worker_factory, tmp_path, django_capture_on_commit_callbacks
):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    for _ in range(2):
        inference_worker_factory(concurrency=4, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    settings.INFERENCE_DISPATCH = "celery"
    version = _approved_version(s3, onnx_identity_bytes())

    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.version_publish(version=version, actor=staff_user)

    wait_for(lambda: _worker_loads(metrics_dir) == 2, timeout=20, message="both workers should load the version")
    assert not model_host().is_loaded(version.pk)  # the web process does not host models in celery mode

    with django_capture_on_commit_callbacks(execute=True):
        catalog_services.version_withdraw(version=version, actor=staff_user, reason="retired")
    wait_for(lambda: _worker_evictions(metrics_dir) == 2, timeout=20, message="both workers should evict it")


# --- group sending (celery mode) ---------------------------------------------------------------------------


class _SlowBroker:
    """A send function whose first message blocks until released, so that other requests pile up behind it."""

    def __init__(self, *, fail: tuple[int, ...] = ()) -> None:
        self.messages: list[list[str]] = []
        self.release = threading.Event()
        self.first_started = threading.Event()
        self.fail = fail  # indexes of the messages that fail
        self.unsent: list[tuple[list[str], BaseException]] = []  # what the sender told its failed() about

    def __call__(self, requests: list[dict]) -> None:
        index = len(self.messages)
        self.messages.append([r["id"] for r in requests])
        if index == 0:
            self.first_started.set()
            assert self.release.wait(10)
        if index in self.fail:
            raise ConnectionError("broker down")

    def failed(self, requests: list[dict], error: BaseException) -> None:
        self.unsent.append(([r["id"] for r in requests], error))

    def sender(self, **limits) -> dispatch.GroupSender:
        return dispatch.GroupSender(self, failed=self.failed, **limits)


def _send_in_threads(sender: dispatch.GroupSender, ids: list[str]) -> dict[str, object]:
    outcomes: dict[str, object] = {}

    def send(request_id: str) -> None:
        try:
            sender.send({"id": request_id}, size=100)
            outcomes[request_id] = "returned"
        except Exception as exc:  # collected and asserted by the test
            outcomes[request_id] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
        time.sleep(0.01)  # arrival order = list order
    return {"threads": threads, "outcomes": outcomes}


def test_group_sender_sends_a_lone_request_at_once():
    broker = _SlowBroker()
    broker.release.set()
    sender = broker.sender()

    sender.send({"id": "a"}, size=100)
    sender.send({"id": "b"}, size=100)

    assert broker.messages == [["a"], ["b"]]


def test_group_sender_sends_requests_that_arrive_during_a_send_together_up_to_the_limit():
    broker = _SlowBroker()
    sender = broker.sender(max_requests=3)
    first = _send_in_threads(sender, ["a"])
    assert broker.first_started.wait(5)
    rest = _send_in_threads(sender, ["b", "c", "d", "e", "f"])
    for thread in rest["threads"]:
        thread.join(5)
    # They returned at once (their threads go and wait for their answers); "a"'s thread will send them.
    assert rest["outcomes"] == dict.fromkeys("bcdef", "returned") and broker.messages == [["a"]]
    assert first["threads"][0].is_alive()

    broker.release.set()
    first["threads"][0].join(10)

    assert broker.messages == [["a"], ["b", "c", "d"], ["e", "f"]]
    assert first["outcomes"] == {"a": "returned"} and broker.unsent == []


def test_group_sender_respects_the_byte_limit_but_always_sends_the_oldest():
    broker = _SlowBroker()
    broker.release.set()
    sender = broker.sender(max_bytes=150)
    sender.send({"id": "big"}, size=10_000)  # over the limit alone: still sent
    assert broker.messages == [["big"]]


def test_group_sender_raises_a_failed_send_in_its_own_thread_and_hands_the_others_to_failed():
    broker = _SlowBroker(fail=(0, 1))
    sender = broker.sender(max_requests=2)
    first = _send_in_threads(sender, ["a"])
    assert broker.first_started.wait(5)
    rest = _send_in_threads(sender, ["b", "c", "d"])
    broker.release.set()
    for thread in first["threads"] + rest["threads"]:
        thread.join(10)

    assert isinstance(first["outcomes"]["a"], ConnectionError)  # its own message failed
    assert broker.messages == [["a"], ["b", "c"], ["d"]]  # the failures did not stop the queue
    assert [(ids, type(error)) for ids, error in broker.unsent] == [(["b", "c"], ConnectionError)]
    sender.send({"id": "e"}, size=100)  # nobody is left sending: the next request sends at once
    assert broker.messages[-1] == ["e"]


def test_celery_requests_whose_message_failed_get_a_503_at_once(s3, settings, monkeypatch):
    settings.INFERENCE_DISPATCH = "celery"
    monkeypatch.setattr(dispatch, "_senders", {})
    release = threading.Event()
    messages: list[int] = []

    def broken(requests, *, queue):
        messages.append(len(requests))
        if len(messages) == 1:
            assert release.wait(10)  # the others queue behind the first message
        raise ConnectionError("broker down")

    monkeypatch.setattr(dispatch, "_requests_send", broken)
    ref = _ref(s3, onnx_classifier_bytes())
    outcomes: list[tuple[BaseException | None, float]] = []

    def call() -> None:
        started = time.monotonic()
        try:
            dispatch.infer(model=ref, inputs={"input": np.ones((1, 4), np.float32)}, output_names=None, deadline_s=10)
            outcomes.append((None, time.monotonic() - started))
        except ModelUnavailable as exc:
            outcomes.append((exc, time.monotonic() - started))

    threads = [threading.Thread(target=call) for _ in range(3)]
    threads[0].start()
    wait_for(lambda: messages == [1], timeout=5, message="the first message should be on its way")
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join(10)

    assert messages == [1, 2]
    assert len(outcomes) == 3
    for error, elapsed in outcomes:
        assert isinstance(error, ModelUnavailable) and "cannot be reached" in error.message
        assert elapsed < 5  # told on their reply lists, not left to wait for the 10 s deadline


def test_celery_concurrent_requests_share_messages(s3, inference_worker_process, monkeypatch):
    data = onnx_classifier_bytes()
    ref = _ref(s3, data, batchable=True, max_batch_size=64, max_queue_delay_ms=5)
    dispatch.infer(model=ref, inputs={"input": np.ones((1, 4), np.float32)}, output_names=None, deadline_s=10)
    messages: list[int] = []
    send = dispatch._requests_send

    def slow_send(requests, *, queue):
        messages.append(len(requests))
        time.sleep(0.05)  # a slow broker: the other requests arrive while this message is being sent
        send(requests, queue=queue)

    monkeypatch.setattr(dispatch, "_requests_send", slow_send)
    xs = [np.full((1, 4), i / 4, dtype=np.float32) for i in range(12)]
    results = _infer_concurrently(ref, xs)

    assert sum(messages) == len(xs) and len(messages) < len(xs), messages
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["label"], _expected(data, {"input": x})["label"])
    assert max(result.batch_rows for result in results) > 1  # the worker ran a message's requests together
