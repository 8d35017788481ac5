"""Billing dashboards: the aggregates (seeded usage records, invoices and payouts written directly), the pages
for the right people only (404 for others) with constant query counts, and the forms and API behind them."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Membership, Role
from billing import dashboards, spend_caps
from billing.models import (
    Invoice,
    InvoiceLine,
    Payout,
    PlatformSettings,
    SpendCap,
    StripeEvent,
    Subscription,
)
from billing.platform import platform_fee_set
from inference.models import InferenceError
from marketplace.errors import ApplicationError, Forbidden
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.caps_support import api_key_make, paid_plan_make, spend_keys_clear, subscription_make, usage_make
from tests.catalog.factories import PublishedListingFactory, VersionFactory

NOW = datetime(2026, 3, 16, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clean_spend():
    spend_keys_clear()
    yield
    spend_keys_clear()


def _invoice(*, organization, subscription, status="paid", paid_at=None, lines=(), number=None, currency="usd"):
    invoice = Invoice.objects.create(
        organization=organization,
        subscription=subscription,
        backend="stripe",  # local invoices are unique per subscription and period; these are free-form
        number=number or f"INV-{uuid.uuid4().hex[:8]}",
        period_start=(paid_at or NOW) - timedelta(days=30),
        period_end=paid_at or NOW,
        status=status,
        currency=currency,
        paid_at=paid_at if status == "paid" else None,
    )
    total = fee_total = 0
    for amount, fee, kind, units in lines:
        InvoiceLine.objects.create(
            invoice=invoice,
            subscription=subscription,
            listing=subscription.listing,
            publisher=subscription.listing.organization,
            plan=subscription.plan,
            kind=kind,
            description=f"{kind} line",
            units=units,
            amount_cents=amount,
            platform_fee_cents=fee,
            publisher_share_cents=amount - fee,
        )
        total += amount
        fee_total += fee
    invoice.total_cents, invoice.platform_fee_cents = total, fee_total
    invoice.save(update_fields=["total_cents", "platform_fee_cents"])
    return invoice


# --- aggregates --------------------------------------------------------------------------------


def test_subscription_periods_sum_this_period_and_project_to_its_end(buyer_team, listing):
    _owner, _admin, _member, org = buyer_team
    # $49/month, 1,000 units included, then $1.00 per 1,000 (a tenth of a cent a unit); period half over.
    flat = paid_plan_make(
        listing=listing, kind="flat", monthly_price_cents=4900, included_units=1000, price_per_1000_cents=100
    )
    start = NOW - timedelta(days=15)
    sub = subscription_make(organization=org, plan=flat, start=start, days=30)
    usage_make(subscription=sub, units=700, cost="0", at=start + timedelta(days=1))
    usage_make(subscription=sub, units=500, cost="0.2", at=start + timedelta(days=10))
    usage_make(subscription=sub, units=9999, cost="99", at=start - timedelta(seconds=1))  # the previous period
    canceled = subscription_make(organization=org, plan=paid_plan_make(listing=PublishedListingFactory()))
    Subscription.objects.filter(pk=canceled.pk).update(status="canceled")

    [period] = dashboards.subscription_periods(organization=org, now=NOW)
    assert period.subscription == sub
    assert (period.calls, period.units, period.usage_cost) == (2, 1200, Decimal("0.2"))
    assert period.fee == Decimal("49") and period.cost == Decimal("49.2")
    assert period.elapsed_fraction == pytest.approx(0.5)
    assert period.projected_units == 2400
    assert period.projected_cost == Decimal("49") + Decimal("1.4")  # 1,400 units beyond the included 1,000
    assert period.included_percent == 100

    Subscription.objects.filter(pk=sub.pk).update(status="trialing")
    [trial] = dashboards.subscription_periods(organization=org, now=NOW)
    assert trial.fee == 0 and trial.projected_cost == Decimal("1.4")


def test_usage_daily_fills_every_day_and_keeps_currencies_apart(buyer_team, listing):
    org = buyer_team[3]
    usd = subscription_make(organization=org, plan=paid_plan_make(listing=listing))
    eur_plan = paid_plan_make(listing=PublishedListingFactory())
    eur_plan.currency = "eur"
    eur_plan.save()
    eur = subscription_make(organization=org, plan=eur_plan)
    days = dashboards._days(end=NOW.date(), count=3)
    usage_make(subscription=usd, units=5, cost="0.5", at=NOW - timedelta(days=2))
    usage_make(subscription=usd, units=7, cost="0.25", at=NOW)
    usage_make(subscription=usd, units=1, cost="0.25", at=NOW - timedelta(hours=1))
    usage_make(subscription=eur, units=2, cost="3", at=NOW)
    usage_make(subscription=usd, units=100, cost="100", at=NOW - timedelta(days=3))  # before the window
    from inference.models import UsageRecord

    daily = dashboards.usage_daily(usage=UsageRecord.objects.filter(organization=org), days=days)
    assert daily["calls"] == [1, 0, 3]
    assert daily["units"] == [5, 0, 10]
    assert daily["cost"] == {"usd": [Decimal("0.5"), 0, Decimal("0.5")], "eur": [0, 0, Decimal("3")]}


def test_publisher_dashboard_counts_paid_revenue_payouts_subscribers_and_version_health(
    publisher, listing, buyer_team, make_org
):
    _user, acme = publisher
    org = buyer_team[3]
    plan = paid_plan_make(listing=listing)
    sub = subscription_make(organization=org, plan=plan)
    gone = subscription_make(organization=make_org(), plan=plan)
    Subscription.objects.filter(pk__in=[sub.pk, gone.pk]).update(created_at=NOW - timedelta(days=40))
    Subscription.objects.filter(pk=gone.pk).update(status="canceled", canceled_at=NOW - timedelta(days=2, hours=6))
    # Another publisher's revenue never shows.
    other_listing = PublishedListingFactory()
    other_sub = subscription_make(organization=org, plan=paid_plan_make(listing=other_listing))

    feb = datetime(2026, 2, 10, tzinfo=UTC)
    mar = datetime(2026, 3, 5, tzinfo=UTC)
    paid_feb = _invoice(organization=org, subscription=sub, paid_at=feb, lines=[(4900, 980, "flat", 0)])
    _invoice(organization=org, subscription=sub, paid_at=mar, lines=[(1000, 200, "metered", 10_000)])
    _invoice(organization=org, subscription=sub, status="open", lines=[(7777, 1555, "metered", 1)])
    _invoice(organization=org, subscription=other_sub, paid_at=mar, lines=[(5000, 1000, "flat", 0)])
    Payout.objects.create(
        invoice=paid_feb, publisher=acme, amount_cents=3920, idempotency_key="a", status="paid", paid_at=mar
    )

    v1 = listing.current_version
    v2 = VersionFactory(listing=listing, version="2.0.0")
    for ms in (1, 2, 3, 4, 100):
        usage_make(subscription=sub, units=2, version=v1, compute_ms=ms, at=NOW - timedelta(hours=1))
    usage_make(subscription=sub, units=1, version=v2, compute_ms=7, at=NOW - timedelta(days=1))
    usage_make(subscription=sub, units=50, version=v1, compute_ms=7, at=NOW - timedelta(days=31))  # too old
    for _ in range(3):
        InferenceError.objects.create(
            request_id=uuid.uuid4().hex, organization=org, listing=listing, version=v2, status=500,
            code="internal_error", created_at=NOW - timedelta(hours=2),
        )  # fmt: skip

    data = dashboards.publisher_dashboard(organization=acme, now=NOW)
    assert data["totals"]["subscribers"] == 1
    assert (data["totals"]["calls"], data["totals"]["units"]) == (6, 11)
    assert data["totals"]["revenue"] == {"usd": Decimal("47.20")}  # 3,920 + 800 cents
    assert data["totals"]["paid_out"] == {"usd": Decimal("39.20")}
    charts = {c["id"]: c for c in data["charts"]}
    revenue = charts["pub-revenue-usd"]["payload"]
    assert revenue["labels"][-2:] == ["Feb 2026", "Mar 2026"]
    assert revenue["series"][0]["values"][-2:] == [39.2, 8.0]
    assert revenue["series"][1]["values"][-2:] == [0.0, 39.2]
    subscribers = charts["pub-subscribers"]["payload"]["series"][0]["values"]
    assert subscribers[-4:] == [2, 1, 1, 1]  # canceled during the day before yesterday
    assert charts["pub-calls"]["payload"]["series"][0]["values"][-2:] == [1, 5]
    health = {row["version"]: row for row in data["versions"]}
    assert (health["1.0.0"]["calls"], health["1.0.0"]["errors"], health["1.0.0"]["p50_ms"]) == (5, 0, 3.0)
    assert health["1.0.0"]["validation_p50_ms"] == 0.42
    assert (health["2.0.0"]["calls"], health["2.0.0"]["errors"]) == (1, 3)
    assert health["2.0.0"]["error_rate"] == 75.0
    assert [row["live_subscribers"] for row in data["listings"]] == [1]


def test_admin_overview_counts_paid_fees_and_lists_failures_first(buyer_team, listing, make_org):
    org = buyer_team[3]
    sub = subscription_make(organization=org, plan=paid_plan_make(listing=listing))
    _invoice(
        organization=org,
        subscription=sub,
        paid_at=datetime(2026, 1, 31, 23, tzinfo=UTC),
        lines=[(1000, 150, "flat", 0)],
    )
    _invoice(
        organization=org, subscription=sub, paid_at=datetime(2026, 3, 1, tzinfo=UTC), lines=[(2000, 400, "flat", 0)]
    )
    bad = _invoice(organization=org, subscription=sub, status="uncollectible", lines=[(300, 60, "flat", 0)])
    _invoice(organization=org, subscription=sub, status="open", lines=[(300, 60, "flat", 0)])  # not overdue
    late = subscription_make(organization=make_org(), plan=sub.plan, status="past_due")
    for i, status in enumerate(["processed", "failed", "received", "processed"]):
        StripeEvent.objects.create(
            event_id=f"evt_{i}", type="invoice.paid", stripe_created=NOW, payload={"id": i}, status=status
        )

    data = dashboards.admin_billing_overview(now=NOW)
    fees = data["charts"][0]["payload"]
    assert fees["labels"][-3:] == ["Jan 2026", "Feb 2026", "Mar 2026"]
    assert fees["series"][0]["values"][-3:] == [1.5, 0.0, 4.0]
    assert data["revenue_totals"] == {"usd": {"fees": Decimal("5.50"), "gross": Decimal("30.00")}}
    assert data["failing_invoices"] == [bad]
    assert data["failing_subscriptions"] == [late]
    assert [e.event_id for e in data["events"]][:2] == ["evt_1", "evt_2"]
    assert data["event_counts"] == {"received": 1, "processed": 2, "ignored": 0, "failed": 1}
    assert data["platform_settings"].platform_fee_percent == 20


def test_chart_summary_and_table_say_what_the_chart_shows():
    chart = dashboards.chart_build(
        chart_id="c", title="Cost per day", kind="line", labels=["Mar 1", "Mar 2"],
        series=[("Cost", [Decimal("1.5"), Decimal("0.25")])], fmt="money",
    )  # fmt: skip
    assert chart["summary"] == "Cost per day, Mar 1 to Mar 2. Cost: $1.75 in total, the most $1.50 on Mar 1."
    assert chart["rows"] == [{"label": "Mar 1", "values": ["$1.50"]}, {"label": "Mar 2", "values": ["$0.25"]}]
    assert chart["payload"]["series"] == [{"name": "Cost", "values": [1.5, 0.25]}]


# --- the platform fee ------------------------------------------------------------------------------


def test_staff_set_the_platform_fee_with_an_audit_row(staff_user, make_user):
    row = platform_fee_set(user=staff_user, platform_fee_percent="12.5")
    assert PlatformSettings.objects.get(pk=1).platform_fee_percent == Decimal("12.50")
    assert row.updated_by == staff_user
    entry = AuditLogEntry.objects.get(action=AuditAction.PLATFORM_FEE_CHANGED)
    assert entry.data == {"platform_fee_percent": "12.5", "previous": "20"} and entry.actor == staff_user
    from billing.pricing import fee_split

    assert fee_split(amount_cents=1000) == (125, 875)
    for bad in ("-1", "100.01", "abc", "1.234", "NaN"):
        with pytest.raises(ApplicationError):
            platform_fee_set(user=staff_user, platform_fee_percent=bad)
    with pytest.raises(Forbidden):
        platform_fee_set(user=make_user(), platform_fee_percent="1")


# --- pages: the right people, constant queries ---------------------------------------------------------


def _seed_buyer_month(org, listing, *, subscriptions: int, records: int, invoices: int):
    owner = Membership.objects.filter(organization=org, role=Role.OWNER).first().user
    for i in range(subscriptions):
        target = listing if i == 0 else PublishedListingFactory()
        sub = subscription_make(organization=org, plan=paid_plan_make(listing=target))
        key = api_key_make(organization=org, user=owner, name=f"key {uuid.uuid4().hex[:4]}")
        for _ in range(records):
            usage_make(subscription=sub, units=3, cost="0.003", api_key=key)
        for _ in range(invoices):
            _invoice(organization=org, subscription=sub, paid_at=timezone.now(), lines=[(100, 20, "flat", 0)] * 2)
        spend_caps.spend_cap_set(organization=org, user=owner, monthly_limit_cents=1000, api_key=key)
    spend_caps.spend_cap_set(organization=org, user=owner, monthly_limit_cents=5000)


def _queries(client, url) -> int:
    spend_caps.spend_caps_cache_forget()
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def test_buyer_billing_page_shows_periods_caps_charts_and_invoices_with_constant_queries(
    client, buyer_team, listing, make_org, make_user
):
    owner, _admin, member, org = buyer_team
    _seed_buyer_month(org, listing, subscriptions=1, records=2, invoices=1)
    url = f"/billing/?organization={org.slug}"
    client.force_login(owner)
    response = client.get(url)
    html = response.content.decode()
    assert "Usage and cost this period" in html
    assert 'id="spend-caps"' in html and "$50.00" in html and "$10.00" in html
    assert 'action="/billing/spend-caps/"' in html  # owners get the forms
    assert "js/charts.js" in html
    payload = json.loads(
        re.search(r'<script id="buyer-units-data" type="application/json">(.*?)</script>', html).group(1)
    )
    assert payload["kind"] == "bar" and payload["series"][0]["values"][-1] == 6
    assert "INV-" in html and "flat line" in html

    few = _queries(client, url)
    other = make_org(owner=owner, name="Bigger")
    _seed_buyer_month(other, listing, subscriptions=3, records=5, invoices=3)
    many = _queries(client, f"/billing/?organization={other.slug}")
    assert many == few

    client.force_login(member)  # members see the numbers, not the forms
    html = client.get(url).content.decode()
    assert 'id="spend-caps"' in html and 'action="/billing/spend-caps/"' not in html
    client.force_login(make_user())
    assert client.get(url).status_code == 404


def test_publisher_dashboard_is_for_the_publishers_owners_and_admins(client, publisher, listing, buyer_team, make_user):
    user, acme = publisher
    org = buyer_team[3]
    sub = subscription_make(organization=org, plan=paid_plan_make(listing=listing))
    usage_make(subscription=sub, units=4)
    url = f"/billing/publisher/?organization={acme.slug}"
    client.force_login(user)
    few = _queries(client, url)
    html = client.get(url).content.decode()
    assert "Revenue and usage" in html and "pub-subscribers-data" in html and "Sepsis Alert" in html

    for _ in range(3):
        other = PublishedListingFactory(organization=acme)
        s = subscription_make(organization=org, plan=paid_plan_make(listing=other))
        usage_make(subscription=s, units=2, version=VersionFactory(listing=other, version="9.9.9"))
        _invoice(organization=org, subscription=s, paid_at=timezone.now(), lines=[(500, 100, "flat", 0)])
    assert _queries(client, url) == few

    member = make_user()
    Membership.objects.create(organization=acme, user=member, role=Role.MEMBER)
    client.force_login(member)
    assert client.get(url).status_code == 404
    client.force_login(buyer_team[0])  # a buyer's owner: not a member of the publisher
    assert client.get(url).status_code == 404
    client.logout()
    assert client.get(url).status_code == 302


def test_admin_billing_page_is_staff_only(client, staff_user, buyer_team, listing):
    org = buyer_team[3]
    sub = subscription_make(organization=org, plan=paid_plan_make(listing=listing))
    _invoice(organization=org, subscription=sub, paid_at=timezone.now(), lines=[(1000, 200, "flat", 0)])
    client.force_login(staff_user)
    few = _queries(client, "/billing/admin/")
    html = client.get("/billing/admin/").content.decode()
    assert "Platform fees per month" in html and 'name="platform_fee_percent"' in html
    for i in range(4):
        StripeEvent.objects.create(
            event_id=f"evt_x{i}", type="invoice.paid", stripe_created=NOW, payload={}, status="failed"
        )
        _invoice(organization=org, subscription=sub, status="uncollectible", lines=[(100, 20, "flat", 0)])
    Subscription.objects.filter(pk=sub.pk).update(status="past_due")
    assert _queries(client, "/billing/admin/") == few

    response = client.post("/billing/admin/platform-fee/", {"platform_fee_percent": "15"})
    assert response.status_code == 302
    assert PlatformSettings.objects.get(pk=1).platform_fee_percent == 15
    client.post("/billing/admin/platform-fee/", {"platform_fee_percent": "150"})
    assert PlatformSettings.objects.get(pk=1).platform_fee_percent == 15

    client.force_login(buyer_team[0])
    assert client.get("/billing/admin/").status_code == 404
    assert client.post("/billing/admin/platform-fee/", {"platform_fee_percent": "1"}).status_code == 404
    client.logout()
    assert client.get("/billing/admin/").status_code == 404
    assert PlatformSettings.objects.get(pk=1).platform_fee_percent == 15


def test_spend_cap_forms_set_change_and_remove_caps_for_managers_only(client, buyer_team):
    owner, admin, member, org = buyer_team
    key = api_key_make(organization=org, user=owner, name="batch")
    client.force_login(admin)
    response = client.post("/billing/spend-caps/", {"organization": org.slug, "monthly_limit": "$1,250.50"})
    assert response.status_code == 302 and response["Location"].endswith(f"?organization={org.slug}#spend-caps")
    client.post("/billing/spend-caps/", {"organization": org.slug, "api_key": key.public_id, "monthly_limit": "20"})
    caps = dict(SpendCap.objects.values_list("api_key_id", "monthly_limit_cents"))
    assert caps == {None: 125_050, key.pk: 2000}
    client.post("/billing/spend-caps/", {"organization": org.slug, "monthly_limit": "12.345"})  # refused
    assert SpendCap.objects.get(api_key=None).monthly_limit_cents == 125_050
    client.post("/billing/spend-caps/remove/", {"organization": org.slug, "api_key": key.public_id})
    assert list(SpendCap.objects.values_list("api_key_id", flat=True)) == [None]

    client.force_login(member)
    assert client.post("/billing/spend-caps/", {"organization": org.slug, "monthly_limit": "1"}).status_code == 404
    assert client.post("/billing/spend-caps/remove/", {"organization": org.slug}).status_code == 404
    assert SpendCap.objects.get(api_key=None).monthly_limit_cents == 125_050


# --- API ---------------------------------------------------------------------------------------------


def test_spend_caps_api(client, buyer_team, listing):
    from accounts.services import api_key_create

    owner, _admin, member, org = buyer_team
    key = api_key_make(organization=org, user=owner, name="batch")
    usage_make(subscription=subscription_make(organization=org, plan=paid_plan_make(listing=listing)), cost="1.5")
    url = f"/api/v1/organizations/{org.slug}/spend-caps"
    client.force_login(member)
    [org_cap] = client.get(url).json()
    assert org_cap["api_key"] is None and org_cap["monthly_limit_cents"] is None
    assert org_cap["spent"] == "1.500000" and org_cap["currency"] == "usd"
    assert client.put(url, {"monthly_limit_cents": 100}, content_type="application/json").status_code == 403

    _mgmt, raw = api_key_create(organization=org, user=owner, name="ops", scopes=["management"])
    headers = {"Authorization": f"Bearer {raw}"}
    client.logout()
    body = client.put(url, {"monthly_limit_cents": 200}, content_type="application/json", headers=headers).json()
    assert (body[0]["monthly_limit_cents"], body[0]["percent"], body[0]["status"]) == (200, 75, "ok")
    body = client.put(
        url, {"monthly_limit_cents": 150, "api_key": key.public_id}, content_type="application/json", headers=headers
    ).json()
    assert [(c["api_key"], c["monthly_limit_cents"]) for c in body] == [(None, 200), (key.public_id, 150)]
    body = client.put(url, {"monthly_limit_cents": None}, content_type="application/json", headers=headers).json()
    assert body[0]["monthly_limit_cents"] is None and len(body) == 2
    bad = client.put(
        url, {"monthly_limit_cents": 1, "api_key": "nope"}, content_type="application/json", headers=headers
    )
    assert bad.status_code == 400 and bad.json()["error"]["fields"] == {"api_key": ["Unknown key."]}
    assert client.get("/api/v1/organizations/someone-else/spend-caps", headers=headers).status_code == 404
