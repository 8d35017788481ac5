"""Writes for plans and subscriptions, for both billing backends.

Every function is keyword-only and writes its audit row in the transaction of its change. A
subscription belongs to the backend that created it: one with a ``stripe_subscription_id`` is Stripe's
(its state is mirrored from Stripe: :func:`subscription_apply_stripe_state`), any other is local (this
module and the periodic :func:`subscriptions_upkeep` move it through its periods). Paid plans start
through ``billing.checkout.checkout_start``; free ones through :func:`subscription_create`.

Lifecycle rules, the same on both backends:
- cancel: at the period's end (``cancel_at_period_end``); entitled until then. Free plans end at once.
- upgrade (a higher monthly fee, then unit price): at once, prorated; downgrade: at the period's end
  (``scheduled_plan``). A new price version of a plan reaches its subscribers at their next period.
- a failed payment: ``past_due`` (still entitled) for ``BILLING_GRACE_DAYS``, then ``suspended``
  (not entitled) until paid; a local subscription still suspended at its period's end is canceled.
- new license terms: the next period starts only once someone accepts them.
"""

from __future__ import annotations

import calendar
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from accounts.models import MANAGER_ROLES, Organization, User
from accounts.selectors import membership_get, user_can_manage
from billing import invoices, metering, pricing
from billing.licenses import LicenseTerms, license_terms_for_listing
from billing.models import (
    BillingCustomer,
    LicenseAcceptance,
    Plan,
    PlanKind,
    Subscription,
    SubscriptionStatus,
)
from billing.selectors import subscription_entitled_cache_forget
from catalog.models import SERVABLE_STATUSES, Listing, ListingStatus, Version
from marketplace.errors import ApplicationError, Conflict, Forbidden, NotFound
from marketplace.integrations import stripe as payments
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)

PLAN_NAME_MAX_LENGTH = Plan._meta.get_field("name").max_length or 80
PLAN_QUOTA_MAX_UNITS = 10**12
PLAN_PRICE_MAX_MINOR = 10**8  # a million dollars a month, or per 1,000 units: anything above is a typo
PLAN_TRIAL_MAX_DAYS = 90
CHECKOUT_REQUIRED_MESSAGE = "Paid plans start through checkout (POST /api/v1/checkout, or Subscribe on the listing)."
LIVE_STATUSES = (
    SubscriptionStatus.ACTIVE,
    SubscriptionStatus.TRIALING,
    SubscriptionStatus.PAST_DUE,
    SubscriptionStatus.SUSPENDED,
)
_UNSET: Any = object()


def months_add(moment: datetime, months: int) -> datetime:
    """The same time ``months`` calendar months later; the day is clamped to the month's last day."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def grace_period() -> timedelta:
    return timedelta(days=settings.BILLING_GRACE_DAYS)


def _require_manager(
    *, user: User, organization: Organization, action: str, missing: str = "No such subscription."
) -> None:
    membership = membership_get(user=user, organization=organization)
    if membership is None:
        raise NotFound("No such organization." if action == "subscribe" else missing)
    if membership.role not in MANAGER_ROLES:
        raise Forbidden(f"Only owners and admins of {organization.name} can {action}.", code="not_a_manager")


def _forget_entitlement_on_commit(*, organization_id: int, listing_id: int) -> None:
    transaction.on_commit(
        lambda: subscription_entitled_cache_forget(organization_id=organization_id, listing_id=listing_id)
    )


def _ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value else None


# --- plans -------------------------------------------------------------------------------------


def _require_listing_manager(*, user: User, listing: Listing) -> None:
    if not user_can_manage(user=user, organization=listing.organization):
        raise Forbidden("Only owners and admins of the publishing organization may change its plans.")


def _invalid(field: str, message: str, summary: str | None = None) -> ApplicationError:
    return ApplicationError(summary or message, code="invalid", fields={field: [message]})


def _terms_read_check(*, terms: LicenseTerms, terms_sha256: str | None) -> None:
    """409 ``terms_changed`` when the buyer read other terms (``terms_sha256``) than the listing's current ones."""
    if terms_sha256 and terms_sha256 != terms.sha256:
        raise Conflict(
            "The license terms changed since you read them. Read them again and accept.",
            code="terms_changed",
            fields={"accept_license": ["The terms changed; read them again."]},
        )


def _plan_prices_clean(
    *,
    kind: str,
    monthly_quota_units: int | None,
    monthly_price_cents: int,
    price_per_1000_units_cents: int,
    currency: str,
    trial_days: int,
) -> dict[str, Any]:
    """The price fields of a plan of ``kind``, checked; raises ApplicationError with per-field messages."""
    if kind not in PlanKind.values:
        raise _invalid("kind", f"Choose one of {', '.join(PlanKind.values)}.", "Unknown plan kind.")
    currency = (currency or "usd").strip().lower()
    if currency not in pricing.PLAN_CURRENCIES:
        raise _invalid("currency", f"Choose one of {', '.join(c.upper() for c in pricing.PLAN_CURRENCIES)}.")
    if monthly_quota_units is not None and not 1 <= monthly_quota_units <= PLAN_QUOTA_MAX_UNITS:
        raise _invalid(
            "monthly_quota_units",
            f"Between 1 and {PLAN_QUOTA_MAX_UNITS:,} units, or empty for unlimited.",
            "The monthly quota is out of range.",
        )
    for field, value in (
        ("monthly_price_cents", monthly_price_cents),
        ("price_per_1000_units_cents", price_per_1000_units_cents),
    ):
        if not 0 <= value <= PLAN_PRICE_MAX_MINOR:
            raise _invalid(field, f"Between 0 and {PLAN_PRICE_MAX_MINOR:,} (minor units of the currency).")
    if not 0 <= trial_days <= PLAN_TRIAL_MAX_DAYS:
        raise _invalid("trial_days", f"Between 0 and {PLAN_TRIAL_MAX_DAYS} days.")
    if kind == PlanKind.FREE:
        if monthly_price_cents or price_per_1000_units_cents or trial_days:
            raise _invalid(
                "kind", "A free plan has no price and no trial; choose flat or metered.", "Free plans are free."
            )
    elif kind == PlanKind.FLAT:
        if monthly_price_cents < 1:
            raise _invalid("monthly_price_cents", "A flat plan needs a monthly price.")
        if price_per_1000_units_cents and monthly_quota_units is None:
            raise _invalid(
                "monthly_quota_units", "An overage price needs a number of included units.", "Set the included units."
            )
    else:
        if price_per_1000_units_cents < 1:
            raise _invalid("price_per_1000_units_cents", "A metered plan needs a price per 1,000 units.")
        if monthly_price_cents or monthly_quota_units is not None:
            raise _invalid(
                "kind",
                "A metered plan charges per unit only: leave the monthly price and included units empty.",
                "Metered plans have no monthly fee.",
            )
    return {
        "kind": kind,
        "monthly_quota_units": monthly_quota_units,
        "monthly_price_cents": monthly_price_cents,
        "price_per_1000_units_cents": price_per_1000_units_cents,
        "currency": currency,
        "trial_days": trial_days,
    }


@transaction.atomic
def plan_create(
    *,
    listing: Listing,
    user: User,
    name: str,
    kind: str = PlanKind.FREE,
    monthly_quota_units: int | None = None,
    monthly_price_cents: int = 0,
    price_per_1000_units_cents: int = 0,
    currency: str = "usd",
    trial_days: int = 0,
) -> Plan:
    """Offer a plan on a listing (publishers' owners and admins).

    Free: ``monthly_quota_units`` a cap (None unlimited). Flat: ``monthly_price_cents`` a month with
    ``monthly_quota_units`` included (None unlimited) and ``price_per_1000_units_cents`` for units beyond
    them (0: calls stop there). Metered: ``price_per_1000_units_cents`` only. Prices in minor units of
    ``currency``; ``trial_days`` before the first charge. With the Stripe backend the plan's product and
    prices are created at its first checkout (``plan_stripe_prices_ensure``).
    """
    _require_listing_manager(user=user, listing=listing)
    fields = _plan_prices_clean(
        kind=kind,
        monthly_quota_units=monthly_quota_units,
        monthly_price_cents=monthly_price_cents or 0,
        price_per_1000_units_cents=price_per_1000_units_cents or 0,
        currency=currency,
        trial_days=trial_days or 0,
    )
    name = (name or "").strip()
    if not name:
        raise _invalid("name", "Required.", "Give the plan a name.")
    if len(name) > PLAN_NAME_MAX_LENGTH:
        raise _invalid("name", f"At most {PLAN_NAME_MAX_LENGTH} characters.", "The name is too long.")
    # Lock the listing so two concurrent creates cannot both pass the name check.
    Listing.objects.select_for_update().filter(pk=listing.pk).exists()
    if Plan.objects.filter(listing=listing, is_active=True, name__iexact=name).exists():
        raise Conflict(
            "An active plan with this name exists.",
            code="plan_name_taken",
            fields={"name": ["An active plan of this listing already has this name."]},
        )
    plan = Plan.objects.create(listing=listing, name=name, **fields)
    audit_log_write(
        action=AuditAction.PLAN_CREATED,
        actor=user,
        listing=listing,
        data={"plan_id": plan.pk, "name": name, **fields},
    )
    return plan


@transaction.atomic
def plan_price_change(
    *,
    plan: Plan,
    user: User,
    monthly_price_cents: int | None = None,
    price_per_1000_units_cents: int | None = None,
    monthly_quota_units: int | None = _UNSET,
    trial_days: int | None = None,
) -> Plan:
    """A new version of ``plan`` with new prices (arguments left out keep their value).

    The new version takes new subscribers; the old one becomes inactive. Its current subscribers keep
    it until their period ends and then move to the new version (``scheduled_plan``), unless they
    chose another plan meanwhile.
    """
    old = Plan.objects.select_for_update().select_related("listing").get(pk=plan.pk)
    _require_listing_manager(user=user, listing=old.listing)
    if not old.is_active:
        raise Conflict("Only an offered plan can get a new price.", code="plan_inactive")
    fields = _plan_prices_clean(
        kind=old.kind,
        monthly_quota_units=old.monthly_quota_units if monthly_quota_units is _UNSET else monthly_quota_units,
        monthly_price_cents=old.monthly_price_cents if monthly_price_cents is None else monthly_price_cents,
        price_per_1000_units_cents=(
            old.price_per_1000_units_cents if price_per_1000_units_cents is None else price_per_1000_units_cents
        ),
        currency=old.currency,
        trial_days=old.trial_days if trial_days is None else trial_days,
    )
    if all(getattr(old, name) == value for name, value in fields.items()):
        raise ApplicationError("Nothing changed: give a new price, quota or trial.", code="plan_unchanged")
    old.is_active = False
    old.save(update_fields=["is_active"])
    new = Plan.objects.create(
        listing=old.listing, name=old.name, version=old.version + 1, previous=old, is_active=True, **fields
    )
    # Subscribers of the old version (and those waiting to move to it) move to the new one at renewal.
    moved = (
        Subscription.objects.filter(status__in=LIVE_STATUSES)
        .filter(Q(plan=old, scheduled_plan__isnull=True) | Q(scheduled_plan=old))
        .update(scheduled_plan=new)
    )
    audit_log_write(
        action=AuditAction.PLAN_PRICE_CHANGED,
        actor=user,
        listing=old.listing,
        data={
            "plan_id": new.pk,
            "previous_plan_id": old.pk,
            "version": new.version,
            "name": new.name,
            "before": {name: getattr(old, name) for name in fields},
            "after": fields,
            "subscribers_moving_at_renewal": moved,
        },
    )
    return new


def plan_successor(*, plan: Plan) -> Plan | None:
    """The active newest version that replaced ``plan`` through price changes, if any."""
    current, hops = plan, 0
    while hops < 100:
        newer = Plan.objects.filter(previous=current).order_by("-version", "-pk").first()
        if newer is None:
            break
        current, hops = newer, hops + 1
    return current if current.pk != plan.pk and current.is_active else None


@transaction.atomic
def plan_deactivate(*, plan: Plan, user: User) -> Plan:
    """Stop offering a plan. Its subscribers keep it; nobody new can subscribe to it."""
    plan = Plan.objects.select_for_update().select_related("listing").get(pk=plan.pk)
    _require_listing_manager(user=user, listing=plan.listing)
    if not plan.is_active:
        return plan
    plan.is_active = False
    plan.save(update_fields=["is_active"])
    audit_log_write(
        action=AuditAction.PLAN_DEACTIVATED,
        actor=user,
        listing=plan.listing,
        data={"plan_id": plan.pk, "name": plan.name},
    )
    return plan


# --- Stripe objects: customers, the listing's meter, plan prices -------------------------------


def billing_customer_ensure(*, organization: Organization, email: str | None = None) -> BillingCustomer:
    """The organization's billing customer; with the Stripe backend, its Stripe Customer too.

    Safe to call concurrently: the row is unique per organization, and the Stripe Customer is created
    with an idempotency key per organization, so racing callers get one customer.
    """
    customer = BillingCustomer.objects.filter(organization=organization).first()
    if customer is None:
        try:
            with transaction.atomic():
                customer = BillingCustomer.objects.create(organization=organization)
        except IntegrityError:
            customer = BillingCustomer.objects.get(organization=organization)
    if settings.BILLING_BACKEND != "stripe" or customer.stripe_customer_id:
        return customer
    created = payments.customer_create(
        name=organization.name,
        email=email or "",
        metadata={"organization_id": str(organization.pk), "organization": organization.slug},
        idempotency_key=f"customer-org-{organization.pk}-{int(organization.created_at.timestamp())}",
    )
    BillingCustomer.objects.filter(pk=customer.pk, stripe_customer_id__isnull=True).update(
        stripe_customer_id=created["id"]
    )
    customer.refresh_from_db()
    return customer


def stripe_meter_ensure(*, event_name: str) -> str:
    """The id of the active Stripe meter for ``event_name``, created the first time (find-or-create:
    an event name belongs to one active meter, so a lost id is found again by listing the meters)."""
    for meter in payments.meter_list(status="active"):
        if meter.get("event_name") == event_name:
            return str(meter["id"])
    try:
        meter = payments.meter_create(
            event_name=event_name,
            display_name=f"Specialist units ({event_name})",
            idempotency_key=f"meter-{event_name}",
        )
    except payments.StripeRequestError:
        # Someone created it meanwhile (Stripe refuses a second active meter with the same name).
        found = [m for m in payments.meter_list(status="active") if m.get("event_name") == event_name]
        if not found:
            raise
        meter = found[0]
    return str(meter["id"])


def plan_stripe_prices_ensure(*, plan: Plan) -> Plan:
    """The plan's Stripe product and prices, created on first use with idempotency keys per plan.

    Flat: a licensed price (the monthly fee, quantity 1) and, with an overage price, a metered price
    on the listing's meter whose first ``monthly_quota_units`` units each period are free (graduated
    tiers). Metered: a metered price. Free plans have none.
    """
    plan = Plan.objects.select_related("listing").get(pk=plan.pk)
    if plan.kind == PlanKind.FREE:
        return plan
    wants_flat = plan.monthly_price_cents > 0
    wants_metered = plan.price_per_1000_units_cents > 0 and not (
        plan.kind == PlanKind.FLAT and plan.monthly_quota_units is None
    )
    if (
        plan.stripe_product_id
        and (plan.stripe_price_id or not wants_flat)
        and (plan.stripe_metered_price_id or not wants_metered)
    ):
        return plan
    key = f"plan-{plan.pk}-{int(plan.created_at.timestamp())}"
    metadata = {"plan_id": str(plan.pk), "listing_id": str(plan.listing_id), "version": str(plan.version)}
    updates: dict[str, str] = {}
    product_id = plan.stripe_product_id
    if not product_id:
        product = payments.product_create(
            name=f"{plan.listing.name} · {plan.name} (v{plan.version})",
            description=pricing.plan_price_summary(plan),
            metadata=metadata,
            idempotency_key=f"{key}-product",
        )
        product_id = updates["stripe_product_id"] = product["id"]
    if wants_flat and not plan.stripe_price_id:
        price = payments.price_create(
            product=product_id,
            currency=plan.currency,
            unit_amount=plan.monthly_price_cents,
            nickname=f"{plan.name} monthly fee",
            metadata=metadata,
            idempotency_key=f"{key}-price-flat",
        )
        updates["stripe_price_id"] = price["id"]
    if wants_metered and not plan.stripe_metered_price_id:
        meter = stripe_meter_ensure(event_name=metering.meter_event_name(listing_id=plan.listing_id))
        price = payments.price_create(
            product=product_id,
            currency=plan.currency,
            meter=meter,
            unit_amount_decimal=pricing.stripe_unit_amount_decimal(plan),
            included_units=(plan.monthly_quota_units or 0) if plan.kind == PlanKind.FLAT else 0,
            nickname=f"{plan.name} per unit",
            metadata=metadata,
            idempotency_key=f"{key}-price-metered",
        )
        updates["stripe_metered_price_id"] = price["id"]
    if updates:
        Plan.objects.filter(pk=plan.pk).update(**updates)
        for name, value in updates.items():
            setattr(plan, name, value)
    return plan


def plan_stripe_line_items(plan: Plan) -> list[tuple[str, int | None]]:
    """``[(price id, quantity)]`` for a checkout: the flat fee once, the metered price without quantity."""
    items: list[tuple[str, int | None]] = []
    if plan.stripe_price_id:
        items.append((plan.stripe_price_id, 1))
    if plan.stripe_metered_price_id:
        items.append((plan.stripe_metered_price_id, None))
    return items


# --- subscriptions: creating ----------------------------------------------------------------------


def _pinned_version_clean(*, listing: Listing, pinned_version: Version | str | None) -> Version | None:
    if pinned_version in (None, ""):
        return None
    qs = Version.objects.filter(listing=listing, status__in=SERVABLE_STATUSES)
    version = (
        qs.filter(pk=pinned_version.pk).first()
        if isinstance(pinned_version, Version)
        else qs.filter(version=str(pinned_version).strip()).first()
    )
    if version is None:
        raise ApplicationError(
            "No published version with that number.",
            code="invalid",
            fields={"pinned_version": ["Pin a published or deprecated version of this listing, or leave it empty."]},
        )
    return version


def subscribe_check(
    *,
    organization: Organization,
    user: User,
    plan: Plan,
    accept_license: bool,
    terms_sha256: str | None,
    pinned_version: Version | str | None,
) -> tuple[Plan, LicenseTerms, Version | None]:
    """The rules for subscribing, shared by free subscriptions and checkouts; returns the locked plan,
    the terms being accepted and the pinned version. Raises ApplicationError."""
    if accept_license is not True:
        raise ApplicationError(
            "Accept the license terms to subscribe.",
            code="license_not_accepted",
            fields={"accept_license": ["Accept the license terms to subscribe."]},
        )
    _require_manager(user=user, organization=organization, action="subscribe")
    plan = Plan.objects.select_for_update().select_related("listing", "listing__organization").get(pk=plan.pk)
    listing = plan.listing
    if listing.status != ListingStatus.PUBLISHED:
        raise NotFound("This listing is not available.", code="listing_unavailable")
    if not plan.is_active:
        raise Conflict("This plan takes no new subscribers.", code="plan_inactive", fields={"plan": ["Inactive."]})
    version = _pinned_version_clean(listing=listing, pinned_version=pinned_version)
    terms = license_terms_for_listing(listing=listing)
    _terms_read_check(terms=terms, terms_sha256=terms_sha256)
    live = (
        Subscription.objects.select_related("plan")
        .filter(organization=organization, listing=listing, status__in=LIVE_STATUSES)
        .first()
    )
    # A free subscription may be replaced by a paid one through checkout (it ends when the payment lands).
    if live is not None and not (live.plan.kind == PlanKind.FREE and plan.kind != PlanKind.FREE):
        raise Conflict(
            f"{organization.name} already subscribes to {listing.name}. Change its plan on the billing page.",
            code="already_subscribed",
        )
    return plan, terms, version


def subscription_provision(
    *,
    organization: Organization,
    user: User | None,
    plan: Plan,
    terms: LicenseTerms,
    ip_address: str | None,
    pinned_version: Version | None,
    status: str,
    period_start: datetime,
    period_end: datetime,
    trial_end: datetime | None = None,
    stripe_subscription_id: str | None = None,
    stripe_synced_at: datetime | None = None,
    cancel_at_period_end: bool = False,
    canceled_at: datetime | None = None,
    past_due_since: datetime | None = None,
    extra_audit: Mapping[str, Any] | None = None,
) -> Subscription:
    """Create the subscription with its license acceptance and audit row (callers hold the locks and
    checked the rules). A live free subscription to the listing ends now: the paid one replaces it."""
    listing = plan.listing
    now = timezone.now()
    # A checkout started before a price change pays the old version; it moves to the new one at renewal.
    successor = None if plan.is_active else plan_successor(plan=plan)
    replaced = list(
        Subscription.objects.select_for_update()
        .filter(organization=organization, listing=listing, status__in=LIVE_STATUSES, plan__kind=PlanKind.FREE)
        .exclude(plan=plan)
    )
    for old in replaced:
        old.status = SubscriptionStatus.CANCELED
        old.canceled_at = now
        old.current_period_end = min(old.current_period_end, now)
        old.scheduled_plan = None
        old.save(update_fields=["status", "canceled_at", "current_period_end", "scheduled_plan"])
        audit_log_write(
            action=AuditAction.SUBSCRIPTION_CANCELED,
            organization=organization,
            listing=listing,
            data={"subscription_id": old.pk, "plan": old.plan.name, "replaced_by_plan_id": plan.pk},
        )
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                organization=organization,
                listing=listing,
                plan=plan,
                created_by=user,
                status=status,
                pinned_version=pinned_version,
                current_period_start=period_start,
                current_period_end=period_end,
                trial_end=trial_end,
                stripe_subscription_id=stripe_subscription_id,
                stripe_synced_at=stripe_synced_at,
                cancel_at_period_end=cancel_at_period_end,
                canceled_at=canceled_at,
                past_due_since=past_due_since,
                scheduled_plan=successor,
            )
    except IntegrityError:
        # A concurrent subscribe won the unique (organization, listing) live index.
        raise Conflict(
            f"{organization.name} already subscribes to {listing.name}.", code="already_subscribed"
        ) from None
    acceptance = LicenseAcceptance.objects.create(
        subscription=subscription,
        organization=organization,
        user=user,
        listing=listing,
        license=terms.license,
        terms_version=terms.version,
        terms_sha256=terms.sha256,
        terms_text=terms.text,
        ip_address=ip_address or None,
    )
    audit_log_write(
        action=AuditAction.SUBSCRIPTION_CREATED,
        actor=user,
        organization=organization,
        listing=listing,
        data={
            "subscription_id": subscription.pk,
            "plan_id": plan.pk,
            "plan": plan.name,
            "status": status,
            "pinned_version": pinned_version.version if pinned_version else None,
            "license": terms.license,
            "terms_version": terms.version,
            "terms_sha256": terms.sha256,
            "license_acceptance_id": acceptance.pk,
            "stripe_subscription_id": stripe_subscription_id,
            **dict(extra_audit or {}),
        },
    )
    _forget_entitlement_on_commit(organization_id=organization.pk, listing_id=listing.pk)
    return subscription


@transaction.atomic
def subscription_create(
    *,
    organization: Organization,
    user: User,
    plan: Plan,
    accept_license: bool,
    ip_address: str | None = None,
    pinned_version: Version | str | None = None,
    terms_sha256: str | None = None,
) -> Subscription:
    """Subscribe ``organization`` (its owners and admins) to a free ``plan``, accepting the license.

    Records a LicenseAcceptance with the exact terms text, its SHA-256, version, user, organization and
    IP. ``terms_sha256``, when given, must match the current terms: the buyer accepts what they saw.
    The first period runs from now for one calendar month. One live subscription per organization
    and listing (409 ``already_subscribed``). Paid plans answer 400 ``checkout_required``.
    """
    if plan.kind != PlanKind.FREE:
        raise ApplicationError(CHECKOUT_REQUIRED_MESSAGE, code="checkout_required", fields={"plan": ["A paid plan."]})
    plan, terms, version = subscribe_check(
        organization=organization,
        user=user,
        plan=plan,
        accept_license=accept_license,
        terms_sha256=terms_sha256,
        pinned_version=pinned_version,
    )
    now = timezone.now()
    return subscription_provision(
        organization=organization,
        user=user,
        plan=plan,
        terms=terms,
        ip_address=ip_address,
        pinned_version=version,
        status=SubscriptionStatus.ACTIVE,
        period_start=now,
        period_end=months_add(now, 1),
    )


def local_first_period(*, plan: Plan, now: datetime) -> dict[str, Any]:
    """Status and first period of a new local subscription: the trial, or one month."""
    if plan.trial_days:
        trial_end = now + timedelta(days=plan.trial_days)
        return {
            "status": SubscriptionStatus.TRIALING,
            "period_start": now,
            "period_end": trial_end,
            "trial_end": trial_end,
        }
    return {"status": SubscriptionStatus.ACTIVE, "period_start": now, "period_end": months_add(now, 1)}


def invoice_period_open(*, subscription: Subscription) -> None:
    """Invoice a local subscription's current period in advance (the ledger's ``billing.invoices``)."""
    if subscription.stripe_subscription_id or subscription.plan.kind == PlanKind.FREE:
        return
    invoices.invoice_period_open(
        subscription=subscription,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
    )


def _invoice_period_close(*, subscription: Subscription, period_start: datetime, period_end: datetime) -> None:
    """Invoice the usage of a local subscription's ended period (the ledger's ``billing.invoices``)."""
    if subscription.stripe_subscription_id:
        return
    invoices.invoice_period_close(subscription=subscription, period_start=period_start, period_end=period_end)


# --- subscriptions: lifecycle ---------------------------------------------------------------------


def _subscription_lock(subscription: Subscription | int) -> Subscription:
    pk = subscription if isinstance(subscription, int) else subscription.pk
    return (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("plan", "listing", "listing__organization", "organization", "scheduled_plan")
        .get(pk=pk)
    )


def _audit(
    subscription: Subscription,
    action: str,
    *,
    actor: User | None = None,
    reason: str = "",
    extra: Mapping[str, Any] | None = None,
    **data: Any,
) -> None:
    audit_log_write(
        action=action,
        actor=actor,
        organization=subscription.organization,
        listing=subscription.listing,
        reason=reason,
        data={"subscription_id": subscription.pk, **dict(extra or {}), **data},
    )


@transaction.atomic
def subscription_cancel(*, subscription: Subscription, user: User) -> Subscription:
    """Cancel (the buyer's owners and admins). Free plans end at once; paid ones at the period's end,
    entitled until then (Stripe: ``cancel_at_period_end``). A scheduled plan change is dropped."""
    _require_manager(
        user=user,
        organization=subscription.organization,
        action="cancel subscriptions",
    )
    subscription = _subscription_lock(subscription)
    if subscription.status == SubscriptionStatus.CANCELED:
        return subscription
    now = timezone.now()
    if subscription.plan.kind == PlanKind.FREE and not subscription.stripe_subscription_id:
        subscription.status = SubscriptionStatus.CANCELED
        subscription.canceled_at = now
        subscription.current_period_end = min(subscription.current_period_end, now)
        subscription.scheduled_plan = None
        fields = ["status", "canceled_at", "current_period_end", "scheduled_plan"]
    else:
        if subscription.cancel_at_period_end and subscription.scheduled_plan_id is None:
            return subscription
        if subscription.stripe_subscription_id:
            # Clears a renewal hold for new terms too: the buyer's cancel wins.
            updated = payments.subscription_update(
                subscription=subscription.stripe_subscription_id,
                cancel_at_period_end=True,
                metadata={"terms_hold": ""},
            )
            subscription_apply_stripe_state(subscription=subscription, stripe_subscription=updated)
        subscription.cancel_at_period_end = True
        subscription.scheduled_plan = None
        fields = ["cancel_at_period_end", "scheduled_plan"]
    subscription.save(update_fields=fields)
    _audit(
        subscription,
        AuditAction.SUBSCRIPTION_CANCELED,
        actor=user,
        plan=subscription.plan.name,
        at_period_end="status" not in fields,
        current_period_end=subscription.current_period_end.isoformat(),
    )
    _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
    return subscription


@transaction.atomic
def subscription_resume(*, subscription: Subscription, user: User) -> Subscription:
    """Undo a cancel at the period's end, before the period ends."""
    _require_manager(
        user=user,
        organization=subscription.organization,
        action="change subscriptions",
    )
    subscription = _subscription_lock(subscription)
    if subscription.status == SubscriptionStatus.CANCELED or subscription.current_period_end <= timezone.now():
        raise Conflict("This subscription has ended; subscribe again.", code="subscription_ended")
    if not subscription.cancel_at_period_end:
        return subscription
    if subscription.stripe_subscription_id:
        updated = payments.subscription_update(
            subscription=subscription.stripe_subscription_id, cancel_at_period_end=False, metadata={"terms_hold": ""}
        )
        subscription_apply_stripe_state(subscription=subscription, stripe_subscription=updated)
    subscription.cancel_at_period_end = False
    if subscription.scheduled_plan is not None and subscription.scheduled_plan.kind == PlanKind.FREE:
        subscription.scheduled_plan = None  # a downgrade to free was a cancel at Stripe
    subscription.save(update_fields=["cancel_at_period_end", "scheduled_plan"])
    _audit(subscription, AuditAction.SUBSCRIPTION_REACTIVATED, actor=user, resumed=True)
    _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
    return subscription


def _stripe_item_changes(*, stripe_subscription: Mapping[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Subscription item changes that put ``plan``'s prices in place of the current ones."""
    items = (stripe_subscription.get("items") or {}).get("data") or []

    def usage_type(item: Mapping[str, Any]) -> str:
        return ((item.get("price") or {}).get("recurring") or {}).get("usage_type") or "licensed"

    current = {
        "licensed": next((i for i in items if usage_type(i) == "licensed"), None),
        "metered": next((i for i in items if usage_type(i) == "metered"), None),
    }
    wanted = {"licensed": plan.stripe_price_id or None, "metered": plan.stripe_metered_price_id or None}
    changes: list[dict[str, Any]] = []
    for kind, item in current.items():
        price = wanted[kind]
        quantity = {"quantity": 1} if kind == "licensed" else {}
        if item is not None and price is not None:
            if item["price"]["id"] != price:
                changes.append({"id": item["id"], "price": price, **quantity})
        elif item is not None:
            changes.append({"id": item["id"], "deleted": True})
        elif price is not None:
            changes.append({"price": price, **quantity})
    return changes


def _plan_change_now(*, subscription: Subscription, plan: Plan, user: User | None, reason: str) -> None:
    """Switch the (locked) subscription to ``plan`` for the rest of this period, prorated."""
    old = subscription.plan
    now = timezone.now()
    if subscription.stripe_subscription_id:
        plan = plan_stripe_prices_ensure(plan=plan)
        current = payments.subscription_retrieve(subscription=subscription.stripe_subscription_id)
        changes = _stripe_item_changes(stripe_subscription=current, plan=plan)
        if changes:
            updated = payments.subscription_update(
                subscription=subscription.stripe_subscription_id,
                items=changes,
                proration_behavior="create_prorations",
                idempotency_key=f"subscription-{subscription.pk}-plan-{plan.pk}-{uuid.uuid4().hex[:12]}",
            )
            subscription_apply_stripe_state(subscription=subscription, stripe_subscription=updated)
        proration = None
    else:
        proration = pricing.proration_minor(
            old_plan=old,
            new_plan=plan,
            period_start=subscription.current_period_start,
            period_end=subscription.current_period_end,
            at=now,
        )
        if proration:
            invoices.invoice_proration_add(
                subscription=subscription, old_plan=old, new_plan=plan, amount_cents=proration, at=now
            )
    subscription.plan = plan
    if subscription.scheduled_plan_id == plan.pk or reason == "upgrade":
        subscription.scheduled_plan = None
    subscription.save(update_fields=["plan", "scheduled_plan"])
    _audit(
        subscription,
        AuditAction.SUBSCRIPTION_PLAN_CHANGED,
        actor=user,
        reason=reason,
        from_plan_id=old.pk,
        from_plan=old.name,
        to_plan_id=plan.pk,
        to_plan=plan.name,
        proration_cents=proration,
    )
    _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)


@transaction.atomic
def subscription_plan_change(*, subscription: Subscription, user: User, plan: Plan) -> Subscription:
    """Move a subscription to another plan of its listing (owners and admins).

    Upgrades apply at once, prorated for the rest of the period (Stripe: ``create_prorations``);
    downgrades wait for the period's end (``scheduled_plan``). Choosing the current plan again drops a
    scheduled change. From a free plan to a paid one goes through checkout (409 ``checkout_required``).
    """
    _require_manager(
        user=user,
        organization=subscription.organization,
        action="change subscriptions",
    )
    subscription = _subscription_lock(subscription)
    plan = Plan.objects.select_related("listing").get(pk=plan.pk)
    if plan.listing_id != subscription.listing_id:
        raise ApplicationError(
            "Choose a plan of the same listing.", code="invalid", fields={"plan": ["Other listing."]}
        )
    if subscription.status == SubscriptionStatus.CANCELED:
        raise Conflict("This subscription has ended; subscribe again.", code="subscription_ended")
    if subscription.status == SubscriptionStatus.SUSPENDED:
        raise Conflict("Pay the open invoice before changing plans.", code="subscription_suspended")
    if plan.pk == subscription.plan_id:
        if subscription.scheduled_plan_id is None:
            raise Conflict("The subscription is already on this plan.", code="same_plan")
        subscription.scheduled_plan = None
        subscription.save(update_fields=["scheduled_plan"])
        _audit(subscription, AuditAction.SUBSCRIPTION_PLAN_SCHEDULED, actor=user, to_plan_id=None, dropped=True)
        return subscription
    if not plan.is_active:
        raise Conflict("This plan takes no new subscribers.", code="plan_inactive", fields={"plan": ["Inactive."]})
    old = subscription.plan
    if old.kind == PlanKind.FREE and plan.kind != PlanKind.FREE:
        raise Conflict(
            "Moving from a free plan to a paid one goes through checkout.",
            code="checkout_required",
            fields={"plan": ["Start a checkout for this plan."]},
        )
    if plan.kind != PlanKind.FREE and old.kind != PlanKind.FREE and plan.currency != old.currency:
        raise ApplicationError("Plans in another currency need a new subscription.", code="currency_mismatch")
    if pricing.plan_change_is_upgrade(old_plan=old, new_plan=plan):
        _plan_change_now(subscription=subscription, plan=plan, user=user, reason="upgrade")
        return subscription
    # A downgrade: at the period's end. From Stripe, a downgrade to free ends the paid subscription then.
    if plan.kind == PlanKind.FREE and subscription.stripe_subscription_id:
        updated = payments.subscription_update(
            subscription=subscription.stripe_subscription_id, cancel_at_period_end=True, metadata={"terms_hold": ""}
        )
        subscription_apply_stripe_state(subscription=subscription, stripe_subscription=updated)
        subscription.cancel_at_period_end = True
    subscription.scheduled_plan = plan
    subscription.save(update_fields=["scheduled_plan", "cancel_at_period_end"])
    _audit(
        subscription,
        AuditAction.SUBSCRIPTION_PLAN_SCHEDULED,
        actor=user,
        reason="downgrade",
        from_plan_id=old.pk,
        to_plan_id=plan.pk,
        to_plan=plan.name,
        at=subscription.current_period_end.isoformat(),
    )
    return subscription


def subscription_terms_outdated(*, subscription: Subscription) -> bool:
    """Whether the listing's license terms changed since the subscription last accepted them."""
    latest = (
        LicenseAcceptance.objects.filter(subscription=subscription)
        .order_by("-accepted_at", "-id")
        .values_list("terms_sha256", flat=True)
        .first()
    )
    return latest != license_terms_for_listing(listing=subscription.listing).sha256


@transaction.atomic
def subscription_terms_accept(
    *,
    subscription: Subscription,
    user: User,
    accept_license: bool,
    terms_sha256: str | None = None,
    ip_address: str | None = None,
) -> Subscription:
    """Accept the listing's new license terms for a subscription (owners and admins); recorded like the
    first acceptance. A renewal that waited for them happens now (local), or the Stripe subscription
    that was held from renewing renews again."""
    if accept_license is not True:
        raise ApplicationError(
            "Accept the license terms to continue.",
            code="license_not_accepted",
            fields={"accept_license": ["Accept the license terms to continue."]},
        )
    _require_manager(
        user=user,
        organization=subscription.organization,
        action="accept license terms",
    )
    subscription = _subscription_lock(subscription)
    if subscription.status == SubscriptionStatus.CANCELED:
        raise Conflict("This subscription has ended; subscribe again.", code="subscription_ended")
    terms = license_terms_for_listing(listing=subscription.listing)
    _terms_read_check(terms=terms, terms_sha256=terms_sha256)
    if not subscription_terms_outdated(subscription=subscription):
        return subscription
    acceptance = LicenseAcceptance.objects.create(
        subscription=subscription,
        organization=subscription.organization,
        user=user,
        listing=subscription.listing,
        license=terms.license,
        terms_version=terms.version,
        terms_sha256=terms.sha256,
        terms_text=terms.text,
        ip_address=ip_address or None,
    )
    _audit(
        subscription,
        AuditAction.SUBSCRIPTION_TERMS_ACCEPTED,
        actor=user,
        license=terms.license,
        terms_version=terms.version,
        terms_sha256=terms.sha256,
        license_acceptance_id=acceptance.pk,
    )
    now = timezone.now()
    if subscription.stripe_subscription_id:
        if subscription.cancel_at_period_end:
            current = payments.subscription_retrieve(subscription=subscription.stripe_subscription_id)
            if (current.get("metadata") or {}).get("terms_hold") and current.get("status") != "canceled":
                updated = payments.subscription_update(
                    subscription=subscription.stripe_subscription_id,
                    cancel_at_period_end=False,
                    metadata={"terms_hold": ""},
                )
                subscription_apply_stripe_state(subscription=subscription, stripe_subscription=updated)
    elif subscription.current_period_end <= now:
        _local_renew(subscription=subscription, now=now, restart=True)
    _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
    return subscription


# --- payments ---------------------------------------------------------------------------------------


@transaction.atomic
def subscription_payment_failed(*, subscription_id: int, failed_at: datetime | None = None) -> Subscription:
    """A payment for the subscription failed (local invoices): past due, entitled for the grace period."""
    subscription = _subscription_lock(subscription_id)
    if subscription.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING):
        subscription.status = SubscriptionStatus.PAST_DUE
        subscription.past_due_since = failed_at or timezone.now()
        subscription.save(update_fields=["status", "past_due_since"])
        _audit(subscription, AuditAction.SUBSCRIPTION_PAST_DUE, past_due_since=subscription.past_due_since.isoformat())
        _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
    return subscription


@transaction.atomic
def subscription_payment_recovered(*, subscription_id: int) -> Subscription:
    """The overdue invoices are paid (local invoices): active again."""
    subscription = _subscription_lock(subscription_id)
    if subscription.status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED):
        trialing = subscription.trial_end is not None and subscription.trial_end > timezone.now()
        subscription.status = SubscriptionStatus.TRIALING if trialing else SubscriptionStatus.ACTIVE
        subscription.past_due_since = None
        subscription.save(update_fields=["status", "past_due_since"])
        _audit(subscription, AuditAction.SUBSCRIPTION_REACTIVATED, paid=True)
        _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
    return subscription


# --- Stripe → local mirror ---------------------------------------------------------------------------

STRIPE_STATUSES = {
    "active": SubscriptionStatus.ACTIVE,
    "trialing": SubscriptionStatus.TRIALING,
    "past_due": SubscriptionStatus.PAST_DUE,
    "incomplete": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.SUSPENDED,
    "paused": SubscriptionStatus.SUSPENDED,
    "canceled": SubscriptionStatus.CANCELED,
    "incomplete_expired": SubscriptionStatus.CANCELED,
}


def _plan_for_stripe_items(*, listing_id: int, stripe_subscription: Mapping[str, Any]) -> Plan | None:
    price_ids = [
        (item.get("price") or {}).get("id") for item in (stripe_subscription.get("items") or {}).get("data") or []
    ]
    price_ids = [p for p in price_ids if p]
    if not price_ids:
        return None
    return (
        Plan.objects.filter(listing_id=listing_id)
        .filter(Q(stripe_price_id__in=price_ids) | Q(stripe_metered_price_id__in=price_ids))
        .order_by("-version", "-pk")
        .first()
    )


def stripe_subscription_state(
    *, stripe_subscription: Mapping[str, Any], past_due_since: datetime | None, seen_at: datetime, now: datetime
) -> dict[str, Any]:
    """Our fields for a Stripe subscription object (status, period, trial, cancellation, past due)."""
    stripe_status = str(stripe_subscription.get("status") or "")
    status = STRIPE_STATUSES.get(stripe_status, SubscriptionStatus.PAST_DUE)
    start, end = payments.subscription_period(stripe_subscription)
    if status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.SUSPENDED):
        past_due_since = past_due_since or seen_at
        if status == SubscriptionStatus.PAST_DUE and past_due_since + grace_period() <= now:
            status = SubscriptionStatus.SUSPENDED
    else:
        past_due_since = None
    ended = stripe_subscription.get("ended_at") or stripe_subscription.get("canceled_at")
    return {
        "status": status,
        "current_period_start": _ts(start),
        "current_period_end": _ts(end),
        "trial_end": _ts(stripe_subscription.get("trial_end")),
        "cancel_at_period_end": bool(stripe_subscription.get("cancel_at_period_end")),
        "canceled_at": (_ts(ended) or now) if status == SubscriptionStatus.CANCELED else None,
        "past_due_since": past_due_since,
    }


_STATUS_AUDIT: dict[str, str] = {
    SubscriptionStatus.PAST_DUE: AuditAction.SUBSCRIPTION_PAST_DUE,
    SubscriptionStatus.SUSPENDED: AuditAction.SUBSCRIPTION_SUSPENDED,
    SubscriptionStatus.CANCELED: AuditAction.SUBSCRIPTION_CANCELED,
}


def subscription_apply_stripe_state(
    *,
    subscription: Subscription,
    stripe_subscription: Mapping[str, Any],
    event_created: datetime | None = None,
) -> list[str]:
    """Mirror a Stripe subscription object onto our (locked) row; returns the fields that changed.

    Callers pass the object's current state (fetched from Stripe or just returned by an update), so the
    result does not depend on the order events arrive in. ``stripe_synced_at`` keeps the newest event
    time seen, so older events are skipped without a fetch. After a renewal a scheduled plan is put in
    place at Stripe by a task; a subscription ended at Stripe with a scheduled free plan continues on it.
    """
    now = timezone.now()
    seen_at = event_created or now
    state = stripe_subscription_state(
        stripe_subscription=stripe_subscription, past_due_since=subscription.past_due_since, seen_at=seen_at, now=now
    )
    plan = _plan_for_stripe_items(listing_id=subscription.listing_id, stripe_subscription=stripe_subscription)
    if plan is not None and plan.pk != subscription.plan_id:
        state["plan"] = plan
    old_status, old_start = subscription.status, subscription.current_period_start
    changed = [name for name, value in state.items() if getattr(subscription, name) != value]
    for name in changed:
        setattr(subscription, name, state[name])
    if subscription.scheduled_plan_id and subscription.scheduled_plan_id == subscription.plan_id:
        subscription.scheduled_plan = None
        changed.append("scheduled_plan")
    # Only event times move the mark: our own clock is not comparable with Stripe's event times.
    synced = subscription.stripe_synced_at
    if event_created is not None and (synced is None or event_created > synced):
        synced = event_created
    fields = [*changed, "stripe_synced_at"] if synced != subscription.stripe_synced_at else changed
    subscription.stripe_synced_at = synced
    if not fields:
        return []
    subscription.save(update_fields=fields)
    if not changed:
        return []
    renewed = "current_period_start" in changed and subscription.current_period_start > old_start
    data = {
        "stripe_subscription_id": subscription.stripe_subscription_id,
        "changed": sorted(changed),
        "status": subscription.status,
        "current_period_end": subscription.current_period_end.isoformat(),
    }
    if subscription.status != old_status and subscription.status in _STATUS_AUDIT:
        action = _STATUS_AUDIT[subscription.status]
    elif subscription.status != old_status and old_status in (
        SubscriptionStatus.PAST_DUE,
        SubscriptionStatus.SUSPENDED,
    ):
        action = AuditAction.SUBSCRIPTION_REACTIVATED
    elif renewed:
        action = AuditAction.SUBSCRIPTION_RENEWED
    else:
        action = AuditAction.SUBSCRIPTION_UPDATED
    _audit(subscription, action, extra=data)
    if renewed and subscription.scheduled_plan_id and subscription.status != SubscriptionStatus.CANCELED:
        from billing.tasks import subscription_scheduled_plan_apply_task

        subscription_id = subscription.pk
        transaction.on_commit(
            lambda: subscription_scheduled_plan_apply_task.delay(subscription_id=subscription_id), robust=True
        )
    if (
        subscription.status == SubscriptionStatus.CANCELED
        and old_status != SubscriptionStatus.CANCELED
        and subscription.scheduled_plan is not None
        and subscription.scheduled_plan.kind == PlanKind.FREE
    ):
        _continue_on_free_plan(subscription=subscription)
    _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
    return changed


def _continue_on_free_plan(*, subscription: Subscription) -> Subscription | None:
    """A paid subscription downgraded to free ended: the free plan starts where the paid period ends."""
    free = subscription.scheduled_plan
    assert free is not None
    latest = LicenseAcceptance.objects.filter(subscription=subscription).order_by("-accepted_at", "-id").first()
    terms = license_terms_for_listing(listing=subscription.listing)
    if latest is None or latest.terms_sha256 != terms.sha256 or not free.is_active:
        return None  # new terms or a retired plan: the buyer subscribes again themselves
    start = subscription.current_period_end
    subscription.scheduled_plan = None
    subscription.save(update_fields=["scheduled_plan"])
    return subscription_provision(
        organization=subscription.organization,
        user=latest.user,
        plan=free,
        terms=terms,
        ip_address=None,
        pinned_version=subscription.pinned_version,
        status=SubscriptionStatus.ACTIVE,
        period_start=start,
        period_end=months_add(start, 1),
        extra_audit={"continues_subscription_id": subscription.pk},
    )


@transaction.atomic
def subscription_scheduled_plan_apply(*, subscription_id: int) -> Subscription:
    """Put a Stripe subscription's scheduled plan (a downgrade, a new price version) in place after its
    renewal; the swap is prorated so the new period costs the new price."""
    subscription = _subscription_lock(subscription_id)
    plan = subscription.scheduled_plan
    if (
        plan is None
        or not subscription.stripe_subscription_id
        or subscription.status == SubscriptionStatus.CANCELED
        or plan.kind == PlanKind.FREE
    ):
        return subscription
    _plan_change_now(subscription=subscription, plan=plan, user=None, reason="scheduled")
    return subscription


# --- periodic upkeep ---------------------------------------------------------------------------------


def _local_renew(*, subscription: Subscription, now: datetime, restart: bool = False) -> None:
    """Start the (locked, local) subscription's next period: the scheduled plan, the end of a trial,
    invoices for the ended period's usage and the new period's fee. ``restart``: the period waited
    (for new terms) and starts now instead of where the last one ended."""
    ended_start, ended_end = subscription.current_period_start, subscription.current_period_end
    _invoice_period_close(subscription=subscription, period_start=ended_start, period_end=ended_end)
    from_plan = subscription.plan
    if subscription.scheduled_plan is not None:
        subscription.plan = subscription.scheduled_plan
        subscription.scheduled_plan = None
    if subscription.status == SubscriptionStatus.TRIALING:
        subscription.status = SubscriptionStatus.ACTIVE
    if restart:
        start, end = now, months_add(now, 1)
    else:
        # Monthly periods keep their day of the month (Jan 31, Feb 28, Mar 31); a trial's end anchors anew.
        anchor, months = (ended_start, 1) if months_add(ended_start, 1) == ended_end else (ended_end, 0)
        while months_add(anchor, months + 1) <= now:
            months += 1
        start, end = months_add(anchor, months), months_add(anchor, months + 1)
    subscription.current_period_start, subscription.current_period_end = start, end
    subscription.save(update_fields=["plan", "scheduled_plan", "status", "current_period_start", "current_period_end"])
    _audit(
        subscription,
        AuditAction.SUBSCRIPTION_RENEWED,
        current_period_start=start.isoformat(),
        current_period_end=end.isoformat(),
        plan_id=subscription.plan_id,
        from_plan_id=from_plan.pk if from_plan.pk != subscription.plan_id else None,
    )
    invoice_period_open(subscription=subscription)


def _latest_terms_sha() -> Subquery:
    return Subquery(
        LicenseAcceptance.objects.filter(subscription=OuterRef("pk"))
        .order_by("-accepted_at", "-id")
        .values("terms_sha256")[:1]
    )


def subscription_periods_renew(*, now: datetime | None = None) -> int:
    """Local subscriptions whose period ended: end those set to cancel (and suspended ones), hold those
    whose license terms changed until someone accepts them, renew the rest (scheduled plan, invoices).
    Returns how many changed. Each subscription commits on its own; one failing does not stop the rest."""
    now = now or timezone.now()
    due_ids = list(
        Subscription.objects.filter(
            current_period_end__lte=now, status__in=LIVE_STATUSES, stripe_subscription_id__isnull=True
        ).values_list("pk", flat=True)
    )
    changed = 0
    terms_by_listing: dict[int, str] = {}
    for subscription_id in due_ids:
        try:
            with transaction.atomic():
                subscription = (
                    Subscription.objects.select_for_update(of=("self",), skip_locked=True)
                    .select_related("plan", "organization", "listing", "listing__organization", "scheduled_plan")
                    .annotate(latest_terms_sha=_latest_terms_sha())
                    .filter(pk=subscription_id, current_period_end__lte=now, status__in=LIVE_STATUSES)
                    .first()
                )
                if subscription is None:
                    continue
                if subscription.cancel_at_period_end or subscription.status == SubscriptionStatus.SUSPENDED:
                    _invoice_period_close(
                        subscription=subscription,
                        period_start=subscription.current_period_start,
                        period_end=subscription.current_period_end,
                    )
                    unpaid = subscription.status == SubscriptionStatus.SUSPENDED
                    subscription.status = SubscriptionStatus.CANCELED
                    subscription.canceled_at = subscription.current_period_end
                    subscription.scheduled_plan = None
                    subscription.save(update_fields=["status", "canceled_at", "scheduled_plan"])
                    _audit(
                        subscription,
                        AuditAction.SUBSCRIPTION_CANCELED,
                        reason="unpaid" if unpaid else "",
                        ended_at=subscription.current_period_end.isoformat(),
                    )
                else:
                    listing = subscription.listing
                    if listing.pk not in terms_by_listing:
                        terms_by_listing[listing.pk] = license_terms_for_listing(listing=listing).sha256
                    if subscription.latest_terms_sha != terms_by_listing[listing.pk]:
                        continue  # held: the next period starts when someone accepts the new terms
                    _local_renew(subscription=subscription, now=now)
                _forget_entitlement_on_commit(
                    organization_id=subscription.organization_id, listing_id=subscription.listing_id
                )
                changed += 1
        except Exception:
            logger.exception("Renewing subscription %s failed", subscription_id)
    return changed


@transaction.atomic
def subscriptions_overdue_suspend(*, now: datetime | None = None) -> int:
    """Past-due subscriptions beyond the grace period: suspended (not entitled until paid)."""
    now = now or timezone.now()
    overdue = (
        Subscription.objects.select_for_update(of=("self",), skip_locked=True)
        .select_related("organization", "listing", "listing__organization")
        .filter(status=SubscriptionStatus.PAST_DUE, past_due_since__lte=now - grace_period())
    )
    count = 0
    for subscription in overdue:
        subscription.status = SubscriptionStatus.SUSPENDED
        subscription.save(update_fields=["status"])
        _audit(
            subscription,
            AuditAction.SUBSCRIPTION_SUSPENDED,
            past_due_since=subscription.past_due_since.isoformat() if subscription.past_due_since else None,
            grace_days=settings.BILLING_GRACE_DAYS,
        )
        _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
        count += 1
    return count


def subscriptions_terms_hold(*, now: datetime | None = None) -> int:
    """Stripe subscriptions whose listing's terms changed since they were accepted: set not to renew
    (``cancel_at_period_end`` with a ``terms_hold`` mark) until someone accepts the new terms, which lifts
    the hold. Returns how many were held; Stripe being down leaves the rest for the next run."""
    candidates = list(
        Subscription.objects.filter(
            stripe_subscription_id__isnull=False, status__in=LIVE_STATUSES, cancel_at_period_end=False
        )
        .select_related("listing")
        .annotate(latest_terms_sha=_latest_terms_sha())
    )
    held = 0
    for candidate in candidates:
        terms = license_terms_for_listing(listing=candidate.listing)
        if candidate.latest_terms_sha == terms.sha256:
            continue
        try:
            with transaction.atomic():
                subscription = _subscription_lock(candidate.pk)
                if subscription.cancel_at_period_end or not subscription.stripe_subscription_id:
                    continue
                updated = payments.subscription_update(
                    subscription=subscription.stripe_subscription_id,
                    cancel_at_period_end=True,
                    metadata={"terms_hold": terms.sha256[:16]},
                )
                subscription_apply_stripe_state(subscription=subscription, stripe_subscription=updated)
                _audit(
                    subscription,
                    AuditAction.SUBSCRIPTION_RENEWAL_HELD,
                    terms_version=terms.version,
                    terms_sha256=terms.sha256,
                    current_period_end=subscription.current_period_end.isoformat(),
                )
                held += 1
        except payments.PaymentsError:
            logger.exception("Holding the renewal of subscription %s failed", candidate.pk)
    return held


def subscriptions_upkeep(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic billing pass (celery beat): renewals, suspensions, terms holds, stale checkouts."""
    from billing.checkout import checkouts_expire_stale

    now = now or timezone.now()
    return {
        "suspended": subscriptions_overdue_suspend(now=now),
        "renewed_or_ended": subscription_periods_renew(now=now),
        "held_for_terms": subscriptions_terms_hold(now=now),
        "checkouts_expired": checkouts_expire_stale(now=now),
    }
