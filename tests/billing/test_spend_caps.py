"""Spend caps per organization and per API key: 402 at 100% with a clear message, one notice at 80%,
counters seeded from the usage ledger, raising the cap or a new month lets calls through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Membership, Role
from billing import spend_caps
from billing.models import SpendCap
from billing.spend_caps import SpendCapReached, spend_add, spend_cap_remove, spend_cap_set, spend_check
from marketplace.errors import ApplicationError, Forbidden
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.caps_support import api_key_make, paid_plan_make, spend_keys_clear, subscription_make, usage_make
from tests.plugins.services import wait_for


@pytest.fixture(autouse=True)
def _clean_spend():
    spend_keys_clear()
    yield
    spend_keys_clear()


@pytest.fixture(params=["redis", "local"])
def backend(request, settings):
    """Both counter stores: Redis (the metering store) and the in-process local backend."""
    if request.param == "local":
        settings.INFERENCE_REDIS_URL = ""
    return request.param


@pytest.fixture
def buyer(buyer_team, listing):
    owner, admin, member, org = buyer_team
    plan = paid_plan_make(listing=listing)
    subscription = subscription_make(organization=org, plan=plan)
    return {"owner": owner, "admin": admin, "member": member, "org": org, "subscription": subscription}


def _check(org, api_key=None, estimate="0"):
    spend_check(organization_id=org.pk, api_key_id=api_key.pk if api_key else None, cost_estimate=Decimal(estimate))


def _add(org, cost, api_key=None, now=None):
    spend_add(organization_id=org.pk, api_key_id=api_key.pk if api_key else None, cost=Decimal(cost), now=now)


def test_organization_cap_answers_402_at_100_percent_with_a_clear_message(backend, buyer):
    org = buyer["org"]
    usage_make(subscription=buyer["subscription"], units=990, cost="0.99")
    spend_cap_set(organization=org, user=buyer["owner"], monthly_limit_cents=100)

    _check(org)  # $0.99 of $1.00: calls go on
    _check(org, estimate="0.01")  # reaching the cap exactly is allowed
    with pytest.raises(SpendCapReached) as over:
        _check(org, estimate="0.02")  # but not going over it
    assert over.value.status == 402
    assert over.value.code == "spend_cap_reached"
    assert "would go over your organization's monthly spend cap of $1.00 ($0.99 spent this month)" in (
        over.value.message
    )

    _add(org, "0.01")
    with pytest.raises(SpendCapReached) as reached:
        _check(org)
    message = reached.value.message
    assert message.startswith("Your organization's monthly spend cap of $1.00 is reached; an admin can raise it at ")
    assert f"/billing/?organization={org.slug}#spend-caps" in message
    nxt = spend_caps.month_next(spend_caps.month_start())
    assert message.endswith(f"It resets on {nxt:%B} {nxt.day}, {nxt.year}.")
    assert reached.value.fields["spend_cap_url"][0].endswith(f"?organization={org.slug}#spend-caps")


def test_a_key_cap_stops_that_key_only(backend, buyer):
    org, owner = buyer["org"], buyer["owner"]
    capped = api_key_make(organization=org, user=owner, name="batch jobs")
    other = api_key_make(organization=org, user=owner, name="web")
    usage_make(subscription=buyer["subscription"], cost="0.30", api_key=capped)
    usage_make(subscription=buyer["subscription"], cost="5.00", api_key=other)
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=50, api_key=capped)

    _check(org, capped, estimate="0.20")
    _add(org, "0.20", api_key=capped)
    with pytest.raises(SpendCapReached) as exc:
        _check(org, capped)
    assert exc.value.message.startswith("This API key's monthly spend cap of $0.50 is reached")
    _check(org, other, estimate="100")  # the other key and calls without a key have no cap
    _check(org, None, estimate="100")


def test_the_organization_cap_counts_every_key(backend, buyer):
    org, owner = buyer["org"], buyer["owner"]
    first = api_key_make(organization=org, user=owner)
    second = api_key_make(organization=org, user=owner)
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=1000)
    _check(org, first)
    _add(org, "6", api_key=first)
    _add(org, "4", api_key=second)
    with pytest.raises(SpendCapReached):
        _check(org, first)
    with pytest.raises(SpendCapReached):
        _check(org, second)


def test_raising_the_cap_lets_calls_through_and_removing_it_too(backend, buyer):
    org, owner, admin = buyer["org"], buyer["owner"], buyer["admin"]
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=100)
    _check(org)
    _add(org, "1.00")
    with pytest.raises(SpendCapReached):
        _check(org)
    spend_cap_set(organization=org, user=admin, monthly_limit_cents=200)  # admins may raise it
    _check(org, estimate="1.00")
    _add(org, "1.00")
    with pytest.raises(SpendCapReached):
        _check(org)
    assert spend_cap_remove(organization=org, user=owner) is True
    _check(org, estimate="1000")
    assert spend_cap_remove(organization=org, user=owner) is False
    actions = list(
        AuditLogEntry.objects.filter(organization=org, action__startswith="spend_cap.")
        .order_by("id")
        .values_list("action", "data__monthly_limit_cents", "data__previous_cents")
    )
    assert actions == [
        (AuditAction.SPEND_CAP_SET, 100, None),
        (AuditAction.SPEND_CAP_SET, 200, 100),
        (AuditAction.SPEND_CAP_REMOVED, None, 200),
    ]


def test_a_new_month_resets_the_cap(backend, buyer):
    org = buyer["org"]
    spend_cap_set(organization=org, user=buyer["owner"], monthly_limit_cents=100)
    this_month = spend_caps.month_start()
    _check(org)
    _add(org, "1.00")
    with pytest.raises(SpendCapReached):
        _check(org)
    nxt = spend_caps.month_next(this_month)
    first_moment = datetime(nxt.year, nxt.month, 1, tzinfo=UTC)
    spend_check(organization_id=org.pk, api_key_id=None, cost_estimate=Decimal("0.50"), now=first_moment)
    spend_add(organization_id=org.pk, api_key_id=None, cost=Decimal("0.50"), now=first_moment)
    spend_check(organization_id=org.pk, api_key_id=None, cost_estimate=Decimal("0.50"), now=first_moment)
    with pytest.raises(SpendCapReached):
        spend_check(organization_id=org.pk, api_key_id=None, cost_estimate=Decimal("0.51"), now=first_moment)


def test_counters_are_seeded_from_this_months_ledger_then_cost_no_query(backend, buyer):
    org, owner = buyer["org"], buyer["owner"]
    key = api_key_make(organization=org, user=owner)
    sub = buyer["subscription"]
    month_begins = datetime.combine(spend_caps.month_start(), datetime.min.time(), tzinfo=UTC)
    usage_make(subscription=sub, cost="0.40", api_key=key)
    usage_make(subscription=sub, cost="0.123456", api_key=None)
    usage_make(subscription=sub, cost="7.00", api_key=key, at=month_begins - timedelta(seconds=1))  # last month
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=100)
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=100, api_key=key)

    statuses = spend_caps.spend_cap_statuses(organization=org, api_keys=[key])
    assert [(s.api_key, s.spent) for s in statuses] == [(None, Decimal("0.523456")), (key, Decimal("0.400000"))]

    _check(org, key)  # seeds both counters from the ledger
    spend_caps.spend_caps_cache_forget()
    _check(org, key)  # loads the caps (one query)
    with CaptureQueriesContext(connection) as steady:
        for _ in range(20):
            _check(org, key, estimate="0.01")
            _add(org, "0.01", api_key=key)
    assert len(steady.captured_queries) == 0

    spent = spend_caps.spend_month_micros(organization_id=org.pk, api_key_ids=[None, key.pk])
    assert spent == {None: 723_456, key.pk: 600_000}
    # Exactly the threshold: $1.00 - $0.723456 left for the organization.
    with pytest.raises(SpendCapReached):
        _check(org, key, estimate="0.276545")
    _check(org, key, estimate="0.276544")


def test_an_organization_without_caps_costs_the_hot_path_nothing(backend, buyer):
    org = buyer["org"]
    _check(org)
    with CaptureQueriesContext(connection) as steady:
        for _ in range(10):
            _check(org, estimate="1000000")
    assert len(steady.captured_queries) == 0


def test_only_owners_and_admins_set_caps_and_only_for_their_own_keys(buyer, make_org, make_user):
    org, owner, member = buyer["org"], buyer["owner"], buyer["member"]
    with pytest.raises(Forbidden):
        spend_cap_set(organization=org, user=member, monthly_limit_cents=100)
    other_owner = make_user()
    other_org = make_org(owner=other_owner)
    foreign_key = api_key_make(organization=other_org, user=other_owner)
    with pytest.raises(ApplicationError) as foreign:
        spend_cap_set(organization=org, user=owner, monthly_limit_cents=100, api_key=foreign_key)
    assert foreign.value.fields == {"api_key": ["Unknown key."]}
    for bad in (0, -5, 10**12):
        with pytest.raises(ApplicationError) as invalid:
            spend_cap_set(organization=org, user=owner, monthly_limit_cents=bad)
        assert "monthly_limit_cents" in invalid.value.fields
    with pytest.raises(Forbidden):
        spend_cap_remove(organization=org, user=member)
    assert not SpendCap.objects.exists()


def test_one_notice_email_at_80_percent_per_month(celery_worker, make_user, make_org, settings):
    from tests.catalog.factories import PublishedListingFactory

    owner, admin, member = make_user(), make_user(), make_user()
    org = make_org(owner=owner, name="Fabrikam")
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    sub = subscription_make(organization=org, plan=paid_plan_make(listing=PublishedListingFactory()))
    usage_make(subscription=sub, cost="0.70")
    mail.outbox.clear()
    cap = spend_cap_set(organization=org, user=owner, monthly_limit_cents=100)

    _check(org)
    _add(org, "0.09")  # 79%
    _add(org, "0.01")  # 80%: crosses the threshold
    wait_for(lambda: len(mail.outbox) == 2, message="the notice reaches the owner and the admin")
    assert sorted(m.to[0] for m in mail.outbox) == sorted([owner.email, admin.email])
    notice = mail.outbox[0]
    assert notice.subject == "Fabrikam has used 80% of its monthly spend cap"
    assert "spent $0.80 this month: 80% of its monthly spend cap of $1.00" in notice.body
    assert f"/billing/?organization={org.slug}#spend-caps" in notice.body
    cap.refresh_from_db()
    assert cap.notice_sent_for == spend_caps.month_start()

    _add(org, "0.15")  # 95%: no second notice this month
    assert spend_caps.spend_cap_notice_send(spend_cap_id=cap.pk, month=spend_caps.month_start()) == 0
    spend_caps.spend_caps_cache_forget()
    _add(org, "0.04")
    assert len(mail.outbox) == 2
    assert AuditLogEntry.objects.filter(action=AuditAction.SPEND_CAP_NOTICE_SENT, organization=org).count() == 1

    # A changed cap gets its own notice when spend is already past its threshold.
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=120)
    wait_for(lambda: len(mail.outbox) == 4, message="the notice for the new cap")
    assert mail.outbox[-1].subject == "Fabrikam has used 82% of its monthly spend cap"


def test_a_counter_reseeded_past_the_threshold_sends_the_notice(celery_worker, make_user, make_org):
    from tests.catalog.factories import PublishedListingFactory

    owner = make_user()
    org = make_org(owner=owner, name="Northwind")
    sub = subscription_make(organization=org, plan=paid_plan_make(listing=PublishedListingFactory()))
    mail.outbox.clear()
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=100)
    _check(org)
    usage_make(subscription=sub, cost="0.85")  # spend the counter never saw (Redis lost it)
    spend_keys_clear()
    _check(org)  # reseeds from the ledger at 85%
    wait_for(lambda: len(mail.outbox) == 1, message="the notice after the reseed")
    assert mail.outbox[0].to == [owner.email]
    spend_keys_clear()
    _check(org)
    _add(org, "0.01")
    assert spend_caps.spend_cap_notice_send(spend_cap_id=SpendCap.objects.get().pk, month=spend_caps.month_start()) == 0
    assert len(mail.outbox) == 1


def test_the_notice_is_not_sent_below_the_threshold_or_for_a_past_month(buyer):
    org, owner = buyer["org"], buyer["owner"]
    usage_make(subscription=buyer["subscription"], cost="0.50")
    mail.outbox.clear()
    cap = spend_cap_set(organization=org, user=owner, monthly_limit_cents=100)
    month = spend_caps.month_start()
    assert spend_caps.spend_cap_notice_send(spend_cap_id=cap.pk, month=month) == 0
    usage_make(subscription=buyer["subscription"], cost="0.40", api_key=None)
    spend_keys_clear()  # the counter reseeds from the ledger: $0.90
    past = (datetime.combine(month, datetime.min.time()) - timedelta(days=1)).date().replace(day=1)
    assert spend_caps.spend_cap_notice_send(spend_cap_id=cap.pk, month=past) == 0
    assert spend_caps.spend_cap_notice_send(spend_cap_id=cap.pk, month=month) == 2
    assert spend_caps.spend_cap_notice_send(spend_cap_id=cap.pk, month=month) == 0
    assert len(mail.outbox) == 2


# --- through /v2: every response states its cost; 402 at the cap ------------------------------------------


@pytest.fixture
def v2_buyer(db, s3):
    from tests.inference.api_support import buyer_create, caches_clear, metering_keys_clear, publish_model
    from tests.inference.onnx_factories import onnx_identity_bytes

    metering_keys_clear()
    caches_clear()
    # A model of its own (not the /v2 tests' classifier): its artifact in the shared disk cache would make their
    # "not ready before the first call" check see it as ready.
    model = onnx_identity_bytes("FP32", (-1, 4), input_name="input", output_name="output")
    version = publish_model(s3=s3, onnx_bytes=model, slug="iris-paid")
    yield buyer_create(listing=version.listing, subscribe=False)
    metering_keys_clear()
    caches_clear()
    from inference.host import model_host_reset

    model_host_reset()  # later tests expect a host that has not loaded this model yet


def _v2_call(client, buyer, *, rows: int = 2, headers: dict | None = None):
    import json

    data = [[5.1, 3.5, 1.4, 0.2]] * rows
    body = {"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": data}]}
    return client.post(
        "/v2/models/iris-paid/infer",
        data=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Authorization": f"Bearer {buyer.raw_key}", **(headers or {})},
    )


def _ledger_costs(organization) -> list[tuple[int, Decimal, str]]:
    from inference.models import UsageRecord
    from inference.services import usage_flush

    usage_flush()
    return list(
        UsageRecord.objects.filter(organization=organization)
        .order_by("created_at")
        .values_list("units", "cost", "currency")
    )


@pytest.mark.parametrize("redis_backend", [True, False], ids=["redis", "local"])
def test_every_v2_response_states_its_exact_cost_across_the_included_units(client, v2_buyer, redis_backend, settings):
    if not redis_backend:
        settings.INFERENCE_REDIS_URL = ""
    from catalog.models import Listing

    iris = Listing.objects.get(slug="iris-paid")
    # $49 a month with 3 units included, then $10.00 per 1,000 units (one cent a unit).
    plan = paid_plan_make(
        listing=iris, kind="flat", monthly_price_cents=4900, included_units=3, price_per_1000_cents=1000
    )
    subscription_make(organization=v2_buyer.organization, plan=plan)
    costs = []
    for _ in range(3):
        response = _v2_call(client, v2_buyer)
        assert response.status_code == 200, response.content
        usage = response.json()["parameters"]["usage"]
        assert usage["currency"] == "usd"
        assert response["X-Usage-Cost"] == usage["cost"]
        assert response["X-Usage-Currency"] == "usd"
        costs.append(usage["cost"])
    # 2 units inside the 3 included; 1 of the next 2 beyond them; then both.
    assert costs == ["0.000000", "0.010000", "0.020000"]
    assert _ledger_costs(v2_buyer.organization) == [
        (2, Decimal("0"), "usd"),
        (2, Decimal("0.01"), "usd"),
        (2, Decimal("0.02"), "usd"),
    ]


def test_v2_answers_402_at_the_cap_until_it_is_raised(client, v2_buyer):
    from catalog.models import Listing
    from inference.models import InferenceError

    iris = Listing.objects.get(slug="iris-paid")
    plan = paid_plan_make(listing=iris, kind="metered", price_per_1000_cents=1000)  # one cent a unit
    subscription_make(organization=v2_buyer.organization, plan=plan)
    owner, org = v2_buyer.user, v2_buyer.organization
    spend_cap_set(organization=org, user=owner, monthly_limit_cents=5)

    assert _v2_call(client, v2_buyer).json()["parameters"]["usage"]["cost"] == "0.020000"
    assert _v2_call(client, v2_buyer).status_code == 200
    over = _v2_call(client, v2_buyer)  # $0.04 spent; $0.02 more would pass $0.05
    assert over.status_code == 402, over.content
    body = over.json()
    assert body["code"] == "spend_cap_reached"
    assert body["error"].startswith(
        "This call ($0.02) would go over your organization's monthly spend cap of $0.05 ($0.04 spent this month); "
        "an admin can raise it at http"
    )
    assert body["fields"]["spend_cap_url"][0].endswith(f"/billing/?organization={org.slug}#spend-caps")
    assert _v2_call(client, v2_buyer, rows=1).status_code == 200  # one cent still fits: exactly $0.05

    reached = _v2_call(client, v2_buyer, rows=1)
    assert reached.status_code == 402
    assert reached.json()["error"].startswith("Your organization's monthly spend cap of $0.05 is reached;")

    spend_cap_set(organization=org, user=owner, monthly_limit_cents=100)
    spend_caps.spend_caps_cache_forget()
    assert _v2_call(client, v2_buyer).status_code == 200
    assert _ledger_costs(org) == [(2, Decimal("0.02"), "usd")] * 2 + [
        (1, Decimal("0.01"), "usd"),
        (2, Decimal("0.02"), "usd"),
    ]
    assert (
        list(InferenceError.objects.filter(organization=org).values_list("status", "code"))
        == [(402, "spend_cap_reached")] * 2
    )


def test_an_idempotent_replay_states_the_same_cost(client, v2_buyer):
    from catalog.models import Listing

    iris = Listing.objects.get(slug="iris-paid")
    subscription_make(organization=v2_buyer.organization, plan=paid_plan_make(listing=iris, price_per_1000_cents=250))
    first = _v2_call(client, v2_buyer, rows=3, headers={"Idempotency-Key": "abc"})
    again = _v2_call(client, v2_buyer, rows=3, headers={"Idempotency-Key": "abc"})
    assert first["X-Usage-Cost"] == again["X-Usage-Cost"] == "0.007500"
    assert again["Idempotent-Replayed"] == "true"
    assert again["X-Usage-Currency"] == "usd"
    assert len(_ledger_costs(v2_buyer.organization)) == 1


def test_flat_plan_units_start_from_the_ledger_and_a_refused_call_gives_its_units_back(client, v2_buyer):
    from catalog.models import Listing

    iris = Listing.objects.get(slug="iris-paid")
    plan = paid_plan_make(
        listing=iris, kind="flat", monthly_price_cents=900, included_units=5, price_per_1000_cents=1000
    )
    subscription = subscription_make(organization=v2_buyer.organization, plan=plan)
    usage_make(subscription=subscription, units=4)  # 4 of the 5 included units used before the counter exists
    spend_cap_set(organization=v2_buyer.organization, user=v2_buyer.user, monthly_limit_cents=1)

    refused = _v2_call(client, v2_buyer, rows=3)  # 1 included + 2 at a cent: $0.02 > $0.01
    assert refused.status_code == 402
    free = _v2_call(client, v2_buyer, rows=1)  # the refused call's units were given back: the last included unit
    assert free["X-Usage-Cost"] == "0.000000"
    assert _v2_call(client, v2_buyer, rows=2).status_code == 402
    assert _v2_call(client, v2_buyer, rows=1)["X-Usage-Cost"] == "0.010000"
    assert _v2_call(client, v2_buyer, rows=1).status_code == 402
