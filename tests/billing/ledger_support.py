"""Rows for the ledger tests (metering, invoices, payouts, reconciliation): paid plans, subscriptions billed
locally or by (the fake) Stripe, and usage ledger rows written the way the usage flush writes them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from billing.models import BillingCustomer, Plan, PlanKind, Subscription
from inference.models import UsageRecord
from inference.services import usage_records_write
from marketplace.integrations import stripe as payments
from tests.catalog.factories import PublishedListingFactory


def listing_make(*, publisher: Any, slug: str | None = None) -> Any:
    slug = slug or f"spec-{uuid.uuid4().hex[:8]}"
    return PublishedListingFactory(slug=slug, name=slug.replace("-", " ").title(), organization=publisher)


def plan_make(
    *,
    listing: Any,
    kind: str = PlanKind.METERED,
    monthly_price_cents: int = 0,
    included_units: int | None = None,
    price_per_1000_cents: int = 0,
    currency: str = "usd",
    name: str | None = None,
    **extra: Any,
) -> Plan:
    return Plan.objects.create(
        listing=listing,
        name=name or f"{kind} {uuid.uuid4().hex[:6]}",
        kind=kind,
        monthly_quota_units=included_units,
        monthly_price_cents=monthly_price_cents,
        price_per_1000_units_cents=price_per_1000_cents,
        currency=currency,
        **extra,
    )


def stripe_customer_ensure(*, organization: Any) -> str:
    """A customer at (the fake) Stripe for the organization, kept on its BillingCustomer."""
    billing, _ = BillingCustomer.objects.get_or_create(organization=organization)
    if not billing.stripe_customer_id:
        customer = payments.customer_create(name=organization.name, email=f"billing@{organization.slug}.example")
        billing.stripe_customer_id = customer["id"]
        billing.save(update_fields=["stripe_customer_id"])
    return billing.stripe_customer_id


def subscription_make(
    *,
    organization: Any,
    plan: Plan,
    start: datetime | None = None,
    end: datetime | None = None,
    stripe: bool = False,
    **extra: Any,
) -> Subscription:
    """A live subscription; ``stripe=True``: billed by Stripe (a customer at the fake, a Stripe
    subscription id, a metered price on the plan), so its usage is metered to Stripe."""
    start = start or timezone.now() - timedelta(days=10)
    if stripe:
        stripe_customer_ensure(organization=organization)
        extra.setdefault("stripe_subscription_id", f"sub_{uuid.uuid4().hex[:24]}")
        if not plan.stripe_metered_price_id:  # what checkout makes for a plan that prices usage
            plan.stripe_metered_price_id = f"price_{uuid.uuid4().hex[:24]}"
            plan.save(update_fields=["stripe_metered_price_id"])
    return Subscription.objects.create(
        organization=organization,
        listing=plan.listing,
        plan=plan,
        current_period_start=start,
        current_period_end=end or start + timedelta(days=30),
        **extra,
    )


def usage_write(*, subscription: Subscription, units: Sequence[int], at: Sequence[datetime]) -> list[UsageRecord]:
    """Usage records written through the ledger's own write (the usage flush's bulk insert, which also
    queues meter reports); returns them read back, in order."""
    from inference.metering import UsageEntry

    version_id = subscription.listing.current_version_id
    entries = [
        UsageEntry(
            request_id=uuid.uuid4().hex,
            organization_id=subscription.organization_id,
            api_key_id=None,
            subscription_id=subscription.pk,
            listing_id=subscription.listing_id,
            version_id=version_id,
            units=n,
            queue_ms=0.1,
            compute_ms=1.0,
            provider="cpu",
            finished_at=moment.timestamp(),
        )
        for n, moment in zip(units, at, strict=True)
    ]
    usage_records_write(entries=entries)
    by_request = {r.request_id: r for r in UsageRecord.objects.filter(request_id__in=[e.request_id for e in entries])}
    return [by_request[e.request_id] for e in entries]


def stripe_subscription_make(
    fake: Any, *, buyer: Any, publisher: Any, flat_cents: int = 2000, unit_amount_decimal: str = "0.25"
) -> tuple[Subscription, dict[str, Any]]:
    """A listing of ``publisher`` with a plan priced at (the fake) Stripe: a flat monthly price and a
    metered price on the listing's meter (``meter_event_name``); ``buyer`` subscribed through a completed
    Stripe checkout. Returns our subscription and Stripe's."""
    from decimal import Decimal

    from billing.metering import meter_event_name

    listing = listing_make(publisher=publisher)
    product = payments.product_create(name=listing.name)
    flat_price = payments.price_create(product=product["id"], currency="usd", unit_amount=flat_cents)
    meter = payments.meter_create(event_name=meter_event_name(listing_id=listing.pk), display_name="units")
    metered_price = payments.price_create(
        product=product["id"], currency="usd", meter=meter["id"], unit_amount_decimal=Decimal(unit_amount_decimal)
    )
    plan = plan_make(
        listing=listing,
        kind=PlanKind.METERED,
        monthly_price_cents=flat_cents,
        price_per_1000_cents=int(Decimal(unit_amount_decimal) * 1000),
        stripe_product_id=product["id"],
        stripe_price_id=flat_price["id"],
        stripe_metered_price_id=metered_price["id"],
    )
    customer = stripe_customer_ensure(organization=buyer)
    session = payments.checkout_session_create(
        customer=customer,
        price_ids=[(flat_price["id"], 1), (metered_price["id"], None)],
        success_url="http://app.test/ok",
        cancel_url="http://app.test/no",
        client_reference_id=str(buyer.pk),
    )
    stripe_subscription = fake.complete_checkout(session["id"])["subscription"]
    start, end = payments.subscription_period(stripe_subscription)
    subscription = subscription_make(
        organization=buyer,
        plan=plan,
        start=datetime.fromtimestamp(start, tz=UTC),
        end=datetime.fromtimestamp(end, tz=UTC),
        stripe_subscription_id=stripe_subscription["id"],
    )
    return subscription, stripe_subscription
