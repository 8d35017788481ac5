"""Plans, subscriptions, license acceptance and the entitlement check."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from billing import selectors, services
from billing.licenses import ADDITIONAL_TERMS_HEADING, TEMPLATES, license_terms_build
from billing.models import LicenseAcceptance, Plan, PlanKind, Subscription, SubscriptionStatus
from catalog.models import ListingStatus, VersionStatus
from marketplace.errors import ApplicationError, Conflict, Forbidden, NotFound
from moderation.models import AuditAction, AuditLogEntry
from tests.catalog.factories import PublishedListingFactory, VersionFactory

pytestmark = pytest.mark.django_db


def _subscribe(org, user, plan, **kwargs):
    kwargs.setdefault("accept_license", True)
    return services.subscription_create(organization=org, user=user, plan=plan, **kwargs)


# --- plans -------------------------------------------------------------------------------------


def test_publishers_create_free_plans_with_a_quota_or_unlimited(listing, publisher):
    user, org = publisher
    plan = services.plan_create(listing=listing, user=user, name=" Starter ", monthly_quota_units=10_000)
    assert (plan.name, plan.kind, plan.monthly_quota_units, plan.is_active) == ("Starter", "free", 10_000, True)
    unlimited = services.plan_create(listing=listing, user=user, name="Unlimited")
    assert unlimited.monthly_quota_units is None
    entry = AuditLogEntry.objects.filter(action=AuditAction.PLAN_CREATED).latest("id")
    assert (entry.actor, entry.listing, entry.organization, entry.data["name"]) == (user, listing, org, "Unlimited")


def test_paid_plans_need_their_prices(listing, publisher):
    user, _org = publisher
    for kwargs, field in [
        ({"kind": PlanKind.FLAT}, "monthly_price_cents"),
        ({"kind": PlanKind.FLAT, "monthly_price_cents": 4900, "price_per_1000_units_cents": 50}, "monthly_quota_units"),
        ({"kind": PlanKind.METERED}, "price_per_1000_units_cents"),
        ({"kind": PlanKind.METERED, "price_per_1000_units_cents": 200, "monthly_price_cents": 100}, "kind"),
        ({"kind": PlanKind.FREE, "monthly_price_cents": 100}, "kind"),
        ({"kind": PlanKind.FLAT, "monthly_price_cents": 4900, "currency": "xyz"}, "currency"),
        ({"kind": PlanKind.FLAT, "monthly_price_cents": 4900, "trial_days": 365}, "trial_days"),
    ]:
        with pytest.raises(ApplicationError) as exc:
            services.plan_create(listing=listing, user=user, name="Pro", **kwargs)
        assert (exc.value.status, exc.value.code) == (400, "invalid") and field in exc.value.fields, kwargs
    assert not Plan.objects.exists()


def test_plan_rules(listing, publisher, buyer_team):
    user, _org = publisher
    buyer, *_ = buyer_team
    with pytest.raises(Forbidden):
        services.plan_create(listing=listing, user=buyer, name="Mine")
    for kwargs, field in [
        ({"name": ""}, "name"),
        ({"name": "x" * 81}, "name"),
        ({"name": "Zero", "monthly_quota_units": 0}, "monthly_quota_units"),
        ({"name": "Odd", "kind": "lifetime"}, "kind"),
    ]:
        with pytest.raises(ApplicationError) as exc:
            services.plan_create(listing=listing, user=user, **kwargs)
        assert field in exc.value.fields, kwargs
    services.plan_create(listing=listing, user=user, name="Free")
    with pytest.raises(Conflict) as exc:
        services.plan_create(listing=listing, user=user, name="free")
    assert exc.value.code == "plan_name_taken"


def test_deactivated_plans_keep_subscribers_and_take_no_new_ones(plan, publisher, buyer_team, make_org):
    user, _org = publisher
    owner, _admin, _member, org = buyer_team
    subscription = _subscribe(org, owner, plan)
    services.plan_deactivate(plan=plan, user=user)
    plan.refresh_from_db()
    assert plan.is_active is False
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id) == subscription
    with pytest.raises(Conflict) as exc:
        _subscribe(make_org(owner=owner, name="Second"), owner, plan)
    assert exc.value.code == "plan_inactive"
    assert AuditLogEntry.objects.filter(action=AuditAction.PLAN_DEACTIVATED).count() == 1


def test_only_the_publishers_managers_deactivate_plans(plan, buyer_team):
    owner, *_ = buyer_team
    with pytest.raises(Forbidden):
        services.plan_deactivate(plan=plan, user=owner)


# --- subscribing -------------------------------------------------------------------------------


def test_subscribing_requires_accepting_the_license(plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    for accepted in (False, None, "yes"):
        with pytest.raises(ApplicationError) as exc:
            _subscribe(org, owner, plan, accept_license=accepted)
        assert (exc.value.status, exc.value.code) == (400, "license_not_accepted")
        assert "accept_license" in exc.value.fields
    assert not Subscription.objects.exists() and not LicenseAcceptance.objects.exists()


def test_subscribing_records_the_exact_terms_their_hash_version_user_and_ip(plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    before = timezone.now()
    subscription = _subscribe(org, owner, plan, ip_address="203.0.113.9")

    assert (subscription.status, subscription.plan, subscription.listing) == ("active", plan, listing)
    assert subscription.pinned_version is None and subscription.created_by == owner
    assert before <= subscription.current_period_start <= timezone.now()
    assert subscription.current_period_end == services.months_add(subscription.current_period_start, 1)

    acceptance = LicenseAcceptance.objects.get()
    terms = selectors.license_terms_for_listing(listing=listing)
    assert acceptance.terms_text == terms["text"] == TEMPLATES["apache-2.0"].text
    assert acceptance.terms_sha256 == hashlib.sha256(acceptance.terms_text.encode()).hexdigest() == terms["sha256"]
    assert (acceptance.license, acceptance.terms_version) == ("apache-2.0", TEMPLATES["apache-2.0"].version)
    assert (acceptance.user, acceptance.organization, acceptance.listing) == (owner, org, listing)
    assert (acceptance.subscription, acceptance.ip_address) == (subscription, "203.0.113.9")

    entry = AuditLogEntry.objects.get(action=AuditAction.SUBSCRIPTION_CREATED)
    assert (entry.actor, entry.organization, entry.listing) == (owner, org, listing)
    assert entry.data["terms_sha256"] == acceptance.terms_sha256


def test_custom_and_additional_publisher_terms_are_part_of_what_is_accepted(publisher, buyer_team):
    user, porg = publisher
    owner, _admin, _member, org = buyer_team
    custom = PublishedListingFactory(
        organization=porg, license="custom", license_text="Only on Tuesdays.\r\nNo resale."
    )
    plan = services.plan_create(listing=custom, user=user, name="Free")
    _subscribe(org, owner, plan)
    acceptance = LicenseAcceptance.objects.get()
    assert acceptance.terms_text == "Only on Tuesdays.\nNo resale."
    assert acceptance.terms_version.startswith("1+")

    extra = license_terms_build(license="mit", license_text="Credit us.")
    assert extra.text == f"{TEMPLATES['mit'].text}\n\n{ADDITIONAL_TERMS_HEADING}\nCredit us."
    changed = license_terms_build(license="mit", license_text="Credit us loudly.")
    assert extra.version != changed.version and extra.sha256 != changed.sha256
    assert license_terms_build(license="mit", license_text="").version == TEMPLATES["mit"].version


def test_terms_changed_since_they_were_read_are_refused(plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    read = selectors.license_terms_for_listing(listing=listing)["sha256"]
    listing.license_text = "New clause."
    listing.save(update_fields=["license_text"])
    with pytest.raises(Conflict) as exc:
        _subscribe(org, owner, plan, terms_sha256=read)
    assert exc.value.code == "terms_changed"
    current = selectors.license_terms_for_listing(listing=listing)["sha256"]
    assert _subscribe(org, owner, plan, terms_sha256=current).status == "active"


def test_one_live_subscription_per_organization_and_listing(plan, listing, publisher, buyer_team):
    owner, admin, _member, org = buyer_team
    first = _subscribe(org, owner, plan)
    other_plan = services.plan_create(listing=listing, user=publisher[0], name="Other")
    with pytest.raises(Conflict) as exc:
        _subscribe(org, admin, other_plan)
    assert (exc.value.status, exc.value.code) == (409, "already_subscribed")
    # After a cancel the organization may subscribe again; the old row stays for the record.
    services.subscription_cancel(subscription=first, user=admin)
    second = _subscribe(org, admin, other_plan)
    assert second.pk != first.pk and Subscription.objects.count() == 2


def test_only_managers_of_the_buyer_subscribe(plan, buyer_team, make_user):
    _owner, admin, member, org = buyer_team
    with pytest.raises(Forbidden) as exc:
        _subscribe(org, member, plan)
    assert exc.value.code == "not_a_manager"
    with pytest.raises(NotFound):
        _subscribe(org, make_user(), plan)
    assert _subscribe(org, admin, plan).created_by == admin


def test_unpublished_listings_take_no_subscribers(plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    listing.status = ListingStatus.SUSPENDED
    listing.save(update_fields=["status"])
    with pytest.raises(NotFound):
        _subscribe(org, owner, plan)


def test_paid_plans_start_through_checkout(listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    pro = Plan.objects.create(listing=listing, name="Pro", kind=PlanKind.FLAT, monthly_price_cents=2000)
    with pytest.raises(ApplicationError) as exc:
        _subscribe(org, owner, pro)
    assert exc.value.code == "checkout_required"


def test_pinning_a_version(plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    old = VersionFactory(listing=listing, version="0.9.0", status=VersionStatus.DEPRECATED)
    VersionFactory(listing=listing, version="2.0.0", status=VersionStatus.IN_REVIEW)
    with pytest.raises(ApplicationError) as exc:
        _subscribe(org, owner, plan, pinned_version="2.0.0")
    assert "pinned_version" in exc.value.fields
    assert _subscribe(org, owner, plan, pinned_version="0.9.0").pinned_version == old


def test_months_add_keeps_calendar_months():
    jan31 = datetime(2025, 1, 31, 10, 30, tzinfo=UTC)
    assert services.months_add(jan31, 1) == datetime(2025, 2, 28, 10, 30, tzinfo=UTC)
    assert services.months_add(datetime(2024, 1, 31, tzinfo=UTC), 1) == datetime(2024, 2, 29, tzinfo=UTC)
    assert services.months_add(datetime(2025, 12, 15, tzinfo=UTC), 1) == datetime(2026, 1, 15, tzinfo=UTC)
    assert services.months_add(datetime(2025, 3, 1, tzinfo=UTC), 13) == datetime(2026, 4, 1, tzinfo=UTC)


# --- canceling and entitlement -----------------------------------------------------------------


def test_cancel_ends_a_free_subscription_at_once(plan, buyer_team, django_capture_on_commit_callbacks):
    owner, admin, member, org = buyer_team
    subscription = _subscribe(org, owner, plan)
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id) == subscription
    with pytest.raises(Forbidden):
        services.subscription_cancel(subscription=subscription, user=member)
    with django_capture_on_commit_callbacks(execute=True):
        canceled = services.subscription_cancel(subscription=subscription, user=admin)
    assert canceled.status == SubscriptionStatus.CANCELED and canceled.canceled_at is not None
    assert canceled.current_period_end <= timezone.now()
    # This process forgets its cached answer at once.
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id) is None
    assert AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_CANCELED, actor=admin).count() == 1
    # Canceling again changes nothing.
    assert services.subscription_cancel(subscription=subscription, user=admin).canceled_at == canceled.canceled_at


def test_entitled_subscription_comes_with_its_plan(plan, buyer_team, django_assert_num_queries):
    owner, _admin, _member, org = buyer_team
    _subscribe(org, owner, plan)
    with django_assert_num_queries(1):
        found = selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id)
        assert found.plan.monthly_quota_units == 10_000
    with django_assert_num_queries(0):
        for _ in range(100):
            assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id) == found


def test_no_entitlement_without_a_subscription_after_cancel_or_after_the_period(plan, buyer_team, make_org):
    owner, _admin, _member, org = buyer_team
    listing_id = plan.listing_id
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=listing_id) is None

    subscription = _subscribe(org, owner, plan)
    Subscription.objects.filter(pk=subscription.pk).update(current_period_end=timezone.now() - timedelta(seconds=1))
    selectors.subscription_entitled_cache_forget()
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=listing_id) is None

    other = make_org(owner=owner, name="Other buyer")
    sub = _subscribe(other, owner, plan)
    services.subscription_cancel(subscription=sub, user=owner)  # a free plan ends at once
    selectors.subscription_entitled_cache_forget()
    assert selectors.subscription_entitled_get(organization_id=other.pk, listing_id=listing_id) is None

    # Canceled with time left in the period: entitled to its end. Suspended: not entitled.
    third = make_org(owner=owner, name="Third buyer")
    sub = _subscribe(third, owner, plan)
    Subscription.objects.filter(pk=sub.pk).update(status=SubscriptionStatus.CANCELED)
    selectors.subscription_entitled_cache_forget()
    assert selectors.subscription_entitled_get(organization_id=third.pk, listing_id=listing_id) == sub
    Subscription.objects.filter(pk=sub.pk).update(status=SubscriptionStatus.SUSPENDED)
    selectors.subscription_entitled_cache_forget()
    assert selectors.subscription_entitled_get(organization_id=third.pk, listing_id=listing_id) is None


def test_past_due_and_trialing_are_entitled(plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _subscribe(org, owner, plan)
    for status in (SubscriptionStatus.PAST_DUE, SubscriptionStatus.TRIALING):
        Subscription.objects.filter(pk=subscription.pk).update(status=status)
        selectors.subscription_entitled_cache_forget()
        assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id) is not None


def test_a_suspension_in_another_process_lands_within_a_second(plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _subscribe(org, owner, plan)
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id) is not None
    Subscription.objects.filter(pk=subscription.pk).update(status=SubscriptionStatus.SUSPENDED)
    time.sleep(1.1)
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=plan.listing_id) is None


def test_period_renewal_rolls_free_subscriptions_forward_and_ends_scheduled_cancels(plan, buyer_team, make_org):
    owner, _admin, _member, org = buyer_team
    rolling = _subscribe(org, owner, plan)
    start = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    Subscription.objects.filter(pk=rolling.pk).update(
        current_period_start=start, current_period_end=services.months_add(start, 1)
    )
    ending = _subscribe(make_org(owner=owner, name="Leaving"), owner, plan)
    Subscription.objects.filter(pk=ending.pk).update(
        current_period_start=start, current_period_end=services.months_add(start, 1), cancel_at_period_end=True
    )
    now = datetime(2025, 4, 10, tzinfo=UTC)

    assert services.subscription_periods_renew(now=now) == 2
    rolling.refresh_from_db()
    ending.refresh_from_db()
    assert rolling.current_period_start == datetime(2025, 3, 31, 12, 0, tzinfo=UTC)
    assert rolling.current_period_end == datetime(2025, 4, 30, 12, 0, tzinfo=UTC)
    assert rolling.status == "active"
    assert ending.status == "canceled" and ending.canceled_at == datetime(2025, 2, 28, 12, 0, tzinfo=UTC)
    assert services.subscription_periods_renew(now=now) == 0
    assert AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_RENEWED).count() == 1
