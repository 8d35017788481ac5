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
