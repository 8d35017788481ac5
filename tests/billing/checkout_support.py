"""Helpers for the checkout, webhook and lifecycle tests: starting checkouts, delivering the fake Stripe's
signed events to our webhook endpoint with Django's test client, and processing stored events the way
the ``billing.stripe_event_process`` task does."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from billing import checkout, webhooks
from billing.models import StripeEvent, StripeEventStatus
from tests.fakes.stripe_server import FakeStripe

WEBHOOK_PATH = "/billing/stripe/webhook/"
SUCCESS_URL = "http://testserver/billing/checkout/success/?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://testserver/billing/checkout/cancel/?checkout={CHECKOUT_ID}"


def checkout_start(*, org: Any, user: Any, plan: Any, ip: str = "203.0.113.9", **kwargs: Any):
    kwargs.setdefault("accept_license", True)
    return checkout.checkout_start(
        organization=org, user=user, plan=plan, ip_address=ip, success_url=SUCCESS_URL, cancel_url=CANCEL_URL, **kwargs
    )


def webhook_post(client: Any, fake: FakeStripe, event_id: str, *, path: str = WEBHOOK_PATH, secret: str | None = None):
    """POST one stored event exactly as Stripe would deliver it (raw body, Stripe-Signature)."""
    body, signature = fake.signed_event(event_id, secret=secret)
    return client.post(path, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def webhooks_deliver(client: Any, fake: FakeStripe, *, types: set[str] | None = None) -> list[str]:
    """Deliver every event the fake has stored (or those of ``types``), in order; returns their ids."""
    delivered = []
    for event in fake.events():
        if types is None or event["type"] in types:
            response = webhook_post(client, fake, event["id"])
            assert response.status_code == 200, response.content
            delivered.append(event["id"])
    return delivered


def events_process(*, event_ids: list[str] | None = None) -> dict[str, str]:
    """Run the processing task's body for stored events not yet done, oldest first: ``{event id: status}``."""
    rows = StripeEvent.objects.filter(status__in=(StripeEventStatus.RECEIVED, StripeEventStatus.FAILED))
    if event_ids is not None:
        rows = rows.filter(event_id__in=event_ids)
    return {
        row.event_id: webhooks.stripe_event_process(event_row_id=row.pk)
        for row in rows.order_by("stripe_created", "pk")
    }


def fake_event(fake: FakeStripe, event_type: str, *, index: int = -1) -> dict:
    return fake.events(type=event_type)[index]


def webhook_secret() -> str:
    return settings.STRIPE_WEBHOOK_SECRET
