"""Rows for the spend-cap and dashboard tests: paid subscriptions, API keys and usage ledger rows written
directly (the ledger is what caps and dashboards read), and cleanup of the spend counters in Redis."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone


def spend_keys_clear() -> None:
    """Delete the spend counters (``spend:*``) from the test Redis database, nothing else."""
    from billing.spend_caps import spend_caps_cache_forget

    spend_caps_cache_forget()
    if not settings.INFERENCE_REDIS_URL:
        return
    client = redis.Redis.from_url(settings.INFERENCE_REDIS_URL)
    try:
        keys = list(client.scan_iter(match="spend:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def api_key_make(*, organization: Any, user: Any, name: str = "key") -> Any:
    from accounts.services import api_key_create

    api_key, _raw = api_key_create(organization=organization, user=user, name=name)
    return api_key


def paid_plan_make(
    *, listing: Any, kind: str = "metered", price_per_1000_cents: int = 100, monthly_price_cents: int = 0,
    included_units: int | None = None, name: str | None = None,
) -> Any:  # fmt: skip
    from billing.models import Plan

    return Plan.objects.create(
        listing=listing,
        name=name or f"{kind} {uuid.uuid4().hex[:6]}",
        kind=kind,
        monthly_quota_units=included_units,
        monthly_price_cents=monthly_price_cents,
        price_per_1000_units_cents=price_per_1000_cents,
    )


def subscription_make(
    *, organization: Any, plan: Any, start: datetime | None = None, days: int = 30, status: str = "active"
) -> Any:
    from billing.models import Subscription

    start = start or timezone.now() - timedelta(days=10)
    return Subscription.objects.create(
        organization=organization,
        listing=plan.listing,
        plan=plan,
        status=status,
        current_period_start=start,
        current_period_end=start + timedelta(days=days),
    )


def usage_make(
    *, subscription: Any, units: int = 1, cost: Decimal | str = "0", api_key: Any = None,
    at: datetime | None = None, compute_ms: float = 1.0, version: Any = None,
) -> Any:  # fmt: skip
    from inference.models import UsageRecord

    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        organization_id=subscription.organization_id,
        api_key=api_key,
        subscription=subscription,
        listing_id=subscription.listing_id,
        version=version or subscription.listing.current_version,
        units=units,
        cost=Decimal(cost),
        currency=subscription.plan.currency,
        compute_ms=compute_ms,
        created_at=at or timezone.now(),
    )
