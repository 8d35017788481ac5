"""Metering against a real Redis (the helper's test database) and the in-process backend: rate limits,
quotas seeded from the ledger, idempotency, refunds, and the buffered usage flush (at least once, deduplicated)."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from datetime import timedelta

import numpy as np
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
from tests.inference.api_support import (
    buyer_create,
    concurrently,
    evalsha_calls,
    metering_keys_clear,
    redis_client,
)


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
    from inference.usage_spool import usage_spools_drain
    from marketplace.celery import app

    backend = RedisMetering(settings.INFERENCE_REDIS_URL)
    admission = _admission()
    backend.succeed(admission, _usage(admission, **_ids(buyer)), None)
    call_command("usage_flush")
    assert UsageRecord.objects.count() == 1
    backend.succeed(admission, _usage(admission, **_ids(buyer)), None)
    # The beat task does not wait for this process's spool (wait_s=0): its thread pushes within 50 ms, and the task
    # runs every 2 s. Here the task may run sooner than that, so the record is pushed first.
    assert usage_spools_drain()
    usage_flush_task.apply()
    assert UsageRecord.objects.count() == 2
    # Beat schedules a task the workers know.
    app.loader.import_default_modules()
    scheduled = settings.CELERY_BEAT_SCHEDULE["inference-usage-flush"]
    assert scheduled["task"] in app.tasks and scheduled["schedule"] <= 5


# --- admission leases ------------------------------------------------------------------------------------------


def _quota_admission(buyer, *, quota: int, **overrides) -> Admission:
    subscription = buyer.subscription
    return _admission(
        api_key_id=buyer.api_key.pk, subscription_id=subscription.pk, quota_units=quota,
        period_start=subscription.current_period_start, period_end=subscription.current_period_end, **overrides,
    )  # fmt: skip


def test_a_fast_key_gets_a_lease_whose_calls_make_no_round_trip(settings, buyer):
    backend = RedisMetering(settings.INFERENCE_REDIS_URL, lease_ms=500)
    admission = _quota_admission(buyer, quota=100_000, rate_limit=1000)
    client = redis_client()
    first = backend.admit(admission)
    # The first call's admission reserved a whole lease: 32 calls (1000/s x 0.5 s, at most 32) and their units.
    assert first.outcome == "ok" and first.units_before == 0
    assert client.get(admission.quota_key) == b"32"
    sent = evalsha_calls()
    befores = [backend.admit(admission).units_before for _ in range(31)]
    assert befores == list(range(1, 32))  # each call its own place in the period's units
    assert evalsha_calls() == sent  # no round trip
    assert client.get(admission.quota_key) == b"32"
    # Spent: the next call asks Redis again, for the next lease.
    assert backend.admit(admission).units_before == 32
    assert evalsha_calls() == sent + 1 and client.get(admission.quota_key) == b"64"
    # Ending the leases gives the unused units back: the counter says what was used.
    backend.leases_release()
    assert client.get(admission.quota_key) == b"33"


def test_an_expired_lease_gives_its_unused_units_back_by_itself(settings, buyer):
    backend = RedisMetering(settings.INFERENCE_REDIS_URL, lease_ms=150)
    admission = _quota_admission(buyer, quota=100_000, rate_limit=1000, units=2)
    assert backend.admit(admission).outcome == "ok"
    client = redis_client()
    assert client.get(admission.quota_key) == b"64"  # a lease of 32 calls of 2 units
    deadline = time.monotonic() + 3
    while client.get(admission.quota_key) != b"2" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get(admission.quota_key) == b"2"  # the returner thread ended it, with no call to prompt it
    # An expired lease admits nothing: the next call is a round trip again.
    sent = evalsha_calls()
    assert backend.admit(admission).units_before == 2
    assert evalsha_calls() == sent + 1


def test_calls_that_arrive_while_a_lease_is_asked_for_wait_for_it(settings):
    """Sixteen threads at once, no lease yet: one admission asks Redis for a lease, the other calls wait for it and
    are admitted from it (they made a round trip each before: a sixth of all calls under load)."""
    backend = RedisMetering(settings.INFERENCE_REDIS_URL, lease_ms=500)
    admission = _admission(rate_limit=1000)
    sent = evalsha_calls()
    results = concurrently(16, lambda _index: backend.admit(admission))
    assert [decision.outcome for decision in results] == ["ok"] * 16
    assert evalsha_calls() - sent == 1


def test_no_lease_for_slow_keys_idempotent_calls_counted_plans_or_when_off(settings, buyer):
    url = settings.INFERENCE_REDIS_URL
    client = redis_client()
    cases = [
        (RedisMetering(url, lease_ms=100), {"rate_limit": 30}),  # 3 calls a lease: not worth it
        (RedisMetering(url, lease_ms=0), {"rate_limit": 1000}),
        (RedisMetering(url, lease_ms=500), {"rate_limit": 1000, "counted": True}),  # its price depends on the place
    ]
    for backend, overrides in cases:
        metering_keys_clear()
        admission = _quota_admission(buyer, quota=100_000, **overrides)
        for n in range(1, 4):
            assert backend.admit(admission).units_before == n - 1
            assert client.get(admission.quota_key) == str(n).encode(), overrides
    metering_keys_clear()
    backend = RedisMetering(url, lease_ms=500)
    for n in range(3):
        idempotent = _quota_admission(buyer, quota=100_000, idempotency=Idempotency(f"inf:idem:1:{n}", "fp"))
        assert backend.admit(idempotent).outcome == "ok"
    assert client.get(idempotent.quota_key) == b"3"


def test_leases_in_several_processes_spend_a_quota_exactly(settings, buyer):
    """Four processes (backends) at once: leases while the quota has room, call by call near its end, and every
    unit of it admitted exactly once, none over, once the leases' unused units are back."""
    backends = [RedisMetering(settings.INFERENCE_REDIS_URL, lease_ms=500) for _ in range(4)]
    admission = _quota_admission(buyer, quota=2000, rate_limit=100_000)
    admitted = []
    lock = threading.Lock()

    def spend(backend: RedisMetering) -> None:
        while True:
            decision = backend.admit(admission)
            if decision.outcome != "ok":
                assert decision.outcome == "quota_exceeded"
                return
            with lock:
                admitted.append(decision.units_before)

    sent = evalsha_calls()
    for _round in range(2):  # the second round spends what the first round's leases gave back
        threads = [threading.Thread(target=spend, args=(backend,)) for backend in backends]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for backend in backends:
            backend.leases_release()
    assert sorted(admitted) == list(range(2000))  # every place once
    assert redis_client().get(admission.quota_key) == b"2000"
    assert evalsha_calls() - sent < 1500  # leases saved round trips while far from the quota


def test_leases_keep_a_key_within_its_rate_over_every_window(settings, monkeypatch):
    """A lease's calls are spent up to its lifetime after Redis counted them; a key with leases has a burst shorter
    by that lifetime, so over any window its calls stay within what one round trip a call allows:
    ``rate x window + rate`` (GCRA with a burst of ``rate``)."""
    rate = 400
    backends = [RedisMetering(settings.INFERENCE_REDIS_URL, lease_ms=100) for _ in range(3)]  # 32 calls a lease
    admission = _admission(rate_limit=rate)
    spans: list[tuple[float, float]] = []  # each admitted call happened between these two readings of the clock
    granted = []
    install = RedisMetering._lease_install

    def counting_install(self, admission, result, **kwargs):
        granted.append(int(result[2]))
        install(self, admission, result, **kwargs)

    monkeypatch.setattr(RedisMetering, "_lease_install", counting_install)
    stop = time.monotonic() + 1.5

    def call(backend: RedisMetering) -> None:
        while time.monotonic() < stop:
            began = time.monotonic()
            if backend.admit(admission).outcome == "ok":
                spans.append((began, time.monotonic()))

    threads = [threading.Thread(target=call, args=(backend,)) for backend in backends for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spans) >= rate * 1.5  # the burst and the refill were used
    spans.sort()
    began = np.array([span[0] for span in spans])
    ended = np.array([span[1] for span in spans])
    for window in (0.01, 0.05, 0.25, 0.5, 1.0):
        # The calls surely inside each window (both readings in it): never more than the limit allows.
        most = max(int(np.count_nonzero(ended[i:] <= start + window)) for i, start in enumerate(began))
        assert most <= rate * window + rate + 1, (window, most)
    # Leases while the key had room (most of the first burst); at its limit, call by call.
    assert sum(n for n in granted if n > 1) >= rate / 2


def test_a_lease_spent_late_does_not_let_a_key_over_its_rate(settings):
    """The worst case for leases: one process takes a lease and spends it at the end of its lifetime, right after
    another process used the key's whole burst. Counted when granted, those calls would have been refilled by
    then; the key's shorter burst leaves room for them."""
    rate, lease_ms = 400, 300
    holder, other = (RedisMetering(settings.INFERENCE_REDIS_URL, lease_ms=lease_ms) for _ in range(2))
    admission = _admission(rate_limit=rate)
    assert holder.admit(admission).outcome == "ok"  # a lease of 32 calls; 31 held
    time.sleep(lease_ms / 1000 * 2 / 3)
    began = time.monotonic()
    burst = 0
    while other.admit(admission).outcome == "ok":
        burst += 1
    held = [holder.admit(admission).outcome for _ in range(31)]
    ended = time.monotonic()
    assert held == ["ok"] * 31, "the lease expired before it was spent: too slow a machine for this test"
    shorter = rate - rate * lease_ms // 1000  # a second's burst minus the lease's lifetime, and the refill meanwhile
    assert shorter <= burst <= shorter + rate * (ended - began) + 1
    assert burst + 31 <= rate * (ended - began) + rate + 1


def test_a_forked_child_does_not_spend_its_parents_lease(settings):
    import os

    backend = RedisMetering(settings.INFERENCE_REDIS_URL, lease_ms=500)
    admission = _admission(rate_limit=1000)
    backend.admit(admission)
    assert backend._leases  # the parent holds a lease
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a fresh table
        os.write(write, b"1" if not backend._leases else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert backend._leases
