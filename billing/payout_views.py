"""The publisher's payouts page: payout onboarding (Stripe Connect) and the payouts of paid invoices."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from accounts.models import Organization
from accounts.selectors import organization_get_for_member, user_can_manage
from billing import payouts as payout_services
from billing.pricing import money_format
from marketplace.errors import ApplicationError
from marketplace.typing import request_user


def _organization(request: HttpRequest) -> Organization | None:
    """The organization the user acts for, or ``?organization=<slug>`` (404 when not a member)."""
    slug = request.GET.get("organization") or request.POST.get("organization")
    if slug:
        organization = organization_get_for_member(user=request_user(request), slug=slug)
        if organization is None:
            raise Http404("No such organization.")
        return organization
    return getattr(request, "organization", None)


def _page_url(organization: Organization, **extra: str) -> str:
    return reverse("billing:payouts") + "?" + urlencode({"organization": organization.slug, **extra})


def _onboarding_redirect(request: HttpRequest, organization: Organization) -> HttpResponse:
    refresh = reverse("billing:payouts-onboarding-refresh") + "?" + urlencode({"organization": organization.slug})
    try:
        url = payout_services.publisher_account_onboarding_link(
            organization=organization,
            user=request_user(request),
            return_url=request.build_absolute_uri(_page_url(organization, onboarding="return")),
            refresh_url=request.build_absolute_uri(refresh),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_page_url(organization))
    # A Stripe account link is single-use and short-lived: redirect at once, never store it.
    return redirect(url)


@login_required
@require_safe
def payouts(request: HttpRequest) -> HttpResponse:
    organization = _organization(request)
    account = None
    if organization is not None:
        account = payout_services.publisher_account_get(organization=organization)
        if request.GET.get("onboarding") == "return" and account is not None:
            # Coming back from Stripe does not mean onboarding is done: ask Stripe for the account.
            try:
                account = payout_services.publisher_account_refresh(organization=organization)
            except ApplicationError as exc:
                messages.warning(request, f"Could not read the payout account from Stripe: {exc.message}")
    context = {
        "organization": organization,
        "account": account,
        "payouts": [
            {"payout": payout, "amount": money_format(payout.amount_cents, payout.currency)}
            for payout in (
                payout_services.payout_list_for_publisher(organization=organization)[:100] if organization else []
            )
        ],
        "can_manage": organization is not None
        and user_can_manage(user=request_user(request), organization=organization),
    }
    return render(request, "billing/payouts.html", context)


@login_required
@require_POST
def payouts_onboarding(request: HttpRequest) -> HttpResponse:
    organization = _organization(request)
    if organization is None:
        raise Http404("No organization.")
    return _onboarding_redirect(request, organization)


@login_required
@require_safe
def payouts_onboarding_refresh(request: HttpRequest) -> HttpResponse:
    """Stripe sends the publisher here when an account link expired or was used: make a fresh one."""
    organization = _organization(request)
    if organization is None:
        raise Http404("No organization.")
    if payout_services.publisher_account_get(organization=organization) is None:
        return redirect(_page_url(organization))  # links are only refreshed, never started, by a GET
    return _onboarding_redirect(request, organization)
