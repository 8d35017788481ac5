"""Buyer pages of the inference ledger: the usage page (calls, units and errors by day and listing, with a chart)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from datetime import time as dt_time
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from accounts.models import Organization
from accounts.selectors import organization_get_for_member
from inference.charts import daily_chart
from inference.selectors import usage_by_day, usage_totals
from marketplace.typing import request_user

PERIODS = (7, 30, 90)
DEFAULT_PERIOD = 30


def _period(value: str | None) -> int:
    try:
        days = int(value or DEFAULT_PERIOD)
    except ValueError:
        return DEFAULT_PERIOD
    return days if days in PERIODS else DEFAULT_PERIOD


def usage_context(*, organization: Organization, days: int) -> dict[str, Any]:
    """Four queries whatever the activity: usage and errors by day and listing, and their totals."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    tz = timezone.get_current_timezone()
    start = datetime.combine(first, dt_time.min, tzinfo=tz)
    end = datetime.combine(today + timedelta(days=1), dt_time.min, tzinfo=tz)
    rows = usage_by_day(organization_id=organization.pk, start=start, end=end)
    totals = usage_totals(organization_id=organization.pk, start=start, end=end)

    calls: dict[Any, int] = defaultdict(int)
    errors: dict[Any, int] = defaultdict(int)
    listings: dict[Any, dict[str, Any]] = {}
    for row in rows:
        calls[row["day"]] += row["calls"]
        errors[row["day"]] += row["errors"]
        listing = listings.setdefault(
            row["listing_id"],
            {"slug": row["listing_slug"], "name": row["listing_name"], "calls": 0, "units": 0, "errors": 0},
        )
        for key in ("calls", "units", "errors"):
            listing[key] += row[key]
    day_list = [first + timedelta(days=i) for i in range(days)]
    return {
        "organization": organization,
        "days": days,
        "periods": PERIODS,
        "start": first,
        "end": today,
        "totals": totals,
        "chart": daily_chart(days=day_list, calls=calls, errors=errors),
        "by_listing": sorted(listings.values(), key=lambda r: (-r["calls"], -r["errors"], r["name"] or "")),
        "rows": list(reversed(rows)),  # newest day first in the table
    }


@login_required
@require_safe
def usage(request: HttpRequest) -> HttpResponse:
    """The usage of the organization the user acts for (or of ``?organization=<slug>``, 404 unless a member),
    over the last 7, 30 or 90 days (``?days=``)."""
    user = request_user(request)
    organization: Organization | None = getattr(request, "organization", None)
    slug = request.GET.get("organization")
    if slug:
        organization = organization_get_for_member(user=user, slug=slug)
        if organization is None:
            raise Http404("No such organization.")
    days = _period(request.GET.get("days"))
    if organization is None:
        return render(request, "inference/usage.html", {"organization": None, "days": days, "periods": PERIODS})
    return render(request, "inference/usage.html", usage_context(organization=organization, days=days))
