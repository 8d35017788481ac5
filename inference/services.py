"""Ledger writes: usage records (exactly one per successful inference) and inference errors (never charged).

The /v2 hot path does not write here in Redis mode: it buffers entries in Redis (inference.metering) and
``usage_flush`` moves them to PostgreSQL in batches. The local backend and the flusher both end in
``usage_records_write`` / ``inference_errors_write``: bulk inserts that skip request ids already stored, so a
batch flushed twice (after a crash between insert and removal) is counted once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from django.db import IntegrityError, connection, transaction

from billing.metering import meter_reports_create
from inference.metering import (
    ERROR_BUFFER,
    ERROR_PROCESSING,
    USAGE_BUFFER,
    USAGE_PROCESSING,
    ErrorEntry,
    RedisMetering,
    UsageEntry,
    metering_backend,
)
from inference.models import InferenceError, UsageRecord
from inference.usage_spool import usage_spools_drain

logger = logging.getLogger(__name__)

FLUSH_BATCH = 1000


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def usage_records_write(*, entries: Iterable[UsageEntry]) -> int:
    """Insert usage records, ignoring request ids already stored. Returns how many were given."""
    rows = [
        UsageRecord(
            request_id=e.request_id,
            organization_id=e.organization_id,
            api_key_id=e.api_key_id,
            subscription_id=e.subscription_id,
            listing_id=e.listing_id,
            version_id=e.version_id,
            units=e.units,
            queue_ms=e.queue_ms,
            compute_ms=e.compute_ms,
            provider=e.provider,
            cost=Decimal(e.cost),
            currency=e.currency,
            created_at=_when(e.finished_at),
        )
        for e in entries
    ]
    if rows:
        with transaction.atomic():
            UsageRecord.objects.bulk_create(rows, ignore_conflicts=True)
            # Usage that Stripe meters gets its outbox row (billing.MeterReport) in the same transaction.
            meter_reports_create(usage_records=rows)
    return len(rows)


def usage_record_create(*, entry: UsageEntry) -> None:
    usage_records_write(entries=[entry])


def inference_errors_write(*, entries: Iterable[ErrorEntry]) -> int:
    rows = [
        InferenceError(
            request_id=e.request_id,
            organization_id=e.organization_id,
            api_key_id=e.api_key_id,
            listing_id=e.listing_id,
            version_id=e.version_id,
            status=e.status,
            code=e.code[:40],
            created_at=_when(e.finished_at),
        )
        for e in entries
    ]
    if rows:
        InferenceError.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


@dataclass(frozen=True)
class FlushResult:
    usage: int = 0
    errors: int = 0
    skipped: bool = False  # another flusher holds the lock


def _decode(raw: list[bytes], kind: type) -> list:
    entries = []
    for item in raw:
        try:
            entries.append(kind(**json.loads(item)))
        except (ValueError, TypeError):
            # Never block the ledger on one bad entry; it stays visible in the log.
            logger.error("Dropping an unreadable metering entry: %r", item[:200])
    return entries


@contextlib.contextmanager
def _atomic_checked() -> Iterator[None]:
    """A transaction (or savepoint) whose foreign keys are checked at each statement, not at the outer commit:
    a bad row must fail here, inside the savepoint we can roll back, even when a caller's transaction wraps us."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        yield


def _write_batch(write, entries: list) -> None:
    try:
        with _atomic_checked():
            write(entries=entries)
    except IntegrityError:
        # A row whose organization, key, listing or version vanished before the flush: keep the others.
        for entry in entries:
            try:
                with _atomic_checked():
                    write(entries=[entry])
                continue
            except IntegrityError:
                pass
            try:  # a deleted API key (SET NULL on the ledger) must not lose the charge
                with _atomic_checked():
                    write(entries=[dataclasses.replace(entry, api_key_id=None)])
            except IntegrityError:
                logger.error("Dropping a metering entry that no longer fits the database: %r", entry)


def _drain(metering: RedisMetering, *, buffer: str, processing: str, kind: type, write, token: str) -> int:
    moved = 0
    # Leftovers of a flusher that crashed after claiming a batch: write them again (duplicates are ignored).
    leftovers = metering.processing_read(processing)
    if leftovers:
        _write_batch(write, _decode(leftovers, kind))
        metering.processing_clear(processing)
        moved += len(leftovers)
    while True:
        batch = metering.claim(buffer, processing, FLUSH_BATCH)
        if not batch:
            return moved
        _write_batch(write, _decode(batch, kind))
        metering.processing_clear(processing)
        moved += len(batch)
        metering.lock_refresh(token)


def usage_flush(*, wait_s: float = 5.0) -> FlushResult:
    """Move buffered usage records and errors from Redis to PostgreSQL. Safe to run from several places (beat,
    the management command, tests): one flusher at a time holds a lock; the others wait up to ``wait_s`` for it,
    then skip. A no-op with the local backend, which writes straight to the database."""
    metering = metering_backend()
    if not isinstance(metering, RedisMetering):
        return FlushResult()
    # This process's spooled records first (pushed within 50 ms anyway), then what processes that died on
    # this machine left in theirs.
    usage_spools_drain(timeout_s=wait_s)
    metering.spool().recover()
    token = metering.lock_acquire(wait_s=wait_s)
    if token is None:
        return FlushResult(skipped=True)
    try:
        usage = _drain(
            metering, buffer=USAGE_BUFFER, processing=USAGE_PROCESSING, kind=UsageEntry,
            write=usage_records_write, token=token,
        )  # fmt: skip
        errors = _drain(
            metering, buffer=ERROR_BUFFER, processing=ERROR_PROCESSING, kind=ErrorEntry,
            write=inference_errors_write, token=token,
        )  # fmt: skip
    finally:
        metering.lock_release(token)
    return FlushResult(usage=usage, errors=errors)
