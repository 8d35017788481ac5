"""Billing: which backend charges buyers, Stripe's keys and version pin, and the money rules.

``BILLING_BACKEND`` is ``"stripe"`` when ``STRIPE_SECRET_KEY`` is set, else ``"local"`` (no external
calls; the embedded default and the demo). ``STRIPE_API_BASE`` is empty for Stripe itself; the tests
point it at their fake Stripe server. See ``marketplace/integrations/stripe.py`` for running against
Stripe's test mode with real keys.
"""

from marketplace.env import env

STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
# Signing secret of the platform webhook endpoint (`stripe listen` prints one for local runs).
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
# Connect events (account.updated, ...) come to a separate endpoint with its own signing secret.
STRIPE_CONNECT_WEBHOOK_SECRET = env.str("STRIPE_CONNECT_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
# Pinned, not left to the SDK: object shapes (and webhook payloads) change between versions.
# This is the version stripe-python 16.1 was generated for (`stripe.api_version`).
STRIPE_API_VERSION = env.str("STRIPE_API_VERSION", default="2026-10-28.endive")
# Seconds one Stripe request may take; the SDK's default (80 s) is too long inside a web request.
STRIPE_TIMEOUT_S = env.float("STRIPE_TIMEOUT_S", default=20.0)
STRIPE_METER_EVENT_NAME = env.str("STRIPE_METER_EVENT_NAME", default="specialist_units")

BILLING_BACKEND = env.str("BILLING_BACKEND", default="stripe" if STRIPE_SECRET_KEY else "local")

# The platform's share of each publisher's revenue, in percent.
PLATFORM_FEE_PERCENT = env.int("PLATFORM_FEE_PERCENT", default=20)
# Days a past-due subscription keeps its entitlement before it is suspended.
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=7)
# Spend-cap notice threshold, in percent of the cap.
SPEND_CAP_NOTICE_PERCENT = env.int("SPEND_CAP_NOTICE_PERCENT", default=80)
# Country of new Connect accounts for publishers (Stripe-hosted onboarding collects the rest).
STRIPE_CONNECT_COUNTRY = env.str("STRIPE_CONNECT_COUNTRY", default="US")
