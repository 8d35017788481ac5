"""Celery beat task that moves the Redis usage buffer to the ledger (see inference.services.usage_flush)."""

from __future__ import annotations

from celery import shared_task

from inference.services import usage_flush

USAGE_FLUSH_INTERVAL_S = 2.0


@shared_task(name="inference.usage_flush", ignore_result=True)
def usage_flush_task() -> None:
    # wait_s=0: if another flusher runs, it is doing this very work.
    usage_flush(wait_s=0)
