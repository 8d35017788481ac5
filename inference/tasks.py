"""Celery tasks of the model host. Thin: they decode and call inference.dispatch.

``inference_run`` is deliberately at-most-once (``acks_late=False``, no retries), unlike the validation task:
the message is acknowledged when a worker takes it, so a worker killed mid-request loses the request and the
caller gets a 503 at its deadline. With late acks the broker would hand the request to another worker after
the caller had already answered 503 (and not charged), running unpaid work nobody waits for, or, with the
Redis visibility timeout, an hour later. The client retries instead, with ``Retry-After``. Every message also
carries ``expires`` at the caller's deadline, so one restored after a crash (taken, not yet acknowledged) is
discarded, never run late.

``model_warm`` and ``model_evict`` are routed to a broadcast (fanout) queue, so every inference worker that
consumes ``<INFERENCE_QUEUE>.broadcast`` runs them.

Run inference workers as one process with threads, so concurrent requests for a model meet in its batcher:
``celery -A marketplace worker -Q inference,inference.broadcast -P threads -c 16`` (one such process per GPU).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from inference import dispatch


@shared_task(name="inference.inference_run", acks_late=False, ignore_result=False, max_retries=0)
def inference_run(payload: dict[str, Any], reply_to: str | None = None) -> dict[str, Any] | None:
    """One inference request; returns the encoded outputs or an error value (never raises for user errors).

    With ``reply_to`` the answer is pushed to that Redis list instead of the result backend (the caller waits
    on it with BLPOP: one round trip each side, no pub/sub subscription, nothing to clean up)."""
    answer = dispatch.request_run(payload)
    if reply_to is None:
        return answer
    dispatch.reply_push(key=reply_to, answer=answer, deadline_at=float(payload["deadline_at"]))
    return None


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
    dispatch.model_warm(model=ref)


@shared_task(name="inference.model_evict", acks_late=False, ignore_result=True)
def model_evict(version_id: int) -> None:
    dispatch.model_evict(version_id=version_id)
