"""Stripe: the one module that imports the ``stripe`` SDK.

Every call goes through a ``stripe.StripeClient`` built from the settings read at call time (tests
change them): ``STRIPE_SECRET_KEY``, ``STRIPE_API_BASE`` (empty = Stripe itself), the pinned
``STRIPE_API_VERSION`` and ``STRIPE_TIMEOUT_S``. The SDK's own retries are off
(``max_network_retries=0``): callers retry, from an outbox, with the same idempotency key.

Functions take keyword-only arguments and return plain JSON-ready dicts (``StripeObject.to_dict``),
so callers can store them and never touch SDK types. SDK errors are translated:

- rate limited (429), unreachable, or a 5xx: :class:`StripeUnavailable` (503, ``retryable``);
- a card declined (402): :class:`PaymentDeclined`;
- a rejected request (400): :class:`StripeRequestError`; a missing object (404):
  :class:`StripeObjectMissing`; an idempotency key reused with other parameters:
  :class:`StripeRequestError` with code ``payments_idempotency_conflict`` (409);
- a bad or missing key (401/403): :class:`StripeMisconfigured` (500).

All of them are :class:`PaymentsError`, an ``ApplicationError``; ``stripe_code`` and
``request_id`` keep Stripe's error code and request id for logs.

Object shapes follow the pinned API version: a subscription's billing period is on its items
(``items.data[].current_period_start/end``), an invoice names its subscription under
``parent.subscription_details.subscription`` and a line its price under
``pricing.price_details.price``. :func:`subscription_period`, :func:`invoice_subscription_id` and
:func:`invoice_line_price_id` read them so callers need not.

Running against Stripe's test mode with real keys
-------------------------------------------------
1. In the Stripe Dashboard (test mode, or a sandbox) copy the secret and publishable keys::

       export STRIPE_SECRET_KEY=sk_test_...  STRIPE_PUBLISHABLE_KEY=pk_test_...

   Leave ``STRIPE_API_BASE`` empty (Stripe's own API). ``BILLING_BACKEND`` becomes ``stripe``.
2. Forward webhooks to the local server with the Stripe CLI and use the signing secret it prints::

       stripe listen --forward-to localhost:8000/billing/stripe/webhook/ \\
                     --forward-connect-to localhost:8000/billing/stripe/connect-webhook/
       export STRIPE_WEBHOOK_SECRET=whsec_...  STRIPE_CONNECT_WEBHOOK_SECRET=whsec_...

   (``stripe listen`` prints one secret for both; set both variables to it. The paths are the
   webhook views' URLs.) The CLI should use the same API version as ``STRIPE_API_VERSION``.
3. Pay with Stripe's test cards (4242 4242 4242 4242 succeeds, 4000 0000 0000 0341 attaches and then
   fails renewals). Connect onboarding in test mode accepts Stripe's documented test data.

The tests never reach Stripe: ``tests/fakes/stripe_server.py`` is a local fake of the endpoints used
here, and ``tests/plugins/fake_stripe.py`` points these settings at it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypedDict

import stripe
from django.conf import settings

from marketplace.errors import ApplicationError

__all__ = [
    "MeterEventInput",
    "MeterEventResult",
    "PaymentDeclined",
    "PaymentsError",
    "StripeMisconfigured",
    "StripeObjectMissing",
    "StripeRequestError",
    "StripeUnavailable",
    "WebhookSignatureInvalid",
    "account_create",
    "account_link_create",
    "account_login_link_create",
    "account_retrieve",
    "checkout_session_create",
    "checkout_session_expire",
    "checkout_session_retrieve",
    "customer_create",
    "customer_retrieve",
    "event_retrieve",
    "invoice_line_price_id",
    "invoice_list",
    "invoice_retrieve",
    "invoice_subscription_id",
    "meter_create",
    "meter_event_create",
    "meter_events_create",
    "meter_list",
    "price_create",
    "product_create",
    "subscription_cancel",
    "subscription_period",
    "subscription_retrieve",
    "subscription_update",
    "transfer_create",
    "transfer_list",
    "webhook_event_construct",
    "webhook_signature_header",
]

StripeObject = dict[str, Any]
WEBHOOK_TOLERANCE_S = 300  # Stripe's default: older signatures are refused (replay protection)


# --- errors ----------------------------------------------------------------------------------


class PaymentsError(ApplicationError):
    """Stripe refused or could not serve a request; base of every error this module raises."""

    status = 502
    code = "payments_error"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        stripe_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.stripe_code = stripe_code
        self.request_id = request_id


class StripeUnavailable(PaymentsError):
    """Rate limited, unreachable or failing on Stripe's side: try again later, same idempotency key."""

    status = 503
    code = "payments_unavailable"
    retryable = True


class PaymentDeclined(PaymentsError):
    status = 402
    code = "payment_declined"


class StripeRequestError(PaymentsError):
    """Stripe rejected the request's parameters; retrying the same request will not help."""

    status = 400
    code = "payments_request_invalid"


class StripeObjectMissing(StripeRequestError):
    status = 404
    code = "payments_object_missing"


class StripeMisconfigured(PaymentsError):
    """No key, a wrong key, or a missing webhook secret: an operator has to fix the settings."""

    status = 500
    code = "payments_misconfigured"


class WebhookSignatureInvalid(PaymentsError):
    status = 400
    code = "invalid_signature"


_UNAVAILABLE_MESSAGE = "Payments are temporarily unavailable. Please try again shortly."


def _translated(exc: stripe.StripeError) -> PaymentsError:
    details: dict[str, Any] = {"stripe_code": exc.code, "request_id": exc.request_id}
    stripe_message = exc.user_message or type(exc).__name__
    http_status = exc.http_status
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return StripeUnavailable(_UNAVAILABLE_MESSAGE, **details)
    if isinstance(exc, stripe.CardError):
        return PaymentDeclined(stripe_message, **details)
    if isinstance(exc, stripe.IdempotencyError):
        return StripeRequestError(stripe_message, code="payments_idempotency_conflict", status=409, **details)
    if isinstance(exc, stripe.InvalidRequestError):
        if http_status == 404:
            return StripeObjectMissing(stripe_message, **details)
        return StripeRequestError(stripe_message, **details)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return StripeMisconfigured(f"Stripe refused the configured credentials: {stripe_message}", **details)
    if http_status is None or http_status >= 500:
        return StripeUnavailable(_UNAVAILABLE_MESSAGE, **details)
    return PaymentsError(stripe_message, **details)


@contextmanager
def _stripe_errors() -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        raise _translated(exc) from exc


# --- the client ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _client_for(api_key: str, api_base: str, api_version: str, timeout_s: float) -> stripe.StripeClient:
    base_addresses: dict[str, str] = {}
    if api_base:
        base_addresses = {"api": api_base, "meter_events": api_base}
    return stripe.StripeClient(
        api_key,
        base_addresses=base_addresses,  # type: ignore[arg-type]
        stripe_version=api_version,
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout_s),
    )


def _client() -> stripe.StripeClient:
    api_key = settings.STRIPE_SECRET_KEY
    if not api_key:
        raise StripeMisconfigured("Stripe is not configured: STRIPE_SECRET_KEY is empty.")
    return _client_for(
        api_key, settings.STRIPE_API_BASE.rstrip("/"), settings.STRIPE_API_VERSION, float(settings.STRIPE_TIMEOUT_S)
    )


def _options(idempotency_key: str | None) -> dict[str, Any]:
    return {"idempotency_key": idempotency_key} if idempotency_key else {}


def _plain(obj: Any) -> StripeObject:
    return obj.to_dict(for_json=True)


def _without_none(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


# --- customers, products, prices, meters -----------------------------------------------------


def customer_create(
    *, name: str, email: str, metadata: Mapping[str, str] | None = None, idempotency_key: str | None = None
) -> StripeObject:
    params = _without_none({"name": name, "email": email, "metadata": dict(metadata or {}) or None})
    with _stripe_errors():
        return _plain(_client().v1.customers.create(params=params, options=_options(idempotency_key)))  # type: ignore[arg-type]


def customer_retrieve(*, customer: str) -> StripeObject:
    with _stripe_errors():
        return _plain(_client().v1.customers.retrieve(customer))


def product_create(
    *,
    name: str,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> StripeObject:
    params = _without_none({"name": name, "description": description, "metadata": dict(metadata or {}) or None})
    with _stripe_errors():
        return _plain(_client().v1.products.create(params=params, options=_options(idempotency_key)))  # type: ignore[arg-type]


def price_create(
    *,
    product: str,
    currency: str,
    unit_amount: int | None = None,
    meter: str | None = None,
    unit_amount_decimal: Decimal | str | None = None,
    included_units: int = 0,
    interval: Literal["month", "year"] = "month",
    nickname: str | None = None,
    lookup_key: str | None = None,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> StripeObject:
    """A recurring price, billed every ``interval``.

    Flat (``meter`` None): ``unit_amount`` minor units per period (quantity 1 unless the checkout says
    otherwise). Metered (``meter`` a ``mtr_`` id): usage reported to that meter, charged at
    ``unit_amount_decimal`` minor units per unit (fractions allowed: 0.25 cents a unit is $2.50 per
    1,000); with ``included_units`` the first that many units of each period are free (graduated tiers).
    """
    recurring: dict[str, Any] = {"interval": interval, "interval_count": 1}
    params: dict[str, Any] = {
        "product": product,
        "currency": currency.lower(),
        "nickname": nickname,
        "lookup_key": lookup_key,
        "metadata": dict(metadata or {}) or None,
        "recurring": recurring,
    }
    if meter is None:
        if unit_amount is None or unit_amount_decimal is not None or included_units:
            raise ValueError("A flat price takes unit_amount only.")
        recurring["usage_type"] = "licensed"
        params["unit_amount"] = int(unit_amount)
    else:
        if unit_amount_decimal is None or unit_amount is not None:
            raise ValueError("A metered price takes unit_amount_decimal (minor units per unit).")
        recurring["usage_type"] = "metered"
        recurring["meter"] = meter
        per_unit = str(Decimal(str(unit_amount_decimal)).normalize())
        if included_units > 0:
            params["billing_scheme"] = "tiered"
            params["tiers_mode"] = "graduated"
            params["tiers"] = [
                {"up_to": int(included_units), "unit_amount": 0},
                {"up_to": "inf", "unit_amount_decimal": per_unit},
            ]
        else:
            params["billing_scheme"] = "per_unit"
            params["unit_amount_decimal"] = per_unit
    with _stripe_errors():
        price = _client().v1.prices.create(params=_without_none(params), options=_options(idempotency_key))  # type: ignore[arg-type]
        return _plain(price)


def meter_create(*, event_name: str, display_name: str, idempotency_key: str | None = None) -> StripeObject:
    """A billing meter summing ``payload[value]`` per customer (``payload[stripe_customer_id]``)."""
    params = {
        "event_name": event_name,
        "display_name": display_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
    }
    with _stripe_errors():
        return _plain(_client().v1.billing.meters.create(params=params, options=_options(idempotency_key)))  # type: ignore[arg-type]


def meter_list(*, status: Literal["active", "inactive"] | None = None) -> list[StripeObject]:
    """Every meter (all pages); an event name belongs to one meter, so setup can find-or-create."""
    params = _without_none({"status": status, "limit": 100})
    with _stripe_errors():
        page = _client().v1.billing.meters.list(params=params)  # type: ignore[arg-type]
        return [_plain(meter) for meter in page.auto_paging_iter()]


# --- usage: billing meter events -------------------------------------------------------------


class MeterEventInput(TypedDict):
    event_name: str
    identifier: str  # our usage record id: Stripe refuses a second event with the same identifier
    customer: str
    value: int | Decimal
    timestamp: int | datetime


class MeterEventResult(TypedDict):
    identifier: str
    # created: accepted now; duplicate: Stripe already had it (counted once, so also a success);
    # failed: refused, see error; not_sent: skipped after Stripe became unavailable in this batch.
    status: Literal["created", "duplicate", "failed", "not_sent"]
    event: StripeObject | None
    error: PaymentsError | None


def _is_duplicate_meter_event(exc: stripe.StripeError) -> bool:
    # Stripe documents the code; some answers carry only the message, so match both.
    if exc.code == "duplicate_meter_event":
        return True
    message = (exc.user_message or "").lower()
    return "already exists with identifier" in message or "duplicate identifier" in message


def _unix(timestamp: int | datetime) -> int:
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("Meter event timestamps must be timezone-aware.")
        return int(timestamp.timestamp())
    return int(timestamp)


def meter_event_create(
    *, event_name: str, identifier: str, customer: str, value: int | Decimal, timestamp: int | datetime
) -> MeterEventResult:
    """Report one usage amount (POST /v1/billing/meter_events). A repeated ``identifier`` is a success
    (``status="duplicate"``): Stripe counted it the first time. Other failures raise."""
    params = {
        "event_name": event_name,
        "identifier": identifier,
        "timestamp": _unix(timestamp),
        "payload": {"stripe_customer_id": customer, "value": str(value)},
    }
    try:
        event = _client().v1.billing.meter_events.create(params=params)  # type: ignore[arg-type]
    except stripe.InvalidRequestError as exc:
        if _is_duplicate_meter_event(exc):
            return {"identifier": identifier, "status": "duplicate", "event": None, "error": None}
        raise _translated(exc) from exc
    except stripe.StripeError as exc:
        raise _translated(exc) from exc
    return {"identifier": identifier, "status": "created", "event": _plain(event), "error": None}


def meter_events_create(*, events: Sequence[MeterEventInput]) -> list[MeterEventResult]:
    """Report usage, one request per event, in order; one result per event.

    An event Stripe refuses is ``failed`` (with its error) and the rest still go. Once Stripe is
    unavailable the remaining events are ``not_sent``: the caller keeps them for its next run.
    A misconfiguration raises :class:`StripeMisconfigured` (nothing can succeed).
    """
    results: list[MeterEventResult] = []
    unavailable: StripeUnavailable | None = None
    for item in events:
        if unavailable is not None:
            results.append({"identifier": item["identifier"], "status": "not_sent", "event": None, "error": None})
            continue
        try:
            results.append(
                meter_event_create(
                    event_name=item["event_name"],
                    identifier=item["identifier"],
                    customer=item["customer"],
                    value=item["value"],
                    timestamp=item["timestamp"],
                )
            )
        except StripeMisconfigured:
            raise
        except StripeUnavailable as exc:
            unavailable = exc
            results.append({"identifier": item["identifier"], "status": "failed", "event": None, "error": exc})
        except PaymentsError as exc:
            results.append({"identifier": item["identifier"], "status": "failed", "event": None, "error": exc})
    return results


# --- checkout and subscriptions --------------------------------------------------------------


def checkout_session_create(
    *,
    customer: str,
    price_ids: Sequence[tuple[str, int | None]],
    success_url: str,
    cancel_url: str,
    client_reference_id: str,
    metadata: Mapping[str, str] | None = None,
    subscription_data: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> StripeObject:
    """A hosted Checkout Session in subscription mode; redirect the buyer to its ``url``.

    ``price_ids`` is ``[(price, quantity)]``; quantity ``None`` for a metered price (usage decides).
    ``success_url`` may contain ``{CHECKOUT_SESSION_ID}``. Provision on ``checkout.session.completed``,
    not on the success page.
    """
    line_items = [_without_none({"price": price, "quantity": quantity}) for price, quantity in price_ids]
    params = _without_none(
        {
            "mode": "subscription",
            "customer": customer,
            "line_items": line_items,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": client_reference_id,
            "metadata": dict(metadata or {}) or None,
            "subscription_data": dict(subscription_data or {}) or None,
        }
    )
    with _stripe_errors():
        session = _client().v1.checkout.sessions.create(params=params, options=_options(idempotency_key))  # type: ignore[arg-type]
        return _plain(session)


def checkout_session_retrieve(*, session: str, expand_line_items: bool = False) -> StripeObject:
    params = {"expand": ["line_items"]} if expand_line_items else {}
    with _stripe_errors():
        return _plain(_client().v1.checkout.sessions.retrieve(session, params=params))  # type: ignore[arg-type]


def checkout_session_expire(*, session: str) -> StripeObject:
    """Close an open session so it can no longer be paid (an abandoned or superseded checkout)."""
    with _stripe_errors():
        return _plain(_client().v1.checkout.sessions.expire(session))


def subscription_retrieve(*, subscription: str) -> StripeObject:
    with _stripe_errors():
        return _plain(_client().v1.subscriptions.retrieve(subscription))


def subscription_update(
    *,
    subscription: str,
    items: Sequence[Mapping[str, Any]] | None = None,
    cancel_at_period_end: bool | None = None,
    proration_behavior: Literal["create_prorations", "none", "always_invoice"] | None = None,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> StripeObject:
    """Change a subscription. ``items``: ``{"id": si, "price": new}`` swaps a price (upgrade or
    downgrade), ``{"price": p}`` adds one, ``{"id": si, "deleted": True}`` removes one."""
    params = _without_none(
        {
            "items": [dict(item) for item in items] if items is not None else None,
            "cancel_at_period_end": cancel_at_period_end,
            "proration_behavior": proration_behavior,
            "metadata": dict(metadata) if metadata is not None else None,
        }
    )
    with _stripe_errors():
        updated = _client().v1.subscriptions.update(subscription, params=params, options=_options(idempotency_key))  # type: ignore[arg-type]
        return _plain(updated)


def subscription_cancel(
    *, subscription: str, invoice_now: bool = False, prorate: bool = False, idempotency_key: str | None = None
) -> StripeObject:
    """Cancel now. To keep the entitlement to the period's end use
    ``subscription_update(cancel_at_period_end=True)`` instead."""
    params = {"invoice_now": invoice_now, "prorate": prorate}
    with _stripe_errors():
        canceled = _client().v1.subscriptions.cancel(subscription, params=params, options=_options(idempotency_key))  # type: ignore[arg-type]
        return _plain(canceled)


def subscription_period(subscription: Mapping[str, Any]) -> tuple[int, int]:
    """``(current_period_start, current_period_end)`` as Unix times, from the subscription's items."""
    items = (subscription.get("items") or {}).get("data") or []
    starts = [item["current_period_start"] for item in items if item.get("current_period_start") is not None]
    ends = [item["current_period_end"] for item in items if item.get("current_period_end") is not None]
    if not starts or not ends:
        raise ValueError(f"Subscription {subscription.get('id')} has no item with a billing period.")
    return min(starts), max(ends)


def invoice_retrieve(*, invoice: str) -> StripeObject:
    with _stripe_errors():
        return _plain(_client().v1.invoices.retrieve(invoice))


def invoice_list(
    *,
    customer: str | None = None,
    subscription: str | None = None,
    status: Literal["draft", "open", "paid", "uncollectible", "void"] | None = None,
    limit: int = 100,
) -> list[StripeObject]:
    """The newest ``limit`` (at most 100) invoices matching the filters, newest first."""
    params = _without_none(
        {"customer": customer, "subscription": subscription, "status": status, "limit": min(int(limit), 100)}
    )
    with _stripe_errors():
        page = _client().v1.invoices.list(params=params)  # type: ignore[arg-type]
        return [_plain(invoice) for invoice in page.data]


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str | None:
    details = ((invoice.get("parent") or {}).get("subscription_details")) or {}
    subscription = details.get("subscription")
    if isinstance(subscription, Mapping):  # expanded
        return subscription.get("id")
    return subscription


def invoice_line_price_id(line: Mapping[str, Any]) -> str | None:
    price = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
    if isinstance(price, Mapping):  # expanded
        return price.get("id")
    return price


def event_retrieve(*, event: str) -> StripeObject:
    with _stripe_errors():
        return _plain(_client().v1.events.retrieve(event))


# --- Connect: publisher accounts and payouts -------------------------------------------------


def account_create(
    *,
    email: str,
    country: str,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> StripeObject:
    """A connected account for a publisher, created with controller properties (what Stripe now
    recommends over ``type="express"``): Stripe collects the requirements through hosted onboarding,
    the publisher gets the Express dashboard, the platform pays Stripe's fees and carries losses.
    Only the ``transfers`` capability is requested: buyers pay the platform, which then transfers
    each publisher's share (separate charges and transfers)."""
    params = _without_none(
        {
            "email": email,
            "country": country.upper(),
            "metadata": dict(metadata or {}) or None,
            "controller": {
                "fees": {"payer": "application"},
                "losses": {"payments": "application"},
                "requirement_collection": "stripe",
                "stripe_dashboard": {"type": "express"},
            },
            "capabilities": {"transfers": {"requested": True}},
        }
    )
    with _stripe_errors():
        return _plain(_client().v1.accounts.create(params=params, options=_options(idempotency_key)))  # type: ignore[arg-type]


def account_retrieve(*, account: str) -> StripeObject:
    with _stripe_errors():
        return _plain(_client().v1.accounts.retrieve(account))


def account_link_create(
    *,
    account: str,
    refresh_url: str,
    return_url: str,
    type: Literal["account_onboarding", "account_update"] = "account_onboarding",  # noqa: A002
) -> StripeObject:
    """A single-use, short-lived onboarding link: redirect to its ``url`` at once, never store it."""
    params = {"account": account, "refresh_url": refresh_url, "return_url": return_url, "type": type}
    with _stripe_errors():
        return _plain(_client().v1.account_links.create(params=params))  # type: ignore[arg-type]


def account_login_link_create(*, account: str) -> StripeObject:
    """A one-time link into the publisher's Express dashboard."""
    with _stripe_errors():
        return _plain(_client().v1.accounts.login_links.create(account))


def transfer_create(
    *,
    amount: int,
    currency: str,
    destination: str,
    transfer_group: str,
    idempotency_key: str,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> StripeObject:
    """Move ``amount`` minor units from the platform balance to a connected account.

    ``idempotency_key`` is required: derive it from what is being paid (e.g. invoice and publisher),
    so a retried payout returns the first transfer instead of paying twice.
    """
    if amount <= 0:
        raise ValueError("A transfer amount must be positive.")
    params = _without_none(
        {
            "amount": int(amount),
            "currency": currency.lower(),
            "destination": destination,
            "transfer_group": transfer_group,
            "description": description,
            "metadata": dict(metadata or {}) or None,
        }
    )
    with _stripe_errors():
        return _plain(_client().v1.transfers.create(params=params, options=_options(idempotency_key)))  # type: ignore[arg-type]


def transfer_list(
    *, transfer_group: str | None = None, destination: str | None = None, limit: int = 100
) -> list[StripeObject]:
    """The newest ``limit`` (at most 100) transfers matching the filters, newest first. A payout retried
    after Stripe's 24-hour idempotency window looks here for the transfer its first try made."""
    params = _without_none(
        {"transfer_group": transfer_group, "destination": destination, "limit": min(int(limit), 100)}
    )
    with _stripe_errors():
        page = _client().v1.transfers.list(params=params)  # type: ignore[arg-type]
        return [_plain(transfer) for transfer in page.data]


# --- webhooks --------------------------------------------------------------------------------


def webhook_event_construct(
    *, payload: bytes, sig_header: str | None, secret: str, tolerance: int = WEBHOOK_TOLERANCE_S
) -> StripeObject:
    """Verify a webhook's ``Stripe-Signature`` over the raw body and return the event as a dict.

    Raises :class:`WebhookSignatureInvalid` for a missing, malformed, wrong or too old signature
    (older than ``tolerance`` seconds: a replay) and for a body that is not a JSON event.
    """
    if not secret:
        raise StripeMisconfigured("The Stripe webhook signing secret is not configured.")
    try:
        event = stripe.Webhook.construct_event(payload, sig_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(f"Invalid Stripe signature: {exc.user_message}") from exc
    except ValueError as exc:  # not JSON
        raise WebhookSignatureInvalid("The webhook body is not a Stripe event.") from exc
    return _plain(event)


def webhook_signature_header(*, payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header Stripe sends: ``t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">``."""
    signed_at = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{signed_at}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={signed_at},v1={signature}"
