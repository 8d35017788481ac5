"""Checkout through the one interface: free plans at once, the local backend's test card page, and Stripe
Checkout Sessions (against the fake Stripe) whose subscriptions only the webhook provisions."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.utils import timezone

from billing import checkout, selectors, services
from billing.models import (
    BillingCustomer,
    CheckoutSession,
    Invoice,
    LicenseAcceptance,
    Plan,
    Subscription,
    SubscriptionStatus,
)
from marketplace.errors import ApplicationError, Conflict, Forbidden
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.checkout_support import checkout_start, events_process, webhooks_deliver

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode()


def _local_pay(client, session, card: str, **extra):
    return client.post(session.url, {"card_number": card, "expiry": "12/34", "cvc": "123"}, **extra)


# --- local backend -------------------------------------------------------------------------------------


def test_prices_show_on_the_listing_page_before_anyone_subscribes(
    client, plan, pro_plan, metered_plan, listing, publisher
):
    user, _org = publisher
    services.plan_create(
        listing=listing, user=user, name="Trial", kind="flat", monthly_price_cents=1900, monthly_quota_units=1000,
        trial_days=14,
    )  # fmt: skip
    body = text(client.get("/s/sepsis/"))
    assert "$49 / month · 100,000 units included · then $0.50 per 1,000" in body
    assert "Metered · $2.00 per 1,000 units" in body
    assert "$19 / month · 1,000 units included · no calls beyond them · 14-day free trial" in body
    assert "Free · 10,000 units/month" in body


def test_local_checkout_declines_then_pays_with_the_test_card(client, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    client.force_login(owner)
    terms_sha = re.search(r'name="terms_sha256" value="([0-9a-f]{64})"', text(client.get("/s/sepsis/"))).group(1)
    response = client.post(
        "/billing/listings/sepsis/subscribe/",
        {"plan": pro_plan.pk, "accept_license": "on", "terms_sha256": terms_sha},
        REMOTE_ADDR="198.51.100.23",
    )
    session = CheckoutSession.objects.get()
    assert (session.backend, session.status, session.plan, session.terms_sha256) == (
        "local",
        "open",
        pro_plan,
        terms_sha,
    )
    assert response.status_code == 302 and response["Location"] == session.url
    assert session.url.startswith(f"/billing/checkout/{session.session_id}/?")
    assert not Subscription.objects.exists()

    page = text(client.get(session.url))
    assert "$49 / month · 100,000 units included · then $0.50 per 1,000" in page and "$49.00" in page
    assert "4242 4242 4242 4242" in page and "Pay and subscribe" in page

    declined = _local_pay(client, session, "4000 0000 0000 0002")
    assert declined.status_code == 402
    assert "Your card was declined" in text(declined)
    unknown = _local_pay(client, session, "4111 1111 1111 1111")
    assert unknown.status_code == 400 and "test cards only" in text(unknown)
    assert not Subscription.objects.exists() and not LicenseAcceptance.objects.exists()

    paid = _local_pay(client, session, "4242 4242 4242 4242")
    assert paid.status_code == 302
    returned = parse_qs(urlsplit(session.url).query)["success_url"][0]
    assert (
        paid["Location"] == returned == f"http://testserver/billing/checkout/success/?session_id={session.session_id}"
    )
    subscription = Subscription.objects.get()
    assert (subscription.organization, subscription.plan, subscription.status) == (org, pro_plan, "active")
    assert subscription.stripe_subscription_id is None
    assert subscription.current_period_end == services.months_add(subscription.current_period_start, 1)
    acceptance = LicenseAcceptance.objects.get()
    assert (acceptance.user, acceptance.organization, acceptance.ip_address) == (owner, org, "198.51.100.23")
    assert acceptance.terms_sha256 == terms_sha and acceptance.subscription == subscription
    session.refresh_from_db()
    assert (session.status, session.subscription) == ("complete", subscription)
    # The first period's fee is invoiced (and paid by the test card) by the ledger.
    invoice = Invoice.objects.get(subscription=subscription)
    assert (invoice.backend, invoice.total_cents, invoice.status) == ("local", 4900, "paid")
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=pro_plan.listing_id) == subscription

    # Paying twice (a double submit) changes nothing; the success page shows the subscription.
    assert _local_pay(client, session, "4242424242424242").status_code == 302
    assert Subscription.objects.count() == 1 and Invoice.objects.count() == 1
    success = text(client.get(paid["Location"]))
    assert "Payment confirmed" in success


def test_a_trial_starts_trialing_without_a_charge(client, listing, publisher, buyer_team):
    owner, _admin, _member, org = buyer_team
    trial = services.plan_create(
        listing=listing, user=publisher[0], name="Team", kind="flat", monthly_price_cents=2900,
        monthly_quota_units=50_000, price_per_1000_units_cents=60, trial_days=14,
    )  # fmt: skip
    session = checkout_start(org=org, user=owner, plan=trial)
    before = timezone.now()
    checkout.checkout_local_pay(session_id=session.session_id, user=owner, card_number="4242 4242 4242 4242")
    subscription = Subscription.objects.get()
    assert subscription.status == SubscriptionStatus.TRIALING
    assert subscription.trial_end == subscription.current_period_end
    assert before + timedelta(days=14) <= subscription.current_period_end <= timezone.now() + timedelta(days=14)
    assert not Invoice.objects.filter(total_cents__gt=0).exists()
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=listing.pk) == subscription


def test_free_plans_skip_checkout(plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    session = checkout_start(org=org, user=owner, plan=plan)
    assert (session.backend, session.status) == ("free", "complete")
    assert session.url == f"http://testserver/billing/checkout/success/?session_id={session.session_id}"
    subscription = Subscription.objects.get()
    assert session.subscription == subscription and subscription.plan == plan
    assert LicenseAcceptance.objects.get().terms_sha256 == session.terms_sha256


def test_checkout_rules(pro_plan, plan, buyer_team, make_org):
    owner, _admin, member, org = buyer_team
    with pytest.raises(ApplicationError) as refused:
        checkout_start(org=org, user=owner, plan=pro_plan, accept_license=False)
    assert refused.value.code == "license_not_accepted"
    with pytest.raises(Forbidden):
        checkout_start(org=org, user=member, plan=pro_plan)
    with pytest.raises(Conflict) as changed:
        checkout_start(org=org, user=owner, plan=pro_plan, terms_sha256="0" * 64)
    assert changed.value.code == "terms_changed"
    assert not CheckoutSession.objects.exists()

    # A second checkout replaces the first (one payment, one subscription); a paid subscriber is refused.
    first = checkout_start(org=org, user=owner, plan=pro_plan)
    second = checkout_start(org=org, user=owner, plan=pro_plan)
    first.refresh_from_db()
    assert (first.status, second.status) == ("expired", "open")
    with pytest.raises(Conflict):
        checkout.checkout_local_pay(session_id=first.session_id, user=owner, card_number="4242424242424242")
    checkout.checkout_local_pay(session_id=second.session_id, user=owner, card_number="4242424242424242")
    with pytest.raises(Conflict) as again:
        checkout_start(org=org, user=owner, plan=pro_plan)
    assert again.value.code == "already_subscribed"
    with pytest.raises(Conflict):
        checkout_start(org=org, user=owner, plan=plan)

    # From a free plan to a paid one: the paid subscription replaces the free one when paid.
    other = make_org(owner=owner, name="Upgrader")
    free = checkout_start(org=other, user=owner, plan=plan).subscription
    paid = checkout_start(org=other, user=owner, plan=pro_plan)
    checkout.checkout_local_pay(session_id=paid.session_id, user=owner, card_number="4242424242424242")
    free.refresh_from_db()
    assert free.status == SubscriptionStatus.CANCELED and free.current_period_end <= timezone.now()
    live = Subscription.objects.get(organization=other, status=SubscriptionStatus.ACTIVE)
    assert live.plan == pro_plan
    assert selectors.subscription_entitled_get(organization_id=other.pk, listing_id=plan.listing_id) == live


def test_an_abandoned_local_checkout_leaves_nothing(client, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    session = checkout_start(org=org, user=owner, plan=pro_plan)
    client.force_login(owner)
    response = client.get(f"/billing/checkout/cancel/?checkout={session.pk}")
    assert response.status_code == 302 and response["Location"] == "/s/sepsis/#plans"
    session.refresh_from_db()
    assert session.status == "expired"
    assert _local_pay(client, session, "4242 4242 4242 4242").status_code == 409
    assert "expired" in text(client.get(session.url))

    stale = checkout_start(org=org, user=owner, plan=pro_plan)
    CheckoutSession.objects.filter(pk=stale.pk).update(created_at=timezone.now() - timedelta(hours=25))
    assert services.subscriptions_upkeep()["checkouts_expired"] == 1
    stale.refresh_from_db()
    assert stale.status == "expired"
    assert not Subscription.objects.exists()
    assert AuditLogEntry.objects.filter(action=AuditAction.CHECKOUT_EXPIRED).count() == 2


def test_checkout_api_returns_the_url_and_json_errors(pro_plan, plan, buyer_team):
    from rest_framework.test import APIClient

    owner, _admin, member, org = buyer_team
    api = APIClient()
    api.force_authenticate(owner)
    body = {"plan": pro_plan.pk, "accept_license": True, "organization": org.slug}
    response = api.post("/api/v1/checkout", body, format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    session = CheckoutSession.objects.get(pk=data["id"])
    assert data["url"] == f"http://testserver{session.url}" and data["status"] == "open"
    assert data["backend"] == "local" and data["subscription"] is None
    assert api.get(f"/api/v1/checkout/{session.session_id}").json()["status"] == "open"

    free = api.post("/api/v1/checkout", {**body, "plan": plan.pk}, format="json")
    assert free.status_code == 201 and free.json()["status"] == "complete" and free.json()["subscription"]
    again = api.post("/api/v1/checkout", {**body, "plan": plan.pk}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_subscribed"

    refused = api.post("/api/v1/checkout", {**body, "accept_license": False}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "license_not_accepted"
    missing = api.post("/api/v1/checkout", {**body, "plan": 999_999}, format="json")
    assert missing.status_code == 400 and "plan" in missing.json()["error"]["fields"]
    api.force_authenticate(member)
    assert api.post("/api/v1/checkout", body, format="json").status_code == 403
    assert api.get(f"/api/v1/checkout/{session.session_id}").status_code == 200  # members may watch it


# --- Stripe backend ------------------------------------------------------------------------------------


def test_a_stripe_checkout_creates_customer_prices_and_a_subscription_mode_session(fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    session = checkout_start(org=org, user=owner, plan=pro_plan)
    assert session.backend == "stripe" and session.session_id.startswith("cs_test_")
    assert session.url == f"{fake_stripe.url}/_fake/checkout/{session.session_id}"

    stripe_session = fake_stripe.object(session.session_id)
    assert (stripe_session["mode"], stripe_session["client_reference_id"]) == ("subscription", str(session.pk))
    assert stripe_session["metadata"]["checkout_session_id"] == str(session.pk)
    assert (
        stripe_session["success_url"] == "http://testserver/billing/checkout/success/?session_id={CHECKOUT_SESSION_ID}"
    )
    assert stripe_session["cancel_url"] == f"http://testserver/billing/checkout/cancel/?checkout={session.pk}"
    pro_plan.refresh_from_db()
    from marketplace.integrations import stripe as payments

    items = payments.checkout_session_retrieve(session=session.session_id, expand_line_items=True)["line_items"]["data"]
    assert [(item["price"]["id"], item["quantity"]) for item in items] == [
        (pro_plan.stripe_price_id, 1),
        (pro_plan.stripe_metered_price_id, None),
    ]
    flat, metered = items[0]["price"], items[1]["price"]
    assert (flat["unit_amount"], flat["currency"], flat["recurring"]["usage_type"]) == (4900, "usd", "licensed")
    meter = fake_stripe.object(metered["recurring"]["meter"])
    assert meter["event_name"] == f"{settings.STRIPE_METER_EVENT_NAME}_{pro_plan.listing_id}"
    assert metered["billing_scheme"] == "tiered"  # the first 100,000 units of each period are included

    customer = BillingCustomer.objects.get(organization=org)
    assert customer.stripe_customer_id == stripe_session["customer"]
    # A second checkout reuses the customer and the prices, and expires the first session.
    again = checkout_start(org=org, user=owner, plan=pro_plan)
    assert fake_stripe.object(again.session_id)["customer"] == customer.stripe_customer_id
    assert fake_stripe.object(session.session_id)["status"] == "expired"
    posts = [r["path"] for r in fake_stripe.requests() if r["method"] == "POST"]
    assert (
        posts.count("/v1/customers") == 1 and posts.count("/v1/prices") == 2 and posts.count("/v1/billing/meters") == 1
    )
    assert Plan.objects.get(pk=pro_plan.pk).stripe_product_id


def test_the_success_page_waits_for_the_webhook(client, fake_stripe, metered_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    session = checkout_start(org=org, user=owner, plan=metered_plan)
    fake_stripe.complete_checkout(session.session_id)  # the buyer paid at Stripe; no webhook processed yet
    client.force_login(owner)
    page = text(client.get(f"/billing/checkout/success/?session_id={session.session_id}"))
    assert "Confirming payment…" in page and f"/billing/checkout/{session.session_id}/status/" in page
    assert client.get(f"/billing/checkout/{session.session_id}/status/").json()["status"] == "open"
    assert not Subscription.objects.exists()

    webhooks_deliver(client, fake_stripe)
    events_process()
    subscription = Subscription.objects.get()
    status = client.get(f"/billing/checkout/{session.session_id}/status/").json()
    assert status == {"status": "complete", "subscription": subscription.pk, "subscription_status": "active"}
    assert "Payment confirmed" in text(client.get(f"/billing/checkout/success/?session_id={session.session_id}"))
