"""The buyer's billing dashboard on /billing/ (periods, spend caps, charts, invoices) and money for people.

The filters are ``money_major`` (a Decimal amount) and ``money_minor`` (cents): ``billing_tags.money`` takes cents,
and loading both libraries must not let one shadow the other."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template

from billing import pricing

register = template.Library()


@register.inclusion_tag("billing/dashboard_buyer.html", takes_context=True)
def buyer_billing_dashboard(context: template.Context, organization: Any, can_manage: bool = False) -> dict[str, Any]:
    """This period's usage and cost per subscription with a projection, spend caps (forms for managers),
    a daily usage and cost chart and the invoices, for ``organization``."""
    from billing.dashboards import buyer_billing_overview

    return {
        "organization": organization,
        "can_manage": can_manage,
        "o": buyer_billing_overview(organization=organization, with_keys=can_manage),
        "request": context.get("request"),
        "csrf_token": context.get("csrf_token"),
    }


@register.filter
def money_major(amount: Decimal | int | float | None, currency: str = "usd") -> str:
    """A major-unit amount for people, rounded to the currency's minor unit: ``$12.35``."""
    if amount is None:
        return "—"
    return pricing.money_format_major(amount, currency)


@register.filter
def money_minor(amount_cents: int | None, currency: str = "usd") -> str:
    if amount_cents is None:
        return "—"
    return pricing.money_format(amount_cents, currency)


@register.filter
def bar_percent(value: int | float | None) -> int:
    """A percentage clamped to 0–100 for a progress bar's width."""
    if value is None:
        return 0
    return max(0, min(100, int(value)))
