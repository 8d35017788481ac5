"""Publisher payouts: Connect onboarding, account.updated, transfers that never pay twice, the local
backend's payouts, and the publisher's payouts page."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Membership, Role
from billing import invoices, payouts
from billing.models import Invoice, InvoiceLine, Payout, PayoutStatus, PlanKind, PublisherAccount
from marketplace.errors import Forbidden
from marketplace.integrations import stripe as payments
from moderation.models import AuditAction, AuditLogEntry
from tests.billing.ledger_support import (
    listing_make,
    plan_make,
    stripe_subscription_make,
    subscription_make,
    usage_write,
)
from tests.plugins.services import wait_for

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
RETURN_URL = "http://app.test/billing/payouts/?onboarding=return"
REFRESH_URL = "http://app.test/billing/payouts/onboarding/refresh/"


class Crash(Exception):
    """Stands for the process dying before its transaction commits."""


@pytest.fixture
def buyer(make_org):
    return make_org(name="Contoso")


@pytest.fixture
def second_publisher(make_user, make_org):
    user = make_user(email="owner@beta.example")
    return user, make_org(owner=user, name="Beta Models")


def _stripe_invoice(*, buyer, shares: dict) -> Invoice:
    """A paid Stripe invoice (as mirrored from Stripe) with one line per ``{publisher org: amount}``."""
    invoice = Invoice.objects.create(
        organization=buyer,
        backend="stripe",
        number=f"ST-{Invoice.objects.count() + 1:04d}",
        period_start=START,
        period_end=END,
        status="paid",
        stripe_invoice_id=f"in_test_{Invoice.objects.count() + 1}",
    )
    total = 0
    for publisher, amount in shares.items():
        plan = plan_make(listing=listing_make(publisher=publisher), kind=PlanKind.METERED, price_per_1000_cents=100)
        fee, share = invoices.line_split(amount_cents=amount)
        InvoiceLine.objects.create(
            invoice=invoice,
            listing=plan.listing,
            publisher=publisher,
            plan=plan,
            kind="metered",
            description="usage",
            units=amount * 10,
            amount_cents=amount,
            platform_fee_cents=fee,
            publisher_share_cents=share,
        )
        total += amount
    invoice.total_cents = total
    invoice.save()
    return invoice


def _onboard(*, publisher, fake) -> PublisherAccount:
    """Stripe-hosted onboarding finished: the account can receive transfers (account.updated applied)."""
    user, org = publisher
    payouts.publisher_account_onboarding_link(
        organization=org, user=user, return_url=RETURN_URL, refresh_url=REFRESH_URL
    )
    account = PublisherAccount.objects.get(organization=org)
    fake.enable_account(account.stripe_account_id)
    _apply_latest_account_event(fake, account.stripe_account_id)
    account.refresh_from_db()
    return account


def _apply_latest_account_event(fake, account_id):
    event = [e for e in fake.events(type="account.updated") if e["account"] == account_id][-1]
    return payouts.publisher_account_sync(stripe_account=event["data"]["object"], event_created=event["created"])


def _transfer_requests(fake):
    return [r for r in fake.requests() if r["method"] == "POST" and r["path"] == "/v1/transfers"]


# --- Connect onboarding --------------------------------------------------------------------------


@pytest.mark.django_db
def test_onboarding_creates_the_connected_account_once_and_returns_a_fresh_link(publisher, fake_stripe, make_user):
    user, org = publisher
    url = payouts.publisher_account_onboarding_link(
        organization=org, user=user, return_url=RETURN_URL, refresh_url=REFRESH_URL
    )
    assert url.startswith(f"{fake_stripe.url}/_fake/connect/onboarding/")
    account = PublisherAccount.objects.get(organization=org)
    assert account.stripe_account_id.startswith("acct_")
    assert (account.payouts_enabled, account.charges_enabled, account.details_submitted) == (False, False, False)
    stripe_account = fake_stripe.object(account.stripe_account_id)
    assert stripe_account["metadata"] == {"organization_id": str(org.pk), "organization": org.slug}
    assert stripe_account["controller"]["stripe_dashboard"]["type"] == "express"

    again = payouts.publisher_account_onboarding_link(
        organization=org, user=user, return_url=RETURN_URL, refresh_url=REFRESH_URL
    )
    assert again != url  # a new single-use link each time; the link is never stored
    account_creates = [r for r in fake_stripe.requests() if r["method"] == "POST" and r["path"] == "/v1/accounts"]
    assert len(account_creates) == 1
    assert PublisherAccount.objects.filter(organization=org).count() == 1
    assert AuditLogEntry.objects.filter(action=AuditAction.PAYOUT_ACCOUNT_CREATED, organization=org).count() == 1

    member = make_user(email="member@acme.example")
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    with pytest.raises(Forbidden):
        payouts.publisher_account_onboarding_link(
            organization=org, user=member, return_url=RETURN_URL, refresh_url=REFRESH_URL
        )


@pytest.mark.django_db
def test_account_updates_apply_in_order_whatever_the_delivery_order(publisher, fake_stripe):
    user, org = publisher
    payouts.publisher_account_onboarding_link(
        organization=org, user=user, return_url=RETURN_URL, refresh_url=REFRESH_URL
    )
    account = PublisherAccount.objects.get(organization=org)
    acct = account.stripe_account_id
    enabled = fake_stripe.enable_account(acct)
    created = fake_stripe.events(type="account.updated")[-1]["created"]

    payouts.publisher_account_sync(stripe_account=enabled, event_created=created)
    account.refresh_from_db()
    assert (account.payouts_enabled, account.charges_enabled, account.details_submitted) == (True, True, True)
    assert AuditLogEntry.objects.filter(action=AuditAction.PAYOUT_ACCOUNT_UPDATED, organization=org).count() == 1

    def account_reads():
        return len([r for r in fake_stripe.requests() if r["method"] == "GET" and r["path"] == f"/v1/accounts/{acct}"])

    # An older event (sent before onboarding finished) delivered late: skipped, without asking Stripe.
    stale = {**enabled, "payouts_enabled": False, "charges_enabled": False}
    reads = account_reads()
    payouts.publisher_account_sync(stripe_account=stale, event_created=created - 60)
    account.refresh_from_db()
    assert account.payouts_enabled is True and account_reads() == reads
    # Not older (the same second: the order is unknown), yet carrying an old copy: Stripe's current
    # account is read and wins.
    payouts.publisher_account_sync(stripe_account=stale, event_created=created)
    account.refresh_from_db()
    assert account.payouts_enabled is True and account_reads() == reads + 1

    # Stripe pauses payouts: the newer event applies; an older copy saying "enabled" cannot undo it.
    paused = fake_stripe.enable_account(acct, charges_enabled=True, payouts_enabled=False)
    paused_at = fake_stripe.events(type="account.updated")[-1]["created"]
    payouts.publisher_account_sync(stripe_account=paused, event_created=paused_at)
    account.refresh_from_db()
    assert (account.payouts_enabled, account.charges_enabled) == (False, True)
    payouts.publisher_account_sync(stripe_account=enabled, event_created=paused_at - 1)
    account.refresh_from_db()
    assert account.payouts_enabled is False
    assert payouts.publisher_account_sync(stripe_account={"id": "acct_unknown"}, event_created=1) is None


# --- payouts ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_payout_waits_until_account_updated_enables_payouts(
    publisher, second_publisher, buyer, fake_stripe, django_capture_on_commit_callbacks
):
    user, org = publisher
    _beta_user, beta = second_publisher
    invoice = _stripe_invoice(buyer=buyer, shares={org: 10_000, beta: 2_000})  # 20% fee by default

    with django_capture_on_commit_callbacks() as callbacks:
        made = payouts.payouts_for_invoice(invoice_id=invoice.pk)
    assert [(p.publisher, p.amount_cents, p.idempotency_key) for p in made] == [
        (org, 8_000, f"payout-{invoice.pk}-{org.pk}"),
        (beta, 1_600, f"payout-{invoice.pk}-{beta.pk}"),
    ]
    assert len(callbacks) == 2  # each is sent on commit
    assert [p.pk for p in payouts.payouts_for_invoice(invoice_id=invoice.pk)] == [p.pk for p in made]  # made once

    # Not onboarded yet: blocked, nothing transferred.
    payout = payouts.payout_send(payout_id=made[0].pk)
    assert payout.status == PayoutStatus.BLOCKED and "onboarding" in payout.last_error
    payouts.publisher_account_onboarding_link(
        organization=org, user=user, return_url=RETURN_URL, refresh_url=REFRESH_URL
    )
    assert payouts.payout_send(payout_id=made[0].pk).status == PayoutStatus.BLOCKED  # onboarding not finished
    assert fake_stripe.transfers() == [] and _transfer_requests(fake_stripe) == []
    assert AuditLogEntry.objects.filter(action=AuditAction.PAYOUT_BLOCKED, data__payout_id=payout.pk).count() == 1

    # Stripe says the account can receive payouts: the waiting payout goes out (on commit).
    account = PublisherAccount.objects.get(organization=org)
    fake_stripe.enable_account(account.stripe_account_id)
    with django_capture_on_commit_callbacks() as callbacks:
        _apply_latest_account_event(fake_stripe, account.stripe_account_id)
    assert len(callbacks) == 1
    assert payouts.payouts_pending_send(publisher_id=org.pk) == {"paid": 1, "waiting": 0}

    payout.refresh_from_db()
    [transfer] = fake_stripe.transfers()
    assert (payout.status, payout.stripe_transfer_id, payout.attempts) == ("paid", transfer["id"], 1)
    assert (transfer["amount"], transfer["currency"], transfer["destination"]) == (
        8_000,
        "usd",
        account.stripe_account_id,
    )
    assert transfer["transfer_group"] == f"invoice_{invoice.pk}"
    assert transfer["metadata"] == {"payout_id": str(payout.pk), "invoice_id": str(invoice.pk)}
    assert _transfer_requests(fake_stripe)[0]["idempotency_key"] == payout.idempotency_key
    # The other publisher has not onboarded: still waiting, and the sweep leaves it alone.
    assert Payout.objects.get(publisher=beta).status == PayoutStatus.PENDING
    assert payouts.payouts_pending_send() == {"paid": 0, "waiting": 1}
    assert Payout.objects.get(publisher=beta).status == PayoutStatus.BLOCKED


@pytest.mark.django_db
def test_a_payout_sent_twice_pays_once(publisher, buyer, fake_stripe):
    _user, org = publisher
    _onboard(publisher=publisher, fake=fake_stripe)
    [payout] = payouts.payouts_for_invoice(invoice_id=_stripe_invoice(buyer=buyer, shares={org: 5_000}).pk)

    first = payouts.payout_send(payout_id=payout.pk)
    second = payouts.payout_send(payout_id=payout.pk)

    assert first.status == second.status == "paid"
    assert first.stripe_transfer_id == second.stripe_transfer_id
    assert len(fake_stripe.transfers()) == 1 and len(_transfer_requests(fake_stripe)) == 1
    assert AuditLogEntry.objects.filter(action=AuditAction.PAYOUT_PAID, data__payout_id=payout.pk).count() == 1


@pytest.mark.django_db
def test_a_crash_after_stripe_made_the_transfer_does_not_pay_twice(publisher, buyer, fake_stripe):
    _user, org = publisher
    _onboard(publisher=publisher, fake=fake_stripe)
    [payout] = payouts.payouts_for_invoice(invoice_id=_stripe_invoice(buyer=buyer, shares={org: 5_000}).pk)

    # transfer_create succeeds, then the process dies before the payout is marked paid.
    with pytest.raises(Crash), transaction.atomic():
        assert payouts.payout_send(payout_id=payout.pk).status == "paid"
        raise Crash
    payout.refresh_from_db()
    assert (payout.status, payout.stripe_transfer_id, payout.attempts) == ("pending", None, 0)
    [made] = fake_stripe.transfers()

    retried = payouts.payout_send(payout_id=payout.pk)  # the same idempotency key gets the same transfer back

    assert (retried.status, retried.stripe_transfer_id) == ("paid", made["id"])
    assert [t["id"] for t in fake_stripe.transfers()] == [made["id"]]
    requests = _transfer_requests(fake_stripe)
    assert [r["idempotency_key"] for r in requests] == [payout.idempotency_key] * 2
    assert [r["replayed"] for r in requests] == [False, True]


@pytest.mark.django_db
def test_a_retry_after_stripes_idempotency_window_finds_the_first_transfer(publisher, buyer, fake_stripe):
    _user, org = publisher
    account = _onboard(publisher=publisher, fake=fake_stripe)
    invoice = _stripe_invoice(buyer=buyer, shares={org: 5_000})
    [payout] = payouts.payouts_for_invoice(invoice_id=invoice.pk)
    # A first try more than 24 hours ago made the transfer (its idempotency key has since expired at
    # Stripe) and crashed after recording the attempt.
    earlier = payments.transfer_create(
        amount=4_000,
        currency="usd",
        destination=account.stripe_account_id,
        transfer_group=f"invoice_{invoice.pk}",
        idempotency_key="expired-key",
        metadata={"payout_id": str(payout.pk), "invoice_id": str(invoice.pk)},
    )
    Payout.objects.filter(pk=payout.pk).update(attempts=1)

    assert payouts.payout_send(payout_id=payout.pk).stripe_transfer_id == earlier["id"]
    assert len(fake_stripe.transfers()) == 1 and len(_transfer_requests(fake_stripe)) == 1


@pytest.mark.django_db
def test_while_stripe_is_unavailable_the_payout_stays_pending(publisher, buyer, fake_stripe):
    _user, org = publisher
    _onboard(publisher=publisher, fake=fake_stripe)
    [payout] = payouts.payouts_for_invoice(invoice_id=_stripe_invoice(buyer=buyer, shares={org: 5_000}).pk)
    fake_stripe.fail_next(2, 429, "/v1/transfers")

    for attempt in (1, 2):
        with pytest.raises(payments.StripeUnavailable):
            payouts.payout_send(payout_id=payout.pk)
        payout.refresh_from_db()
        assert (payout.status, payout.attempts) == ("pending", attempt)
        assert f"attempt {attempt}" in payout.last_error
    assert fake_stripe.transfers() == []

    assert payouts.payouts_pending_send() == {"paid": 1, "waiting": 0}
    assert len(fake_stripe.transfers()) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_of_one_payout_make_one_transfer(publisher, buyer, fake_stripe):
    _user, org = publisher
    _onboard(publisher=publisher, fake=fake_stripe)
    [payout] = payouts.payouts_for_invoice(invoice_id=_stripe_invoice(buyer=buyer, shares={org: 5_000}).pk)
    results, start = [], threading.Barrier(3)

    def send():
        try:
            start.wait(10)
            results.append(payouts.payout_send(payout_id=payout.pk).stripe_transfer_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 3 and len(set(results)) == 1
    assert len(fake_stripe.transfers()) == 1 and len(_transfer_requests(fake_stripe)) == 1


@pytest.mark.django_db
def test_local_payouts_are_paid_with_no_external_call(publisher, buyer, settings):
    assert settings.BILLING_BACKEND == "local" and not settings.STRIPE_SECRET_KEY  # any Stripe call would fail
    _user, org = publisher
    sub = subscription_make(
        organization=buyer,
        plan=plan_make(listing=listing_make(publisher=org), kind=PlanKind.METERED, price_per_1000_cents=1000),
        start=START,
        end=END,
    )
    usage_write(subscription=sub, units=[10_000], at=[START + timedelta(days=1)])
    invoice = invoices.invoice_period_close(subscription=sub, period_start=START, period_end=END)
    [payout] = payouts.payouts_for_invoice(invoice_id=invoice.pk)
    paid = payouts.payout_send(payout_id=payout.pk)
    assert (paid.status, paid.amount_cents, paid.stripe_transfer_id) == ("paid", 8_000, None)
    assert payouts.payout_send(payout_id=payout.pk).paid_at == paid.paid_at


@pytest.mark.django_db(transaction=True)
def test_closing_a_local_period_pays_the_publisher_through_the_worker(publisher, buyer, celery_worker):
    _user, org = publisher
    sub = subscription_make(
        organization=buyer,
        plan=plan_make(
            listing=listing_make(publisher=org),
            kind=PlanKind.FLAT,
            monthly_price_cents=4900,
            included_units=1000,
            price_per_1000_cents=100,
        ),
        start=START,
        end=END,
    )
    usage_write(subscription=sub, units=[1500], at=[START + timedelta(days=1)])
    invoice = invoices.invoice_period_close(subscription=sub, period_start=START, period_end=END)
    assert invoice.total_cents == 4900 + 50
    payout = wait_for(lambda: Payout.objects.filter(invoice=invoice, status="paid").first(), timeout=20)
    assert (payout.publisher, payout.amount_cents) == (org, 3920 + 40)


# --- the publisher's page --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_payouts_page_shows_the_account_and_the_payouts(client, publisher, buyer, fake_stripe):
    user, org = publisher
    client.force_login(user)
    page = client.get(reverse("billing:payouts"), {"organization": org.slug})
    assert page.status_code == 200
    assert "Not set up" in page.content.decode() and "Set up payouts" in page.content.decode()

    started = client.post(reverse("billing:payouts-onboarding"), {"organization": org.slug})
    assert started.status_code == 302 and started["Location"].startswith(f"{fake_stripe.url}/_fake/connect/onboarding/")
    account = PublisherAccount.objects.get(organization=org)
    refreshed = client.get(reverse("billing:payouts-onboarding-refresh"), {"organization": org.slug})
    assert refreshed.status_code == 302 and refreshed["Location"].startswith(f"{fake_stripe.url}/_fake/connect/")
    assert refreshed["Location"] != started["Location"]

    # Back from Stripe: the page reads the account from Stripe.
    fake_stripe.enable_account(account.stripe_account_id)
    payouts.payouts_for_invoice(invoice_id=_stripe_invoice(buyer=buyer, shares={org: 2_500}).pk)
    payouts.payouts_pending_send()
    back = client.get(reverse("billing:payouts"), {"organization": org.slug, "onboarding": "return"})
    html = back.content.decode()
    assert "Ready" in html and account.stripe_account_id in html
    assert "$20.00" in html and "Waiting for the publisher" in html  # blocked before the refresh
    payouts.payouts_pending_send()
    html = client.get(reverse("billing:payouts"), {"organization": org.slug}).content.decode()
    assert Payout.objects.get().stripe_transfer_id in html and "Paid" in html


@pytest.mark.django_db
def test_outsiders_get_no_payouts_page(client, publisher, make_user):
    _user, org = publisher
    client.force_login(make_user(email="stranger@example.com"))
    assert client.get(reverse("billing:payouts"), {"organization": org.slug}).status_code == 404
    assert client.post(reverse("billing:payouts-onboarding"), {"organization": org.slug}).status_code == 404
    assert not PublisherAccount.objects.exists()


# --- the whole flow through the webhooks and the worker ----------------------------------------------


def _deliver(client, fake, event_type, *, connect=False):
    """Post the newest stored event of ``event_type`` to our webhook endpoint, signed as Stripe signs it."""
    event = fake.events(type=event_type)[-1]
    payload, signature = fake.signed_event(event["id"])
    path = reverse("billing:stripe-connect-webhook" if connect else "billing:stripe-webhook")
    response = client.post(path, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)
    assert response.status_code == 200, response.content
    return event


@pytest.mark.django_db(transaction=True)
def test_usage_to_stripe_invoice_to_a_payout_that_waits_for_onboarding(
    client, publisher, buyer, fake_stripe, celery_worker
):
    from billing.metering import meter_reports_send
    from billing.reconciliation import reconciliation_run

    user, org = publisher
    subscription, stripe_sub = stripe_subscription_make(fake_stripe, buyer=buyer, publisher=org)
    payouts.publisher_account_onboarding_link(
        organization=org, user=user, return_url=RETURN_URL, refresh_url=REFRESH_URL
    )
    account = PublisherAccount.objects.get(organization=org)
    now = timezone.now()
    records = usage_write(subscription=subscription, units=[1500, 2500], at=[now - timedelta(minutes=2)] * 2)
    fake_stripe.fail_next(1, 503, "/v1/billing/meter_events")
    assert meter_reports_send()["retry"] == 2
    assert meter_reports_send(now=now + timedelta(seconds=11))["sent"] == 2
    assert reconciliation_run(
        period_start=now - timedelta(hours=1),
        period_end=now + timedelta(hours=1),
        acknowledged_events=fake_stripe.meter_events(),
    )["ok"]

    # Stripe renews the subscription: $20 for the next month + 4,000 units at $2.50 per 1,000 = $30.
    renewal = fake_stripe.advance_subscription_period(stripe_sub["id"])["invoice"]
    assert renewal["total"] == 3000 and renewal["status"] == "paid"
    _deliver(client, fake_stripe, "invoice.paid")
    invoice = wait_for(lambda: Invoice.objects.filter(stripe_invoice_id=renewal["id"]).first(), timeout=20)
    payout = wait_for(lambda: Payout.objects.filter(invoice=invoice, status="blocked").first(), timeout=20)
    assert (payout.amount_cents, invoice.total_cents, invoice.platform_fee_cents) == (2400, 3000, 600)
    assert fake_stripe.transfers() == []

    # The publisher finishes onboarding: Stripe's account.updated lets the payout go, once.
    fake_stripe.enable_account(account.stripe_account_id)
    _deliver(client, fake_stripe, "account.updated", connect=True)
    paid = wait_for(lambda: Payout.objects.filter(pk=payout.pk, status="paid").first(), timeout=20)
    [transfer] = fake_stripe.transfers()
    assert (paid.stripe_transfer_id, transfer["amount"], transfer["destination"]) == (
        transfer["id"],
        2400,
        account.stripe_account_id,
    )
    # The same events delivered again change nothing.
    _deliver(client, fake_stripe, "invoice.paid")
    _deliver(client, fake_stripe, "account.updated", connect=True)
    payouts.payouts_pending_send()
    assert len(fake_stripe.transfers()) == 1 and Payout.objects.count() == 1
    assert sum(r.units for r in records) == 4000


@pytest.mark.django_db
def test_local_backend_payout_setup_needs_no_stripe(client, publisher, make_user):
    user, org = publisher
    client.force_login(user)
    started = client.post(reverse("billing:payouts-onboarding"), {"organization": org.slug})
    assert started.status_code == 302 and started["Location"].startswith("http://testserver/billing/payouts/?")
    account = PublisherAccount.objects.get(organization=org)
    assert (account.stripe_account_id, account.payouts_enabled) == (None, True)
    assert "Ready" in client.get(started["Location"]).content.decode()

    member = make_user(email="member@acme.example")
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    client.force_login(member)
    page = client.get(reverse("billing:payouts"), {"organization": org.slug}).content.decode()
    assert "Set up payouts" not in page
