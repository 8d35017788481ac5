"""Rows for the ledger tests (metering, invoices, payouts, reconciliation): paid plans, subscriptions billed
locally or by (the fake) Stripe, and usage ledger rows written the way the usage flush writes them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
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
    """A live subscription; ``stripe=True``: billed by Stripe (a customer at the fake and a Stripe
    subscription id), so its usage is metered to Stripe."""
    start = start or timezone.now() - timedelta(days=10)
    if stripe:
        stripe_customer_ensure(organization=organization)
        extra.setdefault("stripe_subscription_id", f"sub_{uuid.uuid4().hex[:24]}")
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
