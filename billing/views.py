"""Buyer and publisher pages for plans and subscriptions: thin, every write is one billing service call."""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import IntegerField, OuterRef, Subquery, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from accounts.models import Organization, User
from accounts.selectors import organization_get_for_member, user_can_manage
from billing import selectors, services
from billing.forms import PlanCreateForm, SubscribeForm
from catalog.publish_selectors import listing_get_for_manager
from catalog.selectors import listing_get_public
from marketplace.errors import ApplicationError, NotFound


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


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
    user = _user(request)
    organization: Organization | None = getattr(request, "organization", None)
    slug = request.GET.get("organization")
    if slug:
        organization = organization_get_for_member(user=user, slug=slug)
        if organization is None:
            raise Http404("No such organization.")
    rows = []
    if organization is not None:
        from inference.models import UsageRecord

        period_units = (
            UsageRecord.objects.filter(
                subscription=OuterRef("pk"),
                created_at__gte=OuterRef("current_period_start"),
                created_at__lt=OuterRef("current_period_end"),
            )
            .order_by()
            .values("subscription")
            .annotate(total=Sum("units"))
            .values("total")
        )
        rows = list(
            selectors.subscription_list_for_organization(organization=organization).annotate(
                usage_units=Subquery(period_units, output_field=IntegerField())
            )
        )
    context = {
        "organization": organization,
        "subscriptions": rows,
        "can_manage": organization is not None and user_can_manage(user=user, organization=organization),
    }
    return render(request, "billing/subscriptions.html", context)


@login_required
@require_POST
def subscribe(request: HttpRequest, slug: str) -> HttpResponse:
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
    try:
        subscription = services.subscription_create(
            organization=organization,
            user=_user(request),
            plan=plan,
            accept_license=form.cleaned_data["accept_license"],
            ip_address=client_ip(request),
            pinned_version=form.cleaned_data["pinned_version"] or None,
            terms_sha256=form.cleaned_data["terms_sha256"] or None,
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_listing_page(slug))
    messages.success(
        request,
        f"{organization.name} subscribes to {listing.name} on the {subscription.plan.name} plan. "
        "Create an API key to call it.",
    )
    return redirect(_listing_page(slug))


@login_required
@require_POST
def subscription_cancel(request: HttpRequest, subscription_id: int) -> HttpResponse:
    subscription = selectors.subscription_get_for_member(user=_user(request), subscription_id=subscription_id)
    if subscription is None:
        raise Http404("No such subscription.")
    try:
        services.subscription_cancel(subscription=subscription, user=_user(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The subscription to {subscription.listing.name} is canceled.")
    next_url = request.POST.get("next")
    if next_url == "listing":
        return redirect(_listing_page(subscription.listing.slug))
    return redirect(reverse("billing:subscriptions") + f"?organization={subscription.organization.slug}")


# --- publishers --------------------------------------------------------------------------------


def _manage_page(slug: str) -> str:
    return reverse("publish:listing-manage", kwargs={"slug": slug}) + "#plans"


@login_required
@require_POST
def plan_create(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        listing = listing_get_for_manager(user=_user(request), slug=slug)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    form = PlanCreateForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(f"{form.fields[f].label}: {' '.join(e)}" for f, e in form.errors.items() if f in form.fields)
        messages.error(request, errors or "Check the plan's fields.")
        return redirect(_manage_page(slug))
    try:
        plan = services.plan_create(listing=listing, user=_user(request), **form.cleaned_data)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The plan “{plan.name}” is offered on {listing.name}.")
    return redirect(_manage_page(slug))


@login_required
@require_POST
def plan_deactivate(request: HttpRequest, plan_id: int) -> HttpResponse:
    plan = selectors.plan_get(plan_id=plan_id)
    if plan is None:
        raise Http404("No such plan.")
    try:
        listing = listing_get_for_manager(user=_user(request), slug=plan.listing.slug)
    except NotFound as exc:
        raise Http404(exc.message) from exc
    try:
        services.plan_deactivate(plan=plan, user=_user(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The plan “{plan.name}” takes no new subscribers; current ones keep it.")
    return redirect(_manage_page(listing.slug))
