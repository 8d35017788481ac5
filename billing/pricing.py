"""Price rules, in one place for every backend: what usage costs, how plans read, how revenue splits.

Amounts on plans and invoices are integers in the currency's minor units (cents for USD, yen for JPY);
``Plan.monthly_price_cents`` and ``price_per_1000_units_cents`` are minor units whatever the currency.
Per-call costs (``usage_cost``) are exact ``Decimal`` amounts in major units (the usage ledger keeps
six decimals); a period's usage is rounded to minor units once, on its total (``usage_charge_minor``),
half up, as Stripe rounds a metered line.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

from billing.models import Plan, PlanKind, PlatformSettings

# ISO 4217 exponents that are not 2 (the currencies Stripe treats as zero- or three-decimal).
_ZERO_DECIMAL = {
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
}  # fmt: skip
_THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}
CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$", "chf": "CHF "}
# The currencies publishers can price plans in.
PLAN_CURRENCIES = ("usd", "eur", "gbp")
UNITS_PER_PRICE = 1000  # prices are quoted per 1,000 units


def currency_exponent(currency: str) -> int:
    """How many decimals the currency's minor unit has (USD 2, JPY 0, KWD 3)."""
    code = currency.lower()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


def minor_to_major(amount_minor: int | Decimal, currency: str) -> Decimal:
    return Decimal(amount_minor) / (Decimal(10) ** currency_exponent(currency))


def major_to_minor(amount: Decimal | int | str, currency: str) -> int:
    """A major-unit amount as whole minor units, rounded half up ("12.345" USD -> 1235)."""
    scaled = Decimal(str(amount)) * (Decimal(10) ** currency_exponent(currency))
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def money_format(amount_minor: int | Decimal, currency: str, *, trim: bool = False) -> str:
    """``4900, "usd"`` -> ``"$49.00"`` (``trim``: ``"$49"`` when there are no minor units)."""
    exponent = currency_exponent(currency)
    major = minor_to_major(amount_minor, currency)
    places = 0 if trim and major == major.to_integral_value() else exponent
    text = f"{major:,.{places}f}"
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    return f"{symbol}{text}" if symbol else f"{text} {currency.upper()}"


def money_format_major(amount: Decimal | int | float, currency: str) -> str:
    """A major-unit amount for people, rounded half up to the currency's minor unit: ``12.345, "usd"`` ->
    ``"$12.35"``."""
    return money_format(major_to_minor(Decimal(str(amount)), currency), currency)


# --- what usage costs ---------------------------------------------------------------------------


def _per_unit_major(plan: Plan) -> Decimal:
    return minor_to_major(plan.price_per_1000_units_cents, plan.currency) / UNITS_PER_PRICE


def billable_units(*, plan: Plan, units: int, units_before: int = 0) -> int:
    """How many of ``units`` more units (after ``units_before`` this period) are charged: none on a free
    plan, those beyond the included units on a flat plan, all of them on a metered plan."""
    if units <= 0 or plan.kind == PlanKind.FREE:
        return 0
    if plan.kind == PlanKind.METERED:
        return units
    included = plan.monthly_quota_units
    if included is None:  # unlimited units included
        return 0
    before = max(0, units_before - included)
    after = max(0, units_before + units - included)
    return after - before


def usage_cost(*, plan: Plan, units: int, units_before: int) -> Decimal:
    """The exact cost, in major units of ``plan.currency``, of ``units`` more units this period."""
    charged = billable_units(plan=plan, units=units, units_before=units_before)
    if not charged or not plan.price_per_1000_units_cents:
        return Decimal(0)
    return charged * _per_unit_major(plan)


def usage_charge_minor(*, plan: Plan, units: int) -> int:
    """What a whole period's ``units`` cost beyond the plan's fee, in minor units (rounded once, half up)."""
    charged = billable_units(plan=plan, units=units, units_before=0)
    exact = Decimal(charged) * Decimal(plan.price_per_1000_units_cents) / UNITS_PER_PRICE
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def stripe_unit_amount_decimal(plan: Plan) -> Decimal:
    """Minor units per single unit for a Stripe metered price: 50 cents per 1,000 -> ``0.05``."""
    return (Decimal(plan.price_per_1000_units_cents) / UNITS_PER_PRICE).normalize()


def proration_minor(
    *, old_plan: Plan, new_plan: Plan, period_start: datetime, period_end: datetime, at: datetime
) -> int:
    """What switching the monthly fee from ``old_plan`` to ``new_plan`` at ``at`` costs for the rest of
    the period (negative: a credit), in minor units: the unused share of the old fee is credited and the
    same share of the new fee charged, as Stripe prorates by time."""
    total = (period_end - period_start).total_seconds()
    left = max(0.0, (period_end - max(at, period_start)).total_seconds())
    if total <= 0 or left <= 0:
        return 0
    share = Decimal(str(left)) / Decimal(str(total))
    credit = (Decimal(old_plan.monthly_price_cents) * share).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    charge = (Decimal(new_plan.monthly_price_cents) * share).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(charge - credit)


def plan_hard_quota_units(plan: Plan) -> int | None:
    """The units per period after which calls are refused (None: never). A free plan's quota is a cap;
    a flat plan's included units are one only when it has no overage price; metered plans have none."""
    if plan.kind == PlanKind.METERED:
        return None
    if plan.kind == PlanKind.FLAT and plan.price_per_1000_units_cents:
        return None
    return plan.monthly_quota_units


def plan_rank(plan: Plan) -> tuple[int, int]:
    """Plans order by their monthly fee, then their unit price: moving up is an upgrade."""
    return (plan.monthly_price_cents, plan.price_per_1000_units_cents)


def plan_change_is_upgrade(*, old_plan: Plan, new_plan: Plan) -> bool:
    return plan_rank(new_plan) > plan_rank(old_plan)


# --- how plans read -------------------------------------------------------------------------------


def _units(count: int) -> str:
    return f"{count:,} unit{'s' if count != 1 else ''}"


def plan_price_summary(plan: Plan) -> str:
    """One line for people, shown before anyone subscribes:

    ``Free · 10,000 units/month``; ``$49 / month · 100,000 units included · then $0.50 per 1,000``;
    ``Metered · $2.00 per 1,000 units``; a trial adds ``· 14-day free trial``.
    """
    currency = plan.currency
    if plan.kind == PlanKind.FREE:
        quota = "unlimited units" if plan.monthly_quota_units is None else f"{_units(plan.monthly_quota_units)}/month"
        parts = ["Free", quota]
    elif plan.kind == PlanKind.FLAT:
        parts = [f"{money_format(plan.monthly_price_cents, currency, trim=True)} / month"]
        if plan.monthly_quota_units is None:
            parts.append("unlimited units included")
        else:
            parts.append(f"{_units(plan.monthly_quota_units)} included")
            if plan.price_per_1000_units_cents:
                parts.append(f"then {money_format(plan.price_per_1000_units_cents, currency)} per 1,000")
            else:
                parts.append("no calls beyond them")
    else:
        parts = ["Metered", f"{money_format(plan.price_per_1000_units_cents, currency)} per 1,000 units"]
        if plan.monthly_price_cents:
            parts.insert(1, f"{money_format(plan.monthly_price_cents, currency, trim=True)} / month")
    if plan.trial_days and plan.kind != PlanKind.FREE:
        parts.append(f"{plan.trial_days}-day free trial")
    return " · ".join(parts)


# --- revenue split --------------------------------------------------------------------------------


def platform_fee_percent() -> Decimal:
    """The fee admins set (PlatformSettings pk=1), or ``PLATFORM_FEE_PERCENT`` before anyone set one."""
    value = PlatformSettings.objects.filter(pk=1).values_list("platform_fee_percent", flat=True).first()
    return Decimal(value) if value is not None else Decimal(settings.PLATFORM_FEE_PERCENT)


def fee_split(*, amount_cents: int, fee_percent: Decimal | None = None) -> tuple[int, int]:
    """``(platform_fee_cents, publisher_share_cents)`` of an amount in minor units; the fee rounds half
    up and the publisher gets exactly the rest, so the two always add up to the amount."""
    percent = platform_fee_percent() if fee_percent is None else Decimal(fee_percent)
    fee = int((Decimal(amount_cents) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return fee, amount_cents - fee
