"""Reads for the billing dashboards: the buyer's billing page, the publisher dashboard and the admin page.

Each function is a fixed number of aggregate queries (date truncation in the database, no per-row queries),
so a page costs the same whatever the size of the ledger. Charts are plain data (``chart_build``) that
``static/js/charts.js`` draws; every chart also carries a one-line summary and a data table for people who
cannot or would rather not look at it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import (
    Aggregate,
    Case,
    Count,
    DecimalField,
    F,
    FloatField,
    IntegerField,
    Prefetch,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Coalesce, TruncDate, TruncMonth
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from accounts.models import ApiKey, Organization
from billing import pricing
from billing.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Payout,
    PayoutStatus,
    PlatformSettings,
    StripeEvent,
    StripeEventStatus,
    Subscription,
    SubscriptionStatus,
)
from billing.selectors import subscription_period_usage
from billing.spend_caps import CapStatus, spend_cap_statuses
from catalog.models import Listing, Version
from inference.models import InferenceError, UsageRecord

CHART_DAYS = 30
CHART_MONTHS = 12
LIST_LIMIT = 50


# --- charts -----------------------------------------------------------------------------------------


def _format_value(value: float | Decimal | int, fmt: str, currency: str) -> str:
    if fmt == "money":
        return pricing.money_format_major(value, currency)
    if fmt == "percent":
        return f"{float(value):.1f}%"
    return f"{int(value):,}"


def chart_build(
    *,
    chart_id: str,
    title: str,
    kind: str,
    labels: list[str],
    series: Sequence[tuple[str, Sequence[float | int | Decimal]]],
    fmt: str = "int",
    currency: str = "usd",
    label_format: str = "",
) -> dict[str, Any]:
    """One chart: ``payload`` for charts.js (``{"kind", "labels", "series": [{"name", "values"}], "format",
    "currency"}``), a ``summary`` sentence (its accessible name) and ``rows`` for the data table."""
    payload = {
        "kind": kind,
        "labels": labels,
        "series": [{"name": name, "values": [float(v) for v in values]} for name, values in series],
        "format": fmt,
        "currency": currency,
    }
    parts = []
    for name, values in series:
        if not values:
            continue
        total = sum(Decimal(str(v)) for v in values)
        peak_at = max(range(len(values)), key=lambda i: values[i])
        if fmt == "percent":
            parts.append(f"{name}: highest {_format_value(values[peak_at], fmt, currency)} on {labels[peak_at]}")
        elif total == 0:
            parts.append(f"{name}: none")
        else:
            parts.append(
                f"{name}: {_format_value(total, fmt, currency)} in total, "
                f"the most {_format_value(values[peak_at], fmt, currency)} on {labels[peak_at]}"
            )
    span = f"{labels[0]} to {labels[-1]}" if labels else "no data"
    summary = f"{title}, {span}. " + "; ".join(parts) + "." if parts else f"{title}: no data."
    rows = [
        {"label": label, "values": [_format_value(values[i], fmt, currency) for _name, values in series]}
        for i, label in enumerate(labels)
    ]
    return {
        "id": chart_id,
        "json_id": f"{chart_id}-data",
        "title": title,
        "kind": kind,
        "payload": payload,
        "summary": summary,
        "columns": [name for name, _values in series],
        "rows": rows,
        "label_format": label_format,
    }


def _days(*, end: date, count: int = CHART_DAYS) -> list[date]:
    return [end - timedelta(days=count - 1 - i) for i in range(count)]


def _months(*, end: date, count: int = CHART_MONTHS) -> list[date]:
    months = []
    year, month = end.year, end.month
    for _ in range(count):
        months.append(date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months[::-1]


def _day_label(day: date) -> str:
    return f"{day:%b} {day.day}"


def _month_label(month: date) -> str:
    return f"{month:%b %Y}"


def _since(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _as_date(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


class Percentile(Aggregate):
    """PostgreSQL's ``percentile_cont(p) WITHIN GROUP (ORDER BY expression)``."""

    function = "percentile_cont"
    template = "%(function)s(%(percentile)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, *, percentile: float, **extra: Any) -> None:
        if not 0 <= percentile <= 1:
            raise ValueError("percentile is between 0 and 1")
        super().__init__(expression, percentile=float(percentile), **extra)


# --- buyers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionPeriod:
    """A live subscription's current period: usage and cost so far and a linear projection to its end."""

    subscription: Subscription
    calls: int
    units: int
    fee: Decimal  # the plan's monthly fee, major units
    usage_cost: Decimal  # the ledger's cost of this period's calls
    projected_units: int
    projected_cost: Decimal
    elapsed_fraction: float

    @property
    def currency(self) -> str:
        return self.subscription.plan.currency

    @property
    def cost(self) -> Decimal:
        return self.fee + self.usage_cost

    @property
    def included_units(self) -> int | None:
        plan = self.subscription.plan
        return plan.monthly_quota_units if plan.kind != "metered" else None

    @property
    def included_percent(self) -> int | None:
        if not self.included_units:
            return None
        return min(100, self.units * 100 // self.included_units)


def subscription_periods(*, organization: Organization, now: datetime | None = None) -> list[SubscriptionPeriod]:
    """The organization's live subscriptions with this period's calls, units and cost, and the projection to
    the period's end (units extrapolated linearly, then priced with the plan's rules). One query."""
    now = now or timezone.now()
    subscriptions = (
        Subscription.objects.filter(organization=organization)
        .exclude(status=SubscriptionStatus.CANCELED)
        .select_related("plan", "listing")
        .annotate(
            period_calls=subscription_period_usage(Count("id"), output_field=IntegerField()),
            period_units=subscription_period_usage(Sum("units"), output_field=IntegerField()),
            period_cost=subscription_period_usage(
                Sum("cost"), output_field=DecimalField(max_digits=20, decimal_places=6)
            ),
        )
        .order_by("listing__name", "id")
    )
    out = []
    for sub in subscriptions:
        plan = sub.plan
        units = int(sub.period_units or 0)
        total_s = max(1.0, (sub.current_period_end - sub.current_period_start).total_seconds())
        elapsed_s = min(total_s, max(0.0, (now - sub.current_period_start).total_seconds()))
        fraction = elapsed_s / total_s
        projected_units = math.ceil(units / fraction) if fraction > 0 else units
        trialing = sub.status == SubscriptionStatus.TRIALING
        fee = Decimal(0) if trialing else pricing.minor_to_major(plan.monthly_price_cents, plan.currency)
        out.append(
            SubscriptionPeriod(
                subscription=sub,
                calls=int(sub.period_calls or 0),
                units=units,
                fee=fee,
                usage_cost=Decimal(sub.period_cost or 0),
                projected_units=projected_units,
                projected_cost=fee + pricing.usage_cost(plan=plan, units=projected_units, units_before=0),
                elapsed_fraction=fraction,
            )
        )
    return out


def usage_daily(*, usage: QuerySet[UsageRecord], days: list[date]) -> dict[str, Any]:
    """Calls, units and cost (by currency) per day over ``days``: one query."""
    rows = (
        usage.filter(created_at__gte=_since(days[0]))
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "currency")
        .annotate(calls=Count("id"), units=Sum("units"), cost=Sum("cost"))
        .order_by()
    )
    calls: dict[date, int] = defaultdict(int)
    units: dict[date, int] = defaultdict(int)
    cost: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in rows:
        day = row["day"]
        calls[day] += row["calls"]
        units[day] += int(row["units"] or 0)
        cost[row["currency"]][day] += Decimal(row["cost"] or 0)
    return {
        "calls": [calls[d] for d in days],
        "units": [units[d] for d in days],
        "cost": {currency: [by_day[d] for d in days] for currency, by_day in cost.items()},
    }


def _cost_charts(*, prefix: str, title: str, days: list[date], cost: dict[str, list[Decimal]]) -> list[dict]:
    labels = [_day_label(d) for d in days]
    currencies = sorted(cost) or ["usd"]
    return [
        chart_build(
            chart_id=f"{prefix}-{currency}",
            title=title if len(currencies) == 1 else f"{title} ({currency.upper()})",
            kind="line",
            labels=labels,
            series=[("Cost", cost.get(currency, [Decimal(0)] * len(days)))],
            fmt="money",
            currency=currency,
        )
        for currency in currencies
    ]


def buyer_billing_overview(
    *, organization: Organization, now: datetime | None = None, with_keys: bool = False
) -> dict[str, Any]:
    """Everything the buyer's billing page shows beside the subscriptions list: each subscription's period
    (usage, cost, projection), spend caps with this month's spend, a daily usage and cost chart, and the
    latest invoices with their lines. ``with_keys``: every active API key, for the cap forms of managers.
    A fixed number of queries (eight at most) and one spend-store round trip."""
    now = now or timezone.now()
    periods = subscription_periods(organization=organization, now=now)
    api_keys = None
    if with_keys:
        api_keys = list(
            ApiKey.objects.filter(organization=organization, revoked_at__isnull=True)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .order_by("name", "id")
        )
    caps = spend_cap_statuses(organization=organization, api_keys=api_keys)
    days = _days(end=_as_date(now.astimezone(UTC)))
    daily = usage_daily(usage=UsageRecord.objects.filter(organization=organization), days=days)
    labels = [_day_label(d) for d in days]
    charts = [
        chart_build(
            chart_id="buyer-units", title="Units per day", kind="bar", labels=labels, series=[("Units", daily["units"])]
        ),
        *_cost_charts(prefix="buyer-cost", title="Cost per day", days=days, cost=daily["cost"]),
    ]
    invoices = list(
        Invoice.objects.filter(organization=organization)
        .exclude(status=InvoiceStatus.DRAFT)
        .prefetch_related(
            Prefetch("lines", queryset=InvoiceLine.objects.select_related("listing").order_by("listing__name", "id"))
        )
        .order_by("-period_start", "-created_at")[:12]
    )
    totals: dict[str, dict[str, Decimal]] = defaultdict(lambda: {"cost": Decimal(0), "projected": Decimal(0)})
    for period in periods:
        totals[period.currency]["cost"] += period.cost
        totals[period.currency]["projected"] += period.projected_cost
    return {
        "periods": periods,
        "totals": dict(totals),
        "caps": caps,
        "organization_cap": caps[0],
        "key_caps": caps[1:],
        "charts": charts,
        "invoices": invoices,
        "notice_percent": settings.SPEND_CAP_NOTICE_PERCENT,
    }


# --- publishers -------------------------------------------------------------------------------------


def _subscribers_daily(*, organization: Organization, days: list[date]) -> list[int]:
    """Live subscriptions to the organization's listings at the end of each day: one query."""
    ends = [_since(d) + timedelta(days=1) for d in days]
    counts = Subscription.objects.filter(listing__organization=organization).aggregate(
        **{
            f"d{i}": Count(
                "id",
                filter=Q(created_at__lt=end) & (Q(canceled_at__isnull=True) | Q(canceled_at__gte=end)),
            )
            for i, end in enumerate(ends)
        }
    )
    return [counts[f"d{i}"] for i in range(len(days))]


def version_health(*, organization: Organization, since: datetime) -> list[dict[str, Any]]:
    """Per version of the organization's listings since ``since``: calls, units, errors, error rate, and
    compute latency p50/p95 from the usage ledger, beside the p50 measured at validation. Two queries."""
    measured_p50 = Cast(
        KeyTextTransform("p50_ms_b1", KeyTransform("metrics", "version__validation_report")), FloatField()
    )
    usage = (
        UsageRecord.objects.filter(listing__organization=organization, created_at__gte=since)
        .annotate(validation_p50=measured_p50)
        .values("version_id", "version__version", "listing__name", "listing__slug", "validation_p50")
        .annotate(
            calls=Count("id"),
            units=Sum("units"),
            p50=Percentile("compute_ms", percentile=0.5),
            p95=Percentile("compute_ms", percentile=0.95),
        )
        .order_by()
    )
    errors = dict(
        InferenceError.objects.filter(
            listing__organization=organization, created_at__gte=since, version_id__isnull=False
        )
        .values("version_id")
        .annotate(errors=Count("id"))
        .order_by()
        .values_list("version_id", "errors")
    )
    rows: dict[int, dict[str, Any]] = {}
    for row in usage:
        rows[row["version_id"]] = {
            "version_id": row["version_id"],
            "listing_name": row["listing__name"],
            "listing_slug": row["listing__slug"],
            "version": row["version__version"],
            "calls": row["calls"],
            "units": int(row["units"] or 0),
            "errors": errors.get(row["version_id"], 0),
            "p50_ms": row["p50"],
            "p95_ms": row["p95"],
            "validation_p50_ms": row["validation_p50"],
        }
    missing = [vid for vid in errors if vid not in rows]
    if missing:  # versions that only failed: one more query for their names
        for vid, number, name, slug in Version.objects.filter(pk__in=missing).values_list(
            "id", "version", "listing__name", "listing__slug"
        ):
            rows[vid] = {
                "version_id": vid,
                "listing_name": name,
                "listing_slug": slug,
                "version": number,
                "calls": 0,
                "units": 0,
                "errors": errors[vid],
                "p50_ms": None,
                "p95_ms": None,
                "validation_p50_ms": None,
            }
    for health in rows.values():
        attempts = health["calls"] + health["errors"]
        health["error_rate"] = (health["errors"] * 100 / attempts) if attempts else 0.0
    return sorted(rows.values(), key=lambda r: (r["listing_name"], r["version"]))


def _paid_month() -> Any:
    return TruncMonth(Coalesce("invoice__paid_at", "invoice__period_end"), tzinfo=UTC)


def publisher_dashboard(*, organization: Organization, now: datetime | None = None) -> dict[str, Any]:
    """The publisher dashboard of ``organization``: subscribers, calls and units per day; revenue (its share
    of paid invoice lines) and payouts per month; per-version error rate and latency; listings with their live
    subscribers. A fixed number of queries."""
    now = now or timezone.now()
    today = _as_date(now.astimezone(UTC))
    days = _days(end=today)
    months = _months(end=today.replace(day=1))
    since_month = _since(months[0])
    daily = usage_daily(usage=UsageRecord.objects.filter(listing__organization=organization), days=days)
    subscribers = _subscribers_daily(organization=organization, days=days)

    revenue_rows = (
        InvoiceLine.objects.filter(publisher=organization, invoice__status=InvoiceStatus.PAID)
        .annotate(month=_paid_month(), currency=F("invoice__currency"))
        .filter(month__gte=since_month)
        .values("month", "currency")
        .annotate(share=Sum("publisher_share_cents"))
        .order_by()
    )
    revenue: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for row in revenue_rows:
        revenue[row["currency"]][_as_date(row["month"])] += int(row["share"] or 0)
    payout_rows = (
        Payout.objects.filter(publisher=organization, status=PayoutStatus.PAID, paid_at__gte=since_month)
        .annotate(month=TruncMonth("paid_at", tzinfo=UTC))
        .values("month", "currency")
        .annotate(amount=Sum("amount_cents"))
        .order_by()
    )
    paid_out: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for payout in payout_rows:
        paid_out[payout["currency"]][_as_date(payout["month"])] += int(payout["amount"] or 0)
    labels = dict(PayoutStatus.choices)
    payout_totals = [
        {
            "status": row["status"],
            "label": labels.get(row["status"], row["status"]),
            "currency": row["currency"],
            "count": row["count"],
            "amount": pricing.minor_to_major(int(row["amount"] or 0), row["currency"]),
        }
        for row in Payout.objects.filter(publisher=organization)
        .values("status", "currency")
        .annotate(amount=Sum("amount_cents"), count=Count("id"))
        .order_by("status", "currency")
    ]

    day_labels = [_day_label(d) for d in days]
    month_labels = [_month_label(m) for m in months]
    charts = [
        chart_build(
            chart_id="pub-subscribers",
            title="Live subscriptions",
            kind="line",
            labels=day_labels,
            series=[("Subscriptions", subscribers)],
        ),
        chart_build(
            chart_id="pub-calls",
            title="Calls per day",
            kind="bar",
            labels=day_labels,
            series=[("Calls", daily["calls"])],
        ),
        chart_build(
            chart_id="pub-units",
            title="Units per day",
            kind="bar",
            labels=day_labels,
            series=[("Units", daily["units"])],
        ),
    ]
    for currency in sorted(set(revenue) | set(paid_out)) or ["usd"]:
        suffix = "" if len(set(revenue) | set(paid_out)) <= 1 else f" ({currency.upper()})"
        charts.append(
            chart_build(
                chart_id=f"pub-revenue-{currency}",
                title=f"Revenue and payouts per month{suffix}",
                kind="bar",
                labels=month_labels,
                series=[
                    (
                        "Your share of paid invoices",
                        [pricing.minor_to_major(revenue[currency][m], currency) for m in months],
                    ),
                    ("Paid out", [pricing.minor_to_major(paid_out[currency][m], currency) for m in months]),
                ],
                fmt="money",
                currency=currency,
            )
        )
    live = ~Q(subscriptions__status=SubscriptionStatus.CANCELED)
    listings = list(
        Listing.objects.filter(organization=organization)
        .annotate(live_subscribers=Count("subscriptions", filter=live))
        .order_by("name")
        .values("id", "name", "slug", "status", "live_subscribers")
    )
    since = _since(days[0])
    return {
        "organization": organization,
        "charts": charts,
        "listings": listings,
        "versions": version_health(organization=organization, since=since),
        "totals": {
            "subscribers": subscribers[-1] if subscribers else 0,
            "calls": sum(daily["calls"]),
            "units": sum(daily["units"]),
            "revenue": {c: pricing.minor_to_major(sum(by.values()), c) for c, by in revenue.items()},
            "paid_out": {c: pricing.minor_to_major(sum(by.values()), c) for c, by in paid_out.items()},
        },
        "payout_totals": payout_totals,
        "days": CHART_DAYS,
        "months": CHART_MONTHS,
    }


# --- platform admins ------------------------------------------------------------------------------


def platform_settings_current() -> PlatformSettings:
    """The fee admins set (pk=1), or an unsaved row with the ``PLATFORM_FEE_PERCENT`` default."""
    row = PlatformSettings.objects.select_related("updated_by").filter(pk=1).first()
    return row or PlatformSettings(pk=1, platform_fee_percent=Decimal(settings.PLATFORM_FEE_PERCENT))


def admin_url(obj: Any) -> str | None:
    """The Django admin page of a row, if its model is registered there."""
    meta = obj._meta
    try:
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return None


def admin_billing_overview(*, now: datetime | None = None) -> dict[str, Any]:
    """The admin billing page: platform revenue (fees of paid invoices) per month, the fee setting, failed
    payments (past-due and suspended subscriptions, uncollectible and overdue invoices, payouts that failed or
    wait for an account) and webhook events, failed first. A fixed number of queries."""
    now = now or timezone.now()
    months = _months(end=_as_date(now.astimezone(UTC)).replace(day=1))
    revenue_rows = (
        Invoice.objects.filter(status=InvoiceStatus.PAID)
        .annotate(month=TruncMonth(Coalesce("paid_at", "period_end"), tzinfo=UTC))
        .filter(month__gte=_since(months[0]))
        .values("month", "currency")
        .annotate(fees=Sum("platform_fee_cents"), gross=Sum("total_cents"))
        .order_by()
    )
    fees: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    gross: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for row in revenue_rows:
        fees[row["currency"]][_as_date(row["month"])] += int(row["fees"] or 0)
        gross[row["currency"]][_as_date(row["month"])] += int(row["gross"] or 0)
    month_labels = [_month_label(m) for m in months]
    currencies = sorted(fees) or ["usd"]
    charts = [
        chart_build(
            chart_id=f"admin-revenue-{currency}",
            title="Platform fees per month" + ("" if len(currencies) == 1 else f" ({currency.upper()})"),
            kind="bar",
            labels=month_labels,
            series=[("Platform fees", [pricing.minor_to_major(fees[currency][m], currency) for m in months])],
            fmt="money",
            currency=currency,
        )
        for currency in currencies
    ]
    revenue_totals = {
        c: {
            "fees": pricing.minor_to_major(sum(fees[c].values()), c),
            "gross": pricing.minor_to_major(sum(gross[c].values()), c),
        }
        for c in currencies
    }
    grace = timedelta(days=settings.BILLING_GRACE_DAYS)
    failing_subscriptions = list(
        Subscription.objects.filter(status__in=[SubscriptionStatus.PAST_DUE, "suspended"])
        .select_related("organization", "listing", "plan")
        .order_by(F("past_due_since").asc(nulls_last=True), "id")[:LIST_LIMIT]
    )
    failing_invoices = list(
        Invoice.objects.filter(
            Q(status=InvoiceStatus.UNCOLLECTIBLE) | Q(status=InvoiceStatus.OPEN, period_end__lt=now - grace)
        )
        .select_related("organization")
        .order_by("-period_end", "-id")[:LIST_LIMIT]
    )
    failing_payouts = list(
        Payout.objects.filter(status__in=[PayoutStatus.FAILED, PayoutStatus.BLOCKED])
        .select_related("publisher", "invoice")
        .order_by("-created_at", "-id")[:LIST_LIMIT]
    )
    event_counts = dict(
        StripeEvent.objects.values("status").annotate(n=Count("id")).order_by().values_list("status", "n")
    )
    rank = Case(
        When(status=StripeEventStatus.FAILED, then=Value(0)),
        When(status=StripeEventStatus.RECEIVED, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    events = list(
        StripeEvent.objects.defer("payload").annotate(rank=rank).order_by("rank", "-received_at", "-id")[:LIST_LIMIT]
    )
    for event in events:
        event.admin_url = admin_url(event)  # type: ignore[attr-defined]
    return {
        "charts": charts,
        "revenue_totals": revenue_totals,
        "platform_settings": platform_settings_current(),
        "failing_subscriptions": failing_subscriptions,
        "failing_invoices": failing_invoices,
        "failing_payouts": failing_payouts,
        "events": events,
        "event_counts": {status: event_counts.get(status, 0) for status in StripeEventStatus.values},
        "months": CHART_MONTHS,
        "grace_days": settings.BILLING_GRACE_DAYS,
    }


__all__ = [
    "CapStatus",
    "SubscriptionPeriod",
    "admin_billing_overview",
    "buyer_billing_overview",
    "chart_build",
    "publisher_dashboard",
    "subscription_periods",
    "version_health",
]
