"""Stripe webhooks against the fake Stripe: signed deliveries to our endpoint (Django's test client, or the
fake delivering to the live server), stored once, processed once, in any order, through outages."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from django.db import connection
from django.test import Client

from billing import selectors, webhooks
from billing.models import (
    CheckoutSession,
    Invoice,
    LicenseAcceptance,
    PublisherAccount,
    StripeEvent,
    Subscription,
    SubscriptionStatus,
)
from marketplace.integrations import stripe as payments
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.checkout_support import (
    WEBHOOK_PATH,
    checkout_start,
    events_process,
    fake_event,
    webhook_post,
    webhooks_deliver,
)
from tests.plugins.services import wait_for


def _paid(fake, *, org, user, plan):
    """A Stripe checkout the buyer completed at (the fake) Stripe; nothing delivered yet."""
    session = checkout_start(org=org, user=user, plan=plan)
    fake.complete_checkout(session.session_id)
    return session


@pytest.mark.django_db
def test_the_webhook_provisions_the_paid_subscription(client, fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    session = _paid(fake_stripe, org=org, user=owner, plan=pro_plan)
    assert not Subscription.objects.exists()

    delivered = webhooks_deliver(client, fake_stripe)
    assert [row.type for row in StripeEvent.objects.order_by("pk")] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.paid",
    ]
    assert set(StripeEvent.objects.values_list("status", flat=True)) == {"received"}
    assert set(events_process().values()) == {"processed"}
    assert set(StripeEvent.objects.filter(event_id__in=delivered).values_list("status", flat=True)) == {"processed"}

    subscription = Subscription.objects.get()
    stripe_subscription = payments.subscription_retrieve(subscription=subscription.stripe_subscription_id)
    start, end = payments.subscription_period(stripe_subscription)
    assert (subscription.organization, subscription.plan, subscription.status) == (org, pro_plan, "active")
    assert (subscription.current_period_start.timestamp(), subscription.current_period_end.timestamp()) == (start, end)
    assert (
        subscription.stripe_subscription_id
        == fake_event(fake_stripe, "checkout.session.completed")["data"]["object"]["subscription"]
    )
    acceptance = LicenseAcceptance.objects.get()
    assert (acceptance.terms_sha256, acceptance.ip_address, acceptance.user) == (
        session.terms_sha256,
        "203.0.113.9",
        owner,
    )
    session.refresh_from_db()
    assert (session.status, session.subscription) == ("complete", subscription)
    invoice = Invoice.objects.get()
    assert (invoice.backend, invoice.status, invoice.total_cents, invoice.subscription) == (
        "stripe",
        "paid",
        4900,
        subscription,
    )
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=pro_plan.listing_id) == subscription


@pytest.mark.django_db
def test_forged_and_stale_signatures_are_refused_and_nothing_is_stored(client, fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    _paid(fake_stripe, org=org, user=owner, plan=pro_plan)
    event = fake_event(fake_stripe, "checkout.session.completed")
    body, signature = fake_stripe.signed_event(event["id"])
    forged = body.replace(b'"status": "complete"', b'"status": "open"')
    assert forged != body
    _old_body, old_signature = fake_stripe.signed_event(event["id"], timestamp=int(time.time()) - 600)
    _other_body, other_signature = fake_stripe.signed_event(event["id"], secret="whsec_someone_else")
    for payload, header in [
        (forged, signature),
        (body, other_signature),
        (body, old_signature),  # a replay of an old delivery
        (body, "t=garbage"),
        (b"not json", signature),
    ]:
        response = client.post(
            WEBHOOK_PATH, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    assert client.post(WEBHOOK_PATH, data=body, content_type="application/json").status_code == 400
    assert client.get(WEBHOOK_PATH).status_code == 405
    assert not StripeEvent.objects.exists() and not Subscription.objects.exists()


@pytest.mark.django_db
def test_a_replayed_event_is_stored_and_applied_once(client, fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    _paid(fake_stripe, org=org, user=owner, plan=pro_plan)
    event = fake_event(fake_stripe, "checkout.session.completed")
    answers = [webhook_post(client, fake_stripe, event["id"]).json() for _ in range(3)]
    assert [a["duplicate"] for a in answers] == [False, True, True]
    assert StripeEvent.objects.filter(event_id=event["id"]).count() == 1
    row = StripeEvent.objects.get()
    for _ in range(3):
        assert webhooks.stripe_event_process(event_row_id=row.pk) == "processed"
    # Delivered again after processing: still one row, nothing applied twice.
    webhooks_deliver(client, fake_stripe)
    webhooks_deliver(client, fake_stripe)
    events_process()
    assert StripeEvent.objects.count() == 3
    assert Subscription.objects.count() == 1 and LicenseAcceptance.objects.count() == 1 and Invoice.objects.count() == 1
    assert AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_CREATED).count() == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("processed", 1)


@pytest.mark.django_db(transaction=True)
def test_ten_deliveries_at_once_store_and_apply_the_event_once(fake_stripe, celery_worker, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    _paid(fake_stripe, org=org, user=owner, plan=pro_plan)
    event = fake_event(fake_stripe, "checkout.session.completed")
    body, signature = fake_stripe.signed_event(event["id"])
    barrier = threading.Barrier(10)
    answers: list[tuple[int, bool]] = []

    def deliver() -> None:
        try:
            barrier.wait()
            response = Client().post(
                WEBHOOK_PATH, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature
            )
            answers.append((response.status_code, response.json()["duplicate"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [(200, False)] + [(200, True)] * 9
    row = StripeEvent.objects.get(event_id=event["id"])
    # The real worker applies it (enqueued once, when the row committed).
    wait_for(lambda: StripeEvent.objects.filter(pk=row.pk, status="processed").exists(), message="processed")

    # Ten more processing runs at once (say, a retry sweep racing the worker) change nothing.
    outcomes: list[str] = []

    def process() -> None:
        try:
            barrier.wait()
            outcomes.append(webhooks.stripe_event_process(event_row_id=row.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=process) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["processed"] * 10
    row.refresh_from_db()
    assert row.attempts == 1
    assert Subscription.objects.count() == 1 and LicenseAcceptance.objects.count() == 1
    assert AuditLogEntry.objects.filter(action=AuditAction.SUBSCRIPTION_CREATED).count() == 1
    assert CheckoutSession.objects.get().subscription == Subscription.objects.get()


@pytest.mark.django_db
def test_events_in_any_order_end_in_the_current_state(client, fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    _paid(fake_stripe, org=org, user=owner, plan=pro_plan)
    # The subscription event before the checkout event, the invoice before both: provisioned once.
    for event_type in ("invoice.paid", "customer.subscription.created", "checkout.session.completed"):
        webhook_post(client, fake_stripe, fake_event(fake_stripe, event_type)["id"])
        events_process()
    subscription = Subscription.objects.get()
    assert subscription.status == "active" and Invoice.objects.get().subscription == subscription
    assert LicenseAcceptance.objects.count() == 1

    # A failed renewal, then (a second later) the payment: delivered newest first.
    renewal = fake_stripe.advance_subscription_period(subscription.stripe_subscription_id, payment_fails=True)
    past_due = fake_event(fake_stripe, "customer.subscription.updated")
    failed = fake_event(fake_stripe, "invoice.payment_failed")
    time.sleep(1.05)
    fake_stripe.pay_invoice(renewal["invoice"]["id"])
    recovered = fake_event(fake_stripe, "customer.subscription.updated")
    assert (past_due["data"]["object"]["status"], recovered["data"]["object"]["status"]) == ("past_due", "active")

    webhook_post(client, fake_stripe, recovered["id"])
    assert set(events_process().values()) == {"processed"}
    subscription.refresh_from_db()
    assert subscription.status == "active" and subscription.stripe_synced_at.timestamp() == recovered["created"]
    fetches = len([r for r in fake_stripe.requests() if r["method"] == "GET"])
    webhook_post(client, fake_stripe, past_due["id"])
    webhook_post(client, fake_stripe, failed["id"])
    statuses = events_process()
    assert statuses[past_due["id"]] == "ignored"  # older than the state applied: not even fetched
    assert statuses[failed["id"]] == "processed"  # re-fetched: Stripe says active now
    subscription.refresh_from_db()
    assert (subscription.status, subscription.past_due_since) == ("active", None)
    new_period = payments.subscription_period(
        payments.subscription_retrieve(subscription=subscription.stripe_subscription_id)
    )
    assert subscription.current_period_start.timestamp() == new_period[0]
    assert len([r for r in fake_stripe.requests() if r["method"] == "GET"]) == fetches + 2  # failed + the check above
    assert selectors.subscription_entitled_get(organization_id=org.pk, listing_id=pro_plan.listing_id) == subscription


@pytest.mark.django_db
@pytest.mark.parametrize("status", [429, 500])
def test_stripe_unavailable_for_a_while_then_processed_once(client, fake_stripe, pro_plan, buyer_team, status):
    owner, _admin, _member, org = buyer_team
    _paid(fake_stripe, org=org, user=owner, plan=pro_plan)
    webhooks_deliver(client, fake_stripe, types={"checkout.session.completed"})
    row = StripeEvent.objects.get()
    fake_stripe.fail_next(3, status, "/v1/subscriptions")
    failures = 0
    while True:
        try:
            assert webhooks.stripe_event_process(event_row_id=row.pk) == "processed"
            break
        except payments.StripeUnavailable:
            failures += 1
            row.refresh_from_db()
            assert (row.status, row.attempts) == ("failed", failures)
            assert "StripeUnavailable" in row.last_error
            assert not Subscription.objects.exists()
        assert failures < 10
    row.refresh_from_db()
    assert (failures, row.status, row.attempts, row.last_error) == (3, "processed", 4, "")
    assert Subscription.objects.get().status == "active" and LicenseAcceptance.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_fake_delivers_to_the_live_server_and_the_task_retries_through_an_outage(
    live_server, celery_worker, fake_stripe, pro_plan, buyer_team
):
    owner, _admin, _member, org = buyer_team
    fake_stripe.set_webhook_target(f"{live_server.url}{WEBHOOK_PATH}", fake_stripe_secret())
    session = checkout_start(org=org, user=owner, plan=pro_plan)
    fake_stripe.fail_next(1, 500, "/v1/subscriptions")  # the first processing try meets a Stripe outage
    fake_stripe.complete_checkout(session.session_id)  # delivers the three events before it answers
    assert [d["status"] for d in fake_stripe.deliveries()] == [200, 200, 200]
    subscription = wait_for(lambda: Subscription.objects.filter(organization=org).first(), timeout=20)
    wait_for(
        lambda: StripeEvent.objects.filter(status="processed").count() == 3, timeout=20, message="events processed"
    )
    retried = StripeEvent.objects.filter(attempts__gt=1)
    assert retried.count() == 1 and retried.get().status == "processed"
    assert subscription.status == "active" and Invoice.objects.filter(subscription=subscription).count() == 1


def fake_stripe_secret() -> str:
    from django.conf import settings

    return settings.STRIPE_WEBHOOK_SECRET


@pytest.mark.django_db
def test_an_abandoned_stripe_checkout_leaves_no_subscription(client, fake_stripe, pro_plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    client.force_login(owner)
    given_up = checkout_start(org=org, user=owner, plan=pro_plan)
    response = client.get(f"/billing/checkout/cancel/?checkout={given_up.pk}")
    assert response.status_code == 302
    assert fake_stripe.object(given_up.session_id)["status"] == "expired"
    given_up.refresh_from_db()
    assert given_up.status == "expired"

    left_open = checkout_start(org=org, user=owner, plan=pro_plan)
    fake_stripe.expire_checkout(left_open.session_id)  # Stripe expires it after 24 hours
    webhooks_deliver(client, fake_stripe)
    statuses = events_process()
    assert list(statuses.values()) == ["ignored", "processed"]  # ours was already expired; then Stripe's expiry
    left_open.refresh_from_db()
    assert left_open.status == "expired"
    with pytest.raises(RuntimeError):
        fake_stripe.complete_checkout(left_open.session_id)
    assert not Subscription.objects.exists() and not LicenseAcceptance.objects.exists()


@pytest.mark.django_db
def test_foreign_objects_and_other_event_types_are_ignored(client, fake_stripe, buyer_team, caplog):
    product = payments.product_create(name="Not ours")
    price = payments.price_create(product=product["id"], currency="usd", unit_amount=500)
    customer = payments.customer_create(name="Someone", email="someone@example.com")
    session = payments.checkout_session_create(
        customer=customer["id"], price_ids=[(price["id"], 1)], success_url="http://x.test/ok",
        cancel_url="http://x.test/no", client_reference_id="elsewhere-42",
    )  # fmt: skip
    fake_stripe.complete_checkout(session["id"])
    webhooks_deliver(client, fake_stripe)
    assert set(events_process().values()) == {"ignored"}
    assert not Subscription.objects.exists() and not Invoice.objects.exists()

    event = {"id": "evt_custom", "type": "customer.created", "created": int(time.time()), "api_version": "1999-01-01",
             "data": {"object": {"id": "cus_1"}}}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="billing.webhooks"):
        row, created = webhooks.stripe_event_store(event=event)
    assert created and row.status == "ignored"
    assert "api_version 1999-01-01" in caplog.text


@pytest.mark.django_db
def test_account_updated_reaches_the_publisher_account(client, fake_stripe, publisher):
    _user, org = publisher
    account = payments.account_create(email="publisher@example.com", country="us")
    PublisherAccount.objects.create(organization=org, stripe_account_id=account["id"])
    fake_stripe.enable_account(account["id"])
    event = fake_event(fake_stripe, "account.updated")
    response = webhook_post(client, fake_stripe, event["id"], path="/billing/stripe/connect-webhook/")
    assert response.status_code == 200
    # The platform endpoint's secret does not verify Connect events.
    assert webhook_post(client, fake_stripe, event["id"], path=WEBHOOK_PATH).status_code == 400
    assert events_process() == {event["id"]: "processed"}
    payout_account = PublisherAccount.objects.get()
    assert (payout_account.charges_enabled, payout_account.payouts_enabled) == (True, True)


@pytest.mark.django_db
def test_failed_events_are_enqueued_again_by_the_sweep(client, fake_stripe, pro_plan, buyer_team):
    from datetime import timedelta

    from django.utils import timezone

    owner, _admin, _member, org = buyer_team
    _paid(fake_stripe, org=org, user=owner, plan=pro_plan)
    webhooks_deliver(client, fake_stripe, types={"checkout.session.completed"})
    assert webhooks.stripe_events_retry() == 0  # too recent: its task is on the way
    StripeEvent.objects.update(received_at=timezone.now() - timedelta(minutes=10))
    assert webhooks.stripe_events_retry() == 1
    assert [e.event_id for e in webhooks.stripe_event_failed_list()] == [StripeEvent.objects.get().event_id]
    events_process()
    assert webhooks.stripe_events_retry() == 0 and webhooks.stripe_event_failed_list() == []
    assert Subscription.objects.get().status == SubscriptionStatus.ACTIVE
