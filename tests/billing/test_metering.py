"""Usage → Stripe meters through the outbox, against the fake Stripe server (the real SDK over HTTP)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from billing.metering import (
    meter_event_identifier,
    meter_event_name,
    meter_reports_create,
    meter_reports_send,
)
from billing.models import MeterReport, MeterReportStatus, PlanKind
from billing.reconciliation import reconciliation_run
from inference.models import UsageRecord
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.ledger_support import listing_make, plan_make, subscription_make, usage_write

METER_EVENTS = "/v1/billing/meter_events"


class Crash(Exception):
    """Stands for the process dying before its transaction commits."""


@pytest.fixture
def buyer(make_org):
    return make_org(name="Contoso")


@pytest.fixture
def metered(publisher, buyer, fake_stripe):
    """A Stripe-billed metered subscription of ``buyer``."""
    _user, org = publisher
    plan = plan_make(listing=listing_make(publisher=org), kind=PlanKind.METERED, price_per_1000_cents=200)
    return subscription_make(organization=buyer, plan=plan, stripe=True)


def _ago(*minutes: int):
    now = timezone.now()
    return [now - timedelta(minutes=m) for m in minutes]


def _identifiers(fake):
    return [event["identifier"] for event in fake.meter_events()]


def _pending():
    return MeterReport.objects.filter(status=MeterReportStatus.PENDING)


# --- the outbox row is written with the usage record ---------------------------------------------


@pytest.mark.django_db
def test_the_usage_write_queues_a_report_for_each_stripe_metered_record(metered, publisher, buyer, make_org):
    _user, pub = publisher
    records = usage_write(subscription=metered, units=[2, 0, 5], at=_ago(30, 20, 10))
    # Not metered by Stripe: a free plan, and a paid plan billed by the local backend.
    free = subscription_make(
        organization=make_org(name="Free Org"), plan=plan_make(listing=metered.listing, kind=PlanKind.FREE)
    )
    local = subscription_make(
        organization=make_org(name="Local Org"),
        plan=plan_make(listing=listing_make(publisher=pub), kind=PlanKind.METERED, price_per_1000_cents=100),
    )
    # A flat plan billed by Stripe reports its units too (Stripe prices the overage beyond the included units).
    flat = subscription_make(
        organization=buyer,
        plan=plan_make(
            listing=listing_make(publisher=pub),
            kind=PlanKind.FLAT,
            monthly_price_cents=4900,
            included_units=1000,
            price_per_1000_cents=50,
        ),
        stripe=True,
    )
    # Billed by Stripe but nothing to meter: a flat plan without an overage price has no metered price.
    no_overage = subscription_make(
        organization=make_org(name="Flat Org"),
        plan=plan_make(listing=listing_make(publisher=pub), kind=PlanKind.FLAT, monthly_price_cents=900),
        stripe=True,
    )
    no_overage.plan.stripe_metered_price_id = ""
    no_overage.plan.save()
    usage_write(subscription=free, units=[3], at=_ago(5))
    usage_write(subscription=local, units=[4], at=_ago(5))
    usage_write(subscription=no_overage, units=[4], at=_ago(5))
    flat_record = usage_write(subscription=flat, units=[7], at=_ago(5))[0]

    reports = {r.usage_record_id: r for r in MeterReport.objects.all()}
    assert set(reports) == {records[0].pk, records[2].pk, flat_record.pk}  # no report for 0 units
    report = reports[records[2].pk]
    assert (report.value, report.occurred_at, report.status) == (5, records[2].created_at, MeterReportStatus.PENDING)
    assert report.subscription_id == metered.pk
    assert report.stripe_customer_id == metered.organization.billing.stripe_customer_id
    assert report.stripe_customer_id.startswith("cus_")

    # Written again (a flush retried after a crash): nothing is queued twice.
    assert meter_reports_create(usage_records=list(UsageRecord.objects.all())) == 0
    assert MeterReport.objects.count() == 3


@pytest.mark.django_db
def test_a_failing_usage_write_leaves_neither_the_record_nor_its_report(metered):
    with pytest.raises(Crash), transaction.atomic():
        usage_write(subscription=metered, units=[3], at=_ago(1))
        assert MeterReport.objects.count() == 1
        raise Crash
    assert (UsageRecord.objects.count(), MeterReport.objects.count()) == (0, 0)


# --- sending ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_reports_are_sent_once_with_the_record_id_time_value_and_customer(metered, fake_stripe):
    records = usage_write(subscription=metered, units=[1, 2, 3, 4, 5], at=_ago(50, 40, 30, 20, 10))

    counts = meter_reports_send()

    assert counts == {"selected": 5, "sent": 5, "duplicates": 0, "failed": 0, "retry": 0}
    events = fake_stripe.meter_events()
    assert [e["identifier"] for e in events] == [meter_event_identifier(request_id=r.request_id) for r in records]
    for event, record in zip(events, records, strict=True):
        assert event["identifier"] == record.request_id
        assert event["event_name"] == meter_event_name(listing_id=metered.listing_id)
        assert event["timestamp"] == int(record.created_at.timestamp())
        assert event["payload"] == {
            "stripe_customer_id": metered.organization.billing.stripe_customer_id,
            "value": str(record.units),
        }
    assert not _pending().exists()
    assert all(r.sent_at and r.attempts == 1 for r in MeterReport.objects.all())
    # Nothing is due any more: the next run sends nothing.
    assert meter_reports_send()["selected"] == 0
    assert len(fake_stripe.meter_events()) == 5


@pytest.mark.django_db
def test_batches_go_in_id_order(metered, fake_stripe):
    records = usage_write(subscription=metered, units=[1] * 5, at=_ago(5, 4, 3, 2, 1))
    assert meter_reports_send(batch_size=2)["sent"] == 2
    assert _identifiers(fake_stripe) == [r.request_id for r in records[:2]]
    assert meter_reports_send(batch_size=2)["sent"] == 2
    assert meter_reports_send(batch_size=2)["sent"] == 1
    assert _identifiers(fake_stripe) == [r.request_id for r in records]


@pytest.mark.django_db
@pytest.mark.parametrize("status", [429, 500, 503])
def test_while_stripe_is_unavailable_reports_stay_pending_with_backoff_then_go_exactly_once(
    metered, fake_stripe, status
):
    records = usage_write(subscription=metered, units=[1, 2, 3, 4, 5, 6], at=_ago(6, 5, 4, 3, 2, 1))
    fake_stripe.fail_next(3, status, METER_EVENTS)
    t0 = timezone.now()

    counts = meter_reports_send(now=t0)
    assert (counts["sent"], counts["retry"]) == (0, 6)
    head = MeterReport.objects.get(usage_record=records[0])
    assert (head.status, head.attempts, head.next_attempt_at) == ("pending", 1, t0 + timedelta(seconds=10))
    assert "unavailable" in head.last_error.lower()
    # The rest were not tried; they wait as long as the head.
    assert set(_pending().exclude(pk=head.pk).values_list("attempts", "next_attempt_at")) == {
        (0, t0 + timedelta(seconds=10))
    }

    # Backing off: a run before the retry time does not call Stripe at all.
    requests_before = len(fake_stripe.requests())
    assert meter_reports_send(now=t0 + timedelta(seconds=9))["selected"] == 0
    assert len(fake_stripe.requests()) == requests_before

    t1 = t0 + timedelta(seconds=10)
    assert meter_reports_send(now=t1)["retry"] == 6
    head.refresh_from_db()
    assert (head.attempts, head.next_attempt_at) == (2, t1 + timedelta(seconds=20))  # doubled
    t2 = t1 + timedelta(seconds=20)
    assert meter_reports_send(now=t2)["retry"] == 6
    head.refresh_from_db()
    assert (head.attempts, head.next_attempt_at) == (3, t2 + timedelta(seconds=40))
    assert _pending().count() == 6 and fake_stripe.meter_events() == []  # nothing lost, nothing sent

    counts = meter_reports_send(now=t2 + timedelta(seconds=40))
    assert (counts["sent"], counts["retry"], counts["failed"]) == (6, 0, 0)
    assert _identifiers(fake_stripe) == [r.request_id for r in records]  # each exactly once
    head.refresh_from_db()
    assert (head.status, head.attempts, head.last_error) == ("sent", 4, "")


@pytest.mark.django_db
def test_a_storm_in_the_middle_of_a_batch_keeps_the_rest_for_later(metered, fake_stripe):
    records = usage_write(subscription=metered, units=[1] * 5, at=_ago(5, 4, 3, 2, 1))
    MeterReport.objects.filter(usage_record__in=records[:2]).update(status="sent")  # already sent earlier
    fake_stripe.fail_next(1, 429, METER_EVENTS)
    assert meter_reports_send()["retry"] == 3
    assert meter_reports_send(now=timezone.now() + timedelta(seconds=11))["sent"] == 3
    assert _identifiers(fake_stripe) == [r.request_id for r in records[2:]]


@pytest.mark.django_db
def test_a_resend_after_a_crash_is_counted_once_by_stripe_and_our_ledger_stays_right(metered, fake_stripe):
    records = usage_write(subscription=metered, units=[3, 1, 4, 1], at=_ago(4, 3, 2, 1))

    # Stripe accepts the events, then the process dies before marking the rows sent.
    with pytest.raises(Crash), transaction.atomic():
        assert meter_reports_send()["sent"] == 4
        raise Crash
    assert _pending().count() == 4
    assert len(fake_stripe.meter_events()) == 4

    counts = meter_reports_send()  # the next run sends the same rows again
    assert (counts["sent"], counts["duplicates"]) == (0, 4)
    assert not _pending().exists()
    assert _identifiers(fake_stripe) == [r.request_id for r in records]  # each once at Stripe
    assert all("already had" in r.last_error for r in MeterReport.objects.all())
    result = reconciliation_run(
        period_start=timezone.now() - timedelta(hours=1),
        period_end=timezone.now(),
        acknowledged_events=fake_stripe.meter_events(),
    )
    assert result["ok"], result["differences"]
    assert (result["usage_units"], result["reported_units"], result["acknowledged_records"]) == (9, 9, 4)


@pytest.mark.django_db
def test_events_outside_stripes_time_window_fail_with_the_reason_and_show_in_reconciliation(metered, fake_stripe):
    now = timezone.now()
    old, ahead, fine = usage_write(
        subscription=metered,
        units=[5, 6, 7],
        at=[now - timedelta(days=36), now + timedelta(minutes=6), now - timedelta(hours=1)],
    )

    counts = meter_reports_send(now=now)

    assert (counts["sent"], counts["failed"], counts["retry"]) == (1, 2, 0)
    assert _identifiers(fake_stripe) == [fine.request_id]
    old_report, ahead_report = MeterReport.objects.get(usage_record=old), MeterReport.objects.get(usage_record=ahead)
    assert old_report.status == ahead_report.status == MeterReportStatus.FAILED
    assert "35 days" in old_report.last_error and "window" in old_report.last_error
    assert "5 minutes ahead" in ahead_report.last_error
    audited = AuditLogEntry.objects.filter(action=AuditAction.METER_REPORT_FAILED)
    assert sorted(e.data["usage_record_id"] for e in audited) == sorted([old.pk, ahead.pk])
    assert meter_reports_send(now=now)["selected"] == 0  # failed rows are not retried

    result = reconciliation_run(period_start=now - timedelta(days=40), period_end=now + timedelta(hours=1))
    assert not result["ok"]
    assert [(d["kind"], d["usage_record_id"]) for d in result["differences"]] == [
        ("failed_report", old.pk),
        ("failed_report", ahead.pk),
    ]


@pytest.mark.django_db
def test_failed_reports_read_no_row_each(metered, fake_stripe):
    """Marking reports failed (audited with their organization) reads nothing per report: a batch with more
    failures costs more audit inserts, never more selects."""
    from django.test.utils import CaptureQueriesContext

    def selects_for(count: int) -> int:
        now = timezone.now()
        usage_write(subscription=metered, units=[1] * count, at=[now - timedelta(days=36)] * count)
        with CaptureQueriesContext(connection) as ctx:
            assert meter_reports_send(now=now)["failed"] == count
        return sum(1 for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith("SELECT"))

    assert selects_for(1) == selects_for(4)


@pytest.mark.django_db
def test_the_admin_list_of_meter_reports_reads_no_row_each(client, staff_user, metered):
    from django.test.utils import CaptureQueriesContext

    client.force_login(staff_user)

    def queries_with(count: int) -> int:
        usage_write(subscription=metered, units=[1] * count, at=_ago(*range(count)))
        with CaptureQueriesContext(connection) as ctx:
            assert client.get("/admin/billing/meterreport/").status_code == 200
        return len(ctx.captured_queries)

    assert queries_with(1) == queries_with(3)


@pytest.mark.django_db
def test_an_event_stripe_refuses_fails_alone_and_the_rest_go(metered, fake_stripe):
    records = usage_write(subscription=metered, units=[1, 2, 3], at=_ago(3, 2, 1))
    fake_stripe.fail_next(
        1, 400, METER_EVENTS, error={"type": "invalid_request_error", "code": "parameter_invalid", "message": "Bad."}
    )
    counts = meter_reports_send()
    assert (counts["sent"], counts["failed"]) == (2, 1)
    refused = MeterReport.objects.get(usage_record=records[0])
    assert refused.status == "failed" and "Bad." in refused.last_error and "parameter_invalid" in refused.last_error
    assert _identifiers(fake_stripe) == [r.request_id for r in records[1:]]


@pytest.mark.django_db(transaction=True)
def test_concurrent_senders_skip_each_others_rows(metered, fake_stripe):
    records = usage_write(subscription=metered, units=[1, 2, 3, 4], at=_ago(4, 3, 2, 1))
    locked, release = threading.Event(), threading.Event()

    def other_sender():
        # Another run holding the first two rows (FOR UPDATE) while it talks to Stripe.
        try:
            with transaction.atomic():
                list(MeterReport.objects.select_for_update().filter(usage_record__in=records[:2]))
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other_sender)
    thread.start()
    try:
        assert locked.wait(10)
        assert meter_reports_send()["sent"] == 2  # skips the locked rows instead of waiting or sending twice
        assert _identifiers(fake_stripe) == [r.request_id for r in records[2:]]
    finally:
        release.set()
        thread.join(10)
    assert meter_reports_send()["sent"] == 2
    assert sorted(_identifiers(fake_stripe)) == sorted(r.request_id for r in records)
