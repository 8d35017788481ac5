"""The buyers' usage page: calls, units and errors by day and listing for the current organization, with an SVG chart
and its data table; 7/30/90 days; members only; a constant number of queries."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inference.charts import daily_chart, nice_ceiling
from inference.models import InferenceError, UsageRecord
from tests.inference.api_support import buyer_create, publish_model
from tests.inference.onnx_factories import onnx_classifier_bytes


@pytest.fixture
def two_listings(db):
    a = publish_model(s3=None, onnx_bytes=onnx_classifier_bytes(), slug="alpha-model", upload=False)
    b = publish_model(s3=None, onnx_bytes=onnx_classifier_bytes(), slug="beta-model", upload=False)
    return a, b


def _call(buyer, version, *, units: int = 1, days_ago: int = 0) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        organization=buyer.organization,
        api_key=buyer.api_key,
        subscription=buyer.subscription,
        listing=version.listing,
        version=version,
        units=units,
        created_at=timezone.now() - timedelta(days=days_ago),
    )


def _error(buyer, version, *, days_ago: int = 0) -> InferenceError:
    return InferenceError.objects.create(
        request_id=uuid.uuid4().hex,
        organization=buyer.organization,
        api_key=buyer.api_key,
        listing=version.listing,
        version=version,
        status=400,
        code="invalid_input",
        created_at=timezone.now() - timedelta(days=days_ago),
    )


def _section(page: str, heading_id: str) -> str:
    return page.split(f'id="{heading_id}"', 1)[1].split("</section>", 1)[0]


def test_usage_is_aggregated_by_day_and_listing(client, two_listings):
    a, b = two_listings
    buyer = buyer_create(listing=a.listing)
    buyer_b = buyer_create(listing=b.listing)  # another organization: none of its calls show
    from billing.services import subscription_create

    subscription_b = subscription_create(
        organization=buyer.organization, user=buyer.user, plan=buyer_b.subscription.plan, accept_license=True
    )
    for _ in range(3):
        _call(buyer, a, units=2)
    _call(buyer, a, units=5, days_ago=1)
    record = _call(buyer, b, units=7, days_ago=1)
    record.subscription = subscription_b
    record.save()
    _error(buyer, a)
    _error(buyer, b, days_ago=2)
    _call(buyer, a, units=100, days_ago=40)  # outside 30 days
    _call(buyer_b, b, units=1000)

    client.force_login(buyer.user)
    page = client.get("/billing/usage/").content.decode()
    totals = _section(page, "totals-title")
    assert "<dt>Calls</dt><dd>5</dd>" in totals
    assert "<dt>Units</dt><dd>18</dd>" in totals
    assert "<dt>Errors</dt><dd>2</dd>" in totals
    by_listing = _section(page, "by-listing-title")
    assert by_listing.index(a.listing.name) < by_listing.index(b.listing.name)  # busiest first
    assert '<td class="num">4</td><td class="num">11</td><td class="num">1</td>' in by_listing  # alpha
    assert '<td class="num">1</td><td class="num">7</td><td class="num">1</td>' in by_listing  # beta

    rows = _section(page, "by-day-title").split("<tbody>", 1)[1].split("<tr>")[1:]
    today = timezone.localdate()
    assert len(rows) == 4  # (today, a), (yesterday, a), (yesterday, b), (2 days ago, b): newest first
    assert f'datetime="{today:%Y-%m-%d}"' in rows[0] and a.listing.name in rows[0]
    assert '<td class="num">3</td><td class="num">6</td><td class="num">1</td>' in rows[0]

    # The chart: an image with a summary, one bar group per day of the period.
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in svg
    assert "5 successful and 2 failed in total" in svg
    assert svg.count("<title>") == 30
    assert svg.count('class="bar-errors"') == 2

    page_90 = client.get("/billing/usage/?days=90").content.decode()
    assert "<dt>Calls</dt><dd>6</dd>" in _section(page_90, "totals-title")
    assert _section(page_90, "totals-title").count("<title>") == 90
    page_7 = client.get("/billing/usage/?days=7").content.decode()
    assert 'aria-current="page">Last 7 days' in page_7


def test_other_organizations_usage_is_a_404(client, two_listings, make_user):
    a, _b = two_listings
    buyer = buyer_create(listing=a.listing)
    _call(buyer, a)
    outsider = make_user()
    client.force_login(outsider)
    assert client.get(f"/billing/usage/?organization={buyer.organization.slug}").status_code == 404
    client.force_login(buyer.user)
    assert client.get(f"/billing/usage/?organization={buyer.organization.slug}").status_code == 200


def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get("/billing/usage/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_page_costs_the_same_queries_whatever_the_activity(client, two_listings):
    a, b = two_listings
    buyer = buyer_create(listing=a.listing)
    client.force_login(buyer.user)
    _call(buyer, a)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/billing/usage/").status_code == 200
    for day in range(25):
        _call(buyer, a, units=day + 1, days_ago=day)
        _call(buyer, b, days_ago=day)
        _error(buyer, b, days_ago=day)
    with CaptureQueriesContext(connection) as many:
        page = client.get("/billing/usage/").content.decode()
    assert "<dt>Calls</dt><dd>51</dd>" in page
    assert len(many.captured_queries) == len(few.captured_queries)


def test_chart_geometry():
    today = timezone.localdate()
    days = [today - timedelta(days=2 - i) for i in range(3)]
    chart = daily_chart(days=days, calls={days[0]: 7, days[2]: 3}, errors={days[2]: 1})
    assert nice_ceiling(8) == 10 and nice_ceiling(11) == 20 and nice_ceiling(0) == 1 and nice_ceiling(300) == 500
    full = chart.plot_bottom - chart.plot_top
    first, empty, last = chart.bars
    assert first.calls_height == pytest.approx(full * 7 / 8)  # 7 of an axis up to 8, in steps of 2
    assert empty.calls_height == 0 and empty.errors_height == 0
    assert last.errors_y + last.errors_height == pytest.approx(last.calls_y)  # errors stacked on calls
    assert [t.label for t in chart.y_ticks] == ["0", "2", "4", "6", "8"]
    assert "the busiest day was" in chart.summary and "with 7 calls" in chart.summary
    tiny = daily_chart(days=days, calls={days[0]: 1}, errors={days[0]: 1})
    assert [t.label for t in tiny.y_ticks] == ["0", "1", "2"]
    wide = daily_chart(days=days, calls={days[0]: 11}, errors={})
    assert [t.label for t in wide.y_ticks] == ["0", "5", "10", "15"]
