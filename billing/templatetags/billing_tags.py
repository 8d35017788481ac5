"""How plans read to people: "10,000 units / month", "Free", "$20.00 / month"."""

from __future__ import annotations

from django import template

from billing import pricing
from billing.models import Plan, PlanKind

register = template.Library()


@register.filter
def plan_summary(plan: Plan) -> str:
    """E.g. ``$49 / month · 100,000 units included · then $0.50 per 1,000`` (pricing.plan_price_summary)."""
    return pricing.plan_price_summary(plan)


@register.filter
def money(cents: int, currency: str = "usd") -> str:
    return pricing.money_format(cents or 0, currency)


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
        return f"{pricing.money_format(plan.monthly_price_cents, plan.currency)} / month"
    return f"{pricing.money_format(plan.price_per_1000_units_cents, plan.currency)} per 1,000 units"


@register.filter
def units(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"
