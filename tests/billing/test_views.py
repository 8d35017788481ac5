"""Plans on the listing page, subscribing there with the license terms, the buyer's subscriptions page and
the publisher's plans section."""

from __future__ import annotations

import re

import pytest

from billing import services
from billing.licenses import TEMPLATES
from billing.models import LicenseAcceptance, Plan, Subscription, SubscriptionStatus
from tests.catalog.factories import VersionFactory

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode()


def _accept(plan, **extra):
    return {"plan": plan.pk, "accept_license": "on", **extra}


# --- the listing page --------------------------------------------------------------------------


def test_anonymous_visitors_see_plans_quota_and_price_before_subscribing(client, plan, listing, publisher):
    services.plan_create(listing=listing, user=publisher[0], name="Research", monthly_quota_units=None)
    retired = services.plan_create(listing=listing, user=publisher[0], name="Old plan")
    services.plan_deactivate(plan=retired, user=publisher[0])

    body = text(client.get("/s/sepsis/"))
    assert 'id="plans"' in body
    assert "<strong>Free</strong>" in body and "10,000 units/month" in body
    assert "<strong>Research</strong>" in body and "Free · unlimited units" in body
    assert '<span class="plan-price">Free · 10,000 units/month</span>' in body
    assert "Old plan" not in body
    assert "I accept the license terms" not in body  # no form for anonymous visitors


def test_listing_page_with_plans_costs_no_extra_query(client, plan, django_assert_num_queries):
    # listing (+organization, current version, active plans) + tags + versions
    with django_assert_num_queries(3):
        body = text(client.get("/s/sepsis/"))
    assert "10,000 units/month" in body


def test_a_manager_sees_the_full_terms_and_the_acceptance_checkbox(client, plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    client.force_login(owner)
    body = text(client.get("/s/sepsis/"))
    assert "I accept the license terms on behalf of Contoso Analytics" in body
    assert 'name="accept_license"' in body and "required" in body
    assert TEMPLATES["apache-2.0"].text[:80] in body
    assert f'value="{plan.pk}"' in body


def test_members_are_told_to_ask_a_manager(client, plan, buyer_team):
    _owner, _admin, member, _org = buyer_team
    client.force_login(member)
    body = text(client.get("/s/sepsis/"))
    assert "Only owners and admins of Contoso Analytics can subscribe it." in body
    assert 'name="accept_license"' not in body


def test_subscribing_without_accepting_changes_nothing(client, plan, buyer_team):
    owner, *_ = buyer_team
    client.force_login(owner)
    response = client.post("/billing/listings/sepsis/subscribe/", {"plan": plan.pk}, follow=True)
    assert "Accept the license terms to subscribe." in text(response)
    assert not Subscription.objects.exists()


def test_subscribe_then_see_usage_and_cancel_on_the_listing_page(client, plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    client.force_login(owner)
    terms_sha = re.search(r'name="terms_sha256" value="([0-9a-f]{64})"', text(client.get("/s/sepsis/"))).group(1)

    response = client.post(
        "/billing/listings/sepsis/subscribe/", _accept(plan, terms_sha256=terms_sha), REMOTE_ADDR="198.51.100.7"
    )
    assert response.status_code == 302 and response["Location"] == "/s/sepsis/#plans"
    subscription = Subscription.objects.get()
    assert (subscription.organization, subscription.plan, subscription.status) == (org, plan, "active")
    acceptance = LicenseAcceptance.objects.get()
    assert (acceptance.ip_address, acceptance.user, acceptance.terms_sha256) == ("198.51.100.7", owner, terms_sha)

    body = text(client.get("/s/sepsis/"))
    assert "is subscribed on <strong>Free</strong> (active) · usage this period 0 / 10,000 units" in body
    assert "Cancel subscription" in body and 'name="accept_license"' not in body

    response = client.post(f"/billing/subscriptions/{subscription.pk}/cancel/", {"next": "listing"})
    assert response["Location"] == "/s/sepsis/#plans"
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    assert 'name="accept_license"' in text(client.get("/s/sepsis/"))


def test_a_second_subscribe_is_refused_with_a_message(client, plan, buyer_team):
    owner, *_ = buyer_team
    client.force_login(owner)
    client.post("/billing/listings/sepsis/subscribe/", _accept(plan))
    response = client.post("/billing/listings/sepsis/subscribe/", _accept(plan), follow=True)
    assert "already subscribes" in text(response)
    assert Subscription.objects.count() == 1


def test_members_cannot_cancel(client, plan, buyer_team):
    owner, _admin, member, org = buyer_team
    subscription = services.subscription_create(organization=org, user=owner, plan=plan, accept_license=True)
    client.force_login(member)
    body = text(client.get("/s/sepsis/"))
    assert "is subscribed on" in body and "Cancel subscription" not in body
    client.post(f"/billing/subscriptions/{subscription.pk}/cancel/")
    subscription.refresh_from_db()
    assert subscription.status == "active"


def test_outsiders_cannot_cancel(client, plan, buyer_team, make_user):
    owner, _admin, _member, org = buyer_team
    subscription = services.subscription_create(organization=org, user=owner, plan=plan, accept_license=True)
    client.force_login(make_user())
    assert client.post(f"/billing/subscriptions/{subscription.pk}/cancel/").status_code == 404


def test_plan_of_another_listing_is_refused(client, plan, buyer_team, publisher):
    from tests.catalog.factories import PublishedListingFactory

    owner, *_ = buyer_team
    PublishedListingFactory(slug="other", organization=publisher[1])
    client.force_login(owner)
    response = client.post("/billing/listings/other/subscribe/", _accept(plan), follow=True)
    assert "Choose one of this listing" in text(response)
    assert not Subscription.objects.exists()


# --- the buyer's subscriptions page ------------------------------------------------------------


def test_subscriptions_page_lists_plan_period_and_license_acceptances(client, plan, listing, buyer_team):
    owner, _admin, member, org = buyer_team
    VersionFactory(listing=listing, version="0.9.0", status="deprecated")
    services.subscription_create(
        organization=org, user=owner, plan=plan, accept_license=True, ip_address="192.0.2.1", pinned_version="0.9.0"
    )
    acceptance = LicenseAcceptance.objects.get()
    client.force_login(member)
    body = text(client.get(f"/billing/?organization={org.slug}"))
    assert "Sepsis Alert" in body and "Free: Free · 10,000 units/month" in body
    assert "Pinned to 0.9.0" in body and "0 / 10,000 units" in body
    assert acceptance.terms_version in body and acceptance.terms_sha256[:12] in body and owner.email in body
    assert "from 192.0.2.1" in body
    assert "Cancel subscription" not in body  # members do not cancel


def test_subscriptions_page_of_another_organization_is_404(client, buyer_team, make_user, make_org):
    owner, *_ = buyer_team
    stranger_org = make_org(owner=make_user(), name="Stranger")
    client.force_login(owner)
    assert client.get(f"/billing/?organization={stranger_org.slug}").status_code == 404


def test_key_form_offers_the_subscribed_listings_and_the_curl_uses_the_sample(client, plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    version = listing.current_version
    version.sample_input = {"features": [[0.5] * 8]}
    version.save(update_fields=["sample_input"])
    services.subscription_create(organization=org, user=owner, plan=plan, accept_license=True)
    client.force_login(owner)
    page = text(client.get(f"/accounts/organizations/{org.slug}/keys/"))
    assert f'<option value="{listing.pk}">Sepsis Alert</option>' in page

    response = client.post(
        f"/accounts/organizations/{org.slug}/keys/",
        {"name": "sepsis only", "scopes": ["inference"], "listings": [str(listing.pk)]},
    )
    assert response.status_code == 201
    body = response.content.decode()
    assert "/v2/models/sepsis/infer" in body
    assert "&quot;shape&quot;:[1,8]" in body or '"shape":[1,8]' in body


# --- the publisher's plans ---------------------------------------------------------------------


def test_publishers_offer_and_retire_free_plans_on_their_listing_page(client, listing, publisher, buyer_team):
    user, _org = publisher
    client.force_login(user)
    page = text(client.get("/publish/listings/sepsis/"))
    assert "Offer a plan" in page and "No plans yet" in page

    response = client.post("/billing/listings/sepsis/plans/", {"name": "Free", "monthly_quota_units": "5000"})
    assert response["Location"] == "/publish/listings/sepsis/#plans"
    plan = Plan.objects.get()
    assert (plan.name, plan.kind, plan.monthly_quota_units) == ("Free", "free", 5000)
    owner, *_rest = buyer_team
    services.subscription_create(organization=buyer_team[3], user=owner, plan=plan, accept_license=True)
    page = text(client.get("/publish/listings/sepsis/"))
    assert "5,000 units / month" in page and "Offered" in page and "<td>1</td>" in page

    client.post(f"/billing/plans/{plan.pk}/deactivate/")
    plan.refresh_from_db()
    assert plan.is_active is False
    assert "Retired" in text(client.get("/publish/listings/sepsis/"))


def test_plan_form_errors_are_shown(client, listing, publisher):
    client.force_login(publisher[0])
    response = client.post("/billing/listings/sepsis/plans/", {"name": "", "monthly_quota_units": "0"}, follow=True)
    assert "Plan name" in text(response)
    assert not Plan.objects.exists()


def test_others_cannot_add_or_retire_plans(client, plan, buyer_team):
    owner, *_ = buyer_team
    client.force_login(owner)
    assert client.post("/billing/listings/sepsis/plans/", {"name": "Mine"}).status_code == 404
    assert client.post(f"/billing/plans/{plan.pk}/deactivate/").status_code == 404
    plan.refresh_from_db()
    assert plan.is_active and Plan.objects.count() == 1
