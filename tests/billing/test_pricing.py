"""Price rules: per-call costs, period totals, summaries, minor units, the fee split and proration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing import pricing
from billing.models import Plan, PlanKind, PlatformSettings


def _plan(kind: str, **fields) -> Plan:
    return Plan(kind=kind, name=kind, **fields)


FREE = _plan(PlanKind.FREE, monthly_quota_units=10_000)
PRO = _plan(PlanKind.FLAT, monthly_price_cents=4900, monthly_quota_units=100_000, price_per_1000_units_cents=50)
FLAT_UNLIMITED = _plan(PlanKind.FLAT, monthly_price_cents=2000, monthly_quota_units=None)
FLAT_CAPPED = _plan(PlanKind.FLAT, monthly_price_cents=2000, monthly_quota_units=5_000)
METERED = _plan(PlanKind.METERED, price_per_1000_units_cents=200)


def test_usage_cost_per_call():
    assert pricing.usage_cost(plan=FREE, units=500, units_before=0) == 0
    assert pricing.usage_cost(plan=FLAT_UNLIMITED, units=10**9, units_before=0) == 0
    # Within the included units nothing; across the boundary only the units beyond it.
    assert pricing.usage_cost(plan=PRO, units=10, units_before=99_980) == 0
    assert pricing.usage_cost(plan=PRO, units=30, units_before=99_980) == Decimal("0.005")  # 10 units x $0.0005
    assert pricing.usage_cost(plan=PRO, units=1000, units_before=200_000) == Decimal("0.5")
    assert pricing.usage_cost(plan=METERED, units=1, units_before=0) == Decimal("0.002")
    assert pricing.usage_cost(plan=METERED, units=1500, units_before=10**6) == Decimal("3")
    assert pricing.usage_cost(plan=METERED, units=0, units_before=5) == 0
    assert isinstance(pricing.usage_cost(plan=METERED, units=7, units_before=0), Decimal)


def test_per_call_costs_add_up_to_the_period_charge():
    calls = [7, 1, 333, 9_999, 50_000, 40_000, 12_345, 1]
    for plan in (PRO, METERED):
        before, total = 0, Decimal(0)
        for units in calls:
            total += pricing.usage_cost(plan=plan, units=units, units_before=before)
            before += units
        charged = pricing.usage_charge_minor(plan=plan, units=before)
        # Exact decimals per call; the period's total is rounded once to cents.
        assert abs(total * 100 - charged) <= Decimal("0.5"), plan.kind
    assert pricing.usage_charge_minor(plan=PRO, units=112_686) == 634  # 12,686 units x 0.05 cents = 634.3
    assert pricing.usage_charge_minor(plan=METERED, units=112_686) == 22_537  # x 0.2 cents = 22,537.2
    assert pricing.usage_charge_minor(plan=METERED, units=1_250) == 250
    assert pricing.usage_charge_minor(plan=FREE, units=10**7) == 0


def test_billable_units_and_hard_quotas():
    assert pricing.billable_units(plan=PRO, units=50, units_before=99_990) == 40
    assert pricing.billable_units(plan=FLAT_CAPPED, units=10, units_before=4_995) == 5
    assert pricing.billable_units(plan=METERED, units=12, units_before=0) == 12
    # Only a free plan's quota and a flat plan without an overage price refuse calls.
    assert pricing.plan_hard_quota_units(FREE) == 10_000
    assert pricing.plan_hard_quota_units(FLAT_CAPPED) == 5_000
    assert pricing.plan_hard_quota_units(PRO) is None
    assert pricing.plan_hard_quota_units(METERED) is None


def test_plan_summaries_read_like_prices():
    assert pricing.plan_price_summary(FREE) == "Free · 10,000 units/month"
    assert pricing.plan_price_summary(_plan(PlanKind.FREE, monthly_quota_units=None)) == "Free · unlimited units"
    assert pricing.plan_price_summary(PRO) == "$49 / month · 100,000 units included · then $0.50 per 1,000"
    assert pricing.plan_price_summary(METERED) == "Metered · $2.00 per 1,000 units"
    assert pricing.plan_price_summary(FLAT_UNLIMITED) == "$20 / month · unlimited units included"
    assert pricing.plan_price_summary(FLAT_CAPPED) == "$20 / month · 5,000 units included · no calls beyond them"
    trial = _plan(PlanKind.FLAT, monthly_price_cents=1999, monthly_quota_units=1, currency="eur", trial_days=14)
    assert (
        pricing.plan_price_summary(trial)
        == "€19.99 / month · 1 unit included · no calls beyond them · 14-day free trial"
    )
    gbp = _plan(PlanKind.METERED, price_per_1000_units_cents=5, currency="gbp")
    assert pricing.plan_price_summary(gbp) == "Metered · £0.05 per 1,000 units"


def test_minor_units_follow_the_currency():
    assert pricing.currency_exponent("USD") == 2
    assert pricing.currency_exponent("jpy") == 0
    assert pricing.currency_exponent("kwd") == 3
    assert pricing.money_format(4900, "usd") == "$49.00"
    assert pricing.money_format(4900, "usd", trim=True) == "$49"
    assert pricing.money_format(123456789, "eur") == "€1,234,567.89"
    assert pricing.money_format(500, "jpy") == "¥500"
    assert pricing.money_format(1234, "kwd") == "1.234 KWD"
    assert pricing.major_to_minor("49", "usd") == 4900
    assert pricing.major_to_minor(Decimal("0.505"), "usd") == 51  # half up
    assert pricing.major_to_minor("500", "jpy") == 500
    assert pricing.money_format_major(Decimal("12.345"), "usd") == "$12.35"  # rounded half up, once
    assert pricing.money_format_major(0.004, "usd") == "$0.00"
    assert pricing.money_format_major(Decimal("1234.5"), "jpy") == "¥1,235"
    assert pricing.minor_to_major(1234, "kwd") == Decimal("1.234")
    assert pricing.stripe_unit_amount_decimal(PRO) == Decimal("0.05")  # cents per single unit
    assert pricing.stripe_unit_amount_decimal(_plan(PlanKind.METERED, price_per_1000_units_cents=25)) == Decimal(
        "0.025"
    )


@pytest.mark.django_db
def test_the_fee_split_uses_the_platform_fee_and_always_adds_up(settings):
    settings.PLATFORM_FEE_PERCENT = 20
    assert pricing.fee_split(amount_cents=4900) == (980, 3920)
    assert pricing.fee_split(amount_cents=1) == (0, 1)
    assert pricing.fee_split(amount_cents=3) == (1, 2)  # 0.6 rounds half up to 1
    PlatformSettings.objects.create(pk=1, platform_fee_percent=Decimal("12.5"))
    assert pricing.platform_fee_percent() == Decimal("12.5")
    assert pricing.fee_split(amount_cents=4900) == (613, 4287)  # 612.5 -> 613
    for amount in (0, 1, 7, 99, 4900, 123_457, -250):
        fee, share = pricing.fee_split(amount_cents=amount)
        assert fee + share == amount
    assert pricing.fee_split(amount_cents=1000, fee_percent=Decimal(0)) == (0, 1000)


def test_proration_charges_the_rest_of_the_period_at_the_new_price():
    start = datetime(2025, 3, 1, tzinfo=UTC)
    end = datetime(2025, 3, 31, tzinfo=UTC)
    cheap = _plan(PlanKind.FLAT, monthly_price_cents=2000)
    dear = _plan(PlanKind.FLAT, monthly_price_cents=5000)
    half = start + (end - start) / 2
    assert pricing.proration_minor(old_plan=cheap, new_plan=dear, period_start=start, period_end=end, at=half) == 1500
    assert pricing.proration_minor(old_plan=dear, new_plan=cheap, period_start=start, period_end=end, at=half) == -1500
    assert pricing.proration_minor(old_plan=cheap, new_plan=dear, period_start=start, period_end=end, at=start) == 3000
    after = end + timedelta(days=1)
    assert pricing.proration_minor(old_plan=cheap, new_plan=dear, period_start=start, period_end=end, at=after) == 0
    assert pricing.plan_change_is_upgrade(old_plan=cheap, new_plan=dear)
    assert not pricing.plan_change_is_upgrade(old_plan=dear, new_plan=cheap)
    assert pricing.plan_change_is_upgrade(old_plan=METERED, new_plan=PRO)
    assert not pricing.plan_change_is_upgrade(old_plan=PRO, new_plan=FREE)
