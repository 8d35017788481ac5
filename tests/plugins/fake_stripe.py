"""The fake Stripe server for the tests (tests/fakes/stripe_server.py).

Fixtures:
- ``fake_stripe_server`` (session): one fake Stripe on a free loopback port for the whole run.
- ``fake_stripe`` (function): the same server with its state emptied, and the settings pointed at it:
  ``STRIPE_SECRET_KEY="sk_test_fake"``, ``STRIPE_API_BASE=<its url>``, the two webhook signing
  secrets below (events are signed with them), ``BILLING_BACKEND="stripe"``. Events are stored but
  not delivered until a test sets a target URL with ``fake_stripe.set_webhook_target(url, secret)``
  (or fetches them with ``fake_stripe.signed_event(event_id)``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.stripe_server import FakeStripe

FAKE_STRIPE_SECRET_KEY = "sk_test_fake"
FAKE_STRIPE_PUBLISHABLE_KEY = "pk_test_fake"
FAKE_WEBHOOK_SECRET = "whsec_test_fake_platform"
FAKE_CONNECT_WEBHOOK_SECRET = "whsec_test_fake_connect"


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe(host="127.0.0.1", port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe, settings) -> Iterator[FakeStripe]:
    fake_stripe_server.reset()
    settings.STRIPE_SECRET_KEY = FAKE_STRIPE_SECRET_KEY
    settings.STRIPE_PUBLISHABLE_KEY = FAKE_STRIPE_PUBLISHABLE_KEY
    settings.STRIPE_API_BASE = fake_stripe_server.url
    settings.STRIPE_WEBHOOK_SECRET = FAKE_WEBHOOK_SECRET
    settings.STRIPE_CONNECT_WEBHOOK_SECRET = FAKE_CONNECT_WEBHOOK_SECRET
    settings.BILLING_BACKEND = "stripe"
    fake_stripe_server.set_webhook_target(None, FAKE_WEBHOOK_SECRET)
    fake_stripe_server.set_webhook_target(None, FAKE_CONNECT_WEBHOOK_SECRET, connect=True)
    yield fake_stripe_server
    fake_stripe_server.reset()
