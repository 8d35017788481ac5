"""A subscription's life on both backends: cancel, upgrade and downgrade mid-period, new price versions,
failed payments with a grace period, and renewals that wait for new license terms."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing import checkout, selectors, services
from billing.models import Invoice, LicenseAcceptance, Plan, Subscription, SubscriptionStatus
from marketplace.errors import ApplicationError, Conflict
from marketplace.integrations import stripe as payments
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.checkout_support import checkout_start, events_process, webhooks_deliver

pytestmark = pytest.mark.django_db


def _entitled(subscription: Subscription) -> Subscription | None:
    selectors.subscription_entitled_cache_forget()
    return selectors.subscription_entitled_get(
        organization_id=subscription.organization_id, listing_id=subscription.listing_id
    )


def _local(org, user, plan) -> Subscription:
    session = checkout_start(org=org, user=user, plan=plan)
    checkout.checkout_local_pay(session_id=session.session_id, user=user, card_number="4242424242424242")
    return Subscription.objects.get(organization=org, plan=plan, status__in=services.LIVE_STATUSES)


def _stripe(client, fake, org, user, plan) -> Subscription:
    session = checkout_start(org=org, user=user, plan=plan)
    fake.complete_checkout(session.session_id)
    _sync(client, fake)
    return Subscription.objects.get(stripe_subscription_id__isnull=False, organization=org)


def _sync(client, fake) -> dict[str, str]:
    webhooks_deliver(client, fake)
    return events_process()


def _end_period(subscription: Subscription) -> None:
    """Time passes: the current period ended a minute ago."""
    now = timezone.now()
    Subscription.objects.filter(pk=subscription.pk).update(
        current_period_start=services.months_add(now, -1) - timedelta(minutes=1),
        current_period_end=now - timedelta(minutes=1),
    )


# --- cancel ---------------------------------------------------------------------------------------------


def test_local_cancel_keeps_the_entitlement_to_the_period_end(pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _local(org, owner, pro_plan)
    services.subscription_cancel(subscription=subscription, user=owner)
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_at_period_end) == ("active", True)
    assert _entitled(subscription) == subscription

    _end_period(subscription)
    assert _entitled(subscription) is None  # at once, before the periodic task runs
    assert services.subscriptions_upkeep()["renewed_or_ended"] == 1
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    assert subscription.canceled_at == subscription.current_period_end
    assert _entitled(subscription) is None
    # The ended period is invoiced (its usage), nothing more is charged.
    assert Invoice.objects.filter(subscription=subscription, billing_reason="period_close").count() == 1
    assert Invoice.objects.filter(subscription=subscription).count() == 2  # the checkout's, and the close
    assert services.subscriptions_upkeep()["renewed_or_ended"] == 0


def test_stripe_cancel_mid_period_ends_at_the_period_end(client, fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _stripe(client, fake_stripe, org, owner, pro_plan)
    period_end = subscription.current_period_end

    services.subscription_cancel(subscription=subscription, user=owner)
    assert fake_stripe.object(subscription.stripe_subscription_id)["cancel_at_period_end"] is True
    subscription.refresh_from_db()
    assert (subscription.status, subscription.cancel_at_period_end) == ("active", True)
    assert _entitled(subscription) == subscription

    fake_stripe.advance_subscription_period(subscription.stripe_subscription_id)  # Stripe ends it
    statuses = _sync(client, fake_stripe)
    assert "processed" in statuses.values()
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED and subscription.canceled_at is not None
    # Canceled, with the paid period still running: entitled until it ends, then not.
    assert subscription.current_period_end == period_end
    assert _entitled(subscription) == subscription
    _end_period(subscription)
    assert _entitled(subscription) is None


def test_resume_undoes_a_cancel(client, fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _stripe(client, fake_stripe, org, owner, pro_plan)
    services.subscription_cancel(subscription=subscription, user=owner)
    services.subscription_resume(subscription=subscription, user=owner)
    assert fake_stripe.object(subscription.stripe_subscription_id)["cancel_at_period_end"] is False
    subscription.refresh_from_db()
    assert subscription.cancel_at_period_end is False


# --- upgrade and downgrade ------------------------------------------------------------------------------


def test_local_upgrade_applies_now_and_downgrade_at_the_period_end(pro_plan, max_plan, metered_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _local(org, owner, pro_plan)

    services.subscription_plan_change(subscription=subscription, user=owner, plan=max_plan)
    subscription.refresh_from_db()
    assert subscription.plan == max_plan and subscription.scheduled_plan is None
    assert _entitled(subscription).plan == max_plan
    change = AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_PLAN_CHANGED).get()
    assert change.reason == "upgrade" and change.data["to_plan_id"] == max_plan.pk
    assert 4900 <= change.data["proration_cents"] <= 5000  # $99 - $49 for (almost) the whole period
    proration = Invoice.objects.get(subscription=subscription, billing_reason="proration")
    assert (proration.total_cents, proration.status) == (change.data["proration_cents"], "paid")

    services.subscription_plan_change(subscription=subscription, user=owner, plan=metered_plan)
    subscription.refresh_from_db()
    assert (subscription.plan, subscription.scheduled_plan) == (max_plan, metered_plan)
    assert _entitled(subscription).plan == max_plan  # keeps what it paid for until the period ends

    _end_period(subscription)
    services.subscriptions_upkeep()
    subscription.refresh_from_db()
    assert (subscription.plan, subscription.scheduled_plan, subscription.status) == (metered_plan, None, "active")
    assert subscription.current_period_end > timezone.now()
    assert _entitled(subscription).plan == metered_plan
    # The ended period was invoiced under Max; the new one has no fee to invoice in advance.
    closed = Invoice.objects.get(subscription=subscription, billing_reason="period_close")
    assert {line.plan_id for line in closed.lines.all()} <= {max_plan.pk}


def test_choosing_the_current_plan_drops_a_scheduled_downgrade(pro_plan, metered_plan, plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _local(org, owner, pro_plan)
    services.subscription_plan_change(subscription=subscription, user=owner, plan=metered_plan)
    services.subscription_plan_change(subscription=subscription, user=owner, plan=pro_plan)
    subscription.refresh_from_db()
    assert (subscription.plan, subscription.scheduled_plan) == (pro_plan, None)
    with pytest.raises(Conflict) as same:
        services.subscription_plan_change(subscription=subscription, user=owner, plan=pro_plan)
    assert same.value.code == "same_plan"
    # Down to free: at the period's end too.
    services.subscription_plan_change(subscription=subscription, user=owner, plan=plan)
    _end_period(subscription)
    services.subscriptions_upkeep()
    subscription.refresh_from_db()
    assert (subscription.plan, subscription.status) == (plan, "active")


def test_stripe_upgrade_is_prorated_at_stripe(client, fake_stripe, pro_plan, max_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _stripe(client, fake_stripe, org, owner, pro_plan)
    services.subscription_plan_change(subscription=subscription, user=owner, plan=max_plan)
    max_plan.refresh_from_db()
    stripe_subscription = fake_stripe.object(subscription.stripe_subscription_id)
    assert sorted(item["price"]["id"] for item in stripe_subscription["items"]["data"]) == sorted(
        [max_plan.stripe_price_id, max_plan.stripe_metered_price_id]
    )
    update = [
        r for r in fake_stripe.requests() if r["path"] == f"/v1/subscriptions/{subscription.stripe_subscription_id}"
    ]
    assert update and update[-1]["params"]["proration_behavior"] == "create_prorations"
    subscription.refresh_from_db()
    assert subscription.plan == max_plan and _entitled(subscription).plan == max_plan

    _sync(client, fake_stripe)  # the customer.subscription.updated of the upgrade
    subscription.refresh_from_db()
    assert subscription.plan == max_plan
    # The next invoice carries the proration: about $50 for the rest of the period, then $99.
    renewal = fake_stripe.advance_subscription_period(subscription.stripe_subscription_id)["invoice"]
    prorations = [line for line in renewal["lines"]["data"] if line["parent"]["subscription_item_details"]["proration"]]
    assert 4900 <= sum(line["amount"] for line in prorations) <= 5000


def test_stripe_downgrade_waits_for_the_renewal(client, fake_stripe, max_plan, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _stripe(client, fake_stripe, org, owner, max_plan)
    services.subscription_plan_change(subscription=subscription, user=owner, plan=pro_plan)
    subscription.refresh_from_db()
    assert (subscription.plan, subscription.scheduled_plan) == (max_plan, pro_plan)
    max_plan.refresh_from_db()
    items = fake_stripe.object(subscription.stripe_subscription_id)["items"]["data"]
    assert max_plan.stripe_price_id in [item["price"]["id"] for item in items]  # nothing changed at Stripe yet

    fake_stripe.advance_subscription_period(subscription.stripe_subscription_id)
    _sync(client, fake_stripe)  # renewed: the scheduled plan's task is enqueued on commit
    subscription.refresh_from_db()
    assert subscription.scheduled_plan == pro_plan
    services.subscription_scheduled_plan_apply(subscription_id=subscription.pk)  # the task's body
    subscription.refresh_from_db()
    pro_plan.refresh_from_db()
    assert (subscription.plan, subscription.scheduled_plan) == (pro_plan, None)
    items = fake_stripe.object(subscription.stripe_subscription_id)["items"]["data"]
    assert pro_plan.stripe_price_id in [item["price"]["id"] for item in items]
    assert _entitled(subscription).plan == pro_plan


def test_plan_change_rules_and_api(client, pro_plan, plan, metered_plan, buyer_team, make_org):
    owner, _admin, member, org = buyer_team
    free = checkout_start(org=org, user=owner, plan=plan).subscription
    with pytest.raises(Conflict) as checkout_required:
        services.subscription_plan_change(subscription=free, user=owner, plan=pro_plan)
    assert checkout_required.value.code == "checkout_required"

    subscription = _local(make_org(owner=owner, name="Payer"), owner, pro_plan)
    api = APIClient()
    api.force_authenticate(owner)
    response = api.post(
        f"/api/v1/subscriptions/{subscription.pk}/change-plan", {"plan": metered_plan.pk}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["plan"]["id"] == pro_plan.pk and body["scheduled_plan"]["id"] == metered_plan.pk
    assert body["entitled"] is True and body["terms_outdated"] is False
    wrong = api.post(f"/api/v1/subscriptions/{subscription.pk}/change-plan", {"plan": 999_999}, format="json")
    assert wrong.status_code == 400 and wrong.json()["error"]["fields"]["plan"]
    api.force_authenticate(member)
    assert api.post(f"/api/v1/subscriptions/{free.pk}/change-plan", {"plan": metered_plan.pk}).status_code == 403
    api.force_authenticate(owner)
    canceled = api.post(f"/api/v1/subscriptions/{subscription.pk}/cancel")
    assert canceled.status_code == 200 and canceled.json()["cancel_at_period_end"] is True
    assert canceled.json()["scheduled_plan"] is None and canceled.json()["status"] == "active"

    # The free-to-paid change on the page goes on to checkout.
    client.force_login(owner)
    response = client.post(f"/billing/subscriptions/{free.pk}/change-plan/", {"plan": pro_plan.pk})
    assert response.status_code == 302 and response["Location"].startswith("/billing/checkout/cs_local_")


# --- prices change -----------------------------------------------------------------------------------------


def test_a_new_price_reaches_subscribers_at_their_renewal(pro_plan, publisher, buyer_team, make_org):
    owner, _admin, _member, org = buyer_team
    subscription = _local(org, owner, pro_plan)
    halfway = checkout_start(org=make_org(owner=owner, name="Halfway"), user=owner, plan=pro_plan)
    new = services.plan_price_change(plan=pro_plan, user=publisher[0], monthly_price_cents=5900)
    pro_plan.refresh_from_db()
    assert (new.version, new.previous, new.monthly_price_cents, new.is_active) == (2, pro_plan, 5900, True)
    assert pro_plan.is_active is False and new.monthly_quota_units == pro_plan.monthly_quota_units
    with pytest.raises(ApplicationError):
        services.plan_price_change(plan=new, user=publisher[0], monthly_price_cents=5900)  # nothing changed

    subscription.refresh_from_db()
    assert (subscription.plan, subscription.scheduled_plan) == (pro_plan, new)
    assert _entitled(subscription).plan.monthly_price_cents == 4900
    newcomer = _local(make_org(owner=owner, name="Newcomer"), owner, new)
    assert newcomer.plan == new
    with pytest.raises(Conflict):
        checkout_start(org=make_org(owner=owner, name="Late"), user=owner, plan=pro_plan)
    # A checkout started before the change pays the price it showed, and moves at its renewal too.
    checkout.checkout_local_pay(session_id=halfway.session_id, user=owner, card_number="4242424242424242")
    halfway.refresh_from_db()
    assert (halfway.subscription.plan, halfway.subscription.scheduled_plan) == (pro_plan, new)

    _end_period(subscription)
    services.subscriptions_upkeep()
    subscription.refresh_from_db()
    assert (subscription.plan, subscription.scheduled_plan) == (new, None)
    opened = Invoice.objects.get(
        subscription=subscription, billing_reason="period_open", period_start=subscription.current_period_start
    )
    assert opened.total_cents == 5900


# --- failed payments -------------------------------------------------------------------------------------


def test_stripe_failed_payment_is_past_due_then_suspended_after_the_grace_period(
    client, fake_stripe, pro_plan, buyer_team, settings
):
    settings.BILLING_GRACE_DAYS = 3
    owner, _admin, _member, org = buyer_team
    subscription = _stripe(client, fake_stripe, org, owner, pro_plan)
    renewal = fake_stripe.advance_subscription_period(subscription.stripe_subscription_id, payment_fails=True)
    _sync(client, fake_stripe)
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE and subscription.past_due_since is not None
    assert _entitled(subscription) == subscription  # within the grace period
    assert AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_PAST_DUE).count() == 1

    Subscription.objects.filter(pk=subscription.pk).update(past_due_since=timezone.now() - timedelta(days=3, seconds=1))
    assert _entitled(subscription) is None  # beyond the grace period, at once
    assert services.subscriptions_upkeep()["suspended"] == 1
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.SUSPENDED
    assert AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_SUSPENDED).count() == 1

    fake_stripe.pay_invoice(renewal["invoice"]["id"])
    _sync(client, fake_stripe)
    subscription.refresh_from_db()
    assert (subscription.status, subscription.past_due_since) == ("active", None)
    assert _entitled(subscription) == subscription


def test_local_failed_payment_ends_unpaid_at_the_period_end(pro_plan, buyer_team, settings):
    owner, _admin, _member, org = buyer_team
    subscription = _local(org, owner, pro_plan)
    services.subscription_payment_failed(
        subscription_id=subscription.pk, failed_at=timezone.now() - timedelta(days=settings.BILLING_GRACE_DAYS + 1)
    )
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.PAST_DUE and _entitled(subscription) is None
    services.subscriptions_upkeep()
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.SUSPENDED
    with pytest.raises(Conflict):
        services.subscription_plan_change(subscription=subscription, user=owner, plan=pro_plan)
    _end_period(subscription)
    services.subscriptions_upkeep()
    subscription.refresh_from_db()
    assert subscription.status == SubscriptionStatus.CANCELED
    entry = AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_CANCELED).latest("id")
    assert entry.reason == "unpaid"

    recovered = _local(org, owner, pro_plan)
    services.subscription_payment_failed(subscription_id=recovered.pk)
    services.subscription_payment_recovered(subscription_id=recovered.pk)
    recovered.refresh_from_db()
    assert (recovered.status, recovered.past_due_since) == ("active", None)


# --- new license terms -----------------------------------------------------------------------------------


def test_new_terms_hold_the_local_renewal_until_accepted(client, pro_plan, listing, buyer_team):
    owner, _admin, member, org = buyer_team
    subscription = _local(org, owner, pro_plan)
    listing.license_text = "No use in weapons systems."
    listing.save(update_fields=["license_text"])

    client.force_login(member)
    page = client.get(f"/billing/?organization={org.slug}").content.decode()
    assert "The license terms of Sepsis Alert changed" in page and "Ask an owner or admin" in page
    client.force_login(owner)
    page = client.get(f"/billing/?organization={org.slug}").content.decode()
    assert "Accept new terms" in page and "No use in weapons systems." in page

    _end_period(subscription)
    services.subscriptions_upkeep()
    subscription.refresh_from_db()
    assert subscription.current_period_end < timezone.now()  # held: not renewed
    assert _entitled(subscription) is None

    sha = services.license_terms_for_listing(listing=listing).sha256
    refused = client.post(f"/billing/subscriptions/{subscription.pk}/accept-terms/", {"terms_sha256": sha})
    assert refused.status_code == 302 and LicenseAcceptance.objects.count() == 1
    response = client.post(
        f"/billing/subscriptions/{subscription.pk}/accept-terms/",
        {"accept_license": "on", "terms_sha256": sha},
        REMOTE_ADDR="192.0.2.55",
    )
    assert response.status_code == 302
    acceptance = LicenseAcceptance.objects.latest("id")
    assert (acceptance.terms_sha256, acceptance.user, acceptance.organization) == (sha, owner, org)
    assert acceptance.ip_address == "192.0.2.55" and "No use in weapons systems." in acceptance.terms_text
    assert acceptance.terms_version.startswith("2.0-1+")
    subscription.refresh_from_db()
    assert subscription.current_period_end > timezone.now() and _entitled(subscription) == subscription
    assert (
        "The license terms of Sepsis Alert changed"
        not in client.get(f"/billing/?organization={org.slug}").content.decode()
    )
    assert AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_TERMS_ACCEPTED).count() == 1


def test_new_terms_hold_the_stripe_renewal_until_accepted(client, fake_stripe, pro_plan, listing, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _stripe(client, fake_stripe, org, owner, pro_plan)
    assert services.subscriptions_upkeep()["held_for_terms"] == 0
    listing.license_text = "Attribution required in every report."
    listing.save(update_fields=["license_text"])
    assert services.subscriptions_upkeep()["held_for_terms"] == 1
    stripe_subscription = payments.subscription_retrieve(subscription=subscription.stripe_subscription_id)
    assert stripe_subscription["cancel_at_period_end"] is True and stripe_subscription["metadata"]["terms_hold"]
    subscription.refresh_from_db()
    assert subscription.cancel_at_period_end and _entitled(subscription) == subscription  # paid period continues

    api = APIClient()
    api.force_authenticate(owner)
    response = api.post(
        f"/api/v1/subscriptions/{subscription.pk}/accept-terms", {"accept_license": True}, format="json"
    )
    assert response.status_code == 200 and response.json()["terms_outdated"] is False
    stripe_subscription = payments.subscription_retrieve(subscription=subscription.stripe_subscription_id)
    assert stripe_subscription["cancel_at_period_end"] is False and not stripe_subscription["metadata"].get(
        "terms_hold"
    )
    subscription.refresh_from_db()
    assert subscription.cancel_at_period_end is False


def test_the_billing_page_shows_status_period_and_controls(client, pro_plan, max_plan, metered_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    subscription = _local(org, owner, pro_plan)
    client.force_login(owner)
    page = client.get(f"/billing/?organization={org.slug}").content.decode()
    assert "$49 / month · 100,000 units included · then $0.50 per 1,000" in page
    assert "upgrade now, prorated" in page and "downgrade at period end" in page
    assert "Cancel subscription" in page and "It stays usable until" in page
    client.post(f"/billing/subscriptions/{subscription.pk}/change-plan/", {"plan": metered_plan.pk})
    page = client.get(f"/billing/?organization={org.slug}").content.decode()
    assert "Moves to Pay as you go" in page and "drop the scheduled change" in page
    client.post(f"/billing/subscriptions/{subscription.pk}/cancel/")
    page = client.get(f"/billing/?organization={org.slug}").content.decode()
    assert "Keep subscription" in page and "Ends" in page
    assert Plan.objects.filter(pk=max_plan.pk, is_active=True).exists()
