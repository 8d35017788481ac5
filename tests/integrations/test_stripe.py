"""The real stripe SDK, through marketplace.integrations.stripe, against the local fake Stripe server.

Webhooks travel over real HTTP to a small receiver in this module and are verified with the
app's own ``webhook_event_construct`` (Stripe's signature scheme, checked by the SDK).
"""

from __future__ import annotations

import importlib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings

from marketplace.integrations import stripe as payments
from tests.fakes.stripe_server import FakeStripe
from tests.plugins.services import wait_for


class WebhookReceiver:
    """Collects POSTed webhooks (raw body and Stripe-Signature) and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str | None]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((body, self.headers.get("Stripe-Signature")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/stripe/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def events(self, secret: str) -> list[dict]:
        """Every received event, each verified with ``secret`` (raises if one does not verify)."""
        return [
            payments.webhook_event_construct(payload=body, sig_header=sig, secret=secret) for body, sig in self.received
        ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.stop()


def _catalog(*, included_units: int = 0) -> dict:
    """A product with a flat monthly price and a metered price (per 1,000 units) on a meter."""
    product = payments.product_create(name="Invoice parser", metadata={"listing": "42"})
    flat = payments.price_create(product=product["id"], currency="USD", unit_amount=2000, nickname="Pro")
    meter = payments.meter_create(event_name=settings.STRIPE_METER_EVENT_NAME, display_name="Specialist units")
    metered = payments.price_create(
        product=product["id"],
        currency="usd",
        meter=meter["id"],
        unit_amount_decimal=Decimal("0.25"),  # 0.25 cents a unit: $2.50 per 1,000
        included_units=included_units,
    )
    return {"product": product, "flat": flat, "meter": meter, "metered": metered}


def _subscribe(fake: FakeStripe, *, included_units: int = 0, catalog: dict | None = None) -> dict:
    catalog = catalog or _catalog(included_units=included_units)
    customer = payments.customer_create(name="Acme", email="billing@acme.test", metadata={"org": "7"})
    session = payments.checkout_session_create(
        customer=customer["id"],
        price_ids=[(catalog["flat"]["id"], 1), (catalog["metered"]["id"], None)],
        success_url="http://app.test/billing/success?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://app.test/billing/",
        client_reference_id="org-7",
        metadata={"plan": "9"},
        subscription_data={"metadata": {"plan": "9"}},
    )
    completed = fake.complete_checkout(session["id"])
    return {**catalog, "customer": customer, "session": session, **completed}


def _usage(customer: str, identifier: str, value: int) -> payments.MeterEventInput:
    return {
        "event_name": settings.STRIPE_METER_EVENT_NAME,
        "identifier": identifier,
        "customer": customer,
        "value": value,
        "timestamp": int(time.time()) - 60,
    }


# --- objects ---------------------------------------------------------------------------------


def test_catalog_objects_are_created_with_the_pinned_version(fake_stripe):
    customer = payments.customer_create(name="Acme", email="billing@acme.test", metadata={"org": "7"})
    assert customer["id"].startswith("cus_")
    assert customer["object"] == "customer"
    assert (customer["email"], customer["metadata"]) == ("billing@acme.test", {"org": "7"})
    assert payments.customer_retrieve(customer=customer["id"])["name"] == "Acme"

    catalog = _catalog(included_units=1000)
    assert catalog["product"]["id"].startswith("prod_")
    flat, metered, meter = catalog["flat"], catalog["metered"], catalog["meter"]
    assert flat["id"].startswith("price_")
    assert (flat["unit_amount"], flat["currency"], flat["type"]) == (2000, "usd", "recurring")
    assert flat["recurring"]["usage_type"] == "licensed"
    assert flat["recurring"]["interval"] == "month"
    assert meter["id"].startswith("mtr_")
    assert meter["object"] == "billing.meter"
    assert meter["event_name"] == "specialist_units"
    assert meter["default_aggregation"] == {"formula": "sum"}
    assert metered["recurring"]["usage_type"] == "metered"
    assert metered["recurring"]["meter"] == meter["id"]
    assert (metered["billing_scheme"], metered["tiers_mode"]) == ("tiered", "graduated")
    assert [m["id"] for m in payments.meter_list()] == [meter["id"]]

    sent = [r for r in fake_stripe.requests() if r["path"].startswith("/v1/")]
    assert sent and all(r["stripe_version"] == settings.STRIPE_API_VERSION for r in sent)
    assert settings.STRIPE_API_VERSION == "2026-10-28.endive"


def test_invalid_parameters_and_missing_objects_are_request_errors(fake_stripe):
    with pytest.raises(payments.StripeRequestError) as missing_product:
        payments.price_create(product="prod_missing", currency="usd", unit_amount=100)
    assert missing_product.value.status == 400
    assert missing_product.value.stripe_code == "resource_missing"
    assert "prod_missing" in missing_product.value.message

    with pytest.raises(payments.StripeObjectMissing) as missing:
        payments.customer_retrieve(customer="cus_missing")
    assert (missing.value.status, missing.value.code) == (404, "payments_object_missing")
    assert missing.value.request_id and missing.value.request_id.startswith("req_")

    with pytest.raises(ValueError):
        payments.price_create(product="prod_x", currency="usd", unit_amount=100, meter="mtr_x")


# --- checkout and webhooks -------------------------------------------------------------------


def test_checkout_completion_sends_signed_webhooks_that_verify(fake_stripe, receiver):
    fake_stripe.set_webhook_target(receiver.url, settings.STRIPE_WEBHOOK_SECRET)
    catalog = _catalog()
    customer = payments.customer_create(name="Acme", email="billing@acme.test")
    session = payments.checkout_session_create(
        customer=customer["id"],
        price_ids=[(catalog["flat"]["id"], 2), (catalog["metered"]["id"], None)],
        success_url="http://app.test/billing/success?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://app.test/billing/",
        client_reference_id="org-7",
        metadata={"plan": "9"},
        subscription_data={"metadata": {"plan": "9"}, "trial_period_days": None},
        idempotency_key="checkout-org-7-plan-9",
    )
    assert session["id"].startswith("cs_test_")
    assert (session["object"], session["mode"], session["status"]) == ("checkout.session", "subscription", "open")
    assert session["url"] and session["amount_total"] == 4000
    line_items = payments.checkout_session_retrieve(session=session["id"], expand_line_items=True)["line_items"]
    assert [(li["price"]["id"], li["quantity"]) for li in line_items["data"]] == [
        (catalog["flat"]["id"], 2),
        (catalog["metered"]["id"], None),
    ]
    assert receiver.received == []

    fake_stripe.complete_checkout(session["id"])

    events = receiver.events(settings.STRIPE_WEBHOOK_SECRET)
    assert [e["type"] for e in events] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.paid",
    ]
    assert all(e["id"].startswith("evt_") and e["api_version"] == settings.STRIPE_API_VERSION for e in events)
    completed = events[0]["data"]["object"]
    assert (completed["id"], completed["client_reference_id"], completed["status"]) == (
        session["id"],
        "org-7",
        "complete",
    )
    assert completed["payment_status"] == "paid"
    subscription_id = completed["subscription"]
    assert subscription_id.startswith("sub_")

    subscription = payments.subscription_retrieve(subscription=subscription_id)
    assert (subscription["status"], subscription["customer"], subscription["metadata"]) == (
        "active",
        customer["id"],
        {"plan": "9"},
    )
    start, end = payments.subscription_period(subscription)
    assert start <= time.time() < end and 28 * 86400 <= end - start <= 31 * 86400
    invoice = payments.invoice_retrieve(invoice=subscription["latest_invoice"])
    assert invoice["id"].startswith("in_")
    assert (invoice["status"], invoice["amount_paid"], invoice["billing_reason"]) == (
        "paid",
        4000,
        "subscription_create",
    )
    assert payments.invoice_subscription_id(invoice) == subscription_id
    line = invoice["lines"]["data"][0]
    assert line["id"].startswith("il_")
    assert payments.invoice_line_price_id(line) == catalog["flat"]["id"]
    assert [i["id"] for i in payments.invoice_list(customer=customer["id"])] == [invoice["id"]]
    assert payments.invoice_list(subscription="sub_other") == []

    # The signature covers the exact bytes and a recent timestamp.
    body, header = receiver.received[0]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert header == payments.webhook_signature_header(
        payload=body, secret=settings.STRIPE_WEBHOOK_SECRET, timestamp=timestamp
    )
    tampered = body.replace(b'"status": "complete"', b'"status": "open"')
    assert tampered != body
    for payload, sig_header, secret in [
        (tampered, header, settings.STRIPE_WEBHOOK_SECRET),
        (body, header, "whsec_someone_else"),
        (body, None, settings.STRIPE_WEBHOOK_SECRET),
        (body, "t=garbage", settings.STRIPE_WEBHOOK_SECRET),
    ]:
        with pytest.raises(payments.WebhookSignatureInvalid) as invalid:
            payments.webhook_event_construct(payload=payload, sig_header=sig_header, secret=secret)
        assert (invalid.value.status, invalid.value.code) == (400, "invalid_signature")

    old_body, old_header = fake_stripe.signed_event(events[0]["id"], timestamp=int(time.time()) - 600)
    assert old_body == body
    with pytest.raises(payments.WebhookSignatureInvalid):
        payments.webhook_event_construct(payload=old_body, sig_header=old_header, secret=settings.STRIPE_WEBHOOK_SECRET)
    fresh = payments.webhook_signature_header(payload=body, secret=settings.STRIPE_WEBHOOK_SECRET)
    assert (
        payments.webhook_event_construct(payload=body, sig_header=fresh, secret=settings.STRIPE_WEBHOOK_SECRET)["id"]
        == events[0]["id"]
    )

    with pytest.raises(payments.StripeMisconfigured):
        payments.webhook_event_construct(payload=body, sig_header=header, secret="")


def test_stored_events_can_be_replayed_and_delivered_out_of_order(fake_stripe, receiver):
    fake_stripe.set_webhook_target(receiver.url, settings.STRIPE_WEBHOOK_SECRET, auto_deliver=False)
    subscribed = _subscribe(fake_stripe)
    assert receiver.received == []
    events = {e["type"]: e for e in fake_stripe.events()}
    assert events["checkout.session.completed"]["data"]["object"]["subscription"] == subscribed["subscription"]["id"]

    for event_type in ["invoice.paid", "checkout.session.completed", "invoice.paid"]:
        assert fake_stripe.send_event(events[event_type]["id"])["status"] == 200
    received = receiver.events(settings.STRIPE_WEBHOOK_SECRET)
    assert [e["type"] for e in received] == ["invoice.paid", "checkout.session.completed", "invoice.paid"]
    assert received[0]["id"] == received[2]["id"]
    assert payments.event_retrieve(event=received[1]["id"])["type"] == "checkout.session.completed"


def test_abandoned_checkout_expires(fake_stripe):
    catalog = _catalog()
    customer = payments.customer_create(name="Acme", email="billing@acme.test")
    session = payments.checkout_session_create(
        customer=customer["id"],
        price_ids=[(catalog["flat"]["id"], 1)],
        success_url="http://app.test/ok",
        cancel_url="http://app.test/no",
        client_reference_id="org-7",
    )
    assert payments.checkout_session_expire(session=session["id"])["status"] == "expired"
    assert payments.checkout_session_retrieve(session=session["id"])["status"] == "expired"
    assert [e["type"] for e in fake_stripe.events()] == ["checkout.session.expired"]
    with pytest.raises(RuntimeError, match="expired"):
        fake_stripe.complete_checkout(session["id"])
    with pytest.raises(payments.StripeRequestError):
        payments.checkout_session_create(
            customer=customer["id"],
            price_ids=[(catalog["metered"]["id"], 3)],  # a metered price takes no quantity
            success_url="http://app.test/ok",
            cancel_url="http://app.test/no",
            client_reference_id="org-7",
        )


def test_the_checkout_page_pays_and_redirects_to_the_success_url(fake_stripe):
    catalog = _catalog()
    customer = payments.customer_create(name="Acme", email="billing@acme.test")
    session = payments.checkout_session_create(
        customer=customer["id"],
        price_ids=[(catalog["flat"]["id"], 1)],
        success_url="http://app.test/billing/success?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://app.test/billing/",
        client_reference_id="org-7",
    )
    with urllib.request.urlopen(session["url"], timeout=10) as page:
        assert b"Pay and subscribe" in page.read()
    location = _post_form_location(f"{fake_stripe.url}/_fake/checkout/{session['id']}/pay")
    assert location == f"http://app.test/billing/success?session_id={session['id']}"
    assert payments.checkout_session_retrieve(session=session["id"])["status"] == "complete"


# --- idempotency and faults ------------------------------------------------------------------


def test_an_idempotency_key_replays_the_first_answer(fake_stripe):
    first = payments.customer_create(name="Acme", email="a@acme.test", idempotency_key="customer-org-7")
    again = payments.customer_create(name="Acme", email="a@acme.test", idempotency_key="customer-org-7")
    assert again == first
    other = payments.customer_create(name="Acme", email="a@acme.test", idempotency_key="customer-org-8")
    assert other["id"] != first["id"]
    posts = [r for r in fake_stripe.requests() if r["path"] == "/v1/customers"]
    assert [r["replayed"] for r in posts] == [False, True, False]

    with pytest.raises(payments.StripeRequestError) as conflict:
        payments.customer_create(name="Someone else", email="a@acme.test", idempotency_key="customer-org-7")
    assert (conflict.value.status, conflict.value.code) == (409, "payments_idempotency_conflict")


@pytest.mark.parametrize("status", [429, 500, 503, 0])
def test_rate_limits_outages_and_dropped_connections_are_retryable(fake_stripe, status):
    fake_stripe.fail_next(2, status, "/v1/customers")
    for _ in range(2):
        with pytest.raises(payments.StripeUnavailable) as unavailable:
            payments.customer_create(name="Acme", email="a@acme.test", idempotency_key="customer-org-7")
        error = unavailable.value
        assert (error.status, error.code, error.retryable) == (503, "payments_unavailable", True)
    # A fault elsewhere does not touch other paths, and the retry with the same key creates one customer.
    created = payments.customer_create(name="Acme", email="a@acme.test", idempotency_key="customer-org-7")
    assert payments.customer_create(name="Acme", email="a@acme.test", idempotency_key="customer-org-7") == created
    posts = [r for r in fake_stripe.requests() if r["path"] == "/v1/customers"]
    assert [(r["fault"], r["replayed"]) for r in posts] == [(True, False), (True, False), (False, False), (False, True)]
    assert {r["idempotency_key"] for r in posts} == {"customer-org-7"}


def test_declines_and_bad_credentials_are_translated(fake_stripe, settings):
    fake_stripe.fail_next(1, 402)
    with pytest.raises(payments.PaymentDeclined) as declined:
        payments.customer_create(name="Acme", email="a@acme.test")
    assert (declined.value.status, declined.value.code, declined.value.stripe_code) == (
        402,
        "payment_declined",
        "card_declined",
    )

    settings.STRIPE_SECRET_KEY = "sk_live_wrong"
    with pytest.raises(payments.StripeMisconfigured) as refused:
        payments.customer_create(name="Acme", email="a@acme.test")
    assert refused.value.status == 500
    settings.STRIPE_SECRET_KEY = ""
    with pytest.raises(payments.StripeMisconfigured):
        payments.customer_create(name="Acme", email="a@acme.test")


# --- usage -----------------------------------------------------------------------------------


def test_meter_events_count_once_per_identifier(fake_stripe):
    subscribed = _subscribe(fake_stripe)
    customer = subscribed["customer"]["id"]
    first = payments.meter_events_create(
        events=[_usage(customer, "usage-1", 400), _usage(customer, "usage-2", 350), _usage(customer, "usage-1", 400)]
    )
    assert [r["status"] for r in first] == ["created", "created", "duplicate"]
    assert (first[0]["event"] or {}).get("payload") == {"stripe_customer_id": customer, "value": "400"}

    # Stripe sometimes refuses a duplicate with a message only; that is a success too.
    fake_stripe.fail_next(
        1,
        400,
        "/v1/billing/meter_events",
        error={"type": "invalid_request_error", "message": "An event already exists with identifier usage-2."},
    )
    retried = payments.meter_events_create(events=[_usage(customer, "usage-2", 350), _usage(customer, "usage-3", 250)])
    assert [r["status"] for r in retried] == ["duplicate", "created"]

    # Once Stripe is unavailable the rest of the batch waits for the next run.
    fake_stripe.fail_next(1, 429, "/v1/billing/meter_events")
    batch = payments.meter_events_create(
        events=[_usage(customer, "usage-4", 1), _usage(customer, "usage-5", 1), _usage(customer, "usage-6", 1)]
    )
    assert [r["status"] for r in batch] == ["failed", "not_sent", "not_sent"]
    assert isinstance(batch[0]["error"], payments.StripeUnavailable)

    too_old = _usage(customer, "usage-old", 5)
    too_old["timestamp"] = int(time.time()) - 40 * 86400
    refused = payments.meter_events_create(events=[too_old, _usage(customer, "usage-7", 0)])
    assert [r["status"] for r in refused] == ["failed", "created"]
    assert isinstance(refused[0]["error"], payments.StripeRequestError)

    received = fake_stripe.meter_events(customer=customer)
    assert [e["identifier"] for e in received] == ["usage-1", "usage-2", "usage-3", "usage-7"]

    # The renewal invoice bills that usage once: 1,000 units at $2.50 per 1,000 plus next month's $20.
    renewal = fake_stripe.advance_subscription_period(subscribed["subscription"]["id"])["invoice"]
    lines = {payments.invoice_line_price_id(line): line for line in renewal["lines"]["data"]}
    assert (lines[subscribed["metered"]["id"]]["quantity"], lines[subscribed["metered"]["id"]]["amount"]) == (1000, 250)
    assert lines[subscribed["flat"]["id"]]["amount"] == 2000
    assert (renewal["status"], renewal["amount_paid"]) == ("paid", 2250)


def test_included_units_are_free(fake_stripe):
    subscribed = _subscribe(fake_stripe, included_units=1000)
    customer = subscribed["customer"]["id"]
    payments.meter_events_create(events=[_usage(customer, f"u-{n}", 500) for n in range(5)])
    renewal = fake_stripe.advance_subscription_period(subscribed["subscription"]["id"])["invoice"]
    metered = next(
        line for line in renewal["lines"]["data"] if payments.invoice_line_price_id(line) == subscribed["metered"]["id"]
    )
    assert (metered["quantity"], metered["amount"]) == (2500, 375)  # 1,500 billable units at 0.25 cents


# --- subscription lifecycle ------------------------------------------------------------------


def test_failed_renewal_goes_past_due_and_recovers(fake_stripe, receiver):
    subscribed = _subscribe(fake_stripe)
    fake_stripe.set_webhook_target(receiver.url, settings.STRIPE_WEBHOOK_SECRET)
    subscription_id = subscribed["subscription"]["id"]
    period = payments.subscription_period(subscribed["subscription"])

    renewal = fake_stripe.advance_subscription_period(subscription_id, payment_fails=True)["invoice"]
    assert renewal["status"] == "open"
    assert payments.subscription_retrieve(subscription=subscription_id)["status"] == "past_due"
    assert payments.subscription_period(payments.subscription_retrieve(subscription=subscription_id))[0] == period[1]
    fake_stripe.fail_invoice_payment(renewal["id"])
    assert payments.invoice_retrieve(invoice=renewal["id"])["attempt_count"] == 2

    fake_stripe.pay_invoice(renewal["id"])
    assert payments.subscription_retrieve(subscription=subscription_id)["status"] == "active"
    assert payments.invoice_list(subscription=subscription_id, status="paid")[0]["id"] == renewal["id"]
    events = receiver.events(settings.STRIPE_WEBHOOK_SECRET)
    assert [e["type"] for e in events] == [
        "customer.subscription.updated",
        "invoice.payment_failed",
        "invoice.payment_failed",
        "invoice.paid",
        "customer.subscription.updated",
    ]
    assert events[0]["data"]["previous_attributes"]["status"] == "active"
    assert events[-1]["data"]["object"]["status"] == "active"


def test_upgrade_cancel_at_period_end_and_cancel_now(fake_stripe, receiver):
    subscribed = _subscribe(fake_stripe)
    subscription = subscribed["subscription"]
    flat_item = next(i for i in subscription["items"]["data"] if i["price"]["id"] == subscribed["flat"]["id"])
    bigger = payments.price_create(product=subscribed["product"]["id"], currency="usd", unit_amount=5000)
    fake_stripe.set_webhook_target(receiver.url, settings.STRIPE_WEBHOOK_SECRET)

    upgraded = payments.subscription_update(
        subscription=subscription["id"],
        items=[{"id": flat_item["id"], "price": bigger["id"]}],
        proration_behavior="always_invoice",
        idempotency_key="upgrade-1",
    )
    assert bigger["id"] in [i["price"]["id"] for i in upgraded["items"]["data"]]
    proration = payments.invoice_retrieve(invoice=upgraded["latest_invoice"])
    assert proration["billing_reason"] == "subscription_update"
    assert 2900 <= proration["total"] <= 3000  # a full period left: $50 - $20
    wait_for(lambda: len(receiver.received) >= 2, message="upgrade webhooks")

    ending = payments.subscription_update(subscription=subscription["id"], cancel_at_period_end=True)
    assert ending["cancel_at_period_end"] is True
    assert ending["cancel_at"] == payments.subscription_period(ending)[1]
    assert ending["status"] == "active"  # entitled until the period ends
    fake_stripe.advance_subscription_period(subscription["id"])
    assert payments.subscription_retrieve(subscription=subscription["id"])["status"] == "canceled"

    other = _subscribe(fake_stripe, catalog=subscribed)
    canceled = payments.subscription_cancel(subscription=other["subscription"]["id"])
    assert (canceled["status"], bool(canceled["ended_at"])) == ("canceled", True)
    with pytest.raises(payments.StripeRequestError):
        payments.subscription_update(subscription=other["subscription"]["id"], cancel_at_period_end=True)

    wait_for(
        lambda: [json.loads(body)["type"] for body, _ in receiver.received].count("customer.subscription.deleted") == 2,
        message="two customer.subscription.deleted webhooks",
    )
    types = [e["type"] for e in receiver.events(settings.STRIPE_WEBHOOK_SECRET)]
    assert types[:2] == ["customer.subscription.updated", "invoice.paid"]


# --- Connect ---------------------------------------------------------------------------------


def test_connected_account_onboarding_link_and_idempotent_transfer(fake_stripe, receiver):
    fake_stripe.set_webhook_target(receiver.url, settings.STRIPE_CONNECT_WEBHOOK_SECRET, connect=True)
    account = payments.account_create(email="publisher@models.test", country="us", metadata={"org": "3"})
    assert account["id"].startswith("acct_")
    assert (account["charges_enabled"], account["payouts_enabled"]) == (False, False)
    assert account["controller"]["stripe_dashboard"]["type"] == "express"
    assert account["capabilities"] == {"transfers": "inactive"}

    link = payments.account_link_create(
        account=account["id"], refresh_url="http://app.test/payouts/refresh", return_url="http://app.test/payouts/done"
    )
    assert link["object"] == "account_link"
    assert link["url"].startswith(fake_stripe.url) and link["expires_at"] > link["created"]
    assert payments.account_login_link_create(account=account["id"])["url"].startswith("http")

    with pytest.raises(payments.StripeRequestError) as not_ready:
        payments.transfer_create(
            amount=1600,
            currency="usd",
            destination=account["id"],
            transfer_group="in_1",
            idempotency_key="payout-in_1-3",
        )
    assert not_ready.value.stripe_code == "insufficient_capabilities_for_transfer"

    with urllib.request.urlopen(link["url"], timeout=10) as page:
        assert b"Agree and submit" in page.read()
    assert _post_form_location(link["url"]) == "http://app.test/payouts/done"
    assert _post_form_location(link["url"]) == "http://app.test/payouts/refresh"  # single use
    ready = payments.account_retrieve(account=account["id"])
    assert (ready["charges_enabled"], ready["payouts_enabled"], ready["details_submitted"]) == (True, True, True)
    (updated,) = receiver.events(settings.STRIPE_CONNECT_WEBHOOK_SECRET)
    assert (updated["type"], updated["account"]) == ("account.updated", account["id"])
    assert updated["data"]["previous_attributes"]["payouts_enabled"] is False

    transfer = payments.transfer_create(
        amount=1600, currency="USD", destination=account["id"], transfer_group="in_1", idempotency_key="payout-in_1-3"
    )
    again = payments.transfer_create(
        amount=1600, currency="usd", destination=account["id"], transfer_group="in_1", idempotency_key="payout-in_1-3"
    )
    assert transfer["id"].startswith("tr_") and again["id"] == transfer["id"]
    assert (transfer["amount"], transfer["destination"], transfer["transfer_group"]) == (1600, account["id"], "in_1")
    assert [t["id"] for t in fake_stripe.transfers(destination=account["id"])] == [transfer["id"]]
    with pytest.raises(ValueError):
        payments.transfer_create(
            amount=0, currency="usd", destination=account["id"], transfer_group="g", idempotency_key="k"
        )


# --- settings --------------------------------------------------------------------------------


def test_the_billing_backend_follows_the_secret_key(monkeypatch):
    from marketplace.settings import billing

    try:
        monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_123")
        monkeypatch.delenv("BILLING_BACKEND", raising=False)
        assert importlib.reload(billing).BILLING_BACKEND == "stripe"
        monkeypatch.setenv("STRIPE_SECRET_KEY", "")
        reloaded = importlib.reload(billing)
        assert reloaded.BILLING_BACKEND == "local"
        assert (reloaded.PLATFORM_FEE_PERCENT, reloaded.BILLING_GRACE_DAYS, reloaded.SPEND_CAP_NOTICE_PERCENT) == (
            20,
            7,
            80,
        )
        assert (reloaded.STRIPE_API_BASE, reloaded.STRIPE_METER_EVENT_NAME) == ("", "specialist_units")
    finally:
        monkeypatch.undo()
        importlib.reload(billing)


def _post_form_location(url: str) -> str:
    """POST the page's form like a browser and return where the 303 points, without following it."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=urllib.parse.urlencode({"_form": "1"}).encode(), method="POST")
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 303, exc.read()
        return exc.headers["Location"]
    raise AssertionError("expected a 303 redirect")
