"""Rows for billing tests: a publisher with a published listing and a free plan, and a buyer organization
with an owner, an admin and a plain member."""

from __future__ import annotations

import pytest

from accounts.models import Membership, Role
from billing import selectors
from billing.services import plan_create
from tests.catalog.factories import PublishedListingFactory


@pytest.fixture(autouse=True)
def _fresh_entitlement_cache():
    selectors.subscription_entitled_cache_forget()
    yield
    selectors.subscription_entitled_cache_forget()


@pytest.fixture
def listing(publisher):
    _user, org = publisher
    return PublishedListingFactory(slug="sepsis", name="Sepsis Alert", organization=org, license="apache-2.0")


@pytest.fixture
def plan(listing, publisher):
    user, _org = publisher
    return plan_create(listing=listing, user=user, name="Free", monthly_quota_units=10_000)


@pytest.fixture
def buyer_team(make_user, make_org):
    """``(owner, admin, member, org)`` of the buyer organization "Contoso Analytics"."""
    owner = make_user(email="bea@contoso.example")
    admin = make_user(email="ad@contoso.example")
    member = make_user(email="mo@contoso.example")
    org = make_org(owner=owner, name="Contoso Analytics")
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    return owner, admin, member, org


# --- paid plans (helper "checkout") --------------------------------------------------------------


@pytest.fixture
def pro_plan(listing, publisher):
    """Flat: $49 a month with 100,000 units included, then $0.50 per 1,000."""
    user, _org = publisher
    return plan_create(
        listing=listing, user=user, name="Pro", kind="flat",
        monthly_price_cents=4900, monthly_quota_units=100_000, price_per_1000_units_cents=50,
    )  # fmt: skip


@pytest.fixture
def max_plan(listing, publisher):
    """Flat: $99 a month with 500,000 units included, then $0.40 per 1,000 (an upgrade from Pro)."""
    user, _org = publisher
    return plan_create(
        listing=listing, user=user, name="Max", kind="flat",
        monthly_price_cents=9900, monthly_quota_units=500_000, price_per_1000_units_cents=40,
    )  # fmt: skip


@pytest.fixture
def metered_plan(listing, publisher):
    """Metered: $2.00 per 1,000 units."""
    user, _org = publisher
    return plan_create(listing=listing, user=user, name="Pay as you go", kind="metered", price_per_1000_units_cents=200)
