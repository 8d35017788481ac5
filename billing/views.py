"""Buyer and publisher pages for plans and subscriptions: thin, every write is one billing service call."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import IntegerField, Sum
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from accounts.models import Organization
from accounts.selectors import organization_get_for_member, user_can_manage
from billing import checkout, pricing, selectors, services, webhooks
from billing.forms import (
    PlanChangeForm,
    PlanCreateForm,
    PlanPriceChangeForm,
    SubscribeForm,
    TermsAcceptForm,
    TestCardForm,
)
from billing.models import CheckoutStatus, Plan
from catalog.models import Listing
from catalog.publish_selectors import listing_get_for_manager
from catalog.selectors import listing_get_public
from marketplace.errors import ApplicationError, error_response, or_404
from marketplace.integrations import stripe as payments
from marketplace.typing import request_user

logger = logging.getLogger(__name__)


def client_ip(request: HttpRequest) -> str | None:
    """The address the request came from, as the web server saw it (no proxy headers are trusted)."""
    return request.META.get("REMOTE_ADDR") or None


def _listing_page(slug: str) -> str:
    return reverse("catalog:listing-detail", kwargs={"slug": slug}) + "#plans"


# --- buyers ------------------------------------------------------------------------------------


@login_required
@require_safe
def subscriptions(request: HttpRequest) -> HttpResponse:
    """The subscriptions of the organization the user acts for (or of ``?organization=<slug>``)."""
    user = request_user(request)
    organization: Organization | None = getattr(request, "organization", None)
    slug = request.GET.get("organization")
    if slug:
        organization = organization_get_for_member(user=user, slug=slug)
        if organization is None:
            raise Http404("No such organization.")
    rows = []
    if organization is not None:
        usage_units = selectors.subscription_period_usage(Sum("units"), output_field=IntegerField())
        rows = selectors.subscriptions_decorate_for_page(
            subscriptions=list(
                selectors.subscription_list_for_organization(organization=organization).annotate(
                    usage_units=usage_units
                )
            )
        )
    context = {
        "organization": organization,
        "subscriptions": rows,
        "can_manage": organization is not None and user_can_manage(user=user, organization=organization),
    }
    return render(request, "billing/subscriptions.html", context)


def _checkout_urls(request: HttpRequest) -> tuple[str, str]:
    """Where checkout sends the buyer back: the success page (it waits for the payment) and the cancel page."""
    success = request.build_absolute_uri(reverse("billing:checkout-success"))
    cancel = request.build_absolute_uri(reverse("billing:checkout-cancel"))
    return (
        f"{success}?session_id={checkout.SESSION_ID_PLACEHOLDER}",
        f"{cancel}?checkout={checkout.CHECKOUT_ID_PLACEHOLDER}",
    )


@login_required
@require_POST
def subscribe(request: HttpRequest, slug: str) -> HttpResponse:
    """Subscribe from the listing page: free plans at once, paid plans through checkout."""
    listing = listing_get_public(slug=slug, user=request.user)
    organization: Organization | None = getattr(request, "organization", None)
    if organization is None:
        messages.error(request, "Create or join an organization first: subscriptions belong to organizations.")
        return redirect(_listing_page(slug))
    form = SubscribeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a plan.")
        return redirect(_listing_page(slug))
    plan = selectors.plan_get(plan_id=form.cleaned_data["plan"])
    if plan is None or plan.listing_id != listing.pk:
        messages.error(request, "Choose one of this listing's plans.")
        return redirect(_listing_page(slug))
    success_url, cancel_url = _checkout_urls(request)
    try:
        session = checkout.checkout_start(
            organization=organization,
            user=request_user(request),
            plan=plan,
            accept_license=form.cleaned_data["accept_license"],
            ip_address=client_ip(request),
            success_url=success_url,
            cancel_url=cancel_url,
            pinned_version=form.cleaned_data["pinned_version"] or None,
            terms_sha256=form.cleaned_data["terms_sha256"] or None,
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_listing_page(slug))
    if session.status == CheckoutStatus.COMPLETE:
        messages.success(
            request,
            f"{organization.name} subscribes to {listing.name} on the {plan.name} plan. Create an API key to call it.",
        )
        return redirect(_listing_page(slug))
    return redirect(session.url)


# --- checkout pages ------------------------------------------------------------------------------


def _safe_return(request: HttpRequest, url: str | None, fallback: str) -> str:
    if url and url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return url
    return fallback


@login_required
@require_http_methods(["GET", "POST"])
def checkout_local(request: HttpRequest, session_id: str) -> HttpResponse:
    """The local backend's checkout page: the plan, the terms being accepted, a test card form."""
    session = checkout.checkout_get_for_member(user=request_user(request), session_id=session_id)
    if session is None or session.backend != "local":
        raise Http404("No such checkout.")
    fallback = reverse("billing:subscriptions") + f"?organization={session.organization.slug}"
    success_url = _safe_return(request, request.GET.get("success_url"), fallback)
    cancel_url = _safe_return(request, request.GET.get("cancel_url"), _listing_page(session.plan.listing.slug))
    if session.status == CheckoutStatus.COMPLETE:
        return redirect(success_url)
    form = TestCardForm(request.POST or None)
    error = None
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            checkout.checkout_local_pay(
                session_id=session.session_id,
                user=request_user(request),
                card_number=form.cleaned_data["card_number"],
                ip_address=client_ip(request),
            )
        except ApplicationError as exc:
            error, status = exc.message, exc.status
        else:
            messages.success(
                request,
                f"Payment received. {session.organization.name} subscribes to {session.plan.listing.name} "
                f"on the {session.plan.name} plan.",
            )
            return redirect(success_url)
    context = {
        "session": session,
        "plan": session.plan,
        "summary": pricing.plan_price_summary(session.plan),
        "due_now": pricing.money_format(
            0 if session.plan.trial_days else session.plan.monthly_price_cents, session.plan.currency
        ),
        "form": form,
        "error": error,
        "cancel_url": cancel_url,
        "expired": session.status == CheckoutStatus.EXPIRED,
    }
    return render(request, "billing/checkout_local.html", context, status=status)


@login_required
@require_safe
def checkout_success(request: HttpRequest) -> HttpResponse:
    """Where checkout returns after paying. The subscription starts from the payment provider's webhook,
    not here: this page waits for it ("Confirming payment…") and polls the checkout's status."""
    session = checkout.checkout_get_for_member(user=request_user(request), session_id=request.GET.get("session_id", ""))
    if session is None:
        raise Http404("No such checkout.")
    context = {
        "session": session,
        "status_url": reverse("billing:checkout-status", kwargs={"session_id": session.session_id}),
        "subscriptions_url": reverse("billing:subscriptions") + f"?organization={session.organization.slug}",
    }
    return render(request, "billing/checkout_success.html", context)


@login_required
@require_safe
def checkout_status(request: HttpRequest, session_id: str) -> JsonResponse:
    session = checkout.checkout_get_for_member(user=request_user(request), session_id=session_id)
    if session is None:
        return error_response("not_found", "No such checkout.", 404)
    return JsonResponse(
        {
            "status": session.status,
            "subscription": session.subscription_id,
            "subscription_status": session.subscription.status if session.subscription else None,
        }
    )


@login_required
@require_safe
def checkout_cancel(request: HttpRequest) -> HttpResponse:
    """Where checkout returns when the buyer gives up: the checkout is expired, nothing is charged."""
    raw = request.GET.get("checkout", "")
    session = None
    if raw.isdigit():
        found = selectors.checkout_get(checkout_id=int(raw))
        if found is not None and user_can_manage(user=request_user(request), organization=found.organization):
            session = found
    if session is None:
        raise Http404("No such checkout.")
    try:
        checkout.checkout_expire(checkout_session=session, reason="canceled")
    except ApplicationError as exc:  # pragma: no cover - Stripe misconfigured
        logger.warning("Could not expire checkout %s: %s", session.pk, exc.message)
    messages.info(request, "Checkout canceled: nothing was charged.")
    return redirect(_listing_page(session.plan.listing.slug))


# --- Stripe webhooks -----------------------------------------------------------------------------


def _webhook(request: HttpRequest, *, secret: str) -> HttpResponse:
    """Verify the signature over the raw body, store the event once, acknowledge; a task applies it."""
    try:
        event = payments.webhook_event_construct(
            payload=request.body, sig_header=request.META.get("HTTP_STRIPE_SIGNATURE"), secret=secret
        )
    except payments.PaymentsError as exc:
        logger.warning("Stripe webhook refused: %s", exc.message)
        return error_response(exc.code, exc.message, exc.status)
    row, created = webhooks.stripe_event_store(event=event)
    return JsonResponse({"received": True, "duplicate": not created, "status": row.status})


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    return _webhook(request, secret=settings.STRIPE_WEBHOOK_SECRET)


@csrf_exempt
@require_POST
def stripe_connect_webhook(request: HttpRequest) -> HttpResponse:
    return _webhook(request, secret=settings.STRIPE_CONNECT_WEBHOOK_SECRET)


@login_required
@require_POST
def subscription_cancel(request: HttpRequest, subscription_id: int) -> HttpResponse:
    subscription = selectors.subscription_get_for_member(user=request_user(request), subscription_id=subscription_id)
    if subscription is None:
        raise Http404("No such subscription.")
    try:
        services.subscription_cancel(subscription=subscription, user=request_user(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        subscription.refresh_from_db()
        if subscription.status == "canceled":
            messages.success(request, f"The subscription to {subscription.listing.name} is canceled.")
        else:
            messages.success(
                request,
                f"The subscription to {subscription.listing.name} ends on "
                f"{subscription.current_period_end:%b %-d, %Y}; it stays usable until then.",
            )
    return _back(request, subscription)


def _back(request: HttpRequest, subscription: object) -> HttpResponse:
    listing = subscription.listing  # type: ignore[attr-defined]
    if request.POST.get("next") == "listing":
        return redirect(_listing_page(listing.slug))
    organization = subscription.organization  # type: ignore[attr-defined]
    return redirect(reverse("billing:subscriptions") + f"?organization={organization.slug}")


def _member_subscription(request: HttpRequest, subscription_id: int):  # noqa: ANN202
    subscription = selectors.subscription_get_for_member(user=request_user(request), subscription_id=subscription_id)
    if subscription is None:
        raise Http404("No such subscription.")
    return subscription


@login_required
@require_POST
def subscription_resume(request: HttpRequest, subscription_id: int) -> HttpResponse:
    subscription = _member_subscription(request, subscription_id)
    try:
        services.subscription_resume(subscription=subscription, user=request_user(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The subscription to {subscription.listing.name} continues.")
    return _back(request, subscription)


@login_required
@require_POST
def subscription_change_plan(request: HttpRequest, subscription_id: int) -> HttpResponse:
    """Upgrade (now, prorated) or downgrade (at the period's end); from free to paid through checkout."""
    subscription = _member_subscription(request, subscription_id)
    form = PlanChangeForm(request.POST)
    plan = selectors.plan_get(plan_id=form.cleaned_data["plan"]) if form.is_valid() else None
    if plan is None or plan.listing_id != subscription.listing_id:
        messages.error(request, "Choose one of the listing's plans.")
        return _back(request, subscription)
    try:
        changed = services.subscription_plan_change(subscription=subscription, user=request_user(request), plan=plan)
    except ApplicationError as exc:
        if exc.code != "checkout_required":
            messages.error(request, exc.message)
            return _back(request, subscription)
        # From free to paid: the terms this subscription accepted carry over, if they are still current.
        accepted = subscription.license_acceptances.order_by("-accepted_at").first()
        success_url, cancel_url = _checkout_urls(request)
        try:
            session = checkout.checkout_start(
                organization=subscription.organization,
                user=request_user(request),
                plan=plan,
                accept_license=True,
                ip_address=client_ip(request),
                success_url=success_url,
                cancel_url=cancel_url,
                terms_sha256=accepted.terms_sha256 if accepted else "-",
                pinned_version=subscription.pinned_version,
            )
        except ApplicationError as start_exc:
            messages.error(request, start_exc.message)
            return _back(request, subscription)
        return redirect(session.url)
    if changed.plan_id == plan.pk:
        messages.success(request, f"Now on the {plan.name} plan; the rest of this period is prorated.")
    elif changed.scheduled_plan_id == plan.pk:
        messages.success(
            request, f"Moves to the {plan.name} plan on {changed.current_period_end:%b %-d, %Y}, at the period's end."
        )
    else:
        messages.success(request, "The scheduled plan change is dropped.")
    return _back(request, subscription)


@login_required
@require_POST
def subscription_accept_terms(request: HttpRequest, subscription_id: int) -> HttpResponse:
    subscription = _member_subscription(request, subscription_id)
    form = TermsAcceptForm(request.POST)
    form.is_valid()
    try:
        services.subscription_terms_accept(
            subscription=subscription,
            user=request_user(request),
            accept_license=bool(form.cleaned_data.get("accept_license")),
            terms_sha256=form.cleaned_data.get("terms_sha256") or None,
            ip_address=client_ip(request),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"New license terms of {subscription.listing.name} accepted.")
    return _back(request, subscription)


# --- publishers --------------------------------------------------------------------------------


def _manage_page(slug: str) -> str:
    return reverse("publish:listing-manage", kwargs={"slug": slug}) + "#plans"


@login_required
@require_POST
def plan_create(request: HttpRequest, slug: str) -> HttpResponse:
    listing = or_404(listing_get_for_manager, user=request_user(request), slug=slug)
    form = PlanCreateForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(
            f"{form.fields[f].label}: {' '.join(str(message) for message in e)}"
            for f, e in form.errors.items()
            if f in form.fields
        )
        messages.error(request, errors or "Check the plan's fields.")
        return redirect(_manage_page(slug))
    try:
        plan = services.plan_create(listing=listing, user=request_user(request), **form.service_kwargs())
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The plan “{plan.name}” is offered on {listing.name}.")
    return redirect(_manage_page(slug))


def _plan_managed(request: HttpRequest, plan_id: int) -> tuple[Plan, Listing]:
    """The plan and its listing, 404 unless the plan exists and the user manages its listing."""
    plan = selectors.plan_get(plan_id=plan_id)
    if plan is None:
        raise Http404("No such plan.")
    listing = or_404(listing_get_for_manager, user=request_user(request), slug=plan.listing.slug)
    return plan, listing


@login_required
@require_POST
def plan_deactivate(request: HttpRequest, plan_id: int) -> HttpResponse:
    plan, listing = _plan_managed(request, plan_id)
    try:
        services.plan_deactivate(plan=plan, user=request_user(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The plan “{plan.name}” takes no new subscribers; current ones keep it.")
    return redirect(_manage_page(listing.slug))


@login_required
@require_POST
def plan_price_change(request: HttpRequest, plan_id: int) -> HttpResponse:
    """A new price makes a new version of the plan; current subscribers move to it at their renewal."""
    plan, listing = _plan_managed(request, plan_id)
    form = PlanPriceChangeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Check the prices.")
        return redirect(_manage_page(listing.slug))
    data = form.cleaned_data
    try:
        new = services.plan_price_change(
            plan=plan,
            user=request_user(request),
            monthly_price_cents=(
                None
                if data.get("monthly_price") is None
                else pricing.major_to_minor(data["monthly_price"], plan.currency)
            ),
            price_per_1000_units_cents=(
                None
                if data.get("price_per_1000_units") is None
                else pricing.major_to_minor(data["price_per_1000_units"], plan.currency)
            ),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            f"“{new.name}” is now {pricing.plan_price_summary(new)} (version {new.version}); current "
            "subscribers keep the old price until their period ends.",
        )
    return redirect(_manage_page(listing.slug))
