"""Reconciliation: the usage ledger against what was reported to Stripe meters.

Every usage record (with units) of a Stripe-metered subscription in the window must have a meter
report that was sent with the record's units; where Stripe's acknowledged events are available (the
fake Stripe in tests lists them), each sent report must be among them with the same value and customer,
and Stripe must hold no event of ours that the ledger does not. Every difference names its record.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from billing.metering import meter_event_identifier, metered_subscriptions
from billing.models import MeterReportStatus
from inference.models import UsageRecord

logger = logging.getLogger(__name__)

# The daily run looks back over Stripe's meter event window, and leaves the last minutes to the sender.
DAILY_LOOKBACK = timedelta(days=35)
DAILY_SETTLE = timedelta(minutes=15)

MISSING_REPORT = "missing_report"
FAILED_REPORT = "failed_report"
PENDING_REPORT = "pending_report"
VALUE_MISMATCH = "value_mismatch"
NOT_ACKNOWLEDGED = "not_acknowledged"
ACKNOWLEDGED_MISMATCH = "acknowledged_mismatch"
UNKNOWN_AT_STRIPE = "unknown_at_stripe"


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def reconciliation_run(
    *,
    period_start: datetime,
    period_end: datetime,
    acknowledged_events: Iterable[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compare the ledger in ``[period_start, period_end)`` with the meter reports (and, when given,
    Stripe's acknowledged meter events: dicts with ``identifier``, ``timestamp``, ``event_name`` and
    ``payload`` {``stripe_customer_id``, ``value``}).

    Returns ``{"period_start", "period_end", "usage_records", "usage_units", "reported_records",
    "reported_units", "acknowledged_records", "differences": [{"kind", "usage_record_id",
    "identifier", "detail", ...}], "counts": {kind: n}, "ok"}``. Kinds: ``missing_report``,
    ``failed_report``, ``pending_report``, ``value_mismatch``, ``not_acknowledged``,
    ``acknowledged_mismatch``, ``unknown_at_stripe``.
    """
    acknowledged: dict[str, dict[str, Any]] | None = None
    if acknowledged_events is not None:
        prefix = settings.STRIPE_METER_EVENT_NAME
        acknowledged = {}
        for event in acknowledged_events:
            moment = datetime.fromtimestamp(int(event.get("timestamp") or 0), tz=UTC)
            if (event.get("event_name") or "").startswith(prefix) and period_start <= moment < period_end:
                acknowledged[str(event["identifier"])] = event
    records = (
        UsageRecord.objects.filter(created_at__gte=period_start, created_at__lt=period_end, units__gt=0)
        .filter(Q(subscription__in=metered_subscriptions().values("pk")) | Q(meter_report__isnull=False))
        .order_by("pk")
        .values_list(
            "pk",
            "request_id",
            "units",
            "meter_report__id",
            "meter_report__status",
            "meter_report__value",
            "meter_report__stripe_customer_id",
            "meter_report__attempts",
            "meter_report__last_error",
        )
    )
    differences: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    seen: set[str] = set()
    for pk, request_id, units, report_id, status, value, customer, attempts, last_error in records.iterator():
        identifier = meter_event_identifier(request_id=request_id)
        seen.add(identifier)
        totals["usage_records"] += 1
        totals["usage_units"] += units
        base = {"usage_record_id": pk, "identifier": identifier, "units": units}
        if report_id is None:
            differences.append({**base, "kind": MISSING_REPORT, "detail": "No meter report was queued."})
            continue
        if status == MeterReportStatus.FAILED:
            differences.append({**base, "kind": FAILED_REPORT, "detail": last_error or "Failed."})
            continue
        if status == MeterReportStatus.PENDING:
            detail = f"Not sent yet ({attempts} attempts){': ' + last_error if last_error else ''}."
            differences.append({**base, "kind": PENDING_REPORT, "detail": detail})
            continue
        totals["reported_records"] += 1
        totals["reported_units"] += value
        if value != units:
            differences.append(
                {**base, "kind": VALUE_MISMATCH, "reported": value, "detail": f"Reported {value}, ledger has {units}."}
            )
        if acknowledged is None:
            continue
        acknowledged_event = acknowledged.get(identifier)
        if acknowledged_event is None:
            differences.append({**base, "kind": NOT_ACKNOWLEDGED, "detail": "Marked sent; Stripe has no such event."})
            continue
        totals["acknowledged_records"] += 1
        payload = acknowledged_event.get("payload") or {}
        stripe_value = _decimal(payload.get("value"))
        if stripe_value != Decimal(value) or payload.get("stripe_customer_id") != customer:
            differences.append(
                {
                    **base,
                    "kind": ACKNOWLEDGED_MISMATCH,
                    "detail": (
                        f"Stripe has value {payload.get('value')} for {payload.get('stripe_customer_id')}; "
                        f"reported {value} for {customer}."
                    ),
                }
            )
    if acknowledged is not None:
        for identifier in sorted(set(acknowledged) - seen):
            payload = acknowledged[identifier].get("payload") or {}
            differences.append(
                {
                    "usage_record_id": None,
                    "identifier": identifier,
                    "units": None,
                    "kind": UNKNOWN_AT_STRIPE,
                    "detail": f"Stripe counted {payload.get('value')} units the ledger does not have.",
                }
            )
    counts = Counter(difference["kind"] for difference in differences)
    return {
        "period_start": period_start.isoformat(),
        "period_end": period_end.isoformat(),
        "usage_records": totals["usage_records"],
        "usage_units": totals["usage_units"],
        "reported_records": totals["reported_records"],
        "reported_units": totals["reported_units"],
        "acknowledged_records": totals["acknowledged_records"] if acknowledged is not None else None,
        "differences": differences,
        "counts": dict(counts),
        "ok": not differences,
    }


def reconciliation_month_bounds(*, month: str) -> tuple[datetime, datetime]:
    """``"2026-11"`` → (Nov 1 00:00, Dec 1 00:00) in UTC."""
    try:
        year, number = (int(part) for part in month.split("-"))
        start = datetime(year, number, 1, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"Give the month as YYYY-MM, not {month!r}.") from exc
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def reconciliation_daily(*, now: datetime | None = None) -> dict[str, Any]:
    """The daily check (beat task): Stripe's whole meter event window, up to a few minutes ago."""
    now = now or timezone.now()
    result = reconciliation_run(period_start=now - DAILY_LOOKBACK, period_end=now - DAILY_SETTLE)
    if not result["ok"]:
        logger.warning(
            "Usage reconciliation found %s differences %s; first: %s",
            len(result["differences"]),
            result["counts"],
            result["differences"][:10],
        )
    return result
