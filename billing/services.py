"""Writes for plans and subscriptions. Free plans only for now: paid plans arrive with billing.

Every function is keyword-only, runs in one transaction and writes its audit row in that transaction.
"""

from __future__ import annotations

import calendar
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import MANAGER_ROLES, Membership, Organization, User
from billing.licenses import license_terms_for_listing
from billing.models import LicenseAcceptance, Plan, PlanKind, Subscription, SubscriptionStatus
from billing.selectors import subscription_entitled_cache_forget
from catalog.models import SERVABLE_STATUSES, Listing, ListingStatus, Version
from marketplace.errors import ApplicationError, Conflict, Forbidden, NotFound
from moderation.audit import audit_log_write
from moderation.models import AuditAction

PLAN_NAME_MAX_LENGTH = Plan._meta.get_field("name").max_length or 80
PLAN_QUOTA_MAX_UNITS = 10**12
PAID_PLANS_MESSAGE = "Paid plans arrive with billing; only free plans can be created for now."


def months_add(moment: datetime, months: int) -> datetime:
    """The same time ``months`` calendar months later; the day is clamped to the month's last day."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _role(*, user: User, organization_id: int) -> str | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(user=user, organization_id=organization_id).values_list("role", flat=True).first()


# --- plans -------------------------------------------------------------------------------------


def _require_listing_manager(*, user: User, listing: Listing) -> None:
    if _role(user=user, organization_id=listing.organization_id) not in MANAGER_ROLES:
        raise Forbidden("Only owners and admins of the publishing organization may change its plans.")


@transaction.atomic
def plan_create(
    *,
    listing: Listing,
    user: User,
    name: str,
    kind: str = PlanKind.FREE,
    monthly_quota_units: int | None = None,
) -> Plan:
    """Offer a plan on a listing (publishers' owners and admins). ``monthly_quota_units`` None is unlimited."""
    _require_listing_manager(user=user, listing=listing)
    if kind not in PlanKind.values:
        raise ApplicationError(
            "Unknown plan kind.", code="invalid", fields={"kind": [f"Choose one of {', '.join(PlanKind.values)}."]}
        )
    if kind != PlanKind.FREE:
        raise ApplicationError(PAID_PLANS_MESSAGE, code="paid_plans_unavailable", fields={"kind": [PAID_PLANS_MESSAGE]})
    name = (name or "").strip()
    if not name:
        raise ApplicationError("Give the plan a name.", code="invalid", fields={"name": ["Required."]})
    if len(name) > PLAN_NAME_MAX_LENGTH:
        raise ApplicationError(
            "The name is too long.", code="invalid", fields={"name": [f"At most {PLAN_NAME_MAX_LENGTH} characters."]}
        )
    if monthly_quota_units is not None and not 1 <= monthly_quota_units <= PLAN_QUOTA_MAX_UNITS:
        raise ApplicationError(
            "The monthly quota is out of range.",
            code="invalid",
            fields={"monthly_quota_units": [f"Between 1 and {PLAN_QUOTA_MAX_UNITS:,} units, or empty for unlimited."]},
        )
    # Lock the listing so two concurrent creates cannot both pass the name check.
    Listing.objects.select_for_update().filter(pk=listing.pk).exists()
    if Plan.objects.filter(listing=listing, is_active=True, name__iexact=name).exists():
        raise Conflict(
            "An active plan with this name exists.",
            code="plan_name_taken",
            fields={"name": ["An active plan of this listing already has this name."]},
        )
    plan = Plan.objects.create(listing=listing, name=name, kind=kind, monthly_quota_units=monthly_quota_units)
    audit_log_write(
        action=AuditAction.PLAN_CREATED,
        actor=user,
        listing=listing,
        data={"plan_id": plan.pk, "name": name, "kind": kind, "monthly_quota_units": monthly_quota_units},
    )
    return plan


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


# --- subscriptions -----------------------------------------------------------------------------


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


def _forget_entitlement_on_commit(*, organization_id: int, listing_id: int) -> None:
    transaction.on_commit(
        lambda: subscription_entitled_cache_forget(organization_id=organization_id, listing_id=listing_id)
    )


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
    """Subscribe ``organization`` (its owners and admins) to ``plan``, accepting the listing's license.

    Records a LicenseAcceptance with the exact terms text, its SHA-256, version, user, organization and
    IP. ``terms_sha256``, when given, must match the current terms: the buyer accepts what they saw.
    The first period runs from now for one calendar month. One live subscription per organization
    and listing (409 ``already_subscribed``).
    """
    if accept_license is not True:
        raise ApplicationError(
            "Accept the license terms to subscribe.",
            code="license_not_accepted",
            fields={"accept_license": ["Accept the license terms to subscribe."]},
        )
    role = _role(user=user, organization_id=organization.pk)
    if role is None:
        raise NotFound("No such organization.")
    if role not in MANAGER_ROLES:
        raise Forbidden(f"Only owners and admins of {organization.name} can subscribe it.", code="not_a_manager")

    plan = Plan.objects.select_for_update().select_related("listing", "listing__organization").get(pk=plan.pk)
    listing = plan.listing
    if listing.status != ListingStatus.PUBLISHED:
        raise NotFound("This listing is not available.", code="listing_unavailable")
    if not plan.is_active:
        raise Conflict("This plan takes no new subscribers.", code="plan_inactive", fields={"plan": ["Inactive."]})
    if plan.kind != PlanKind.FREE:
        raise ApplicationError(PAID_PLANS_MESSAGE, code="paid_plans_unavailable", fields={"plan": [PAID_PLANS_MESSAGE]})
    version = _pinned_version_clean(listing=listing, pinned_version=pinned_version)
    terms = license_terms_for_listing(listing=listing)
    if terms_sha256 and terms_sha256 != terms.sha256:
        raise Conflict(
            "The license terms changed since you read them. Read them again and accept.",
            code="terms_changed",
            fields={"accept_license": ["The terms changed; read them again."]},
        )
    if (
        Subscription.objects.filter(organization=organization, listing=listing)
        .exclude(status=SubscriptionStatus.CANCELED)
        .exists()
    ):
        raise Conflict(f"{organization.name} already subscribes to {listing.name}.", code="already_subscribed")

    now = timezone.now()
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                organization=organization,
                listing=listing,
                plan=plan,
                created_by=user,
                status=SubscriptionStatus.ACTIVE,
                pinned_version=version,
                current_period_start=now,
                current_period_end=months_add(now, 1),
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
            "pinned_version": version.version if version else None,
            "license": terms.license,
            "terms_version": terms.version,
            "terms_sha256": terms.sha256,
            "license_acceptance_id": acceptance.pk,
        },
    )
    _forget_entitlement_on_commit(organization_id=organization.pk, listing_id=listing.pk)
    return subscription


@transaction.atomic
def subscription_cancel(*, subscription: Subscription, user: User) -> Subscription:
    """Cancel (the buyer's owners and admins). Free plans end at once; paid ones at the period's end."""
    role = _role(user=user, organization_id=subscription.organization_id)
    if role is None:
        raise NotFound("No such subscription.")
    if role not in MANAGER_ROLES:
        raise Forbidden("Only owners and admins can cancel subscriptions.", code="not_a_manager")
    subscription = (
        Subscription.objects.select_for_update()
        .select_related("plan", "listing", "organization")
        .get(pk=subscription.pk)
    )
    if subscription.status == SubscriptionStatus.CANCELED:
        return subscription
    now = timezone.now()
    if subscription.plan.kind == PlanKind.FREE:
        subscription.status = SubscriptionStatus.CANCELED
        subscription.canceled_at = now
        subscription.current_period_end = min(subscription.current_period_end, now)
        fields = ["status", "canceled_at", "current_period_end"]
    else:
        subscription.cancel_at_period_end = True
        fields = ["cancel_at_period_end"]
    subscription.save(update_fields=fields)
    audit_log_write(
        action=AuditAction.SUBSCRIPTION_CANCELED,
        actor=user,
        organization=subscription.organization,
        listing=subscription.listing,
        data={
            "subscription_id": subscription.pk,
            "plan": subscription.plan.name,
            "at_period_end": "status" not in fields,
        },
    )
    _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
    return subscription


@transaction.atomic
def subscription_periods_renew(*, now: datetime | None = None) -> int:
    """Roll free subscriptions whose period has ended into the period that contains ``now``; end the
    ones set to cancel at the period's end. Returns how many changed. Run periodically (billing task).
    """
    now = now or timezone.now()
    changed = 0
    due = (
        Subscription.objects.select_for_update(skip_locked=True)
        .select_related("plan", "organization", "listing")
        .filter(current_period_end__lte=now, plan__kind=PlanKind.FREE)
        .exclude(status=SubscriptionStatus.CANCELED)
    )
    for subscription in due:
        if subscription.cancel_at_period_end:
            subscription.status = SubscriptionStatus.CANCELED
            subscription.canceled_at = subscription.current_period_end
            subscription.save(update_fields=["status", "canceled_at"])
            action = AuditAction.SUBSCRIPTION_CANCELED
        else:
            anchor, months = subscription.current_period_start, 1
            while months_add(anchor, months + 1) <= now:
                months += 1
            subscription.current_period_start = months_add(anchor, months)
            subscription.current_period_end = months_add(anchor, months + 1)
            subscription.save(update_fields=["current_period_start", "current_period_end"])
            action = AuditAction.SUBSCRIPTION_RENEWED
        audit_log_write(
            action=action,
            organization=subscription.organization,
            listing=subscription.listing,
            data={
                "subscription_id": subscription.pk,
                "current_period_start": subscription.current_period_start.isoformat(),
                "current_period_end": subscription.current_period_end.isoformat(),
            },
        )
        _forget_entitlement_on_commit(organization_id=subscription.organization_id, listing_id=subscription.listing_id)
        changed += 1
    return changed
