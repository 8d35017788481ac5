"""One checkout interface, two backends.

:func:`checkout_start` is the only entry: free plans subscribe at once; paid plans get a
``CheckoutSession`` whose ``url`` the buyer is sent to.

- ``local`` (no external calls): the url is our own page, ``/billing/checkout/<session_id>/``, with a
  test card form (:func:`checkout_local_pay`): 4242 4242 4242 4242 pays, 4000 0000 0000 0002 is declined.
  Paying creates the subscription (trialing when the plan has trial days), records the license
  acceptance and opens the first period's invoice, in one transaction.
- ``stripe``: a Stripe Checkout Session in subscription mode for the organization's Stripe Customer
  (flat price with quantity 1, metered price without). The subscription is provisioned only from the
  webhook (``checkout.session.completed`` or ``customer.subscription.*``, whichever is processed first:
  :func:`checkout_complete_from_stripe`), never from the success page, which only waits for it.

An abandoned checkout (the buyer cancels, or the session expires after 24 hours) leaves no subscription.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Organization, User
from billing import services
from billing.licenses import LicenseTerms
from billing.models import CheckoutSession, CheckoutStatus, Plan, PlanKind, Subscription
from catalog.models import Version
from marketplace.errors import ApplicationError, Conflict, NotFound
from marketplace.integrations import stripe as payments
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)

SESSION_ID_PLACEHOLDER = "{CHECKOUT_SESSION_ID}"  # filled in by Stripe (success url only) or by us (local)
CHECKOUT_ID_PLACEHOLDER = "{CHECKOUT_ID}"  # our CheckoutSession pk, filled in by checkout_start
CHECKOUT_TTL = timedelta(hours=24)  # as Stripe's sessions
TEST_CARD_SUCCEEDS = "4242424242424242"
TEST_CARD_DECLINED = "4000000000000002"


class CardDeclined(ApplicationError):
    status = 402
    code = "card_declined"


def _fill(url: str, session: CheckoutSession) -> str:
    return url.replace(SESSION_ID_PLACEHOLDER, session.session_id).replace(CHECKOUT_ID_PLACEHOLDER, str(session.pk))


def _audit(session: CheckoutSession, action: str, *, actor: User | None = None, reason: str = "", **data: Any) -> None:
    audit_log_write(
        action=action,
        actor=actor,
        organization=session.organization,
        listing=session.plan.listing,
        reason=reason,
        data={"checkout_session_id": session.pk, "session_id": session.session_id, "plan_id": session.plan_id, **data},
    )


def checkout_start(
    *,
    organization: Organization,
    user: User,
    plan: Plan,
    accept_license: bool,
    ip_address: str | None,
    success_url: str,
    cancel_url: str,
    terms_sha256: str | None = None,
    pinned_version: Version | str | None = None,
) -> CheckoutSession:
    """Start subscribing ``organization`` to ``plan`` (its owners and admins), accepting the license.

    Free plans: the subscription is created at once and the returned session is already ``complete``
    (its ``url`` is ``success_url``). Paid plans: an ``open`` session; send the buyer to its ``url``.
    ``success_url`` may contain ``{CHECKOUT_SESSION_ID}``, both urls ``{CHECKOUT_ID}`` (our id, e.g. for
    a cancel page that expires the checkout). Another open checkout of the organization
    for the same listing is expired, so one payment cannot start two subscriptions.
    """
    if plan.kind == PlanKind.FREE:
        return _checkout_free(
            organization=organization,
            user=user,
            plan=plan,
            accept_license=accept_license,
            ip_address=ip_address,
            success_url=success_url,
            terms_sha256=terms_sha256,
            pinned_version=pinned_version,
        )
    backend = settings.BILLING_BACKEND
    with transaction.atomic():
        plan, terms, version = services.subscribe_check(
            organization=organization,
            user=user,
            plan=plan,
            accept_license=accept_license,
            terms_sha256=terms_sha256,
            pinned_version=pinned_version,
        )
    _open_sessions_expire(organization=organization, listing_id=plan.listing_id)
    if backend != "stripe":
        with transaction.atomic():
            session = _session_create(
                organization=organization, user=user, plan=plan, terms=terms, version=version, ip=ip_address,
                backend="local", session_id=f"cs_local_{secrets.token_urlsafe(24)}",
            )  # fmt: skip
            # Where the page sends the buyer afterwards travels with its url (the page checks the host).
            returns = {"success_url": success_url, "cancel_url": cancel_url}
            query = urlencode({name: _fill(url, session) for name, url in returns.items()})
            session.url = reverse("billing:checkout-local", kwargs={"session_id": session.session_id}) + f"?{query}"
            session.save(update_fields=["url"])
            _audit(session, AuditAction.CHECKOUT_STARTED, actor=user, backend="local")
        return session

    # Stripe: the customer and the plan's prices first (idempotent), then our row is committed before the
    # Stripe session exists, so a payment always finds its checkout.
    customer = services.billing_customer_ensure(organization=organization, email=user.email)
    plan = services.plan_stripe_prices_ensure(plan=plan)
    with transaction.atomic():
        session = _session_create(
            organization=organization, user=user, plan=plan, terms=terms, version=version, ip=ip_address,
            backend="stripe", session_id=f"pending_{secrets.token_urlsafe(24)}",
        )  # fmt: skip
    metadata = {
        "checkout_session_id": str(session.pk),
        "organization_id": str(organization.pk),
        "plan_id": str(plan.pk),
        "listing_id": str(plan.listing_id),
    }
    subscription_data: dict[str, Any] = {"metadata": metadata}
    if plan.trial_days:
        subscription_data["trial_period_days"] = plan.trial_days
    try:
        created = payments.checkout_session_create(
            customer=str(customer.stripe_customer_id),
            price_ids=services.plan_stripe_line_items(plan),
            success_url=success_url.replace(CHECKOUT_ID_PLACEHOLDER, str(session.pk)),
            cancel_url=_fill(cancel_url, session),
            client_reference_id=str(session.pk),
            metadata=metadata,
            subscription_data=subscription_data,
            idempotency_key=f"checkout-{session.pk}-{session.session_id}",
        )
    except payments.PaymentsError:
        CheckoutSession.objects.filter(pk=session.pk).update(status=CheckoutStatus.EXPIRED)
        raise
    with transaction.atomic():
        session.session_id = created["id"]
        session.url = created["url"]
        session.save(update_fields=["session_id", "url"])
        _audit(session, AuditAction.CHECKOUT_STARTED, actor=user, backend="stripe")
    return session


def _session_create(
    *,
    organization: Organization,
    user: User,
    plan: Plan,
    terms: LicenseTerms,
    version: Version | None,
    ip: str | None,
    backend: str,
    session_id: str,
) -> CheckoutSession:
    return CheckoutSession.objects.create(
        organization=organization,
        user=user,
        plan=plan,
        backend=backend,
        session_id=session_id,
        url="",
        terms_version=terms.version,
        terms_sha256=terms.sha256,
        terms_text=terms.text,
        pinned_version=version,
        ip_address=ip or None,
    )


def _checkout_free(
    *,
    organization: Organization,
    user: User,
    plan: Plan,
    accept_license: bool,
    ip_address: str | None,
    success_url: str,
    terms_sha256: str | None,
    pinned_version: Version | str | None,
) -> CheckoutSession:
    with transaction.atomic():
        subscription = services.subscription_create(
            organization=organization,
            user=user,
            plan=plan,
            accept_license=accept_license,
            ip_address=ip_address,
            pinned_version=pinned_version,
            terms_sha256=terms_sha256,
        )
        acceptance = subscription.license_acceptances.get()
        session = CheckoutSession.objects.create(
            organization=organization,
            user=user,
            plan=plan,
            backend="free",
            session_id=f"free_{secrets.token_urlsafe(24)}",
            url="",
            status=CheckoutStatus.COMPLETE,
            terms_version=acceptance.terms_version,
            terms_sha256=acceptance.terms_sha256,
            terms_text=acceptance.terms_text,
            pinned_version=subscription.pinned_version,
            ip_address=ip_address or None,
            subscription=subscription,
            completed_at=timezone.now(),
        )
        session.url = _fill(success_url, session)
        session.save(update_fields=["url"])
    return session


def _open_sessions_expire(*, organization: Organization, listing_id: int) -> None:
    for session in CheckoutSession.objects.filter(
        organization=organization, plan__listing_id=listing_id, status=CheckoutStatus.OPEN
    ).select_related("plan", "plan__listing", "organization"):
        checkout_expire(checkout_session=session, reason="superseded")


def checkout_expire(*, checkout_session: CheckoutSession, reason: str = "abandoned") -> CheckoutSession:
    """Close an open checkout so it can no longer be paid (canceled, superseded, or too old). With Stripe
    the session is expired there too; one Stripe already completed or expired is left as it is."""
    session = checkout_session
    if session.status != CheckoutStatus.OPEN:
        return session
    if session.backend == "stripe" and not session.session_id.startswith("pending_"):
        try:
            payments.checkout_session_expire(session=session.session_id)
        except payments.StripeRequestError:
            # Already complete (the webhook provisions it) or expired: nothing to do here.
            return session
        except payments.StripeUnavailable:
            logger.warning("Could not expire Stripe checkout %s now; it expires by itself", session.session_id)
            return session
    return checkout_mark_expired(checkout_session_id=session.pk, reason=reason)


@transaction.atomic
def checkout_mark_expired(*, checkout_session_id: int, reason: str) -> CheckoutSession:
    session = (
        CheckoutSession.objects.select_for_update(of=("self",))
        .select_related("plan", "plan__listing", "organization")
        .get(pk=checkout_session_id)
    )
    if session.status == CheckoutStatus.OPEN:
        session.status = CheckoutStatus.EXPIRED
        session.save(update_fields=["status"])
        _audit(session, AuditAction.CHECKOUT_EXPIRED, reason=reason)
    return session


def checkouts_expire_stale(*, now: datetime | None = None) -> int:
    """Local checkouts left open longer than Stripe keeps its sessions: expired (Stripe expires its own)."""
    now = now or timezone.now()
    stale = list(
        CheckoutSession.objects.filter(
            status=CheckoutStatus.OPEN, backend="local", created_at__lt=now - CHECKOUT_TTL
        ).values_list("pk", flat=True)
    )
    for pk in stale:
        checkout_mark_expired(checkout_session_id=pk, reason="expired")
    return len(stale)


def checkout_get_for_member(*, user: User, session_id: str) -> CheckoutSession | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return (
        CheckoutSession.objects.select_related("plan", "plan__listing", "organization", "subscription")
        .filter(session_id=session_id, organization__memberships__user=user)
        .first()
    )


# --- local backend: the test card page ------------------------------------------------------------


def _card_digits(card_number: str) -> str:
    return re.sub(r"[\s-]", "", card_number or "")


@transaction.atomic
def checkout_local_pay(
    *, session_id: str, user: User, card_number: str, ip_address: str | None = None
) -> CheckoutSession:
    """Pay a local checkout with a test card and start the subscription (idempotent once complete).

    4242 4242 4242 4242 pays; 4000 0000 0000 0002 is declined (402 ``card_declined``); other numbers are
    refused: the local backend takes no real cards.
    """
    session = (
        CheckoutSession.objects.select_for_update(of=("self",))
        .select_related("plan", "plan__listing", "plan__listing__organization", "organization", "pinned_version")
        .filter(session_id=session_id, backend="local")
        .first()
    )
    if session is None:
        raise NotFound("No such checkout.")
    services._require_manager(
        user=user,
        organization=session.organization,
        action="pay",
        missing="No such checkout.",
    )
    if session.status == CheckoutStatus.COMPLETE:
        return session
    if session.status == CheckoutStatus.EXPIRED or session.created_at < timezone.now() - CHECKOUT_TTL:
        raise Conflict("This checkout has expired. Start again from the listing.", code="checkout_expired")
    digits = _card_digits(card_number)
    if digits == TEST_CARD_DECLINED:
        raise CardDeclined(
            "Your card was declined. (Test card 4000 0000 0000 0002 is always declined: "
            "use 4242 4242 4242 4242 to pay.)",
            fields={"card_number": ["Declined."]},
        )
    if digits != TEST_CARD_SUCCEEDS:
        raise ApplicationError(
            "The built-in billing takes test cards only: 4242 4242 4242 4242 pays, 4000 0000 0000 0002 is declined.",
            code="card_invalid",
            fields={"card_number": ["Use a test card."]},
        )
    now = timezone.now()
    plan = Plan.objects.select_for_update().select_related("listing", "listing__organization").get(pk=session.plan_id)
    first = services.local_first_period(plan=plan, now=now)
    subscription = services.subscription_provision(
        organization=session.organization,
        user=session.user or user,
        plan=plan,
        terms=_session_terms(session),
        ip_address=session.ip_address,
        pinned_version=session.pinned_version,
        extra_audit={"checkout_session_id": session.pk, "backend": "local"},
        **first,
    )
    session.status = CheckoutStatus.COMPLETE
    session.subscription = subscription
    session.completed_at = now
    session.save(update_fields=["status", "subscription", "completed_at"])
    services.invoice_period_open(subscription=subscription)
    return session


def _session_terms(session: CheckoutSession) -> LicenseTerms:
    return LicenseTerms(
        license=session.plan.listing.license,
        version=session.terms_version,
        text=session.terms_text,
        sha256=session.terms_sha256,
    )


# --- stripe backend: provisioning from webhooks -------------------------------------------------


def checkout_session_for_stripe(
    *, stripe_session: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None
) -> CheckoutSession | None:
    """Our checkout for a Stripe Checkout Session (``client_reference_id`` or its id) or for a Stripe
    subscription's metadata (``checkout_session_id``)."""
    qs = CheckoutSession.objects.filter(backend="stripe")
    if stripe_session is not None:
        reference = str(stripe_session.get("client_reference_id") or "")
        if reference.isdigit():
            found = qs.filter(pk=int(reference)).first()
            if found is not None:
                return found
        return qs.filter(session_id=str(stripe_session.get("id") or "")).first()
    reference = str((metadata or {}).get("checkout_session_id") or "")
    return qs.filter(pk=int(reference)).first() if reference.isdigit() else None


@transaction.atomic
def checkout_complete_from_stripe(
    *,
    checkout_session_id: int,
    stripe_subscription: Mapping[str, Any],
    event_created: datetime | None = None,
) -> Subscription | None:
    """Provision the subscription a paid Stripe checkout created, once, whichever event comes first.

    ``stripe_subscription`` is the subscription's current state (fetched from Stripe). An existing row
    for it is brought up to date instead. If the organization meanwhile holds another paid subscription
    to the listing, the new Stripe subscription is canceled at once and nothing is provisioned.
    """
    session = (
        CheckoutSession.objects.select_for_update(of=("self",))
        .select_related(
            "plan", "plan__listing", "plan__listing__organization", "organization", "user", "pinned_version"
        )
        .get(pk=checkout_session_id)
    )
    stripe_id = str(stripe_subscription["id"])
    existing = Subscription.objects.filter(stripe_subscription_id=stripe_id).first()
    if existing is not None:
        locked = services._subscription_lock(existing)
        services.subscription_apply_stripe_state(
            subscription=locked, stripe_subscription=stripe_subscription, event_created=event_created
        )
        _session_complete(session, locked)
        return locked
    now = timezone.now()
    state = services.stripe_subscription_state(
        stripe_subscription=stripe_subscription, past_due_since=None, seen_at=event_created or now, now=now
    )
    plan = Plan.objects.select_for_update().select_related("listing", "listing__organization").get(pk=session.plan_id)
    try:
        with transaction.atomic():
            subscription = services.subscription_provision(
                organization=session.organization,
                user=session.user,
                plan=plan,
                terms=_session_terms(session),
                ip_address=session.ip_address,
                pinned_version=session.pinned_version,
                status=state["status"],
                period_start=state["current_period_start"],
                period_end=state["current_period_end"],
                trial_end=state["trial_end"],
                cancel_at_period_end=state["cancel_at_period_end"],
                canceled_at=state["canceled_at"],
                past_due_since=state["past_due_since"],
                stripe_subscription_id=stripe_id,
                stripe_synced_at=event_created,
                extra_audit={"checkout_session_id": session.pk, "backend": "stripe"},
            )
    except Conflict:
        # Paid twice for the same listing (two checkouts completed): keep the first, end the second.
        logger.error(
            "Checkout %s completed while %s already subscribes; canceling %s",
            session.pk,
            session.organization,
            stripe_id,
        )
        if stripe_subscription.get("status") != "canceled":
            payments.subscription_cancel(subscription=stripe_id, idempotency_key=f"duplicate-{stripe_id}")
        _session_complete(session, None)
        _audit(session, AuditAction.CHECKOUT_EXPIRED, reason="duplicate", stripe_subscription_id=stripe_id)
        return None
    _session_complete(session, subscription)
    return subscription


def _session_complete(session: CheckoutSession, subscription: Subscription | None) -> None:
    if session.status == CheckoutStatus.COMPLETE and session.subscription_id == (
        subscription.pk if subscription else None
    ):
        return
    session.status = CheckoutStatus.COMPLETE
    session.subscription = subscription
    session.completed_at = session.completed_at or timezone.now()
    session.save(update_fields=["status", "subscription", "completed_at"])
