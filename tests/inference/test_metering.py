"""Metering against a real Redis (the helper's test database) and the in-process backend: rate limits,
quotas seeded from the ledger, idempotency, refunds, and the buffered usage flush (at least once, deduplicated)."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from inference import metering
from inference.metering import (
    Admission,
    ErrorEntry,
    Idempotency,
    LocalMetering,
    RedisMetering,
    StoredResponse,
    UsageEntry,
)
from inference.models import InferenceError, UsageRecord
from inference.services import usage_flush
from tests.catalog.factories import PublishedListingFactory
from tests.inference.api_support import buyer_create, metering_keys_clear, redis_client


@pytest.fixture(autouse=True)
def _clean_redis():
    metering_keys_clear()
    yield
    metering_keys_clear()


@pytest.fixture(params=["redis", "local"])
def backend(request, settings):
    if request.param == "local":
        return LocalMetering()
    return RedisMetering(settings.INFERENCE_REDIS_URL)


def _admission(**overrides) -> Admission:
    now = timezone.now()
    values = dict(
        api_key_id=overrides.pop("api_key_id", 10_000 + uuid.uuid4().int % 1_000_000),
        rate_limit=1000,
        subscription_id=999_999,
        quota_units=None,
        period_start=now - timedelta(days=1),
        period_end=now + timedelta(days=29),
        units=1,
    )
    values.update(overrides)
    return Admission(**values)


def _usage(admission: Admission, *, request_id: str | None = None, **ids) -> UsageEntry:
    return UsageEntry(
        request_id=request_id or uuid.uuid4().hex,
        organization_id=ids["organization_id"],
        api_key_id=ids.get("api_key_id"),
        subscription_id=ids["subscription_id"],
        listing_id=ids["listing_id"],
        version_id=ids["version_id"],
        units=admission.units,
        queue_ms=0.5,
        compute_ms=1.5,
        provider="CPUExecutionProvider",
        finished_at=time.time(),
    )


@pytest.fixture
def buyer(db):
    listing = PublishedListingFactory()
    return buyer_create(listing=listing, quota=10)


def _ids(buyer) -> dict:
    return {
        "organization_id": buyer.organization.pk,
        "api_key_id": buyer.api_key.pk,
        "subscription_id": buyer.subscription.pk,
        "listing_id": buyer.subscription.listing_id,
        "version_id": buyer.subscription.listing.current_version_id,
    }


def test_rate_limit_allows_a_burst_of_the_rate_then_429_with_retry_after(backend):
    admission = _admission(rate_limit=5)
    outcomes = [backend.admit(admission).outcome for _ in range(5)]
    assert outcomes == ["ok"] * 5
    refused = backend.admit(admission)
    assert refused.outcome == "rate_limited" and refused.retry_after == 1
    # Other keys are not affected.
    assert backend.admit(_admission(rate_limit=5)).outcome == "ok"
    # Refilled at the rate: one call per 200 ms.
    time.sleep(0.25)
    assert backend.admit(admission).outcome == "ok"
    assert backend.admit(admission).outcome == "rate_limited"


def test_quota_is_seeded_from_the_ledger_reserved_and_refunded(backend, buyer):
    subscription = buyer.subscription
    # 7 units already used this period, 100 in the previous one (not counted).
    for units, when in (
        (4, timezone.now()),
        (3, timezone.now()),
        (100, subscription.current_period_start - timedelta(days=2)),
    ):
        UsageRecord.objects.create(
            request_id=uuid.uuid4().hex,
            organization=buyer.organization,
            api_key=buyer.api_key,
            subscription=subscription,
            listing=subscription.listing,
            version=subscription.listing.current_version,
            units=units,
            created_at=when,
        )

    def admission(units: int) -> Admission:
        return _admission(
            api_key_id=buyer.api_key.pk, subscription_id=subscription.pk, quota_units=10, units=units,
            period_start=subscription.current_period_start, period_end=subscription.current_period_end,
        )  # fmt: skip

    assert backend.admit(admission(4)).outcome == "quota_exceeded"
    three = admission(3)
    assert backend.admit(three).outcome == "ok"  # 10 of 10
    refused = backend.admit(admission(1))
    assert refused.outcome == "quota_exceeded"
    expected = (subscription.current_period_end - timezone.now()).total_seconds()
    assert abs(refused.retry_after - expected) < 5
    # A failed call gives its units back.
    error = ErrorEntry(
        uuid.uuid4().hex, buyer.organization.pk, buyer.api_key.pk, None, None, 503, "model_unavailable", time.time()
    )
    backend.fail(three, error, refund=True)
    assert backend.admit(admission(3)).outcome == "ok"
    assert backend.admit(admission(1)).outcome == "quota_exceeded"


def test_unlimited_plan_has_no_quota(backend):
    admission = _admission(quota_units=None, units=10**9)
    assert backend.admit(admission).outcome == "ok"


def test_idempotency_states(backend):
    key = Idempotency(key=f"inf:idem:1:{uuid.uuid4().hex}", fingerprint="f1")
    admission = _admission(idempotency=key)
    assert backend.admit(admission).outcome == "ok"
    in_progress = backend.admit(admission)
    assert in_progress.outcome == "in_progress" and in_progress.retry_after == 1
    assert backend.admit(_admission(idempotency=Idempotency(key=key.key, fingerprint="f2"))).outcome == "reused"


def test_idempotent_response_is_stored_and_replayed(backend, buyer):
    key = Idempotency(key=f"inf:idem:{buyer.organization.pk}:{uuid.uuid4().hex}", fingerprint="f1")
    admission = _admission(idempotency=key)
    assert backend.admit(admission).admitted
    stored = StoredResponse(200, {"Content-Type": "application/octet-stream", "X-Request-Id": "r1"}, b"\x00\xffbody")
    backend.succeed(admission, _usage(admission, **_ids(buyer)), stored)
    replay = backend.admit(admission)
    assert replay.outcome == "replay"
    assert replay.stored == stored


def test_a_failed_idempotent_call_releases_its_key(backend, buyer):
    key = Idempotency(key=f"inf:idem:{buyer.organization.pk}:{uuid.uuid4().hex}", fingerprint="f1")
    admission = _admission(idempotency=key)
    assert backend.admit(admission).admitted
    error = ErrorEntry(uuid.uuid4().hex, buyer.organization.pk, None, None, None, 422, "inference_failed", time.time())
    backend.fail(admission, error, refund=True)
    assert backend.admit(admission).outcome == "ok"


def test_rejected_admission_writes_nothing(settings):
    client = redis_client()
    admission = _admission(rate_limit=1, quota_units=0, idempotency=Idempotency(key="inf:idem:1:x", fingerprint="f"))
    RedisMetering(settings.INFERENCE_REDIS_URL)._call(client.set, admission.quota_key, 0)
    assert RedisMetering(settings.INFERENCE_REDIS_URL).admit(admission).outcome == "quota_exceeded"
    assert client.exists("inf:idem:1:x", admission.rate_key) == 0
    assert client.get(admission.quota_key) == b"0"


@pytest.mark.django_db(transaction=False)
def test_usage_buffer_flushes_once_even_after_a_crash_mid_flush(settings, buyer):
    backend = RedisMetering(settings.INFERENCE_REDIS_URL)
    admission = _admission()
    entries = [_usage(admission, **_ids(buyer)) for _ in range(5)]
    for entry in entries:
        backend.succeed(admission, entry, None)
    # The same record pushed twice (a retried push) is stored once.
    backend.succeed(admission, entries[0], None)
    assert backend.spool().drain(5)  # spooled, then pushed to the Redis buffer by the spool's thread
    assert UsageRecord.objects.count() == 0  # buffered, not written on the hot path
    # A flusher claims a batch and dies before writing it: the batch waits in the processing list.
    claimed = backend.claim(metering.USAGE_BUFFER, metering.USAGE_PROCESSING, 2)
    assert len(claimed) == 2
    result = usage_flush()
    assert result.usage == 6
    rows = UsageRecord.objects.order_by("request_id")
    assert sorted(r.request_id for r in rows) == sorted(e.request_id for e in entries)
    row = rows.get(request_id=entries[3].request_id)
    assert (row.units, row.queue_ms, row.compute_ms, row.provider) == (1, 0.5, 1.5, "CPUExecutionProvider")
    assert row.subscription_id == buyer.subscription.pk and row.api_key_id == buyer.api_key.pk
    assert abs((row.created_at - timezone.now()).total_seconds()) < 30
    # Flushing again adds nothing; the buffer and the processing list are empty.
    assert usage_flush().usage == 0
    assert redis_client().llen(metering.USAGE_PROCESSING) == 0
    assert UsageRecord.objects.count() == 5


def test_errors_flush_to_their_table(settings, buyer):
    backend = RedisMetering(settings.INFERENCE_REDIS_URL)
    error = ErrorEntry(
        uuid.uuid4().hex, buyer.organization.pk, buyer.api_key.pk, None, None, 400, "invalid_input", time.time()
    )
    backend.fail(None, error, refund=False)
    assert usage_flush().errors == 1
    row = InferenceError.objects.get()
    assert (row.request_id, row.status, row.code, row.api_key_id) == (
        error.request_id,
        400,
        "invalid_input",
        buyer.api_key.pk,
    )


def test_a_row_that_no_longer_fits_does_not_block_the_rest(settings, buyer):
    backend = RedisMetering(settings.INFERENCE_REDIS_URL)
    admission = _admission()
    good = _usage(admission, **_ids(buyer))
    orphan = _usage(admission, **{**_ids(buyer), "version_id": 987_654_321})
    backend.succeed(admission, orphan, None)
    backend.succeed(admission, good, None)
    assert usage_flush().usage == 2
    assert list(UsageRecord.objects.values_list("request_id", flat=True)) == [good.request_id]


def test_local_backend_writes_usage_straight_to_the_database(buyer):
    backend = LocalMetering()
    admission = _admission()
    entry = _usage(admission, **_ids(buyer))
    backend.succeed(admission, entry, None)
    assert UsageRecord.objects.filter(request_id=entry.request_id).count() == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the admission sent before the model runs (admit_begin / admit_finish) -----------------------------------


def test_an_admission_sent_ahead_decides_as_admit_does(backend):
    admission = _admission(rate_limit=2)
    decisions = []
    for _ in range(3):
        pending = backend.admit_begin(admission)
        decisions.append(backend.admit_finish(pending))
    assert [d.outcome for d in decisions] == ["ok", "ok", "rate_limited"]
    assert decisions[2].retry_after == 1
    # The thread's connection is in step: the next command gets its own reply.
    assert backend.admit(_admission()).outcome == "ok"


def test_an_admission_sent_ahead_seeds_the_quota_and_survives_a_script_flush(settings, buyer):
    backend = RedisMetering(settings.INFERENCE_REDIS_URL)
    subscription = buyer.subscription
    admission = _admission(
        api_key_id=buyer.api_key.pk, subscription_id=subscription.pk, quota_units=10, units=4,
        period_start=subscription.current_period_start, period_end=subscription.current_period_end,
    )  # fmt: skip
    # No quota counter yet: the script answers "seed", admit_finish seeds it from the ledger and asks again.
    first = backend.admit_finish(backend.admit_begin(admission))
    assert first.outcome == "ok" and first.units_before == 0
    redis_client().script_flush()  # Redis forgot the script (a restart): NOSCRIPT, loaded again
    second = backend.admit_finish(backend.admit_begin(admission))
    assert second.outcome == "ok" and second.units_before == 4
    assert backend.admit_finish(backend.admit_begin(admission)).outcome == "quota_exceeded"  # 12 > 10


def test_an_admission_that_cannot_be_sent_is_not_worth_a_run_and_fails_closed():
    backend = RedisMetering(f"redis://127.0.0.1:{_closed_port()}/0")
    pending = backend.admit_begin(_admission())
    assert not pending.may_run  # Redis is down: the call will not be run
    with pytest.raises(metering.MeteringUnavailable):
        backend.admit_finish(pending)


def test_the_in_process_backend_decides_at_once():
    backend = LocalMetering()
    admission = _admission(rate_limit=1)
    assert backend.admit_begin(admission).may_run
    refused = backend.admit_begin(admission)
    assert not refused.may_run and backend.admit_finish(refused).outcome == "rate_limited"


def test_redis_down_fails_closed_and_fast():
    backend = RedisMetering(f"redis://127.0.0.1:{_closed_port()}/0")
    started = time.monotonic()
    with pytest.raises(metering.MeteringUnavailable) as info:
        backend.admit(_admission())
    assert info.value.status == 503 and info.value.code == "metering_unavailable" and info.value.retry_after > 0
    assert time.monotonic() - started < 2
    assert backend.ping() is False


def test_a_redis_that_never_answers_fails_closed_within_the_timeout():
    """Connections are accepted (the kernel completes them from the backlog) but nothing is ever read or answered:
    the hot path's blocking socket gives up after the kernel's timeout, once, then once more, and the call is a
    503, not a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        backend = RedisMetering(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(metering.MeteringUnavailable):
            backend.admit(_admission())
        assert 0.3 <= time.monotonic() - started < 3


_HELLO_REPLY = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"


def _redis_that_stops_at_scripts(listener: socket.socket) -> None:
    """Answers redis-py's connection handshake (HELLO 3, CLIENT ...) and never a script: a Redis that hangs
    mid-call."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(_HELLO_REPLY * chunk.count(b"HELLO") + b"+OK\r\n" * chunk.count(b"CLIENT"))


def test_an_admission_sent_ahead_that_is_never_answered_waits_two_timeouts_not_three():
    """The unanswered admission was the first attempt: admit_finish makes one more, as admit makes two in all."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        threading.Thread(target=_redis_that_stops_at_scripts, args=(listener,), daemon=True).start()
        backend = RedisMetering(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout_s=1.0)
        pending = backend.admit_begin(_admission())
        assert pending.may_run  # sent: nothing tells yet that it will never be answered
        started = time.monotonic()
        with pytest.raises(metering.MeteringUnavailable):
            backend.admit_finish(pending)
        assert 1.9 <= time.monotonic() - started < 2.9


def test_the_hot_path_socket_blocks_with_kernel_timeouts(settings):
    """One send and one receive a command, no poll() before each (see _KernelTimeoutConnection), yet the timeout
    still holds: it is the socket's SO_RCVTIMEO and SO_SNDTIMEO."""
    backend = RedisMetering(settings.INFERENCE_REDIS_URL, timeout_s=1.5)
    assert backend.admit(_admission()).admitted
    sock = backend._connection()._sock
    assert sock.gettimeout() is None
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        seconds, microseconds = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
        assert (seconds, microseconds) == (1, 500_000)


def test_the_backend_follows_the_settings():
    with override_settings(INFERENCE_REDIS_URL=""):
        assert isinstance(metering.metering_backend(), LocalMetering)
    assert isinstance(metering.metering_backend(), RedisMetering)


def test_usage_by_day_and_totals(settings, buyer):
    from inference.selectors import usage_by_day, usage_totals

    backend = RedisMetering(settings.INFERENCE_REDIS_URL)
    admission = _admission(units=3)
    for _ in range(2):
        backend.succeed(admission, _usage(admission, **_ids(buyer)), None)
    error = ErrorEntry(uuid.uuid4().hex, buyer.organization.pk, buyer.api_key.pk, buyer.subscription.listing_id,
                       None, 429, "rate_limited", time.time())  # fmt: skip
    backend.fail(None, error, refund=False)
    usage_flush()
    start, end = timezone.now() - timedelta(days=1), timezone.now() + timedelta(days=1)
    (row,) = usage_by_day(organization_id=buyer.organization.pk, start=start, end=end)
    assert (row["calls"], row["units"], row["errors"]) == (2, 6, 1)
    assert row["listing_slug"] == buyer.subscription.listing.slug and row["day"] == timezone.now().date()
    assert usage_totals(organization_id=buyer.organization.pk, start=start, end=end) == {
        "calls": 2, "units": 6, "errors": 1,
    }  # fmt: skip
    assert usage_by_day(organization_id=buyer.organization.pk + 1, start=start, end=end) == []


def test_flush_command_and_beat_task(settings, buyer):
    from django.core.management import call_command

    from inference.tasks_metering import usage_flush_task
    from marketplace.celery import app

    backend = RedisMetering(settings.INFERENCE_REDIS_URL)
    admission = _admission()
    backend.succeed(admission, _usage(admission, **_ids(buyer)), None)
    call_command("usage_flush")
    assert UsageRecord.objects.count() == 1
    backend.succeed(admission, _usage(admission, **_ids(buyer)), None)
    usage_flush_task.apply()
    assert UsageRecord.objects.count() == 2
    # Beat schedules a task the workers know.
    app.loader.import_default_modules()
    scheduled = settings.CELERY_BEAT_SCHEDULE["inference-usage-flush"]
    assert scheduled["task"] in app.tasks and scheduled["schedule"] <= 5
