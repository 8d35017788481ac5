"""Billing dashboards and spend-cap forms: thin views over billing.dashboards (reads) and billing.spend_caps /
billing.platform (writes). The buyer's part lives on /billing/ through the ``buyer_billing_dashboard`` tag."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from accounts.models import ApiKey, Organization
from accounts.selectors import organization_get_for_member, user_can_manage
from billing import dashboards, platform, spend_caps
from marketplace.errors import ApplicationError
from marketplace.typing import request_user


def _organization_managed(request: HttpRequest, slug: str | None) -> Organization:
    """The organization named by ``slug`` (else the one the user acts for), if the user manages it; else 404."""
    user = request_user(request)
    organization: Organization | None = getattr(request, "organization", None)
    if slug:
        organization = organization_get_for_member(user=user, slug=slug)
    if organization is None or not user_can_manage(user=user, organization=organization):
        raise Http404("No such organization.")
    return organization


# --- publishers --------------------------------------------------------------------------------


@login_required
@require_safe
def publisher_dashboard(request: HttpRequest) -> HttpResponse:
    """Subscribers, calls, units, revenue and payouts over time, and per-version health (owners and admins)."""
    organization = _organization_managed(request, request.GET.get("organization"))
    context = dashboards.publisher_dashboard(organization=organization)
    return render(request, "billing/dashboard_publisher.html", context)


# --- platform staff ----------------------------------------------------------------------------


def _require_staff(request: HttpRequest) -> None:
    if not (request.user.is_authenticated and request.user.is_staff):
        raise Http404("Not found.")


@require_safe
def admin_dashboard(request: HttpRequest) -> HttpResponse:
    _require_staff(request)
    return render(request, "billing/dashboard_admin.html", dashboards.admin_billing_overview())


@require_POST
def platform_fee_update(request: HttpRequest) -> HttpResponse:
    _require_staff(request)
    try:
        row = platform.platform_fee_set(
            user=request_user(request), platform_fee_percent=request.POST.get("platform_fee_percent", "").strip()
        )
    except ApplicationError as exc:
        messages.error(request, " ".join(sum(exc.fields.values(), [])) or exc.message)
    else:
        messages.success(request, f"The platform fee is {row.platform_fee_percent}% for invoices made from now on.")
    return redirect("billing:admin-dashboard")


# --- spend caps (buyers' owners and admins) ------------------------------------------------------------


def _caps_page(organization: Organization) -> str:
    return reverse("billing:subscriptions") + f"?organization={organization.slug}#spend-caps"


def _api_key(organization: Organization, public_id: str) -> ApiKey | None:
    if not public_id:
        return None
    api_key = ApiKey.objects.filter(organization=organization, public_id=public_id).first()
    if api_key is None:
        raise Http404("No such API key.")
    return api_key


def _cents(raw: str) -> int | None:
    try:
        amount = Decimal(raw.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        return None
    return int(amount * 100)


@login_required
@require_POST
def spend_cap_save(request: HttpRequest) -> HttpResponse:
    organization = _organization_managed(request, request.POST.get("organization"))
    api_key = _api_key(organization, request.POST.get("api_key", ""))
    cents = _cents(request.POST.get("monthly_limit", ""))
    whose = f"the key “{api_key.name}”" if api_key else organization.name
    if cents is None:
        messages.error(request, "Enter the cap as an amount in dollars, e.g. 50 or 49.99.")
        return redirect(_caps_page(organization))
    try:
        spend_caps.spend_cap_set(
            organization=organization, user=request_user(request), monthly_limit_cents=cents, api_key=api_key
        )
    except ApplicationError as exc:
        messages.error(request, "The cap must be between $0.01 and $1,000,000,000." if exc.fields else exc.message)
    else:
        cap = spend_caps.money_format(Decimal(cents) / 100)
        messages.success(request, f"The monthly spend cap of {whose} is {cap}.")
    return redirect(_caps_page(organization))


@login_required
@require_POST
def spend_cap_remove(request: HttpRequest) -> HttpResponse:
    organization = _organization_managed(request, request.POST.get("organization"))
    api_key = _api_key(organization, request.POST.get("api_key", ""))
    try:
        removed = spend_caps.spend_cap_remove(organization=organization, user=request_user(request), api_key=api_key)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        whose = f"the key “{api_key.name}”" if api_key else organization.name
        if removed:
            messages.success(request, f"{whose[0].upper()}{whose[1:]} has no spend cap now.")
    return redirect(_caps_page(organization))
