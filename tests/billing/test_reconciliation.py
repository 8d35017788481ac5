"""Reconciliation of the usage ledger with what was reported to (the fake) Stripe's meters."""

from __future__ import annotations

import io
import random
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from billing.metering import meter_event_name, meter_reports_send
from billing.models import MeterReport, MeterReportStatus, PlanKind
from billing.reconciliation import reconciliation_daily, reconciliation_month_bounds, reconciliation_run
from marketplace.integrations import stripe as payments
from tests.billing.ledger_support import listing_make, plan_make, subscription_make, usage_write

pytestmark = pytest.mark.django_db

METER_EVENTS = "/v1/billing/meter_events"


class Crash(Exception):
    """Stands for the process dying before its transaction commits."""


def _send_until_done(*, now, batch_size=50):
    """Run the sender as beat would, moving the clock past each backoff, until nothing is pending."""
    for _ in range(100):
        if not MeterReport.objects.filter(status=MeterReportStatus.PENDING).exists():
            return now
        counts = meter_reports_send(batch_size=batch_size, now=now)
        now += timedelta(seconds=10) if not counts["retry"] else timedelta(minutes=16)
    raise AssertionError("reports still pending")


@pytest.fixture
def seeded_month(publisher, make_org, fake_stripe):
    """200 usage records over the last 30 days across 3 Stripe-billed subscriptions, reported through
    the sender against the fake Stripe with a 429 storm mid-way, a crash after Stripe accepted a batch,
    and a duplicate resend."""
    _user, pub = publisher
    rng = random.Random(4)
    now = timezone.now()
    subscriptions = [
        subscription_make(
            organization=make_org(name=f"Buyer {i}"),
            plan=plan_make(listing=listing_make(publisher=pub), **plan),
            stripe=True,
        )
        for i, plan in enumerate(
            [
                {"kind": PlanKind.METERED, "price_per_1000_cents": 250},
                {"kind": PlanKind.METERED, "price_per_1000_cents": 100},
                {"kind": PlanKind.FLAT, "monthly_price_cents": 4900, "included_units": 100, "price_per_1000_cents": 50},
            ]
        )
    ]
    records = []
    for i, subscription in enumerate(subscriptions):  # 67 + 67 + 66, as three flushes would write them
        n = len(range(i, 200, 3))
        at = [now - timedelta(days=30) + timedelta(seconds=rng.randrange(30 * 86400 - 120)) for _ in range(n)]
        records += usage_write(subscription=subscription, units=[rng.randint(1, 64) for _ in range(n)], at=at)
    records.sort(key=lambda record: record.pk)
    assert MeterReport.objects.count() == 200

    assert meter_reports_send(batch_size=50, now=now)["sent"] == 50
    fake_stripe.fail_next(7, 429, METER_EVENTS)  # the storm: the sender backs off, nothing is lost
    fake_stripe.fail_next(2, 500, METER_EVENTS)
    now = _send_until_done(now=now + timedelta(seconds=10), batch_size=30)
    # Rewind part of the ledger as a crash would, and resend one row that was already sent.
    MeterReport.objects.filter(usage_record__in=records[150:170]).update(status="pending", sent_at=None)
    with pytest.raises(Crash), transaction.atomic():
        meter_reports_send(batch_size=10, now=now)
        raise Crash
    MeterReport.objects.filter(usage_record=records[3]).update(status="pending", sent_at=None)
    _send_until_done(now=now)
    return {"records": records, "now": timezone.now(), "subscriptions": subscriptions}


def _window(seeded):
    return {"period_start": seeded["now"] - timedelta(days=31), "period_end": seeded["now"] + timedelta(minutes=1)}


def _diffs(result):
    return [(d["kind"], d["usage_record_id"]) for d in result["differences"]]


def test_a_seeded_month_reconciles_to_zero(seeded_month, fake_stripe):
    records = seeded_month["records"]
    events = fake_stripe.meter_events()
    assert sorted(e["identifier"] for e in events) == sorted(r.request_id for r in records)  # each once

    result = reconciliation_run(**_window(seeded_month), acknowledged_events=events)

    assert result["ok"] and result["differences"] == [] and result["counts"] == {}
    units = sum(r.units for r in records)
    assert (result["usage_records"], result["usage_units"]) == (200, units)
    assert (result["reported_records"], result["reported_units"], result["acknowledged_records"]) == (200, units, 200)
    assert sum(int(e["payload"]["value"]) for e in events) == units
    assert all(r.status == "sent" for r in MeterReport.objects.all())
    assert {e["event_name"] for e in events} == {
        meter_event_name(listing_id=s.listing_id) for s in seeded_month["subscriptions"]
    }


def test_a_deleted_or_failed_report_shows_exactly_that_record(seeded_month, fake_stripe):
    records = seeded_month["records"]
    deleted, failed = records[17], records[120]
    MeterReport.objects.filter(usage_record=deleted).delete()
    MeterReport.objects.filter(usage_record=failed).update(status="failed", last_error="Refused by Stripe.")

    result = reconciliation_run(**_window(seeded_month), acknowledged_events=fake_stripe.meter_events())

    assert not result["ok"]
    assert sorted(_diffs(result)) == sorted([("missing_report", deleted.pk), ("failed_report", failed.pk)])
    by_kind = {d["kind"]: d for d in result["differences"]}
    assert by_kind["missing_report"]["identifier"] == deleted.request_id
    assert by_kind["failed_report"]["detail"] == "Refused by Stripe."
    assert result["counts"] == {"missing_report": 1, "failed_report": 1}
    assert result["reported_records"] == 198


def test_value_differences_and_events_the_ledger_does_not_have(seeded_month, fake_stripe):
    records = seeded_month["records"]
    changed = records[42]
    MeterReport.objects.filter(usage_record=changed).update(value=changed.units + 1)
    customer = seeded_month["subscriptions"][0].organization.billing.stripe_customer_id
    payments.meter_event_create(
        event_name=meter_event_name(listing_id=seeded_month["subscriptions"][0].listing_id),
        identifier="not-in-our-ledger",
        customer=customer,
        value=9,
        timestamp=seeded_month["now"] - timedelta(hours=1),
    )

    result = reconciliation_run(**_window(seeded_month), acknowledged_events=fake_stripe.meter_events())

    assert sorted(_diffs(result), key=str) == sorted(
        [("value_mismatch", changed.pk), ("acknowledged_mismatch", changed.pk), ("unknown_at_stripe", None)], key=str
    )
    assert [d["identifier"] for d in result["differences"] if d["kind"] == "unknown_at_stripe"] == ["not-in-our-ledger"]
    # Without Stripe's side, only what the ledger itself shows.
    assert _diffs(reconciliation_run(**_window(seeded_month))) == [("value_mismatch", changed.pk)]


def test_pending_and_unqueued_usage_show_until_reported(publisher, make_org, fake_stripe):
    _user, pub = publisher
    sub = subscription_make(
        organization=make_org(name="Buyer"),
        plan=plan_make(listing=listing_make(publisher=pub), kind=PlanKind.METERED, price_per_1000_cents=100),
        stripe=True,
    )
    now = timezone.now()
    pending, sent = usage_write(subscription=sub, units=[3, 4], at=[now - timedelta(hours=2), now - timedelta(hours=1)])
    MeterReport.objects.filter(usage_record=sent).update(status="sent", sent_at=now)
    window = {"period_start": now - timedelta(days=1), "period_end": now}
    assert _diffs(reconciliation_run(**window)) == [("pending_report", pending.pk)]
    assert meter_reports_send(now=now)["sent"] == 1
    assert reconciliation_run(**window)["ok"]
    # The daily run covers Stripe's window up to a few minutes ago.
    assert reconciliation_daily(now=now + timedelta(hours=1))["usage_records"] == 2


def test_the_management_command_prints_the_month(publisher, make_org, fake_stripe):
    _user, pub = publisher
    sub = subscription_make(
        organization=make_org(name="Buyer"),
        plan=plan_make(listing=listing_make(publisher=pub), kind=PlanKind.METERED, price_per_1000_cents=100),
        stripe=True,
    )
    at = timezone.now() - timedelta(minutes=5)
    records = usage_write(subscription=sub, units=[5, 6, 7], at=[at] * 3)
    meter_reports_send()
    month = f"{at:%Y-%m}"
    start, end = reconciliation_month_bounds(month=month)
    assert start <= at < end and (end - start).days in (28, 29, 30, 31)

    out = io.StringIO()
    call_command("billing_reconcile", "--month", month, stdout=out)
    assert f"{month}: 3 usage records (18 units); 3 reported (18 units)." in out.getvalue()
    assert "Reconciled: no differences." in out.getvalue()

    MeterReport.objects.filter(usage_record=records[1]).delete()
    out = io.StringIO()
    call_command("billing_reconcile", "--month", month, stdout=out)
    assert "1 differences: missing_report 1" in out.getvalue()
    assert f"missing_report: usage record {records[1].pk} ({records[1].request_id})" in out.getvalue()
    with pytest.raises(CommandError, match="1 differences"):
        call_command("billing_reconcile", "--month", month, "--fail-on-difference", stdout=io.StringIO())
    with pytest.raises(CommandError, match="YYYY-MM"):
        call_command("billing_reconcile", "--month", "November", stdout=io.StringIO())


def test_month_bounds():
    start, end = reconciliation_month_bounds(month="2026-12")
    assert (start.isoformat(), end.isoformat()) == ("2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")


def test_the_ledger_tasks_are_registered_and_scheduled():
    from marketplace.celery import app

    app.loader.import_default_modules()
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for name in (
        "billing.meter_reports_send",
        "billing.payouts_pending_send",
        "billing.reconciliation_run",
        "billing.invoices_local_close_due",
    ):
        assert name in app.tasks and name in schedule
    for name in ("billing.payouts_for_invoice", "billing.payout_send"):
        assert name in app.tasks
