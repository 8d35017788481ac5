"""The micro-batcher on real ONNX Runtime sessions: batches form under concurrency, each caller gets its own rows,
a lone request is not held back, fixed-batch models are never batched, and one bad request fails alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference import runtime
from inference.batching import Batcher
from inference.errors import ModelUnavailable
from tests.inference.api_support import concurrently
from tests.inference.onnx_factories import model_bytes, onnx_classifier_bytes, onnx_identity_bytes


def _session(data: bytes) -> runtime.InferenceSessionHandle:
    return runtime.session_create(model_bytes_or_path=data, prefer_gpu=False, intra_op_threads=1)


class RecordingRun:
    """session_run that records the rows of each run; the first run can be slowed down so that the other
    requests of a test pile up behind it (what happens under load, made deterministic)."""

    def __init__(self, handle: runtime.InferenceSessionHandle, *, first_delay_s: float = 0.0) -> None:
        self.handle = handle
        self.first_delay_s = first_delay_s
        self.rows: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, feeds: dict[str, np.ndarray], output_names: list[str] | None) -> dict[str, np.ndarray]:
        with self.lock:
            first = not self.rows
            self.rows.append(next(iter(feeds.values())).shape[0])
        if first and self.first_delay_s:
            time.sleep(self.first_delay_s)
        return runtime.session_run(self.handle, feeds, output_names)


def _assert_own_labels(handle: runtime.InferenceSessionHandle, inputs: list[np.ndarray], results: list) -> None:
    """Each request got exactly the labels it would have got alone (its own rows, nobody else's)."""
    for x, result in zip(inputs, results, strict=True):
        assert not isinstance(result, Exception), result
        np.testing.assert_array_equal(result.outputs["label"], runtime.session_run(handle, {"input": x})["label"])


def _gather_model() -> bytes:
    """y = table[idx]: an index out of range makes ORT fail the whole run (INVALID_ARGUMENT)."""
    table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), name="table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[table],
    )
    return model_bytes(graph)


def test_concurrent_requests_form_batches_and_each_caller_gets_its_own_rows():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle, first_delay_s=0.05)
    batcher = Batcher(run=run, name="t1", batchable=True, max_batch_size=64, max_queue_delay_ms=20)
    rng = np.random.default_rng(7)
    inputs = [rng.random((1 + i % 3, 4), dtype=np.float32) * 5 for i in range(16)]

    results = concurrently(16, lambda i: batcher.submit(inputs={"input": inputs[i]}, output_names=None, timeout_s=10))

    assert max(run.rows) > 1, run.rows  # some requests really ran together
    assert sum(run.rows) == sum(len(x) for x in inputs)
    for i, result in enumerate(results):
        assert not isinstance(result, Exception), result
        alone = runtime.session_run(handle, {"input": inputs[i]})
        assert result.outputs["label"].shape[0] == len(inputs[i])
        np.testing.assert_array_equal(result.outputs["label"], alone["label"])
        np.testing.assert_allclose(result.outputs["probabilities"], alone["probabilities"], rtol=1e-6)
    batched = [r for i, r in enumerate(results) if r.batch_rows > len(inputs[i])]
    assert batched and all(r.queue_ms >= 0 and r.compute_ms > 0 for r in results)
    batcher.close()


def test_batch_size_is_capped_at_max_batch_size():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle, first_delay_s=0.05)
    batcher = Batcher(run=run, name="t2", batchable=True, max_batch_size=4, max_queue_delay_ms=20)
    x = np.ones((1, 4), dtype=np.float32)

    results = concurrently(12, lambda i: batcher.submit(inputs={"input": x}, output_names=None, timeout_s=10))

    assert all(not isinstance(r, Exception) for r in results)
    assert max(run.rows) == 4 and sum(run.rows) == 12
    batcher.close()


class OverlapRun:
    """session_run that takes a while and records how many runs were in progress at once, and their rows."""

    def __init__(self, handle: runtime.InferenceSessionHandle, *, delay_s: float) -> None:
        self.handle, self.delay_s = handle, delay_s
        self.running = self.most = 0
        self.rows: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, feeds: dict[str, np.ndarray], output_names: list[str] | None) -> dict[str, np.ndarray]:
        # Runs of dispatcher threads only: the first caller, finding nothing in flight, runs alone in its own thread.
        dispatched = threading.current_thread().name.startswith("batcher-")
        with self.lock:
            self.running += dispatched
            self.most = max(self.most, self.running)
            self.rows.append(next(iter(feeds.values())).shape[0])
        time.sleep(self.delay_s)
        try:
            return runtime.session_run(self.handle, feeds, output_names)
        finally:
            with self.lock:
                self.running -= dispatched


@pytest.mark.parametrize("concurrent", [1, 2, 3])
def test_batches_run_at_once_up_to_max_concurrent_batches(concurrent):
    """With the queue full, a dispatcher collects the next batch while others run theirs: up to the limit, never
    more; every request still gets its own rows, and batches stay full (one dispatcher collects at a time)."""
    handle = _session(onnx_classifier_bytes())
    run = OverlapRun(handle, delay_s=0.15)
    batcher = Batcher(
        run=run, name=f"t-c{concurrent}", batchable=True, max_batch_size=4, max_queue_delay_ms=20,
        max_concurrent_batches=concurrent,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    inputs = [rng.random((1, 4), dtype=np.float32) * 5 for _ in range(24)]

    results = concurrently(24, lambda i: batcher.submit(inputs={"input": inputs[i]}, output_names=None, timeout_s=20))

    assert run.most == concurrent, (run.most, run.rows)
    assert sum(run.rows) == 24 and sorted(run.rows, reverse=True)[:5] == [4] * 5, run.rows
    _assert_own_labels(handle, inputs, results)
    batcher.close()


def test_a_lone_request_runs_at_once_even_with_a_long_queue_delay():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle)
    batcher = Batcher(run=run, name="t3", batchable=True, max_batch_size=32, max_queue_delay_ms=500)

    started = time.perf_counter()
    result = batcher.submit(inputs={"input": np.ones((1, 4), dtype=np.float32)}, output_names=None, timeout_s=10)
    elapsed_ms = (time.perf_counter() - started) * 1000

    assert result.batch_rows == 1 and run.rows == [1]
    assert result.queue_ms < 50 and elapsed_ms < 250  # nowhere near the 500 ms delay


def test_a_queued_request_waits_at_most_the_queue_delay():
    """B arrives while A runs (slowly): B may wait for company, but no longer than max_queue_delay_ms."""
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle, first_delay_s=1.0)
    batcher = Batcher(run=run, name="t4", batchable=True, max_batch_size=32, max_queue_delay_ms=100)
    x = np.ones((1, 4), dtype=np.float32)
    first = threading.Thread(target=lambda: batcher.submit(inputs={"input": x}, output_names=None, timeout_s=10))
    first.start()
    while not run.rows:  # A is running now
        time.sleep(0.001)

    result = batcher.submit(inputs={"input": x}, output_names=None, timeout_s=10)
    first.join()

    assert result.batch_rows == 1
    assert 80 <= result.queue_ms < 600  # waited for the delay (A still in flight), then ran without A
    batcher.close()


def test_a_dispatcher_free_again_waits_for_the_callers_it_just_answered():
    """Under load, the callers of a batch come straight back with their next requests. Y waited in the queue while
    a batch of two ran; once it is done, the dispatcher waits (at most the queue delay, from then) while those two
    callers are still in flight, and their next requests join Y's batch, where taking Y at once (it had waited
    longer than the delay already) would run it alone and leave them for the batch after: on a busy machine such
    small batches cost most per row and leave the requests' own work the least CPU."""
    handle = _session(onnx_classifier_bytes())
    rows: list[int] = []

    def run(feeds, output_names):
        x = feeds["input"]
        rows.append(x.shape[0])
        if x[0, 0] == 9:  # a marked request: a slow run, for the others to queue behind
            time.sleep(0.3)
        return runtime.session_run(handle, feeds, output_names)

    batcher = Batcher(run=run, name="t-back", batchable=True, max_batch_size=32, max_queue_delay_ms=50)
    slow, quick = np.full((1, 4), 9, dtype=np.float32), np.ones((1, 4), dtype=np.float32)

    def submit(x):
        return batcher.submit(inputs={"input": x}, output_names=None, timeout_s=10)

    def twice(_index):  # a marked request, then straight away the next one, as a server thread does
        submit(slow)
        return submit(quick)

    alone = threading.Thread(target=submit, args=(slow,))
    alone.start()  # runs alone, in its own thread: the others queue
    while not rows:
        time.sleep(0.001)
    callers = threading.Thread(target=lambda: concurrently(2, twice))
    callers.start()
    while len(rows) < 2:  # the two marked requests run as one batch
        time.sleep(0.001)
    late = submit(quick)  # queued behind that batch
    callers.join()
    alone.join()

    assert rows[:2] == [1, 2], rows
    assert late.batch_rows == 3 and rows[2:] == [3], rows  # Y with both callers' next requests
    batcher.close()


def test_requests_with_different_shapes_or_outputs_do_not_share_a_batch():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle, first_delay_s=0.05)
    batcher = Batcher(run=run, name="t5", batchable=True, max_batch_size=64, max_queue_delay_ms=20)
    x = np.ones((1, 4), dtype=np.float32)

    def call(i: int):
        names = ["label"] if i % 2 else None
        return batcher.submit(inputs={"input": x}, output_names=names, timeout_s=10)

    results = concurrently(8, call)

    for i, result in enumerate(results):
        assert set(result.outputs) == ({"label"} if i % 2 else {"label", "probabilities"})
    batcher.close()


def test_a_model_with_a_fixed_batch_dimension_is_never_batched():
    handle = _session(onnx_identity_bytes("FP32", (1, 4)))
    run = RecordingRun(handle, first_delay_s=0.05)
    batcher = Batcher(run=run, name="t6", batchable=False, max_batch_size=32, max_queue_delay_ms=50)

    results = concurrently(
        12,
        lambda i: batcher.submit(inputs={"x": np.full((1, 4), i, dtype=np.float32)}, output_names=None, timeout_s=10),
    )

    assert run.rows == [1] * 12
    for i, result in enumerate(results):
        assert result.batch_rows == 1 and result.queue_ms == pytest.approx(0, abs=5)
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 4), i, dtype=np.float32))


def test_a_failing_request_in_a_batch_does_not_fail_the_others():
    handle = _session(_gather_model())
    run = RecordingRun(handle, first_delay_s=0.05)
    batcher = Batcher(run=run, name="t7", batchable=True, max_batch_size=64, max_queue_delay_ms=20)
    bad = 5

    def call(i: int):
        idx = np.array([99 if i == bad else i % 10], dtype=np.int64)
        return batcher.submit(inputs={"idx": idx}, output_names=None, timeout_s=10)

    results = concurrently(10, call)

    assert any(rows > 1 for rows in run.rows), run.rows  # a batch was attempted with the bad request in it
    assert isinstance(results[bad], runtime.RuntimeFailure) and results[bad].kind == "input"
    for i, result in enumerate(results):
        if i != bad:
            assert not isinstance(result, Exception), result
            np.testing.assert_array_equal(result.outputs["y"], [[3 * (i % 10), 3 * (i % 10) + 1, 3 * (i % 10) + 2]])
    batcher.close()


def test_a_request_still_queued_at_its_deadline_is_unavailable():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle, first_delay_s=0.0)
    slow = lambda feeds, names: (time.sleep(0.4), run(feeds, names))[1]  # noqa: E731
    batcher = Batcher(run=slow, name="t8", batchable=True, max_batch_size=32, max_queue_delay_ms=0)
    x = np.ones((1, 4), dtype=np.float32)
    threads = []
    for expected_runs in (1, 2):  # A runs in its own thread, B in the dispatcher: both busy for 0.4 s
        thread = threading.Thread(target=lambda: batcher.submit(inputs={"input": x}, output_names=None, timeout_s=10))
        thread.start()
        threads.append(thread)
        while batcher._in_flight < expected_runs:
            time.sleep(0.001)
    time.sleep(0.05)

    started = time.perf_counter()
    with pytest.raises(ModelUnavailable) as excinfo:
        batcher.submit(inputs={"input": x}, output_names=None, timeout_s=0.05)  # C queues behind B
    waited = time.perf_counter() - started
    for thread in threads:
        thread.join()

    assert excinfo.value.status == 503 and excinfo.value.retry_after >= 1
    assert waited < 0.3
    assert len(run.rows) == 2  # C was dropped from the queue, never run
    assert batcher._in_flight == 0
    batcher.close()


# --- run_many: the requests of one Celery message, run together in the caller's thread ---------------------


def test_run_many_batches_compatible_requests_up_to_max_batch_size_and_keeps_their_order():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle)
    batcher = Batcher(run=run, name="m1", batchable=True, max_batch_size=5, max_queue_delay_ms=2)
    rng = np.random.default_rng(3)
    inputs = [rng.random((1 + i % 2, 4), dtype=np.float32) * 5 for i in range(7)]  # 10 rows in all
    requests = [({"input": x}, ["label"] if i == 3 else None) for i, x in enumerate(inputs)]

    results = batcher.run_many(requests)

    # Rows per request: 1,2,1,2,1,2,1. They queue together; the dispatcher takes the oldest and what fits with it,
    # up to 5 rows: 0+1+2+4 (5 rows; 3 asks for other outputs). Then the oldest left, 3, alone (2 rows); then 5+6.
    assert run.rows == [5, 2, 3]
    _assert_own_labels(handle, inputs, results)
    for i, result in enumerate(results):
        assert set(result.outputs) == ({"label"} if i == 3 else {"label", "probabilities"})
    assert results[3].batch_rows == 2 and results[0].batch_rows == 5 and results[6].batch_rows == 3


def test_run_many_gives_each_request_its_own_error():
    handle = _session(_gather_model())
    run = RecordingRun(handle)
    batcher = Batcher(run=run, name="m2", batchable=True, max_batch_size=64, max_queue_delay_ms=2)
    requests = [({"idx": np.array([99 if i == 2 else i], dtype=np.int64)}, None) for i in range(4)]

    results = batcher.run_many(requests)

    assert run.rows[0] == 4  # tried together first, then each alone
    assert isinstance(results[2], runtime.RuntimeFailure) and results[2].kind == "input"
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i].outputs["y"], [[3 * i, 3 * i + 1, 3 * i + 2]])


def test_run_many_on_a_fixed_batch_model_runs_each_request_alone():
    handle = _session(onnx_identity_bytes("FP32", (1, 4)))
    run = RecordingRun(handle)
    batcher = Batcher(run=run, name="m3", batchable=False, max_batch_size=32, max_queue_delay_ms=2)

    results = batcher.run_many([({"x": np.full((1, 4), i, dtype=np.float32)}, None) for i in range(3)])

    assert run.rows == [1, 1, 1]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 4), i, dtype=np.float32))


# --- models too cheap to batch ---------------------------------------------------------------------------


def _warm(batcher: Batcher, runs: int) -> None:
    for _ in range(runs):
        batcher.submit(inputs={"input": np.ones((1, 4), dtype=np.float32)}, output_names=None, timeout_s=10)


def test_a_model_whose_runs_are_cheaper_than_the_hand_off_is_not_batched():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle)
    # Every run of this classifier is far under 50 ms: once a window of runs says so, requests run alone.
    batcher = Batcher(run=run, name="c1", batchable=True, max_batch_size=64, max_queue_delay_ms=20, min_run_ms=50)
    _warm(batcher, 64)
    run.rows.clear()
    run.first_delay_s = 0.05  # what made requests pile up into batches in the tests above

    results = concurrently(12, lambda i: batcher.submit(inputs={"input": np.ones((1, 4), np.float32)},
                                                          output_names=None, timeout_s=10))  # fmt: skip

    assert run.rows == [1] * 12 and all(r.batch_rows == 1 and r.queue_ms < 5 for r in results)
    batcher.close()


def test_a_model_whose_runs_cost_more_than_the_threshold_is_batched():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle)
    batcher = Batcher(run=run, name="c2", batchable=True, max_batch_size=64, max_queue_delay_ms=20, min_run_ms=1e-6)
    _warm(batcher, 64)
    run.rows.clear()
    run.first_delay_s = 0.05

    concurrently(12, lambda i: batcher.submit(inputs={"input": np.ones((1, 4), np.float32)},
                                               output_names=None, timeout_s=10))  # fmt: skip

    assert max(run.rows) > 1 and sum(run.rows) == 12
    batcher.close()


@pytest.mark.parametrize(("cost_clock", "batched"), [(time.thread_time, False), (time.perf_counter, True)])
def test_the_cost_of_a_run_is_read_from_its_cost_clock(cost_clock, batched):
    """A run that waits 2 ms without computing, as a run does while its thread waits for the GIL: on the thread's CPU
    clock it is cheap (under 1 ms) and requests run alone; on the wall clock it is worth batching."""
    handle = _session(onnx_classifier_bytes())
    recording = RecordingRun(handle)

    def run(feeds, output_names):
        time.sleep(0.002)
        return recording(feeds, output_names)

    batcher = Batcher(run=run, name="c3", batchable=True, max_batch_size=64, max_queue_delay_ms=20, min_run_ms=1,
                      cost_clock=cost_clock)  # fmt: skip
    _warm(batcher, 64)
    recording.rows.clear()
    recording.first_delay_s = 0.05

    concurrently(12, lambda i: batcher.submit(inputs={"input": np.ones((1, 4), np.float32)},
                                               output_names=None, timeout_s=10))  # fmt: skip

    assert sum(recording.rows) == 12
    assert (max(recording.rows) > 1) is batched, recording.rows
    batcher.close()


def test_a_model_found_cheap_stays_so_until_its_runs_cost_twice_the_threshold():
    """Hysteresis: runs costing about the threshold must not switch the path every window."""
    handle = _session(onnx_classifier_bytes())
    cost_ms = [0.5]
    ticks = [0.0]

    def clock() -> float:  # each run costs cost_ms[0] on this clock
        ticks[0] += cost_ms[0] / 1000.0
        return ticks[0]

    batcher = Batcher(run=RecordingRun(handle), name="c4", batchable=True, max_batch_size=64, max_queue_delay_ms=20,
                      min_run_ms=1, cost_clock=clock)  # fmt: skip
    seen = []
    for cost in (1.5, 0.5, 1.5, 2.5, 1.5, 0.5):
        cost_ms[0] = cost
        _warm(batcher, 64)
        seen.append(batcher._cheap)

    assert seen == [False, True, True, False, False, True]
    batcher.close()


def test_run_many_from_two_messages_at_once_share_batches():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle, first_delay_s=0.05)
    batcher = Batcher(run=run, name="m4", batchable=True, max_batch_size=64, max_queue_delay_ms=20)
    x = np.ones((1, 4), dtype=np.float32)

    results = concurrently(3, lambda i: batcher.run_many([({"input": x}, None)] * 4, timeout_s=10))

    assert sum(run.rows) == 12 and max(run.rows) > 4, run.rows  # a batch took requests of several messages
    assert all(not isinstance(r, Exception) for answers in results for r in answers)
    batcher.close()


def test_run_many_on_a_cheap_model_batches_in_the_calling_thread():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle)
    batcher = Batcher(run=run, name="m5", batchable=True, max_batch_size=64, max_queue_delay_ms=20, min_run_ms=50)
    _warm(batcher, 64)
    run.rows.clear()

    results = batcher.run_many([({"input": np.ones((1, 4), np.float32)}, None)] * 6)

    assert run.rows == [6] and batcher._dispatchers == 0  # one run, and no dispatcher thread was started
    assert [r.batch_rows for r in results] == [6] * 6


def test_run_many_on_a_cheap_model_packs_batches_by_the_dispatchers_rule():
    handle = _session(onnx_classifier_bytes())
    run = RecordingRun(handle)
    batcher = Batcher(run=run, name="m6", batchable=True, max_batch_size=4, max_queue_delay_ms=20, min_run_ms=50)
    _warm(batcher, 64)
    run.rows.clear()
    rng = np.random.default_rng(5)
    inputs = [rng.random((rows, 4), dtype=np.float32) * 5 for rows in (3, 3, 1, 1)]
    requests = [({"input": x}, ["label"] if i == 3 else None) for i, x in enumerate(inputs)]

    results = batcher.run_many(requests)

    # The oldest and what fits with it (0 and 2: 4 rows), then 1 (nothing left fits with it), then 3 (other outputs).
    assert run.rows == [4, 3, 1] and batcher._dispatchers == 0
    assert [r.batch_rows for r in results] == [4, 3, 4, 1]
    _assert_own_labels(handle, inputs, results)
