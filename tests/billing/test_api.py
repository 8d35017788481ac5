"""The plans and subscriptions API: shapes, rules, JSON errors with fields, and management keys."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts import services as account_services
from billing import selectors
from billing.models import LicenseAcceptance, Plan, Subscription
from tests.catalog.factories import PublishedListingFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    return APIClient()


def error_of(response) -> dict:
    return response.json()["error"]


def test_plans_and_license_terms_are_public(api, plan, listing):
    response = api.get("/api/v1/listings/sepsis/plans")
    assert response.status_code == 200
    body = response.json()
    assert body["listing"] == "sepsis"
    assert body["plans"] == [
        {
            "id": plan.pk,
            "name": "Free",
            "kind": "free",
            "monthly_quota_units": 10_000,
            "currency": "usd",
            "monthly_price_cents": 0,
            "price_per_1000_units_cents": 0,
            "trial_days": 0,
            "version": 1,
            "is_active": True,
            "price": "Free",
            "quota": "10,000 units / month",
            "summary": "Free · 10,000 units/month",
        }
    ]
    assert body["license"] == selectors.license_terms_for_listing(listing=listing)
    assert api.get("/api/v1/listings/nope/plans").status_code == 404


def test_publishers_create_free_and_paid_plans(api, listing, publisher, buyer_team):
    api.force_authenticate(publisher[0])
    response = api.post("/api/v1/listings/sepsis/plans", {"name": "Pro", "kind": "flat"}, format="json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid" and "monthly_price_cents" in error_of(response)["fields"]
    response = api.post(
        "/api/v1/listings/sepsis/plans",
        {"name": "Pro", "kind": "flat", "monthly_price_cents": 4900, "monthly_quota_units": 100_000,
         "price_per_1000_units_cents": 50, "trial_days": 14},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201
    assert response.json()["summary"] == (
        "$49 / month · 100,000 units included · then $0.50 per 1,000 · 14-day free trial"
    )

    response = api.post("/api/v1/listings/sepsis/plans", {"name": "Free", "monthly_quota_units": 100}, format="json")
    assert response.status_code == 201 and response.json()["quota"] == "100 units / month"
    plan_id = response.json()["id"]

    api.force_authenticate(buyer_team[0])
    assert api.post("/api/v1/listings/sepsis/plans", {"name": "Mine"}, format="json").status_code == 404
    assert api.post(f"/api/v1/plans/{plan_id}/deactivate").status_code == 404

    api.force_authenticate(publisher[0])
    response = api.post(f"/api/v1/plans/{plan_id}/deactivate")
    assert response.status_code == 200 and response.json()["is_active"] is False


def test_subscribe_needs_accept_license_true(api, plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    api.force_authenticate(owner)
    base = {"listing": "sepsis", "plan": plan.pk, "organization": org.slug}

    response = api.post("/api/v1/subscriptions", base, format="json")
    assert response.status_code == 400 and "accept_license" in error_of(response)["fields"]
    response = api.post("/api/v1/subscriptions", {**base, "accept_license": False}, format="json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "license_not_accepted" and "accept_license" in error_of(response)["fields"]
    assert not Subscription.objects.exists()


def test_subscribe_list_and_cancel(api, plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    api.force_authenticate(owner)
    payload = {"listing": "sepsis", "plan": plan.pk, "accept_license": True, "organization": org.slug}

    response = api.post("/api/v1/subscriptions", payload, format="json", REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 201, response.json()
    created = response.json()
    assert (created["organization"], created["listing"], created["status"]) == (org.slug, "sepsis", "active")
    assert created["plan"]["id"] == plan.pk and created["pinned_version"] is None
    [acceptance] = created["license_acceptances"]
    terms = selectors.license_terms_for_listing(listing=listing)
    assert acceptance["terms_sha256"] == terms["sha256"] and acceptance["terms_version"] == terms["version"]
    assert (acceptance["accepted_by"], acceptance["ip_address"]) == (owner.email, "203.0.113.5")
    assert LicenseAcceptance.objects.get().terms_text == terms["text"]

    response = api.post("/api/v1/subscriptions", payload, format="json")
    assert response.status_code == 409 and error_of(response)["code"] == "already_subscribed"

    listed = api.get(f"/api/v1/subscriptions?organization={org.slug}").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == created["id"]

    response = api.post(f"/api/v1/subscriptions/{created['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "canceled"


def test_subscription_errors(api, plan, publisher, buyer_team, make_user):
    owner, _admin, member, org = buyer_team
    other = PublishedListingFactory(slug="other", organization=publisher[1])
    api.force_authenticate(owner)

    response = api.post(
        "/api/v1/subscriptions",
        {"listing": other.slug, "plan": plan.pk, "accept_license": True, "organization": org.slug},
        format="json",
    )
    assert response.status_code == 400 and "plan" in error_of(response)["fields"]
    response = api.post(
        "/api/v1/subscriptions",
        {
            "listing": "sepsis",
            "plan": plan.pk,
            "accept_license": True,
            "pinned_version": "9.9.9",
            "organization": org.slug,
        },
        format="json",
    )
    assert response.status_code == 400 and "pinned_version" in error_of(response)["fields"]
    # force_authenticate skips the session, so there is no current organization to fall back on.
    response = api.post("/api/v1/subscriptions", {"listing": "sepsis", "plan": plan.pk, "accept_license": True})
    assert response.status_code == 400 and "organization" in error_of(response)["fields"]

    api.force_authenticate(member)
    response = api.post(
        "/api/v1/subscriptions",
        {"listing": "sepsis", "plan": plan.pk, "accept_license": True, "organization": org.slug},
        format="json",
    )
    assert response.status_code == 403 and error_of(response)["code"] == "not_a_manager"

    api.force_authenticate(make_user())
    assert api.get(f"/api/v1/subscriptions?organization={org.slug}").status_code == 404


def test_session_users_act_for_the_organization_chosen_in_the_switcher(api, plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    api.force_login(owner)
    api.post("/accounts/organizations/switch/", {"organization": org.pk})
    response = api.post("/api/v1/subscriptions", {"listing": "sepsis", "plan": plan.pk, "accept_license": True})
    assert response.status_code == 201 and response.json()["organization"] == org.slug


def test_management_keys_subscribe_for_their_own_organization(api, plan, buyer_team, make_org):
    owner, _admin, _member, org = buyer_team
    other = make_org(owner=owner, name="Owner's other org")
    _key, raw_key = account_services.api_key_create(organization=org, user=owner, name="ci", scopes=["management"])
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")

    response = api.post(
        "/api/v1/subscriptions", {"listing": "sepsis", "plan": plan.pk, "accept_license": True}, format="json"
    )
    assert response.status_code == 201 and response.json()["organization"] == org.slug
    assert api.get("/api/v1/subscriptions").json()["count"] == 1
    assert api.get(f"/api/v1/subscriptions?organization={other.slug}").status_code == 404

    # A subscription of the creator's other organization is out of the key's reach.
    other_sub = Subscription.objects.create(
        organization=other,
        listing=plan.listing,
        plan=plan,
        current_period_start=Subscription.objects.get().current_period_start,
        current_period_end=Subscription.objects.get().current_period_end,
    )
    assert api.post(f"/api/v1/subscriptions/{other_sub.pk}/cancel").status_code == 404

    _key, inference_only = account_services.api_key_create(organization=org, user=owner, name="app")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {inference_only}")
    assert api.get("/api/v1/subscriptions").status_code == 403
    # Public reads do not need a key and are not refused for carrying one.
    assert api.get("/api/v1/listings/sepsis/plans").status_code == 200
    assert Plan.objects.count() == 1
