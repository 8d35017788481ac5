"""How plans read to people: "10,000 units / month", "Free", "$20.00 / month"."""

from __future__ import annotations

from django import template

from billing.models import Plan, PlanKind

register = template.Library()


def _money(cents: int, currency: str) -> str:
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency.lower(), "")
    amount = f"{cents / 100:,.2f}"
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"


@register.filter
def plan_quota(plan: Plan) -> str:
    if plan.monthly_quota_units is None:
        return "Unlimited units"
    return f"{plan.monthly_quota_units:,} units / month"


@register.filter
def plan_price(plan: Plan) -> str:
    if plan.kind == PlanKind.FREE:
        return "Free"
    if plan.kind == PlanKind.FLAT:
        return f"{_money(plan.monthly_price_cents, plan.currency)} / month"
    return f"{_money(plan.price_per_1000_units_cents, plan.currency)} per 1,000 units"


@register.filter
def units(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"
