"""The demo seeder's plans, subscriptions and documented API key (the part after the publishing pipeline)."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey
from accounts.selectors import api_key_authenticate, api_key_cache_forget
from billing.models import LicenseAcceptance, Plan, Subscription
from catalog import demo
from tests.catalog.factories import PublishedListingFactory

pytestmark = pytest.mark.django_db

DEMO_KEY = "smk_demo00000000_DemoSecretForMakeRunOnly0000000000"


def test_demo_plans_subscriptions_and_key_are_idempotent(make_user, make_org):
    publisher, buyer = make_user(email="publisher@demo.local"), make_user(email="buyer@demo.local")
    northwind = make_org(owner=publisher, name="Northwind Labs")
    contoso = make_org(owner=buyer, name="Contoso Analytics")
    for spec in demo.SPECIALISTS:
        PublishedListingFactory(slug=spec.slug, organization=northwind, license=spec.license)
    api_key_cache_forget()

    for _ in range(2):
        demo._plans_and_subscriptions(publisher=publisher, buyer=buyer, buyer_org=contoso, log=lambda _m: None)
        demo._demo_api_key(buyer=buyer, buyer_org=contoso, raw_key=DEMO_KEY, log=lambda _m: None)

    paid = sum(len(plans) for plans in demo.DEMO_PAID_PLANS.values())
    assert Plan.objects.count() == len(demo.SPECIALISTS) + paid
    assert Plan.objects.filter(kind="free").count() == len(demo.SPECIALISTS)
    assert set(Plan.objects.filter(kind="free").values_list("name", "monthly_quota_units")) == {("Free", 10_000)}
    assert set(Plan.objects.exclude(kind="free").values_list("listing__slug", "name", "kind")) == {
        (slug, name, kind) for slug, plans in demo.DEMO_PAID_PLANS.items() for name, kind, *_ in plans
    }
    subscribed = set(Subscription.objects.filter(organization=contoso).values_list("listing__slug", flat=True))
    paid_slug, paid_plan = demo.DEMO_PAID_SUBSCRIPTION
    assert subscribed == {*demo.DEMO_SUBSCRIBED_SLUGS, paid_slug}
    assert Subscription.objects.get(organization=contoso, listing__slug=paid_slug).plan.name == paid_plan
    assert LicenseAcceptance.objects.filter(user=buyer).count() == len(demo.DEMO_SUBSCRIBED_SLUGS) + 1
    api_key = api_key_authenticate(raw_key=DEMO_KEY)
    assert api_key is not None and api_key.organization_id == contoso.pk
    assert api_key.scopes == ["inference", "management"] and ApiKey.objects.count() == 1
