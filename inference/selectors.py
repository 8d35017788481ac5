"""Reads of the usage ledger: quota seeding and the buyers' usage page."""

from __future__ import annotations

from datetime import date, datetime

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from inference.models import InferenceError, UsageRecord


def usage_units_for_period(*, subscription_id: int, start: datetime, end: datetime) -> int:
    """Units recorded for a subscription in [start, end): where a quota counter starts when Redis has none."""
    total = UsageRecord.objects.filter(
        subscription_id=subscription_id, created_at__gte=start, created_at__lt=end
    ).aggregate(total=Sum("units"))["total"]
    return int(total or 0)


def usage_by_day(*, organization_id: int, start: datetime, end: datetime, listing_id: int | None = None) -> list[dict]:
    """Calls, units and errors per day and listing in [start, end), oldest first:
    ``[{"day": date, "listing_id", "listing_slug", "listing_name", "calls", "units", "errors"}]``."""
    usage = UsageRecord.objects.filter(organization_id=organization_id, created_at__gte=start, created_at__lt=end)
    errors = InferenceError.objects.filter(organization_id=organization_id, created_at__gte=start, created_at__lt=end)
    if listing_id is not None:
        usage = usage.filter(listing_id=listing_id)
        errors = errors.filter(listing_id=listing_id)
    rows: dict[tuple[date, int | None], dict] = {}

    def row_for(row: dict) -> dict:
        return rows.setdefault(
            (row["day"], row["listing_id"]),
            {
                "day": row["day"],
                "listing_id": row["listing_id"],
                "listing_slug": row["listing__slug"],
                "listing_name": row["listing__name"],
                "calls": 0,
                "units": 0,
                "errors": 0,
            },
        )

    by_day_and_listing = ("day", "listing_id", "listing__slug", "listing__name")
    for usage_row in (
        usage.annotate(day=TruncDate("created_at"))
        .values(*by_day_and_listing)
        .annotate(calls=Count("id"), units=Sum("units"))
    ):
        entry = row_for(usage_row)
        entry["calls"] = usage_row["calls"]
        entry["units"] = int(usage_row["units"] or 0)
    for error_row in (
        errors.annotate(day=TruncDate("created_at")).values(*by_day_and_listing).annotate(errors=Count("id"))
    ):
        row_for(error_row)["errors"] = error_row["errors"]
    return sorted(rows.values(), key=lambda r: (r["day"], r["listing_slug"] or ""))


def usage_totals(*, organization_id: int, start: datetime, end: datetime) -> dict:
    """Calls, units and errors for an organization in [start, end)."""
    usage = UsageRecord.objects.filter(
        organization_id=organization_id, created_at__gte=start, created_at__lt=end
    ).aggregate(calls=Count("id"), units=Sum("units"))
    errors = InferenceError.objects.filter(
        organization_id=organization_id, created_at__gte=start, created_at__lt=end
    ).count()
    return {"calls": usage["calls"], "units": int(usage["units"] or 0), "errors": errors}
