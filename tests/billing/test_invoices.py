"""Invoices: the local backend's from the usage ledger and the price rules, and mirrors of Stripe's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from billing import invoices, pricing
from billing.metering import meter_event_name
from billing.models import Invoice, InvoiceLine, Payout, PlanKind, PlatformSettings
from billing.payouts import payouts_for_invoice
from marketplace.integrations import stripe as payments
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.ledger_support import (
    listing_make,
    plan_make,
    stripe_subscription_make,
    subscription_make,
    usage_write,
)

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fee_15_percent():
    PlatformSettings.objects.update_or_create(pk=1, defaults={"platform_fee_percent": Decimal("15")})


@pytest.fixture
def buyer(make_org):
    return make_org(name="Contoso")


@pytest.fixture
def pub(publisher):
    return publisher[1]


def _subscribe(*, buyer, pub, **plan):
    return subscription_make(
        organization=buyer, plan=plan_make(listing=listing_make(publisher=pub), **plan), start=START, end=END
    )


def _usage(subscription, units):
    """``units`` in the period, plus usage just outside it that must not count."""
    usage_write(subscription=subscription, units=[999], at=[START - timedelta(seconds=1)])
    usage_write(subscription=subscription, units=[888], at=[END])
    inside = [START + timedelta(hours=i + 1) for i in range(len(units))]
    usage_write(subscription=subscription, units=units, at=inside)


def _lines(invoice):
    return [
        (line.kind, line.units, line.amount_cents, line.platform_fee_cents, line.publisher_share_cents)
        for line in invoice.lines.order_by("pk")
    ]


def _close(subscription):
    return invoices.invoice_period_close(subscription=subscription, period_start=START, period_end=END)


def test_a_free_plan_has_nothing_to_invoice(buyer, pub):
    sub = _subscribe(buyer=buyer, pub=pub, kind=PlanKind.FREE, included_units=10_000)
    _usage(sub, [500, 700])
    assert _close(sub) is None
    assert not Invoice.objects.exists()


def test_a_flat_plan_charges_its_fee_and_the_overage_split_with_the_platform_fee(
    buyer, pub, django_capture_on_commit_callbacks
):
    # $49 a month with 100,000 units included, then $0.50 per 1,000.
    sub = _subscribe(
        buyer=buyer,
        pub=pub,
        kind=PlanKind.FLAT,
        monthly_price_cents=4900,
        included_units=100_000,
        price_per_1000_cents=50,
    )
    _usage(sub, [100_000, 23_456])
    with django_capture_on_commit_callbacks() as callbacks:
        invoice = _close(sub)
    # 23,456 units over × 50 cents / 1,000 = 1,172.8 → 1,173 cents. Fee 15%: 735 of 4,900; 176 of 1,173.
    assert _lines(invoice) == [("flat", 0, 4900, 735, 4165), ("overage", 23_456, 1173, 176, 997)]
    assert (invoice.total_cents, invoice.platform_fee_cents) == (6073, 911)
    assert (invoice.status, invoice.backend, invoice.currency) == ("paid", "local", "usd")
    assert invoice.paid_at is not None and invoice.number == f"MP-{invoice.pk:06d}"
    assert (invoice.organization, invoice.subscription, invoice.period_start, invoice.period_end) == (
        buyer,
        sub,
        START,
        END,
    )
    line = invoice.lines.get(kind="overage")
    assert (line.publisher, line.listing, line.plan) == (pub, sub.listing, sub.plan)
    assert "23,456 units over the 100,000 included" in line.description and "$0.50 per 1,000" in line.description
    assert len(callbacks) == 1  # the payouts follow on commit
    actions = AuditLogEntry.objects.filter(data__invoice_id=invoice.pk).values_list("action", flat=True)
    assert sorted(actions) == sorted([AuditAction.INVOICE_ISSUED, AuditAction.INVOICE_PAID])

    [payout] = payouts_for_invoice(invoice_id=invoice.pk)
    assert (payout.publisher, payout.amount_cents, payout.idempotency_key) == (
        pub,
        4165 + 997,
        f"payout-{invoice.pk}-{pub.pk}",
    )


def test_a_flat_plan_within_its_included_units_charges_the_fee_only(buyer, pub):
    sub = _subscribe(
        buyer=buyer, pub=pub, kind=PlanKind.FLAT, monthly_price_cents=2000, included_units=1000, price_per_1000_cents=80
    )
    _usage(sub, [400, 600])  # exactly the included 1,000
    assert _lines(_close(sub)) == [("flat", 0, 2000, 300, 1700)]


def test_a_metered_plan_charges_every_unit_rounded_once_on_the_total(buyer, pub):
    # 25 cents per 1,000 units: 12,345 units = 308.625 cents → 309, not the sum of per-call roundings.
    sub = _subscribe(buyer=buyer, pub=pub, kind=PlanKind.METERED, price_per_1000_cents=25)
    _usage(sub, [1] * 45 + [12_300])
    invoice = _close(sub)
    # Fee 15% of 309 = 46.35 → 46; the publisher gets exactly the rest.
    assert _lines(invoice) == [("metered", 12_345, 309, 46, 263)]
    assert invoice.total_cents == 309


def test_a_metered_plan_with_a_base_fee_and_no_usage(buyer, pub):
    sub = _subscribe(buyer=buyer, pub=pub, kind=PlanKind.METERED, monthly_price_cents=1000, price_per_1000_cents=25)
    assert _lines(_close(sub)) == [("flat", 0, 1000, 150, 850)]


def test_closing_a_period_twice_gives_the_same_invoice(buyer, pub):
    sub = _subscribe(buyer=buyer, pub=pub, kind=PlanKind.METERED, price_per_1000_cents=100)
    _usage(sub, [5000])
    first = _close(sub)
    again = _close(sub)
    assert again.pk == first.pk
    assert Invoice.objects.count() == 1 and InvoiceLine.objects.count() == 1
    # The database refuses a second local invoice of the same period and kind, whatever the code does.
    with pytest.raises(IntegrityError), transaction.atomic():
        Invoice.objects.create(
            organization=buyer,
            subscription=sub,
            backend="local",
            billing_reason=invoices.PERIOD_CLOSE,
            number="dup",
            period_start=START,
            period_end=END,
        )


def test_a_fee_invoiced_in_advance_is_not_charged_again_at_the_close(buyer, pub):
    sub = _subscribe(
        buyer=buyer,
        pub=pub,
        kind=PlanKind.FLAT,
        monthly_price_cents=4900,
        included_units=1000,
        price_per_1000_cents=100,
    )
    opened = invoices.invoice_period_open(subscription=sub, period_start=START, period_end=END)
    assert _lines(opened) == [("flat", 0, 4900, 735, 4165)]
    assert opened.billing_reason == "period_open" and opened.status == "paid"
    assert invoices.invoice_period_open(subscription=sub, period_start=START, period_end=END).pk == opened.pk
    _usage(sub, [3000])
    closed = _close(sub)
    assert _lines(closed) == [("overage", 2000, 200, 30, 170)]
    assert Invoice.objects.filter(subscription=sub).count() == 2


def test_no_fee_in_a_trial(buyer, pub):
    sub = _subscribe(
        buyer=buyer,
        pub=pub,
        kind=PlanKind.FLAT,
        monthly_price_cents=4900,
        included_units=1000,
        price_per_1000_cents=100,
    )
    sub.trial_end = END
    sub.save()
    assert invoices.invoice_period_open(subscription=sub, period_start=START, period_end=END) is None
    _usage(sub, [1500])
    assert _lines(_close(sub)) == [("overage", 500, 50, 8, 42)]


def test_a_plan_change_mid_period_is_invoiced_at_once_prorated(buyer, pub):
    sub = _subscribe(
        buyer=buyer, pub=pub, kind=PlanKind.FLAT, monthly_price_cents=2000, included_units=1000, price_per_1000_cents=80
    )
    bigger = plan_make(
        listing=sub.listing, kind=PlanKind.FLAT, monthly_price_cents=5000, included_units=5000, price_per_1000_cents=50
    )
    at = START + (END - START) / 2
    amount = pricing.proration_minor(old_plan=sub.plan, new_plan=bigger, period_start=START, period_end=END, at=at)
    assert amount == 1500  # half of the new $50 less half of the old $20

    invoice = invoices.invoice_proration_add(
        subscription=sub, old_plan=sub.plan, new_plan=bigger, amount_cents=amount, at=at
    )

    assert _lines(invoice) == [("flat", 0, 1500, 225, 1275)]
    assert (invoice.billing_reason, invoice.period_start, invoice.period_end, invoice.status) == (
        "proration",
        at,
        END,
        "paid",
    )
    assert invoice.lines.get().plan == bigger and "prorated" in invoice.lines.get().description
    again = invoices.invoice_proration_add(
        subscription=sub, old_plan=sub.plan, new_plan=bigger, amount_cents=amount, at=at
    )
    assert again.pk == invoice.pk
    assert (
        invoices.invoice_proration_add(subscription=sub, old_plan=sub.plan, new_plan=sub.plan, amount_cents=0, at=at)
        is None
    )


def test_ended_periods_of_local_paid_subscriptions_are_closed_once(buyer, pub, make_org):
    due = _subscribe(buyer=buyer, pub=pub, kind=PlanKind.METERED, price_per_1000_cents=100)
    _usage(due, [2000])
    _subscribe(buyer=make_org(name="Free"), pub=pub, kind=PlanKind.FREE)  # free: never invoiced by the sweep
    running = subscription_make(
        organization=make_org(name="Later"),
        plan=plan_make(listing=listing_make(publisher=pub), kind=PlanKind.METERED, price_per_1000_cents=100),
        start=END,
        end=END + timedelta(days=30),
    )
    assert invoices.invoices_local_close_due(now=END + timedelta(hours=1)) == 1
    assert invoices.invoices_local_close_due(now=END + timedelta(hours=2)) == 0
    [invoice] = Invoice.objects.all()
    assert (invoice.subscription, invoice.total_cents) == (due, 200)
    assert not Invoice.objects.filter(subscription=running).exists()


# --- Stripe invoices -------------------------------------------------------------------------------


def _stripe_paid_invoice(fake, *, buyer, pub, units: int):
    """A Stripe subscription (flat $20 + metered $2.50 per 1,000) whose renewal invoice is paid."""
    sub, stripe_sub = stripe_subscription_make(fake, buyer=buyer, publisher=pub)
    payments.meter_event_create(
        event_name=meter_event_name(listing_id=sub.listing_id),
        identifier="u-1",
        customer=buyer.billing.stripe_customer_id,
        value=units,
        timestamp=stripe_sub["created"],
    )
    renewal = fake.advance_subscription_period(stripe_sub["id"])["invoice"]  # charged at once
    return sub, None, payments.invoice_retrieve(invoice=renewal["id"])


def test_a_paid_stripe_invoice_is_mirrored_once_with_lines_by_price(fake_stripe, buyer, pub):
    sub, _first, paid = _stripe_paid_invoice(fake_stripe, buyer=buyer, pub=pub, units=4000)
    assert paid["status"] == "paid"

    invoice = invoices.invoice_from_stripe(stripe_invoice=paid)

    assert (invoice.backend, invoice.stripe_invoice_id, invoice.status) == ("stripe", paid["id"], "paid")
    assert (invoice.organization, invoice.subscription, invoice.number) == (buyer, sub, paid["number"])
    assert invoice.total_cents == paid["total"] == 2000 + 1000  # 4,000 units × 0.25 cents
    assert sorted(_lines(invoice)) == [("flat", 0, 2000, 300, 1700), ("metered", 4000, 1000, 150, 850)]
    assert invoice.platform_fee_cents == 450
    assert set(invoice.lines.values_list("publisher", flat=True)) == {pub.pk}
    assert invoice.paid_at is not None and invoice.billing_reason == paid["billing_reason"]

    # Delivered again (a replayed webhook): the same row, no new lines.
    assert invoices.invoice_from_stripe(stripe_invoice=paid).pk == invoice.pk
    assert InvoiceLine.objects.filter(invoice=invoice).count() == 2
    assert Invoice.objects.filter(stripe_invoice_id=paid["id"]).count() == 1


def test_an_older_invoice_event_never_reopens_a_paid_invoice(
    fake_stripe, buyer, pub, django_capture_on_commit_callbacks
):
    _sub, _first, paid = _stripe_paid_invoice(fake_stripe, buyer=buyer, pub=pub, units=1000)
    open_version = {**paid, "status": "open", "status_transitions": {**paid["status_transitions"], "paid_at": None}}
    created = paid["created"]

    with django_capture_on_commit_callbacks() as callbacks:
        invoice = invoices.invoice_from_stripe(stripe_invoice=paid, event_created=created + 10)
    assert invoice.status == "paid" and len(callbacks) == 1  # payouts queued once it is paid
    # invoice.finalized (open) arriving late, older or with the same stamp: still paid, nothing queued.
    with django_capture_on_commit_callbacks() as callbacks:
        assert invoices.invoice_from_stripe(stripe_invoice=open_version, event_created=created + 5).status == "paid"
        assert invoices.invoice_from_stripe(stripe_invoice=open_version, event_created=created + 20).status == "paid"
        assert invoices.invoice_from_stripe(stripe_invoice=paid, event_created=created + 30).status == "paid"
    assert callbacks == []
    assert AuditLogEntry.objects.filter(action=AuditAction.INVOICE_PAID, data__invoice_id=invoice.pk).count() == 1


def test_an_open_stripe_invoice_then_paid(fake_stripe, buyer, pub, django_capture_on_commit_callbacks):
    _sub, _first, paid = _stripe_paid_invoice(fake_stripe, buyer=buyer, pub=pub, units=1000)
    open_version = {**paid, "status": "open"}
    with django_capture_on_commit_callbacks() as callbacks:
        invoice = invoices.invoice_from_stripe(stripe_invoice=open_version, event_created=paid["created"])
    assert (invoice.status, invoice.paid_at, callbacks) == ("open", None, [])
    assert payouts_for_invoice(invoice_id=invoice.pk) == []  # nothing is paid out before the buyer pays
    invoice = invoices.invoice_from_stripe(stripe_invoice=paid, event_created=paid["created"] + 1)
    assert invoice.status == "paid"
    assert len(payouts_for_invoice(invoice_id=invoice.pk)) == 1
    assert Payout.objects.get(invoice=invoice).amount_cents == 1700 + 212  # 250 cents: fee 37.5 → 38, share 212


def test_an_invoice_of_an_unknown_customer_is_not_mirrored(fake_stripe):
    assert (
        invoices.invoice_from_stripe(
            stripe_invoice={"id": "in_x", "customer": "cus_nobody", "status": "paid", "created": 1, "lines": {}}
        )
        is None
    )
    assert not Invoice.objects.exists()
