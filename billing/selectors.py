"""Reads for plans, subscriptions and license terms, including the entitlement check of every /v2 call."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Case, Count, Field, OuterRef, Prefetch, Q, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import JSONObject
from django.utils import timezone

from accounts.models import Organization, User
from accounts.selectors import user_can_manage
from billing import licenses
from billing.models import (
    ENTITLED_STATUSES,
    CheckoutSession,
    LicenseAcceptance,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from catalog.models import Listing
from marketplace.ttl_cache import TtlCache

# --- entitlement (the hot path) ----------------------------------------------------------------

# How long a process trusts its answer for (organization, listing): a cancel lands everywhere within this.
ENTITLEMENT_CACHE_TTL_S = 1.0
ENTITLEMENT_CACHE_MAX_ENTRIES = 50_000
_entitled_cache: TtlCache[tuple[int, int], Subscription | None] = TtlCache(
    ttl_s=ENTITLEMENT_CACHE_TTL_S, max_entries=ENTITLEMENT_CACHE_MAX_ENTRIES
)


# Statuses that may entitle: canceled ones keep their paid period, past-due ones their grace period.
ENTITLING_STATUSES = (*ENTITLED_STATUSES, SubscriptionStatus.CANCELED)


def _entitled_load(*, organization_id: int, listing_id: int) -> Subscription | None:
    # One indexed query: at most a live subscription and a canceled one still in its period match.
    return (
        Subscription.objects.select_related("plan")
        .filter(
            organization_id=organization_id,
            listing_id=listing_id,
            status__in=ENTITLING_STATUSES,
            current_period_end__gt=timezone.now(),
        )
        .order_by(
            Case(When(status=SubscriptionStatus.CANCELED, then=Value(1)), default=Value(0)), "-current_period_end"
        )
        .first()
    )


def subscription_is_entitled(*, subscription: Subscription, now: datetime | None = None) -> bool:
    """Whether the subscription lets its organization call the listing at ``now``: inside its period, and
    active, trialing, past due within the grace period (``BILLING_GRACE_DAYS``) or canceled (to the
    period's end). Suspended subscriptions are not."""
    now = now or timezone.now()
    if subscription.current_period_end <= now or subscription.status not in ENTITLING_STATUSES:
        return False
    if subscription.status == SubscriptionStatus.PAST_DUE and subscription.past_due_since is not None:
        return subscription.past_due_since + timedelta(days=settings.BILLING_GRACE_DAYS) > now
    return True


def subscription_entitled_cache_forget(*, organization_id: int | None = None, listing_id: int | None = None) -> None:
    """Drop one cached answer (or all, called without arguments)."""
    _entitled_cache.forget(None if organization_id is None or listing_id is None else (organization_id, listing_id))


def subscription_entitled_get(*, organization_id: int, listing_id: int) -> Subscription | None:
    """The subscription that lets the organization call the listing now, with its plan; else None.

    Entitled: see :func:`subscription_is_entitled`. The row is cached per process
    for at most ``ENTITLEMENT_CACHE_TTL_S``; the period end is checked on every call. The returned row
    is shared between requests of this process: read it, never change it.
    """
    subscription = _entitled_cache.get(
        (organization_id, listing_id),
        lambda: _entitled_load(organization_id=organization_id, listing_id=listing_id),
    )
    if subscription is None or not subscription_is_entitled(subscription=subscription):
        return None
    return subscription


# --- license terms -----------------------------------------------------------------------------


def license_terms_for_listing(*, listing: Listing) -> dict[str, str]:
    """``{"license", "version", "text", "sha256"}``: the exact terms a subscriber accepts today."""
    return licenses.license_terms_for_listing(listing=listing).as_dict()


# --- plans -------------------------------------------------------------------------------------


PLAN_ORDER = ("monthly_price_cents", "name", "id")
_PLAN_JSON_FIELDS = (
    "id",
    "name",
    "kind",
    "monthly_quota_units",
    "currency",
    "monthly_price_cents",
    "price_per_1000_units_cents",
    "trial_days",
    "is_active",
)


def plan_list_active(*, listing: Listing) -> QuerySet[Plan]:
    return Plan.objects.filter(listing=listing, is_active=True).order_by(*PLAN_ORDER)


def plans_active_annotation() -> dict[str, Any]:
    """For a Listing queryset: ``active_plans_json``, the listing's active plans as JSON read in the same
    query (PostgreSQL), so the listing page costs no extra query for its plans. Empty elsewhere."""
    if connection.vendor != "postgresql":
        return {}
    from django.contrib.postgres.expressions import ArraySubquery

    rows = (
        Plan.objects.filter(listing=OuterRef("pk"), is_active=True)
        .order_by(*PLAN_ORDER)
        .values(json=JSONObject(**{name: name for name in _PLAN_JSON_FIELDS}))
    )
    return {"active_plans_json": ArraySubquery(rows)}


def plan_list_active_for_page(*, listing: Listing) -> list[Plan]:
    """The active plans: from ``active_plans_json`` when the listing was loaded with it, else a query."""
    rows = getattr(listing, "active_plans_json", None)
    if rows is None:
        return list(plan_list_active(listing=listing))
    return [Plan(listing_id=listing.pk, **{name: row[name] for name in _PLAN_JSON_FIELDS}) for row in rows]


def plan_list_for_listing(*, listing: Listing) -> QuerySet[Plan]:
    """Every plan of a listing, active first, for its publisher; ``subscriber_count`` counts live subscriptions."""
    live = ~Q(subscriptions__status=SubscriptionStatus.CANCELED)
    return (
        Plan.objects.filter(listing=listing)
        .annotate(subscriber_count=Count("subscriptions", filter=live))
        .order_by("-is_active", "monthly_price_cents", "name", "id")
    )


def checkout_get(*, checkout_id: int) -> CheckoutSession | None:
    return (
        CheckoutSession.objects.select_related("plan", "plan__listing", "organization", "subscription")
        .filter(pk=checkout_id)
        .first()
    )


def plan_get(*, plan_id: int) -> Plan | None:
    return Plan.objects.select_related("listing", "listing__organization").filter(pk=plan_id).first()


# --- subscriptions -----------------------------------------------------------------------------


def subscription_live_get(*, organization: Organization, listing: Listing) -> Subscription | None:
    """The organization's subscription to the listing that is not canceled (at most one exists)."""
    return (
        Subscription.objects.select_related("plan")
        .filter(organization=organization, listing=listing)
        .exclude(status=SubscriptionStatus.CANCELED)
        .first()
    )


def subscription_list_for_organization(*, organization: Organization) -> QuerySet[Subscription]:
    """Live subscriptions first, then canceled ones, newest first; each with its plan, listing and
    license acceptances (with who accepted)."""
    acceptances = LicenseAcceptance.objects.select_related("user").order_by("-accepted_at")
    canceled_last = Case(When(status=SubscriptionStatus.CANCELED, then=Value(1)), default=Value(0))
    return (
        Subscription.objects.filter(organization=organization)
        .select_related("plan", "listing", "listing__organization", "pinned_version", "created_by", "scheduled_plan")
        .prefetch_related(Prefetch("license_acceptances", queryset=acceptances))
        .order_by(canceled_last, "-created_at", "-id")
    )


def subscription_get_for_member(*, user: User, subscription_id: int) -> Subscription | None:
    """A subscription of one of ``user``'s organizations; None otherwise (callers answer 404)."""
    if not getattr(user, "is_authenticated", False):
        return None
    return (
        Subscription.objects.select_related("plan", "listing", "organization", "pinned_version")
        .filter(pk=subscription_id, organization__memberships__user=user)
        .first()
    )


def subscriptions_decorate_for_page(*, subscriptions: list[Subscription]) -> list[Subscription]:
    """Add what the billing page shows to each subscription (acceptances prefetched, newest first):
    ``terms`` (the listing's current terms), ``terms_outdated``, ``entitled``, ``grace_ends_at`` (past due),
    ``plan_choices`` (other offered plans of the listing, each with ``change``: "upgrade" applies now,
    "downgrade" at the period's end). One query for the plans of all listings."""
    from billing.pricing import plan_change_is_upgrade

    listing_ids = {subscription.listing_id for subscription in subscriptions}
    plans_by_listing: dict[int, list[Plan]] = {}
    for plan in Plan.objects.filter(listing_id__in=listing_ids, is_active=True).order_by(*PLAN_ORDER):
        plans_by_listing.setdefault(plan.listing_id, []).append(plan)
    terms_by_listing: dict[int, licenses.LicenseTerms] = {}
    now = timezone.now()
    for subscription in subscriptions:
        listing = subscription.listing
        if listing.pk not in terms_by_listing:
            terms_by_listing[listing.pk] = licenses.license_terms_for_listing(listing=listing)
        terms = terms_by_listing[listing.pk]
        acceptances = list(subscription.license_acceptances.all())
        latest = acceptances[0] if acceptances else None
        subscription.terms = terms  # type: ignore[attr-defined]
        subscription.terms_outdated = (  # type: ignore[attr-defined]
            subscription.status != SubscriptionStatus.CANCELED
            and (latest is None or latest.terms_sha256 != terms.sha256)
        )
        subscription.entitled = subscription_is_entitled(subscription=subscription, now=now)  # type: ignore[attr-defined]
        subscription.grace_ends_at = (  # type: ignore[attr-defined]
            subscription.past_due_since + timedelta(days=settings.BILLING_GRACE_DAYS)
            if subscription.past_due_since
            else None
        )
        choices = []
        for plan in plans_by_listing.get(subscription.listing_id, []):
            if plan.pk == subscription.plan_id:
                continue
            upgrade = plan_change_is_upgrade(old_plan=subscription.plan, new_plan=plan)
            plan.change = "upgrade" if upgrade else "downgrade"  # type: ignore[attr-defined]
            choices.append(plan)
        subscription.plan_choices = choices  # type: ignore[attr-defined]
    return subscriptions


def subscription_period_usage(aggregate: Any, *, output_field: Field) -> Subquery:
    """A subquery of ``aggregate`` (e.g. ``Sum("units")``) over the usage ledger rows of the outer
    subscription's current period, for ``Subscription`` querysets: one query for any number of rows."""
    from inference.models import UsageRecord

    rows = (
        UsageRecord.objects.filter(
            subscription=OuterRef("pk"),
            created_at__gte=OuterRef("current_period_start"),
            created_at__lt=OuterRef("current_period_end"),
        )
        .order_by()
        .values("subscription")
        .annotate(total=aggregate)
        .values("total")
    )
    return Subquery(rows, output_field=output_field)


def subscription_usage_units(*, subscription: Subscription) -> int:
    """Units recorded in the subscription's current period (the usage ledger; buffered calls land within
    a flush interval)."""
    from inference.models import UsageRecord

    total = UsageRecord.objects.filter(
        subscription=subscription,
        created_at__gte=subscription.current_period_start,
        created_at__lt=subscription.current_period_end,
    ).aggregate(units=Sum("units"))["units"]
    return int(total or 0)


# --- the listing page --------------------------------------------------------------------------


def listing_plans_panel(*, listing: Listing, user: Any, organization: Organization | None) -> dict[str, Any]:
    """What the listing page shows about plans: the active plans (for everyone), the license terms and,
    for a signed-in user acting for an organization, its subscription and this period's usage, and
    whether the user may subscribe or cancel for it.

    No query of its own for anonymous visitors when the listing was loaded with ``plans_active_annotation``
    (one otherwise); up to three more for a signed-in user acting for an organization.
    """
    plans = plan_list_active_for_page(listing=listing)
    panel: dict[str, Any] = {
        "plans": plans,
        "terms": licenses.license_terms_for_listing(listing=listing),
        "organization": None,
        "subscription": None,
        "usage_units": None,
        "can_manage": False,
    }
    if organization is None or not getattr(user, "is_authenticated", False) or not listing.is_public:
        return panel
    panel["organization"] = organization
    panel["can_manage"] = user_can_manage(user=user, organization=organization)
    subscription = subscription_live_get(organization=organization, listing=listing)
    if subscription is not None:
        panel["subscription"] = subscription
        panel["usage_units"] = subscription_usage_units(subscription=subscription)
    return panel


def listing_choices_subscribed(*, organization: Organization) -> list[tuple[int, str]]:
    """``(listing id, name)`` of the listings the organization subscribes to now, for key restrictions."""
    return list(
        Subscription.objects.filter(organization=organization, status__in=ENTITLED_STATUSES)
        .order_by("listing__name")
        .values_list("listing_id", "listing__name")
    )
