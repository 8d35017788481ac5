"""Invoices: the local backend's, computed from the usage ledger with the price rules of billing.pricing,
and mirrors of the invoices Stripe charged.

Local backend. A period's monthly fee is charged once: in advance when checkout opens the first period
(:func:`invoice_period_open`), otherwise with the period's usage when the period closes
(:func:`invoice_period_close`). Usage is the sum of ``inference.UsageRecord.units`` in
``[period_start, period_end)``, charged as Stripe would: included units free and the rest at the
overage price (flat plans), or every unit at the unit price (metered), rounded once on the total. Each
line carries its publisher and the platform fee / publisher share (``pricing.fee_split``). A local
invoice is paid at once (the test card) and its payouts follow on commit. A plan change mid-period is
invoiced at once, prorated (:func:`invoice_proration_add`). All are idempotent: one invoice per
subscription, period start and kind (``billing_reason``; constraint ``invoice_local_once``).

Stripe backend. :func:`invoice_from_stripe` mirrors a Stripe invoice (``invoice.paid``, or any other
invoice event): lines by price id → plan → listing and publisher, amounts from Stripe. Once per Stripe
invoice id; a status never moves back (an older event cannot turn a paid invoice open again).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Sum
from django.utils import timezone

from accounts.models import Organization
from billing import pricing
from billing.models import (
    BillingCustomer,
    Invoice,
    InvoiceLine,
    InvoiceLineKind,
    InvoiceStatus,
    Plan,
    PlanKind,
    Subscription,
)
from inference.models import UsageRecord
from marketplace.integrations import stripe as payments
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)

LOCAL = "local"
PERIOD_OPEN = "period_open"
PERIOD_CLOSE = "period_close"
PRORATION = "proration"
# A status only moves forward: an older event never reopens a paid or voided invoice.
STATUS_RANK = {
    InvoiceStatus.DRAFT: 0,
    InvoiceStatus.OPEN: 1,
    InvoiceStatus.UNCOLLECTIBLE: 2,
    InvoiceStatus.PAID: 3,
    InvoiceStatus.VOID: 3,
}


def period_units(*, subscription_id: int, period_start: datetime, period_end: datetime) -> int:
    """Units in the usage ledger for the subscription in ``[period_start, period_end)``."""
    total = UsageRecord.objects.filter(
        subscription_id=subscription_id, created_at__gte=period_start, created_at__lt=period_end
    ).aggregate(total=Sum("units"))["total"]
    return int(total or 0)


def line_split(*, amount_cents: int) -> tuple[int, int]:
    """``(platform_fee_cents, publisher_share_cents)``; a credit (negative amount) splits the same way."""
    if amount_cents >= 0:
        return pricing.fee_split(amount_cents=amount_cents)
    fee, share = pricing.fee_split(amount_cents=-amount_cents)
    return -fee, -share


def _in_trial(*, subscription: Subscription, period_end: datetime) -> bool:
    return subscription.trial_end is not None and subscription.trial_end >= period_end


def _period_text(period_start: datetime, period_end: datetime) -> str:
    return f"{period_start:%b %-d, %Y} – {period_end:%b %-d, %Y}"


def _local_invoice_get(*, subscription: Subscription, period_start: datetime, reason: str) -> Invoice | None:
    return Invoice.objects.filter(
        backend=LOCAL, subscription=subscription, period_start=period_start, billing_reason=reason
    ).first()


def _local_invoice_create(
    *,
    subscription: Subscription,
    period_start: datetime,
    period_end: datetime,
    reason: str,
    lines: list[dict[str, Any]],
) -> Invoice:
    """Write the invoice and its lines, pay it (the local backend's test card), queue its payouts."""
    plan = subscription.plan
    now = timezone.now()
    invoice = Invoice.objects.create(
        organization_id=subscription.organization_id,
        subscription=subscription,
        backend=LOCAL,
        billing_reason=reason,
        number=f"pending-{uuid.uuid4().hex}",
        period_start=period_start,
        period_end=period_end,
        status=InvoiceStatus.OPEN,
        currency=plan.currency,
    )
    invoice.number = f"MP-{invoice.pk:06d}"
    rows = []
    for line in lines:
        fee, share = line_split(amount_cents=line["amount_cents"])
        rows.append(
            InvoiceLine(
                invoice=invoice,
                subscription=subscription,
                listing_id=plan.listing_id,
                publisher_id=plan.listing.organization_id,
                plan=plan,
                kind=line["kind"],
                description=line["description"][:200],
                units=line.get("units", 0),
                amount_cents=line["amount_cents"],
                platform_fee_cents=fee,
                publisher_share_cents=share,
            )
        )
    InvoiceLine.objects.bulk_create(rows)
    invoice.total_cents = sum(row.amount_cents for row in rows)
    invoice.platform_fee_cents = sum(row.platform_fee_cents for row in rows)
    # The local backend charges the test card at once.
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = now
    invoice.save(update_fields=["number", "total_cents", "platform_fee_cents", "status", "paid_at"])
    data = {
        "invoice_id": invoice.pk,
        "number": invoice.number,
        "subscription_id": subscription.pk,
        "billing_reason": reason,
        "period_start": period_start.isoformat(),
        "period_end": period_end.isoformat(),
        "total_cents": invoice.total_cents,
        "platform_fee_cents": invoice.platform_fee_cents,
        "currency": invoice.currency,
    }
    audit_log_write(action=AuditAction.INVOICE_ISSUED, organization=subscription.organization, data=data)
    audit_log_write(action=AuditAction.INVOICE_PAID, organization=subscription.organization, data=data)
    _payouts_on_commit(invoice=invoice)
    return invoice


def _payouts_on_commit(*, invoice: Invoice) -> None:
    if invoice.status != InvoiceStatus.PAID or invoice.total_cents <= 0:
        return
    from billing.tasks import payouts_for_invoice_task

    invoice_id = invoice.pk
    transaction.on_commit(lambda: payouts_for_invoice_task.delay(invoice_id=invoice_id))


def _flat_line(*, plan: Plan, period_start: datetime, period_end: datetime) -> dict[str, Any]:
    fee = pricing.money_format(plan.monthly_price_cents, plan.currency)
    period = _period_text(period_start, period_end)
    return {
        "kind": InvoiceLineKind.FLAT,
        "description": f"{plan.listing.name} · {plan.name}: monthly fee {fee} ({period})",
        "units": 0,
        "amount_cents": plan.monthly_price_cents,
    }


@transaction.atomic
def invoice_period_open(*, subscription: Subscription, period_start: datetime, period_end: datetime) -> Invoice | None:
    """Local backend: the period's monthly fee, in advance (checkout of a paid plan). None when there is
    no fee to charge (free plans, no monthly fee, a trial covering the period). Once per period."""
    subscription = (
        Subscription.objects.select_for_update(of=("self",)).select_related("plan__listing").get(pk=subscription.pk)
    )
    plan = subscription.plan
    if plan.kind == PlanKind.FREE or plan.monthly_price_cents <= 0:
        return None
    if _in_trial(subscription=subscription, period_end=period_end):
        return None
    existing = _local_invoice_get(subscription=subscription, period_start=period_start, reason=PERIOD_OPEN)
    if existing is not None:
        return existing
    lines = [_flat_line(plan=plan, period_start=period_start, period_end=period_end)]
    return _local_invoice_create(
        subscription=subscription, period_start=period_start, period_end=period_end, reason=PERIOD_OPEN, lines=lines
    )


@transaction.atomic
def invoice_period_close(*, subscription: Subscription, period_start: datetime, period_end: datetime) -> Invoice | None:
    """Local backend: invoice the ended period ``[period_start, period_end)`` under the subscription's plan:
    the monthly fee (unless invoiced in advance, or in a trial), then the usage beyond the included units
    (flat: overage) or all of it (metered). Free plans have nothing to invoice (None). Once per period.

    Call it before the subscription moves to its next period or plan: it prices with ``subscription.plan``.
    """
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("plan__listing", "organization")
        .get(pk=subscription.pk)
    )
    existing = _local_invoice_get(subscription=subscription, period_start=period_start, reason=PERIOD_CLOSE)
    if existing is not None:
        return existing
    plan = subscription.plan
    if plan.kind == PlanKind.FREE:
        return None
    units = period_units(subscription_id=subscription.pk, period_start=period_start, period_end=period_end)
    lines: list[dict[str, Any]] = []
    fee_invoiced = _local_invoice_get(subscription=subscription, period_start=period_start, reason=PERIOD_OPEN)
    in_trial = _in_trial(subscription=subscription, period_end=period_end)
    if plan.monthly_price_cents > 0 and fee_invoiced is None and not in_trial:
        lines.append(_flat_line(plan=plan, period_start=period_start, period_end=period_end))
    charged_units = pricing.billable_units(plan=plan, units=units)
    amount = pricing.usage_charge_minor(plan=plan, units=units)
    price = pricing.money_format(plan.price_per_1000_units_cents, plan.currency)
    if plan.kind == PlanKind.FLAT and charged_units > 0 and amount > 0:
        included = f"{plan.monthly_quota_units or 0:,}"
        lines.append(
            {
                "kind": InvoiceLineKind.OVERAGE,
                "description": (
                    f"{plan.listing.name} · {plan.name}: {charged_units:,} units over the {included} included, "
                    f"at {price} per 1,000"
                ),
                "units": charged_units,
                "amount_cents": amount,
            }
        )
    elif plan.kind == PlanKind.METERED and units > 0:
        lines.append(
            {
                "kind": InvoiceLineKind.METERED,
                "description": f"{plan.listing.name} · {plan.name}: {units:,} units at {price} per 1,000",
                "units": units,
                "amount_cents": amount,
            }
        )
    return _local_invoice_create(
        subscription=subscription, period_start=period_start, period_end=period_end, reason=PERIOD_CLOSE, lines=lines
    )


@transaction.atomic
def invoice_proration_add(
    *, subscription: Subscription, old_plan: Plan, new_plan: Plan, amount_cents: int, at: datetime
) -> Invoice | None:
    """Local backend: invoice a mid-period plan change at once, as Stripe prorates: ``amount_cents``
    (``pricing.proration_minor``: the new fee's share of the rest of the period less the old one's; a
    credit when negative) on one line of the new plan. Once per subscription and moment ``at``."""
    subscription = (
        Subscription.objects.select_for_update(of=("self",)).select_related("plan__listing").get(pk=subscription.pk)
    )
    if not amount_cents or _in_trial(subscription=subscription, period_end=subscription.current_period_end):
        return None
    existing = _local_invoice_get(subscription=subscription, period_start=at, reason=PRORATION)
    if existing is not None:
        return existing
    # Lines carry the plan the fee belongs to: the new one (the subscription may not have switched yet).
    subscription.plan = Plan.objects.select_related("listing").get(pk=new_plan.pk)
    period_end = subscription.current_period_end
    line = {
        "kind": InvoiceLineKind.FLAT,
        "description": (
            f"{new_plan.listing.name}: {old_plan.name} → {new_plan.name}, the monthly fee prorated for "
            f"{_period_text(at, period_end)}"
        ),
        "units": 0,
        "amount_cents": amount_cents,
    }
    return _local_invoice_create(
        subscription=subscription, period_start=at, period_end=period_end, reason=PRORATION, lines=[line]
    )


def invoices_local_close_due(*, now: datetime | None = None) -> int:
    """Close the ended current period of every local paid subscription not yet invoiced; returns how
    many invoices were written. The period renewal calls :func:`invoice_period_close` itself before
    moving a subscription on; this catches any period it has not."""
    now = now or timezone.now()
    due = (
        Subscription.objects.filter(current_period_end__lte=now, stripe_subscription_id__isnull=True)
        .exclude(plan__kind=PlanKind.FREE)
        .exclude(
            Exists(
                Invoice.objects.filter(
                    subscription=OuterRef("pk"),
                    backend=LOCAL,
                    billing_reason=PERIOD_CLOSE,
                    period_start=OuterRef("current_period_start"),
                )
            )
        )
    )
    closed = 0
    for subscription in due.order_by("pk"):
        invoice_period_close(
            subscription=subscription,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
        )
        closed += 1
    return closed


# --- Stripe invoices ---------------------------------------------------------------------------


def _when(timestamp: int | None) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), tz=UTC) if timestamp else None


def _stripe_lines(*, invoice: Invoice, stripe_invoice: dict[str, Any], subscription: Subscription | None) -> None:
    lines = (stripe_invoice.get("lines") or {}).get("data") or []
    if (stripe_invoice.get("lines") or {}).get("has_more"):
        logger.warning("Stripe invoice %s has more lines than its payload carries", stripe_invoice.get("id"))
    price_ids = {pid for line in lines if (pid := payments.invoice_line_price_id(line))}
    plans = {
        pid: plan
        for plan in Plan.objects.select_related("listing").filter(
            Q(stripe_price_id__in=price_ids) | Q(stripe_metered_price_id__in=price_ids)
        )
        for pid in (plan.stripe_price_id, plan.stripe_metered_price_id)
        if pid in price_ids
    }
    rows = []
    for line in lines:
        price_id = payments.invoice_line_price_id(line)
        plan = plans.get(price_id or "")
        if plan is None:
            logger.warning(
                "Stripe invoice %s: line %s has no plan (price %s)", invoice.stripe_invoice_id, line.get("id"), price_id
            )
            continue
        if price_id == plan.stripe_price_id:
            kind, units = InvoiceLineKind.FLAT, 0
        else:
            kind = InvoiceLineKind.OVERAGE if plan.kind == PlanKind.FLAT else InvoiceLineKind.METERED
            units = int(line.get("quantity") or 0)
        amount = int(line.get("amount") or 0)
        fee, share = line_split(amount_cents=amount)
        rows.append(
            InvoiceLine(
                invoice=invoice,
                subscription=subscription,
                listing=plan.listing,
                publisher_id=plan.listing.organization_id,
                plan=plan,
                kind=kind,
                description=(line.get("description") or f"{plan.listing.name} · {plan.name}")[:200],
                units=units,
                amount_cents=amount,
                platform_fee_cents=fee,
                publisher_share_cents=share,
            )
        )
    InvoiceLine.objects.bulk_create(rows)
    invoice.platform_fee_cents = sum(row.platform_fee_cents for row in rows)


def _stripe_period(stripe_invoice: dict[str, Any]) -> tuple[datetime, datetime]:
    """The service period: the lines' (Stripe's own ``period_*`` on a first invoice is just its creation)."""
    periods = [line.get("period") or {} for line in (stripe_invoice.get("lines") or {}).get("data") or []]
    starts = [p["start"] for p in periods if p.get("start")]
    ends = [p["end"] for p in periods if p.get("end")]
    start = min(starts) if starts else stripe_invoice.get("period_start") or stripe_invoice.get("created")
    end = max(ends) if ends else stripe_invoice.get("period_end") or stripe_invoice.get("created")
    return _when(start) or timezone.now(), _when(end) or timezone.now()


def invoice_from_stripe(*, stripe_invoice: dict[str, Any], event_created: int | None = None) -> Invoice | None:
    """Mirror a Stripe invoice (a dict as in ``invoice.paid``): create it once with its lines, then only
    move its status forward. ``event_created`` (the event's ``created``): an event older than the last
    one applied changes nothing. Becoming paid queues the invoice's payouts on commit. None (logged) for
    an invoice of no organization we know."""
    stripe_id = stripe_invoice["id"]
    synced = _when(event_created or stripe_invoice.get("created")) or timezone.now()
    status = stripe_invoice.get("status") or InvoiceStatus.DRAFT
    if status not in STATUS_RANK:
        status = InvoiceStatus.OPEN
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().filter(stripe_invoice_id=stripe_id).first()
        if invoice is None:
            subscription_id = payments.invoice_subscription_id(stripe_invoice)
            subscription = (
                Subscription.objects.select_related("organization")
                .filter(stripe_subscription_id=subscription_id)
                .first()
                if subscription_id
                else None
            )
            organization: Organization | None = subscription.organization if subscription is not None else None
            if organization is None:
                customer = (
                    BillingCustomer.objects.select_related("organization")
                    .filter(stripe_customer_id=stripe_invoice.get("customer") or "")
                    .first()
                )
                organization = customer.organization if customer is not None else None
            if organization is None:
                logger.warning("Stripe invoice %s belongs to no known customer; not mirrored", stripe_id)
                return None
            period_start, period_end = _stripe_period(stripe_invoice)
            invoice = Invoice.objects.create(
                organization=organization,
                subscription=subscription,
                backend="stripe",
                billing_reason=(stripe_invoice.get("billing_reason") or "")[:30],
                number=stripe_invoice.get("number") or f"stripe-{stripe_id}",
                period_start=period_start,
                period_end=period_end,
                status=InvoiceStatus.DRAFT,
                currency=(stripe_invoice.get("currency") or "usd").lower(),
                total_cents=int(stripe_invoice.get("total") or 0),
                stripe_invoice_id=stripe_id,
            )
            _stripe_lines(invoice=invoice, stripe_invoice=stripe_invoice, subscription=subscription)
            audit_log_write(
                action=AuditAction.INVOICE_ISSUED,
                organization=organization,
                data={"invoice_id": invoice.pk, "stripe_invoice_id": stripe_id, "total_cents": invoice.total_cents},
            )
        elif invoice.stripe_synced_at is not None and synced < invoice.stripe_synced_at:
            return invoice
        became_paid = status == InvoiceStatus.PAID and invoice.status != InvoiceStatus.PAID
        if STATUS_RANK[status] >= STATUS_RANK[InvoiceStatus(invoice.status)]:
            invoice.status = status
            if stripe_invoice.get("number"):
                invoice.number = stripe_invoice["number"]
        if became_paid:
            paid_at = ((stripe_invoice.get("status_transitions") or {}).get("paid_at")) or event_created
            invoice.paid_at = _when(paid_at) or timezone.now()
            audit_log_write(
                action=AuditAction.INVOICE_PAID,
                organization=invoice.organization,
                data={"invoice_id": invoice.pk, "stripe_invoice_id": stripe_id, "total_cents": invoice.total_cents},
            )
        invoice.stripe_synced_at = max(synced, invoice.stripe_synced_at or synced)
        invoice.save()
        if became_paid:
            _payouts_on_commit(invoice=invoice)
    return invoice
