"""Micro-batching of concurrent requests for one model version, along the batch (first) dimension.

One :class:`Batcher` per hosted version. For a batchable model (every input and output has a dynamic first
dimension) concurrent requests are queued and a dispatcher thread runs them together:

- it takes the oldest request and collects compatible ones (same trailing shapes and dtypes, same requested
  outputs) until ``max_batch_size`` rows, waiting at most ``max_queue_delay_ms`` after the oldest arrived,
  and only while other requests are in flight that could still join; a request alone runs at once;
- it concatenates the inputs along axis 0, runs the session once and hands each caller a view of its own rows;
- when the batched run fails, or an output does not have one row per input row, every request is re-run
  alone, so one bad request cannot fail the others.

When no other request is in flight the caller runs the model itself, in its own thread: at concurrency 1
there is no queue, no thread hop and no wait. Non-batchable models always run in the caller's thread,
concurrently (``InferenceSession.run`` is thread-safe and releases the GIL).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from inference import metrics
from inference.errors import ModelUnavailable

logger = logging.getLogger(__name__)

RunFunction = Callable[[dict[str, np.ndarray], list[str] | None], dict[str, np.ndarray]]

_IDLE_EXIT_S = 60.0  # a dispatcher thread with nothing to do for this long ends; the next request starts one


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
    ) -> None:
        self._run = run
        self.name = name  # the version id, used as the metric label
        self.batchable = batchable
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_delay_s = max(0.0, float(max_queue_delay_ms)) / 1000.0
        self._rows_metric = metrics.BATCH_ROWS.labels(version=name)
        self._provider_metric = metrics.PROVIDER_RUNS.labels(provider=provider or "unknown")
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0  # requests inside submit(): queued, running in a batch, or running alone
        self._thread: threading.Thread | None = None
        self._closed = False

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
        shape = _rows_and_key(inputs, output_names) if self.batchable else None
        if shape is None:
            return self._run_alone(inputs, output_names, enqueued=time.perf_counter())
        rows, key = shape
        cond = self._cond
        with cond:
            alone = self._in_flight == 0 or self._closed or rows >= self.max_batch_size
            # A request counts as in flight until its caller has its answer, so callers of a batch that just
            # finished still count: the first of them to come back queues instead of running alone.
            self._in_flight += 1
            if not alone:
                pending = _Pending(inputs, output_names, rows, key)
                self._queue.append(pending)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._dispatch_loop, name=f"batcher-{self.name}", daemon=True
                    )
                    self._thread.start()
                cond.notify()
        try:
            if alone:
                return self._run_alone(inputs, output_names, enqueued=time.perf_counter())
            if not pending.done.wait(timeout_s):
                with cond:
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
        finally:
            with cond:
                self._in_flight -= 1
                cond.notify()  # a dispatcher waiting for this request to join can stop waiting

    def run_many(
        self, requests: list[tuple[dict[str, np.ndarray], list[str] | None]]
    ) -> list[BatchResult | BaseException]:
        """Run requests that arrived together (one Celery message) in this thread: compatible ones as batches of
        up to ``max_batch_size`` rows, the rest alone. Each gets its own result or its own error, in order.

        Nothing is queued and no thread is woken: the requests are already together, so no wait can add to a
        batch what the message did not bring. Requests submitted meanwhile by other threads run on their own."""
        answers: list[BatchResult | BaseException | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, _Pending]]] = {}
        enqueued = time.perf_counter()
        for index, (inputs, output_names) in enumerate(requests):
            shape = _rows_and_key(inputs, output_names) if self.batchable else None
            if shape is None:
                try:
                    answers[index] = self._run_alone(inputs, output_names, enqueued=enqueued)
                except Exception as exc:
                    answers[index] = exc
                continue
            pending = _Pending(inputs, output_names, shape[0], shape[1])
            groups.setdefault(shape[1], []).append((index, pending))
        for members in groups.values():
            chunk: list[tuple[int, _Pending]] = []
            rows = 0
            for member in [*members, None]:
                if member is not None and (not chunk or rows + member[1].rows <= self.max_batch_size):
                    chunk.append(member)
                    rows += member[1].rows
                    continue
                try:
                    self._execute([pending for _index, pending in chunk])
                except Exception as exc:  # as in the dispatcher: no request is left without an answer
                    for _index, pending in chunk:
                        if pending.result is None and pending.error is None:
                            pending.error = exc
                for index, pending in chunk:
                    answers[index] = pending.error if pending.error is not None else pending.result
                if member is not None:
                    chunk, rows = [member], member[1].rows
        return [answer if answer is not None else RuntimeError("no answer") for answer in answers]

    def _run_alone(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None, *, enqueued: float
    ) -> BatchResult:
        started = time.perf_counter()
        outputs = self._run(inputs, output_names)
        finished = time.perf_counter()
        rows = _first_dim(inputs)
        self._rows_metric.observe(rows)
        self._provider_metric.inc(rows)
        return BatchResult(
            outputs=outputs,
            queue_ms=(started - enqueued) * 1000.0,
            compute_ms=(finished - started) * 1000.0,
            batch_rows=rows,
        )

    # --- the dispatcher thread ---------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                batch = self._collect()
                if batch is None:
                    return
            try:
                self._execute(batch)
            except BaseException as exc:  # never leave a caller waiting on a request that will not finish
                logger.exception("Batcher of version %s failed", self.name)
                for pending in batch:
                    if pending.result is None and pending.error is None:
                        pending.error = exc
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
                self._thread = None
                return None
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        flush_at = first.enqueued + self.max_queue_delay_s
        while rows < self.max_batch_size:
            # Take every compatible request already waiting, oldest first, while it fits (one pass).
            rest: deque[_Pending] = deque()
            for pending in self._queue:
                if pending.cancelled:
                    continue
                if pending.key == first.key and rows + pending.rows <= self.max_batch_size:
                    batch.append(pending)
                    rows += pending.rows
                else:
                    rest.append(pending)
            self._queue = rest
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
            outputs = self._run(feeds, first.output_names)
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
        self._rows_metric.observe(total)
        self._provider_metric.inc(total)
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


class _NotRowWise(Exception):
    """The batched outputs do not have one row per input row, so they cannot be split back."""


def _first_dim(inputs: dict[str, np.ndarray]) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1
