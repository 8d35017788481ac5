"""Where inference runs: in this process (``inline``) or on Celery inference workers (``celery``).

Both modes run the same code: :func:`infer_local` (host + micro-batcher). In celery mode the web process
sends requests to ``INFERENCE_QUEUE`` as ``inference_run_many`` tasks with ``expires`` at the deadline: one
request alone when nothing else is being sent, or, under load, every request that arrived in this process while
the previous message was being sent (:class:`GroupSender`), so Celery's cost per message is shared and the
worker batches them. Tensors travel as base64 of their raw bytes with dtype and shape, far cheaper than JSON
number lists.

With a Redis broker a message is pushed straight onto the queue's list, in the format ``apply_async`` would write
(``broker.RedisQueuePublisher``, a fraction of its CPU cost); a stock Celery worker consumes it.

Each answer comes back through a Redis list named in the message (``reply_to``): the worker RPUSHes all the
answers of a message in one pipeline (with a TTL), each caller BLPOPs its own until the deadline. That is one
round trip on each side, where Celery's Redis result backend costs a SUBSCRIBE before sending, a SET + PUBLISH,
an UNSUBSCRIBE and a DEL to forget, each a round trip of its own. When neither the result
backend nor the broker is Redis, each request is one ``inference_run`` task whose answer comes through Celery's
result backend instead (``AsyncResult.get``, then ``forget``).

A lost worker, a passed deadline or a broker that cannot be reached is a 503 ``model_unavailable`` with
``retry_after``; nothing is re-run (see inference/tasks.py for why the task is at-most-once).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from django.conf import settings

from inference import cache, runtime
from inference.errors import InferenceFailed, ModelUnavailable
from inference.host import ModelRef, model_host
from marketplace.integrations import broker

__all__ = [
    "InferResult",
    "InferenceFailed",
    "ModelRef",
    "ModelUnavailable",
    "infer",
    "infer_local",
    "model_ready",
    "model_ref_from_version",
]

logger = logging.getLogger(__name__)

WORKER_RETRY_AFTER_S = 1


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    provider: str
    queue_ms: float
    compute_ms: float
    batch_rows: int  # rows in the batch that actually ran (for the batch-size metric)


def model_ref_from_version(version: Any) -> ModelRef:
    """The host's view of a catalog Version. Batchable needs the validator's verdict (the graph accepted a
    batch of 8) and a dynamic first dimension on every input and output, so results can be split by rows."""
    signature = version.signature or {}
    metrics = (version.validation_report or {}).get("metrics") or {}
    tensors = list(signature.get("inputs") or []) + list(signature.get("outputs") or [])
    batchable = (
        bool(metrics.get("batchable"))
        and bool(tensors)
        and all((spec.get("shape") or [None])[0] == -1 for spec in tensors)
    )
    return ModelRef(
        version_id=version.pk,
        artifact_key=version.artifact_key,
        artifact_sha256=version.artifact_sha256,
        max_batch_size=int(version.max_batch_size or 1),
        max_queue_delay_ms=float(version.max_queue_delay_ms or 0.0),
        batchable=batchable,
    )


def model_ready(*, model: ModelRef) -> bool:
    """Loaded, or loadable without a download. Cheap: no storage call, no session creation.

    In celery mode this process does not host models; the artifact being in the machine's disk cache is
    what it can see, so readiness there means "the workers will not need object storage for it"."""
    if settings.INFERENCE_DISPATCH != "celery" and model_host().is_loaded(model.version_id):
        return True
    return cache.artifact_cached(sha256=model.artifact_sha256)


def infer(
    *, model: ModelRef, inputs: dict[str, np.ndarray], output_names: list[str] | None, deadline_s: float
) -> InferResult:
    """Run one request on the model, inline or on a Celery worker per ``INFERENCE_DISPATCH``.

    Raises ModelUnavailable (503, ``retry_after``) or InferenceFailed (422).
    """
    if settings.INFERENCE_DISPATCH == "celery":
        return _infer_celery(model=model, inputs=inputs, output_names=output_names, deadline_s=deadline_s)
    return infer_local(model=model, inputs=inputs, output_names=output_names, deadline_s=deadline_s)


def runs_cheaply(model: ModelRef) -> bool:
    """Whether a call to this version may run before its admission is decided: inline mode, the version in this
    process's memory, and its runs cheaper than ``INFERENCE_BATCH_MIN_RUN_MS`` (the batcher's measure), so that a
    call the admission then refuses has cost at most one such run. Such a model runs while the answer of the
    admission's round trip to Redis travels, instead of after it (inference/views.py). In celery mode: the workers'
    answers said its runs are cheap; the request is sent while the admission travels."""
    if settings.INFERENCE_DISPATCH == "celery":
        # The request goes to a worker while the admission travels, and the call waits for the answer before it
        # reads the decision: a refused call costs one cheap run on a worker, and its 429 comes a round trip later.
        return _workers_cheap.get(model.version_id, False)
    return _loaded_and_cheap(model)


# Celery mode: version id → whether the last answer from a worker said its runs there are cheap (the worker's
# batcher's measure, sent along with every answer).
_workers_cheap: dict[int, bool] = {}


def _loaded_and_cheap(model: ModelRef) -> bool:
    """In this process's memory, with runs cheaper than ``INFERENCE_BATCH_MIN_RUN_MS`` (no load, no batch wait)."""
    hosted = model_host().loaded_get(model)
    return hosted is not None and hosted.batcher.cheap


def infer_local(
    *, model: ModelRef, inputs: dict[str, np.ndarray], output_names: list[str] | None, deadline_s: float
) -> InferResult:
    """Run on this process's host: load on first use, then through the version's batcher."""
    started = time.monotonic()
    hosted = model_host().model_get(model)
    remaining = deadline_s - (time.monotonic() - started)
    if remaining <= 0:
        raise ModelUnavailable("The model took too long to load; try again.", retry_after=WORKER_RETRY_AFTER_S)
    try:
        result = hosted.batcher.submit(inputs=inputs, output_names=output_names, timeout_s=remaining)
    except runtime.RuntimeFailure as exc:
        raise _runtime_error(exc) from exc
    return InferResult(
        outputs=result.outputs,
        provider=hosted.provider,
        queue_ms=result.queue_ms,
        compute_ms=result.compute_ms,
        batch_rows=result.batch_rows,
    )


def _runtime_error(exc: runtime.RuntimeFailure) -> ModelUnavailable | InferenceFailed:
    if exc.kind == "memory":
        return ModelUnavailable("The model ran out of memory on this request; try a smaller batch.", retry_after=5)
    return InferenceFailed(f"The model rejected the input: {exc.message}")


# --- celery mode -----------------------------------------------------------------------------------------


def tensor_encode(array: np.ndarray) -> list[Any]:
    """[dtype, shape, data]: base64 of the raw little-endian C-order bytes; string tensors as a list."""
    if array.dtype == object or array.dtype.kind in ("U", "S"):
        items = [
            item.decode("utf-8", "surrogateescape") if isinstance(item, bytes) else str(item) for item in array.ravel()
        ]
        return ["str", list(array.shape), items]
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return [array.dtype.str, list(array.shape), base64.b64encode(array.data).decode("ascii")]


def tensor_decode(encoded: list[Any]) -> np.ndarray:
    dtype, shape, data = encoded
    if dtype == "str":
        array = np.empty(len(data), dtype=object)
        array[:] = data
        return array.reshape(shape)
    return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape)


def request_encode(
    *, model: ModelRef, inputs: dict[str, np.ndarray], output_names: list[str] | None, deadline_at: float
) -> dict[str, Any]:
    return {
        "model": model.to_dict(),
        "inputs": {name: tensor_encode(array) for name, array in inputs.items()},
        "outputs": list(output_names) if output_names else None,
        "deadline_at": deadline_at,  # wall clock (time.time()): the worker is another process
    }


def message_serve(requests: list[dict[str, Any]]) -> None:
    """The worker's side of celery mode for one ``inference_run_many`` message (``{"payload", "reply_to"}`` each):
    run its requests and push each answer to its caller's reply list.

    Requests for a version loaded here whose runs are cheap (the batcher's measure) run at once, in the calling
    thread: the worker's own, which received the message (workers run with ``-P solo``), so a cheap request
    costs no hand-off between threads. The others (a model to load, or runs worth batching) go to the worker's
    run threads (``INFERENCE_WORKER_THREADS``), where concurrent requests of one version meet in its batcher;
    the worker goes on receiving meanwhile. When every run thread is busy, this waits for one: messages stay in
    the broker, where their expiry applies, as with Celery's own thread pool."""
    now: list[dict[str, Any]] = []
    later: list[dict[str, Any]] = []
    cheap: dict[tuple[int, str], bool] = {}  # per version in this message, not per request
    for request in requests:
        model = request["payload"]["model"]
        key = (model["version_id"], model["artifact_sha256"])
        if key not in cheap:
            cheap[key] = _loaded_and_cheap(ModelRef.from_dict(model))
        (now if cheap[key] else later).append(request)
    if later:
        run_threads_submit(partial(_requests_answer, later))
    if now:
        _requests_answer(now)


def _requests_answer(requests: list[dict[str, Any]]) -> None:
    answers = requests_run([request["payload"] for request in requests])
    replies_push(
        replies=[(request["reply_to"], answer) for request, answer in zip(requests, answers, strict=True)],
        deadline_at=max(float(request["payload"]["deadline_at"]) for request in requests),
    )


_run_threads: ThreadPoolExecutor | None = None
_run_slots: threading.BoundedSemaphore | None = None
_run_threads_lock = threading.Lock()


def run_threads_submit(work: Callable[[], object]) -> None:
    """Run ``work`` on one of the worker's run threads (``INFERENCE_WORKER_THREADS``), waiting while all of them
    are busy."""
    global _run_threads, _run_slots
    if _run_threads is None:
        with _run_threads_lock:
            if _run_threads is None:
                _run_slots = threading.BoundedSemaphore(settings.INFERENCE_WORKER_THREADS)
                _run_threads = ThreadPoolExecutor(settings.INFERENCE_WORKER_THREADS, thread_name_prefix="inference")
    assert _run_slots is not None
    slots = _run_slots
    slots.acquire()

    def run() -> None:
        try:
            work()
        except Exception:  # answers are values; this is a bug or Redis gone: the callers get their 503 at the deadline
            logger.exception("Inference requests failed on a worker run thread")
        finally:
            slots.release()

    _run_threads.submit(run)


def request_run(payload: dict[str, Any]) -> dict[str, Any]:
    """The worker's side of celery mode for one request (the result-backend path)."""
    return requests_run([payload])[0]


def requests_run(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The worker's side of celery mode: run the requests of one message here and encode each answer (errors as
    values, one per request). Requests for one version go to its batcher together (``run_many``), where they
    batch with each other and with those of other messages running meanwhile."""
    answers: list[dict[str, Any] | None] = [None] * len(payloads)
    by_model: dict[tuple[Any, ...], list[int]] = {}
    now = time.time()
    for index, payload in enumerate(payloads):
        if float(payload["deadline_at"]) - now <= 0:
            message = "The deadline passed before a worker took the request."
            answers[index] = {"error": {"kind": "unavailable", "message": message, "retry_after": WORKER_RETRY_AFTER_S}}
            continue
        by_model.setdefault(tuple(sorted(payload["model"].items())), []).append(index)
    for indexes in by_model.values():
        model = ModelRef.from_dict(payloads[indexes[0]]["model"])
        try:
            hosted = model_host().model_get(model)
        except ModelUnavailable as exc:
            for index in indexes:
                answers[index] = _error_answer(exc)
            continue
        requests = [
            ({name: tensor_decode(value) for name, value in payloads[i]["inputs"].items()}, payloads[i].get("outputs"))
            for i in indexes
        ]
        timeout_s = max(0.001, max(float(payloads[i]["deadline_at"]) for i in indexes) - time.time())
        for index, result in zip(indexes, hosted.batcher.run_many(requests, timeout_s=timeout_s), strict=True):
            if isinstance(result, runtime.RuntimeFailure):
                answers[index] = _error_answer(_runtime_error(result))
            elif isinstance(result, BaseException):
                logger.error("Inference of version %s failed", model.version_id, exc_info=result)
                message = "The inference worker failed on this request."
                answers[index] = _error_answer(ModelUnavailable(message, retry_after=WORKER_RETRY_AFTER_S))
            else:
                answers[index] = {
                    "outputs": {name: tensor_encode(value) for name, value in result.outputs.items()},
                    "provider": hosted.provider,
                    "queue_ms": result.queue_ms,
                    "compute_ms": result.compute_ms,
                    "batch_rows": result.batch_rows,
                    "cheap": hosted.batcher.cheap,  # the web process may send the next one while admitting it
                }
    return [answer or {} for answer in answers]


def _error_answer(exc: ModelUnavailable | InferenceFailed) -> dict[str, Any]:
    if isinstance(exc, InferenceFailed):
        return {"error": {"kind": "failed", "message": exc.message}}
    return {"error": {"kind": "unavailable", "message": exc.message, "retry_after": exc.retry_after}}


def _answer_read(model: ModelRef, answer: dict[str, Any]) -> InferResult:
    """A worker's answer for ``model``: its result (or its error, raised), and what it says of the model's cost."""
    if "cheap" in answer:
        _workers_cheap[model.version_id] = bool(answer["cheap"])
    return response_decode(answer)


def response_decode(answer: dict[str, Any]) -> InferResult:
    error = answer.get("error")
    if error:
        if error.get("kind") == "failed":
            raise InferenceFailed(error.get("message") or "The model rejected the input.")
        raise ModelUnavailable(
            error.get("message") or "The model is unavailable.",
            retry_after=int(error.get("retry_after") or WORKER_RETRY_AFTER_S),
        )
    return InferResult(
        outputs={name: tensor_decode(value) for name, value in answer["outputs"].items()},
        provider=answer["provider"],
        queue_ms=float(answer["queue_ms"]),
        compute_ms=float(answer["compute_ms"]),
        batch_rows=int(answer["batch_rows"]),
    )


def _send_options(*, queue: str, expires_s: float, kwargsrepr: str) -> dict[str, Any]:
    """``apply_async`` options of an inference message."""
    return {
        "queue": queue,
        "expires": max(0.001, expires_s),  # a worker that takes it later discards it: its callers have had their 503
        "retry": False,  # with the broker down, fail now (503) instead of retrying past the deadline
        "argsrepr": "",  # Celery would otherwise repr the whole payload into the message headers
        "kwargsrepr": kwargsrepr,
    }


def _unreachable(exc: BaseException) -> ModelUnavailable:
    logger.warning("Could not reach the inference workers: %s", exc)
    return ModelUnavailable("The inference workers cannot be reached now.", retry_after=WORKER_RETRY_AFTER_S)


REPLY_KEY_PREFIX = "inference:reply:"


@functools.cache  # once per process: reading the Celery configuration costs ~6 µs a key, and it does not change
def _reply_client() -> Any:
    """A Redis client for replies (thread-safe, pooled): the result backend's server when it is Redis, else the
    broker's when that is Redis; None otherwise (then replies go through Celery's result backend)."""
    from marketplace.celery import app

    schemes = broker.REDIS_SCHEMES
    url = next((u for u in (app.conf.result_backend, app.conf.broker_url) if (u or "").startswith(schemes)), None)
    if url is None:
        return None
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=1, health_check_interval=30)


def replies_push(*, replies: list[tuple[str, dict[str, Any]]], deadline_at: float) -> None:
    """Push each answer to its caller's list, all in one round trip."""
    client = _reply_client()
    ttl = max(5, int(deadline_at - time.time()) + 60)  # nobody pops it after the deadline: let it expire
    with client.pipeline(transaction=False) as pipe:
        for key, answer in replies:
            pipe.rpush(key, json.dumps(answer, separators=(",", ":")))
            pipe.expire(key, ttl)
        pipe.execute()


class GroupSender:
    """Sends the requests of this process to the inference queue, several to a message when they meet.

    Group commit, as databases write their log, with a combining sender: a request that finds nobody sending is
    sent at once, alone, by its own thread (no timer, so a lone request never waits); requests that arrive while
    a message is being sent queue, and that same thread, its own message sent, sends them as the next message (up
    to ``max_requests`` and ``max_bytes``), and so on until the queue is empty. A thread that queues its request
    returns at once and goes to wait for its answer, without a second wake-up for "your message is out" (8 % more
    requests a second at concurrency 32 on this VM, docs/benchmarks.md). Under load a message carries many
    requests, so Celery's cost per message (publish here; receive and task start on the worker) is paid once for
    all of them, and the worker runs them through the version's batcher together.

    A failed send raises in the thread whose own request it carried; the other requests of that message, whose
    threads are no longer here, go to ``failed(requests, error)``, which answers them on their reply lists.
    """

    def __init__(
        self,
        send: Callable[[list[dict[str, Any]]], None],
        *,
        failed: Callable[[list[dict[str, Any]], BaseException], None],
        max_requests: int = 64,
        max_bytes: int = 4 * 1024**2,
    ) -> None:
        self._send = send  # send(list of requests): one message; raises when the broker cannot be reached
        self._failed = failed
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._waiting: deque[tuple[dict[str, Any], int]] = deque()
        self._busy = False  # a thread is sending; it empties the queue before it stops

    def send(self, request: dict[str, Any], *, size: int) -> None:
        """Queue ``request`` for a message. Returns once it is with the broker when this thread sent it, at once
        when another thread is sending (which sends this one too); raises the send error of its own message."""
        with self._lock:
            self._waiting.append((request, size))
            if self._busy:
                return
            self._busy = True
        own_error: BaseException | None = None
        first = True
        while True:
            with self._lock:
                group = self._group_take()
                if not group:
                    self._busy = False
                    break
            try:
                self._send(group)
            except BaseException as exc:  # even an interrupt: the queue must not stay busy with nobody sending
                others = group[1:] if first else group
                if first:
                    own_error = exc
                if others:
                    self._failed_tell(others, exc)
            first = False
        if own_error is not None:
            raise own_error

    def _group_take(self) -> list[dict[str, Any]]:
        """The oldest queued requests that fit in one message, the oldest always (called with the lock held)."""
        group: list[dict[str, Any]] = []
        size = 0
        while self._waiting and len(group) < self.max_requests:
            request, request_size = self._waiting[0]
            if group and size + request_size > self.max_bytes:
                break
            self._waiting.popleft()
            group.append(request)
            size += request_size
        return group

    def _failed_tell(self, requests: list[dict[str, Any]], error: BaseException) -> None:
        try:
            self._failed(requests, error)
        except Exception:  # Redis gone too: their callers get their 503 at the deadline
            logger.exception("Could not tell %s callers that their message was not sent", len(requests))


_senders: dict[str, GroupSender] = {}
_senders_lock = threading.Lock()


def _group_sender() -> GroupSender:
    queue = settings.INFERENCE_QUEUE
    sender = _senders.get(queue)
    if sender is None:
        with _senders_lock:
            sender = _senders.get(queue)
            if sender is None:
                sender = _senders[queue] = GroupSender(
                    lambda requests: _requests_send(requests, queue=queue),
                    failed=_requests_unsent,
                    max_requests=settings.INFERENCE_SEND_MAX_REQUESTS,
                )
    return sender


@functools.cache  # once per process and queue: the broker configuration does not change
def _publisher(queue: str) -> broker.RedisQueuePublisher | None:
    from marketplace.celery import app

    return broker.redis_queue_publisher(app=app, queue=queue)


def _requests_send(requests: list[dict[str, Any]], *, queue: str) -> None:
    """One ``inference_run_many`` message: pushed straight onto a Redis broker's queue (a fraction of the CPU of
    ``apply_async``: marketplace/integrations/broker.py), through ``apply_async`` on any other broker."""
    from inference.tasks import inference_run_many

    deadline_at = max(float(request["payload"]["deadline_at"]) for request in requests)
    versions = sorted({request["payload"]["model"]["version_id"] for request in requests})
    kwargsrepr = f"{len(requests)} requests, versions {versions}"
    expires_s = max(0.001, deadline_at - time.time())  # a worker that takes it later discards it
    publisher = _publisher(queue)
    if publisher is not None:
        publisher.send(
            task=inference_run_many.name, kwargs={"requests": requests}, expires_s=expires_s, kwargsrepr=kwargsrepr
        )
        return
    inference_run_many.apply_async(
        kwargs={"requests": requests},
        ignore_result=True,
        **_send_options(queue=queue, expires_s=expires_s, kwargsrepr=kwargsrepr),
    )


def _requests_unsent(requests: list[dict[str, Any]], error: BaseException) -> None:
    """Answer requests whose message could not be sent: their callers wait on their reply lists."""
    answer = _error_answer(_unreachable(error))
    deadline_at = max(float(request["payload"]["deadline_at"]) for request in requests)
    replies_push(replies=[(request["reply_to"], answer) for request in requests], deadline_at=deadline_at)


def _infer_celery_reply(
    *, client: Any, model: ModelRef, inputs: dict[str, np.ndarray], output_names: list[str] | None, deadline_s: float
) -> InferResult:
    """Reply through a Redis list: the worker RPUSHes the answer, this thread BLPOPs it until the deadline."""
    started = time.monotonic()
    deadline_at = time.time() + deadline_s
    payload = request_encode(model=model, inputs=inputs, output_names=output_names, deadline_at=deadline_at)
    key = REPLY_KEY_PREFIX + uuid.uuid4().hex
    size = sum(array.nbytes for array in inputs.values()) * 4 // 3 + 512  # base64 and the envelope, roughly
    try:
        _group_sender().send({"payload": payload, "reply_to": key}, size=size)
    except Exception as exc:  # kombu/redis connection errors have no common base class worth naming
        raise _unreachable(exc) from exc
    remaining = max(0.01, deadline_s - (time.monotonic() - started))
    try:
        popped = client.blpop([key], timeout=remaining)
    except Exception as exc:
        raise _unreachable(exc) from exc
    if popped is None:  # the worker died, is overloaded, or the model is slow: nothing is re-run (at most once)
        raise ModelUnavailable("No inference worker answered within the deadline.", retry_after=WORKER_RETRY_AFTER_S)
    return _answer_read(model, json.loads(popped[1]))


def _infer_celery(
    *, model: ModelRef, inputs: dict[str, np.ndarray], output_names: list[str] | None, deadline_s: float
) -> InferResult:
    client = _reply_client()
    if client is not None:
        return _infer_celery_reply(
            client=client, model=model, inputs=inputs, output_names=output_names, deadline_s=deadline_s
        )
    return _infer_celery_backend(model=model, inputs=inputs, output_names=output_names, deadline_s=deadline_s)


def _infer_celery_backend(
    *, model: ModelRef, inputs: dict[str, np.ndarray], output_names: list[str] | None, deadline_s: float
) -> InferResult:
    """Through Celery's result backend (any backend): used when the result backend is not Redis."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from inference.tasks import inference_run

    started = time.monotonic()
    deadline_at = time.time() + deadline_s
    payload = request_encode(model=model, inputs=inputs, output_names=output_names, deadline_at=deadline_at)
    try:
        async_result = inference_run.apply_async(
            kwargs={"payload": payload},
            **_send_options(
                queue=settings.INFERENCE_QUEUE, expires_s=deadline_s, kwargsrepr=f"version {model.version_id}"
            ),
        )
    except Exception as exc:  # kombu/redis connection errors have no common base class worth naming
        raise _unreachable(exc) from exc
    try:
        remaining = max(0.001, deadline_s - (time.monotonic() - started))
        answer = async_result.get(timeout=remaining, disable_sync_subtasks=False, propagate=True)
    except CeleryTimeout as exc:
        # The worker died, is overloaded, or the model is slow: at-most-once, so nothing is re-run.
        raise ModelUnavailable(
            "No inference worker answered within the deadline.", retry_after=WORKER_RETRY_AFTER_S
        ) from exc
    except Exception as exc:
        logger.warning("Inference task %s failed: %s", async_result.id, exc)
        message = "The inference worker failed on this request."
        raise ModelUnavailable(message, retry_after=WORKER_RETRY_AFTER_S) from exc
    finally:
        try:
            async_result.forget()
        except Exception:  # the result expires on its own (result_expires)
            pass
    return _answer_read(model, answer)


# --- warm on publish, evict on withdraw --------------------------------------------------------------------


def model_warm(*, model: ModelRef) -> bool:
    """Load a version into this process's host now; failures are logged, not raised (a warm is a hint)."""
    try:
        model_host().model_get(model)
    except Exception as exc:  # storage down, bad artifact, ORT load failure: the first request will say so
        logger.warning("Could not warm version %s: %s", model.version_id, exc)
        return False
    return True


def model_evict(*, version_id: int) -> bool:
    return model_host().evict(version_id)


def model_warm_on_commit(*, version: Any) -> None:
    """After the transaction commits: warm the version where inference runs (every worker, or this process)."""
    from django.db import transaction

    model = model_ref_from_version(version)
    transaction.on_commit(lambda: _warm_dispatch(model))


def model_evict_on_commit(*, version_id: int) -> None:
    from django.db import transaction

    transaction.on_commit(lambda: _evict_dispatch(version_id))


def _warm_dispatch(model: ModelRef) -> None:
    if settings.INFERENCE_DISPATCH == "celery":
        from inference.tasks import model_warm as model_warm_task

        _broadcast(model_warm_task, model.version_id, model.to_dict())
        return
    # Inline: this web process hosts models. Warm in the background so the publishing request does not wait
    # for a download and a session load.
    threading.Thread(target=model_warm, kwargs={"model": model}, name="model-warm", daemon=True).start()


def _evict_dispatch(version_id: int) -> None:
    if settings.INFERENCE_DISPATCH == "celery":
        from inference.tasks import model_evict as model_evict_task

        _broadcast(model_evict_task, version_id)
        return
    model_evict(version_id=version_id)


def _broadcast(task: Any, *args: Any) -> None:
    from kombu import Exchange

    # Routed to the broadcast queue (settings). Celery never declares a Broadcast queue when sending, and the
    # Redis transport treats an exchange it has not seen declared as direct (the message would go nowhere).
    fanout = Exchange(settings.INFERENCE_BROADCAST_QUEUE, type="fanout")
    try:
        task.apply_async(args=list(args), retry=False, declare=[fanout])
    except Exception as exc:  # the broker being down must not fail a publish; the first request loads it
        logger.warning("Could not broadcast %s%s: %s", task.name, args, exc)
