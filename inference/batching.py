"""Micro-batching of concurrent requests for one model version, along the batch (first) dimension.

One :class:`Batcher` per hosted version. For a batchable model (every input and output has a dynamic first
dimension) concurrent requests are queued and a dispatcher thread runs them together:

- it takes the oldest request and collects compatible ones (same trailing shapes and dtypes, same requested
  outputs) until ``max_batch_size`` rows, waiting at most ``max_queue_delay_ms`` from the moment it is free to
  take them, and only while other requests are in flight that could still join (among them the callers of the
  batch it just ran, who under load come straight back with their next requests); a request alone runs at once;
- it concatenates the inputs along axis 0, runs the session once and hands each caller a view of its own rows;
- when the batched run fails, or an output does not have one row per input row, every request is re-run
  alone, so one bad request cannot fail the others;
- up to ``max_concurrent_batches`` dispatchers run batches at once: one at a time collects (so requests join
  its batch rather than split between two), the others run the batches they took, and a new one starts when
  requests wait and every dispatcher is running.

When no other request is in flight the caller runs the model itself, in its own thread: at concurrency 1
there is no queue, no thread hop and no wait. Non-batchable models always run in the caller's thread,
concurrently (``InferenceSession.run`` is thread-safe and releases the GIL). So do models whose runs are cheaper
than handing a request to the dispatcher and back (``min_run_ms``, ``INFERENCE_BATCH_MIN_RUN_MS``): the
fastest run of the last ``_RUN_WINDOW`` runs (batched or not; preemption only ever makes a run look slower) is
under it, so a batch could save less than the two thread switches it costs. The next window decides again; a
model found cheap stays so until its fastest run costs twice ``min_run_ms``.
What a run costs is read from ``cost_clock``: wall time by default (``time.perf_counter``), the calling thread's CPU
time for a model on the CPU provider (the host passes ``time.thread_time``). ``InferenceSession.run`` releases
the GIL, so a run's wall time ends when its thread gets the GIL back: with a web process's sixteen threads busy
that wait is the larger part, and a model that costs 10 µs looked like one worth batching (the benchmark's tiny
model had one request in eight batched at concurrency 32, each through the dispatcher's two thread hops: a one-off
reading of ``inference_batch_rows``, in docs/benchmarks.md). CPU time leaves the wait out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from inference import metrics
from inference.errors import ModelUnavailable

logger = logging.getLogger(__name__)

RunFunction = Callable[[dict[str, np.ndarray], list[str] | None], dict[str, np.ndarray]]

_IDLE_EXIT_S = 60.0  # a dispatcher thread with nothing to do for this long ends; the next request starts one
_RUN_WINDOW = 64  # runs per window of the fastest-run measure (see the module docstring)


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]
    queue_ms: float
    compute_ms: float
    batch_rows: int  # rows of the run this request was part of


class _Pending:
    __slots__ = ("inputs", "output_names", "rows", "key", "enqueued", "done", "result", "error", "cancelled")

    def __init__(self, inputs: dict[str, np.ndarray], output_names: list[str] | None, rows: int, key: tuple) -> None:
        self.inputs = inputs
        self.output_names = output_names
        self.rows = rows
        self.key = key
        self.enqueued = time.perf_counter()
        self.done = threading.Event()
        self.result: BatchResult | None = None
        self.error: BaseException | None = None
        self.cancelled = False


def _rows_and_key(inputs: dict[str, np.ndarray], output_names: list[str] | None) -> tuple[int, tuple] | None:
    """Rows along axis 0 and the compatibility key, or None when the request cannot join a batch."""
    rows = -1
    parts = []
    for name, array in inputs.items():
        if array.ndim == 0 or array.dtype == object:  # string tensors are not concatenated (no fixed itemsize)
            return None
        if rows < 0:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            return None
        parts.append((name, array.dtype.str, array.shape[1:]))
    if rows <= 0:
        return None
    parts.sort()
    return rows, (tuple(parts), tuple(output_names) if output_names else None)


class Batcher:
    """Runs requests for one session, batching concurrent ones when the model allows it."""

    def __init__(
        self,
        *,
        run: RunFunction,
        name: str,
        batchable: bool,
        max_batch_size: int,
        max_queue_delay_ms: float,
        provider: str = "",
        min_run_ms: float = 0.0,
        max_concurrent_batches: int = 1,
        cost_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._run = run
        self._cost_clock = cost_clock  # what a run costs (see the module docstring)
        self.name = name  # the version id, used as the metric label
        self.batchable = batchable
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_delay_s = max(0.0, float(max_queue_delay_ms)) / 1000.0
        self._rows_metric = metrics.BATCH_ROWS.labels(version=name)
        self._provider_metric = metrics.PROVIDER_RUNS.labels(provider=provider or "unknown")
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0  # requests inside submit(): queued, running in a batch, or running alone
        # Dispatcher threads: one collects the next batch while the others run theirs, so up to
        # ``max_concurrent_batches`` batches run at once (each on the session's intra-op threads).
        self.max_concurrent_batches = max(1, int(max_concurrent_batches))
        self._dispatchers = 0
        self._executing = 0  # dispatchers running a batch (not collecting)
        self._collecting = False  # one dispatcher at a time fills a batch, so requests join it rather than split
        self._closed = False
        self.min_run_ms = max(0.0, float(min_run_ms))
        self._cheap = False  # the last window's fastest run was under min_run_ms: run every request alone
        self._window_runs = 0
        self._window_fastest_ms = float("inf")

    @property
    def cheap(self) -> bool:
        """The last window's fastest run cost under ``min_run_ms``: requests run alone, in their own threads."""
        return self._cheap

    def configure(self, *, max_batch_size: int, max_queue_delay_ms: float) -> None:
        """Apply changed per-version settings without reloading the model."""
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_delay_s = max(0.0, float(max_queue_delay_ms)) / 1000.0

    def close(self) -> None:
        """Stop the dispatcher once the queue is drained; later requests run alone."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- the caller's side -------------------------------------------------------------------------

    def submit(
        self, *, inputs: dict[str, np.ndarray], output_names: list[str] | None, timeout_s: float | None = None
    ) -> BatchResult:
        """Run one request (possibly as part of a batch) and return its own outputs.

        Raises whatever the run raises (runtime.RuntimeFailure), or ModelUnavailable when ``timeout_s`` passes
        while the request is still queued.
        """
        if not self.batchable or self._cheap:
            return self._run_alone(inputs, output_names, enqueued=time.perf_counter())
        shape = _rows_and_key(inputs, output_names)
        if shape is None:
            return self._run_alone(inputs, output_names, enqueued=time.perf_counter())
        pending = _Pending(inputs, output_names, shape[0], shape[1])
        with self._cond:
            alone = self._in_flight == 0 or self._closed or pending.rows >= self.max_batch_size
            # A request counts as in flight until its caller has its answer, so callers of a batch that just
            # finished still count: the first of them to come back queues instead of running alone.
            self._in_flight += 1
            if not alone:
                self._enqueue([pending])
        try:
            if alone:
                return self._run_alone(inputs, output_names, enqueued=pending.enqueued)
            return self._await(pending, timeout_s)
        finally:
            self._leave(1)

    def run_many(
        self, requests: list[tuple[dict[str, np.ndarray], list[str] | None]], *, timeout_s: float | None = None
    ) -> list[BatchResult | BaseException]:
        """Run requests that arrived together (one Celery message); each gets its own result or its own error,
        in order.

        For a batchable model they join the queue together, as if submitted at once from as many threads, so they
        batch with each other and with requests of other messages running meanwhile. A model too cheap to batch
        (or a lone request) runs in this thread; requests that cannot be batched run in parallel threads, as
        separate messages would.
        """
        if len(requests) == 1:  # as any lone caller: alone when nothing else is in flight, else queued
            inputs, output_names = requests[0]
            return [self._caught(partial(self.submit, inputs=inputs, output_names=output_names, timeout_s=timeout_s))]
        if self.batchable and self._cheap:
            return self._run_chunks(requests)
        if not self.batchable:
            return _parallel([partial(self._run_now, request) for request in requests])
        answers: list[BatchResult | BaseException | None] = [None] * len(requests)
        queued: list[tuple[int, _Pending]] = []
        alone: list[int] = []
        for index, (inputs, output_names) in enumerate(requests):
            shape = _rows_and_key(inputs, output_names)
            if shape is None or shape[0] >= self.max_batch_size:
                alone.append(index)
            else:
                queued.append((index, _Pending(inputs, output_names, shape[0], shape[1])))
        with self._cond:
            self._in_flight += len(queued)
            self._enqueue([pending for _index, pending in queued])
        try:
            for index in alone:
                answers[index] = self._caught(partial(self._run_now, requests[index]))
            for index, pending in queued:
                answers[index] = self._caught(partial(self._await, pending, timeout_s))
        finally:
            self._leave(len(queued))
        return [answer if answer is not None else RuntimeError("no answer") for answer in answers]

    def _run_chunks(
        self, requests: list[tuple[dict[str, np.ndarray], list[str] | None]]
    ) -> list[BatchResult | BaseException]:
        """Batch compatible requests in this thread, by the dispatcher's rule (``_fill``): for a model too cheap to
        hand requests to the dispatcher, a batch formed without a hand-off still saves runs."""
        answers: list[_Pending | BatchResult | BaseException] = []
        waiting: deque[_Pending] = deque()
        for inputs, output_names in requests:
            shape = _rows_and_key(inputs, output_names)
            if shape is None:
                answers.append(self._caught(partial(self._run_now, (inputs, output_names))))
            else:
                waiting.append(_Pending(inputs, output_names, shape[0], shape[1]))
                answers.append(waiting[-1])
        while waiting:
            batch = [waiting.popleft()]
            _rows, waiting = _fill(batch, batch[0].rows, waiting, self.max_batch_size)
            self._execute(batch)  # every request gets its result or its error (see _execute_alone)
        return [
            (answer.error or answer.result or RuntimeError("no answer")) if isinstance(answer, _Pending) else answer
            for answer in answers
        ]

    def _run_now(self, request: tuple[dict[str, np.ndarray], list[str] | None]) -> BatchResult:
        return self._run_alone(request[0], request[1], enqueued=time.perf_counter())

    @staticmethod
    def _caught(run: Callable[[], BatchResult]) -> BatchResult | BaseException:
        try:
            return run()
        except Exception as exc:
            return exc

    def _enqueue(self, pendings: list[_Pending]) -> None:
        """Queue requests for the dispatcher (called with the lock held), starting it when needed."""
        if not pendings:
            return
        self._queue.extend(pendings)
        self._dispatcher_ensure()
        self._wake()

    def _dispatcher_ensure(self) -> None:
        """With requests queued and every dispatcher running a batch, start one more, up to the limit (called with
        the lock held)."""
        if self._queue and self._dispatchers == self._executing and self._dispatchers < self.max_concurrent_batches:
            self._dispatchers += 1
            threading.Thread(target=self._dispatch_loop, name=f"batcher-{self.name}", daemon=True).start()

    def _wake(self) -> None:
        """Wake the dispatcher that should look at the queue (called with the lock held). With several, all of
        them: one woken alone could be one that is waiting for its turn to collect, and go back to sleep."""
        if self._dispatchers > 1:
            self._cond.notify_all()
        else:
            self._cond.notify()

    def _await(self, pending: _Pending, timeout_s: float | None) -> BatchResult:
        if not pending.done.wait(timeout_s):
            with self._cond:
                if not pending.done.is_set():
                    pending.cancelled = True  # when already taken, its batch runs it and nobody reads it
                    with contextlib.suppress(ValueError):
                        self._queue.remove(pending)
            if not pending.done.is_set():
                raise ModelUnavailable("The model did not answer within the deadline.", retry_after=1)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _leave(self, count: int) -> None:
        with self._cond:
            self._in_flight -= count
            self._wake()  # a dispatcher waiting for these requests to join can stop waiting

    def _run_alone(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None, *, enqueued: float
    ) -> BatchResult:
        cost_started = self._cost_clock()
        started = time.perf_counter()
        outputs = self._run(inputs, output_names)
        finished = time.perf_counter()
        rows = _first_dim(inputs)
        self._ran(cost_ms=(self._cost_clock() - cost_started) * 1000.0, rows=rows)
        return BatchResult(
            outputs=outputs,
            queue_ms=(started - enqueued) * 1000.0,
            compute_ms=(finished - started) * 1000.0,
            batch_rows=rows,
        )

    def _ran(self, *, cost_ms: float, rows: int) -> None:
        """Count a run (alone or batched) in the metrics and in the window's measure."""
        metrics.TALLY.observe(self._rows_metric, rows)
        metrics.TALLY.count(self._provider_metric, rows)
        self._run_measured(cost_ms)

    def _run_measured(self, run_ms: float) -> None:
        """Keep the fastest run of the current window; at its end, decide whether batching can pay. Unlocked:
        a lost update among racing threads only blurs one sample of a window."""
        if not self.min_run_ms:
            return
        if run_ms < self._window_fastest_ms:
            self._window_fastest_ms = run_ms
        self._window_runs += 1
        if self._window_runs >= _RUN_WINDOW:
            # Hysteresis: a model found cheap stays so until its fastest run costs twice the threshold, so one
            # whose runs cost about the threshold does not switch paths every window.
            threshold = self.min_run_ms * (2.0 if self._cheap else 1.0)
            self._cheap = self._window_fastest_ms < threshold
            self._window_runs = 0
            self._window_fastest_ms = float("inf")

    # --- the dispatcher thread ---------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while self._collecting:  # another dispatcher is filling the next batch
                    cond.wait()
                self._collecting = True
                batch: list[_Pending] | None = None
                try:
                    batch = self._collect()
                finally:
                    self._collecting = False
                    if batch is None:
                        self._dispatchers -= 1
                    else:
                        self._executing += 1
                        self._dispatcher_ensure()  # requests left behind this batch: another may run them meanwhile
                    self._wake()  # the next dispatcher's turn to collect
                if batch is None:
                    return
            try:
                self._execute(batch)
            except BaseException as exc:  # never leave a caller waiting on a request that will not finish
                logger.exception("Batcher of version %s failed", self.name)
                for pending in batch:
                    if pending.result is None and pending.error is None:
                        pending.error = exc
            finally:
                with cond:
                    self._executing -= 1
            for pending in batch:
                pending.done.set()

    def _collect(self) -> list[_Pending] | None:
        """Take the next batch from the queue (called with the lock held); None ends the thread."""
        cond = self._cond
        while True:
            while self._queue and self._queue[0].cancelled:
                self._queue.popleft()
            if self._queue:
                break
            if self._closed or (not cond.wait(_IDLE_EXIT_S) and not self._queue):
                return None
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        # The delay counts from now, not from when the oldest request arrived: one that waited while the previous
        # batch ran could not have run sooner, and the callers that batch just answered are about to send more.
        flush_at = time.perf_counter() + self.max_queue_delay_s
        while rows < self.max_batch_size:
            rows, self._queue = _fill(batch, rows, self._queue, self.max_batch_size)
            if rows >= self.max_batch_size:
                break
            # Wait only while someone else is in flight who could still join (running alone, or just answered
            # and about to send the next one); requests already queued but incompatible will not join.
            others = self._in_flight - len(batch) - len(self._queue)
            remaining = flush_at - time.perf_counter()
            if others <= 0 or remaining <= 0 or self._closed:
                break
            cond.wait(remaining)
        return batch

    def _execute(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            self._execute_alone(batch[0])
            return
        first = batch[0]
        total = sum(pending.rows for pending in batch)
        started = time.perf_counter()
        try:
            feeds = {name: np.concatenate([p.inputs[name] for p in batch], axis=0) for name in first.inputs}
            cost_started = self._cost_clock()
            outputs = self._run(feeds, first.output_names)
            cost_ms = (self._cost_clock() - cost_started) * 1000.0
            if any(value.ndim == 0 or value.shape[0] != total for value in outputs.values()):
                raise _NotRowWise
        except Exception as exc:
            # One bad request (or a model whose outputs are not one row per input row) must not fail the
            # others: run each alone and let each caller get its own result or error.
            if not isinstance(exc, _NotRowWise):
                logger.info(
                    "Batched run of version %s failed (%s); running its %s requests alone", self.name, exc, len(batch)
                )
            for pending in batch:
                self._execute_alone(pending)
            return
        finished = time.perf_counter()
        compute_ms = (finished - started) * 1000.0
        self._ran(cost_ms=cost_ms, rows=total)
        offset = 0
        for pending in batch:
            end = offset + pending.rows
            pending.result = BatchResult(
                outputs={name: value[offset:end] for name, value in outputs.items()},
                queue_ms=(started - pending.enqueued) * 1000.0,
                compute_ms=compute_ms,
                batch_rows=total,
            )
            offset = end

    def _execute_alone(self, pending: _Pending) -> None:
        try:
            pending.result = self._run_alone(pending.inputs, pending.output_names, enqueued=pending.enqueued)
        except Exception as exc:
            pending.error = exc


def _fill(batch: list[_Pending], rows: int, queue: deque[_Pending], max_rows: int) -> tuple[int, deque[_Pending]]:
    """Move into ``batch`` every request of ``queue`` compatible with its first that still fits, oldest first (one
    pass), dropping cancelled ones. Returns the batch's rows and the requests left, in order."""
    rest: deque[_Pending] = deque()
    for pending in queue:
        if pending.cancelled:
            continue
        if pending.key == batch[0].key and rows + pending.rows <= max_rows:
            batch.append(pending)
            rows += pending.rows
        else:
            rest.append(pending)
    return rows, rest


class _NotRowWise(Exception):
    """The batched outputs do not have one row per input row, so they cannot be split back."""


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _parallel(runs: list[Callable[[], BatchResult]]) -> list[BatchResult | BaseException]:
    """Run each in its own thread (the first in this one) and collect results or errors, in order."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="run-many")
    futures = [_pool.submit(Batcher._caught, run) for run in runs[1:]]
    return [Batcher._caught(runs[0]), *(future.result() for future in futures)]


def _first_dim(inputs: dict[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1
