"""Celery tasks of the model host. Thin: they decode and call inference.dispatch.

``inference_run_many`` (and ``inference_run``) is deliberately at-most-once (``acks_late=False``, no retries),
unlike the validation task: the message is acknowledged when a worker takes it, so a worker killed mid-request
loses its requests and their callers get a 503 at their deadline. With late acks the broker would hand them to
another worker after the callers had already answered 503 (and not charged), running unpaid work nobody waits
for, or, with the Redis visibility timeout, an hour later. The client retries instead, with ``Retry-After``.
Every message also carries ``expires`` at its callers' deadline, so one restored after a crash (taken, not yet
acknowledged) is discarded, never run late.

``model_warm`` and ``model_evict`` are routed to a broadcast (fanout) queue, so every inference worker that
consumes ``<INFERENCE_QUEUE>.broadcast`` runs them.

Run inference workers as one process per GPU with Celery's solo pool:
``celery -A marketplace worker -Q inference,inference.broadcast -P solo``. The worker's own thread receives the
messages and runs cheap requests of loaded models itself; everything else runs on ``INFERENCE_WORKER_THREADS``
threads of the same process, where concurrent requests for a model meet in its batcher
(``dispatch.message_serve``). A ``-P threads`` worker works too, with one more hand-off between threads a message.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import shared_task

from inference import dispatch


@shared_task(name="inference.inference_run_many", acks_late=False, ignore_result=True, max_retries=0)
def inference_run_many(requests: list[dict[str, Any]]) -> None:
    """The requests one web process sent together (``{"payload", "reply_to"}`` each): run them, batched where
    the model allows, and push each answer to its caller's Redis list (the caller BLPOPs it: one round trip
    each side, no pub/sub subscription, nothing to clean up). User errors are answers, never raised."""
    dispatch.message_serve(requests)


@shared_task(name="inference.inference_run", acks_late=False, ignore_result=False, max_retries=0)
def inference_run(payload: dict[str, Any]) -> dict[str, Any]:
    """One inference request whose answer goes through Celery's result backend (when that is not Redis)."""
    return dispatch.request_run(payload)


@shared_task(name="inference.model_warm", acks_late=False, ignore_result=True)
def model_warm(version_id: int, model: dict[str, Any] | None = None) -> None:
    """Load a version on this worker. The publisher sends the ModelRef along, so no database read is needed."""
    if model is not None:
        ref = dispatch.ModelRef.from_dict(model)
    else:
        from catalog.models import Version

        version = Version.objects.filter(pk=version_id).first()
        if version is None:
            return
        ref = dispatch.model_ref_from_version(version)
    # On a run thread: the worker's own thread goes on receiving requests while the model downloads and loads.
    dispatch.run_threads_submit(partial(dispatch.model_warm, model=ref))


@shared_task(name="inference.model_evict", acks_late=False, ignore_result=True)
def model_evict(version_id: int) -> None:
    dispatch.model_evict(version_id=version_id)
