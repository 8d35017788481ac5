"""A fake Stripe API on loopback, for the tests and for local runs without network.

It speaks the REST API the app uses (``marketplace/integrations/stripe.py``) the way Stripe does:
form-encoded bodies with bracket keys (``line_items[0][price]=...``), ``Authorization: Bearer
sk_test_...``, ``Idempotency-Key`` (the same key with the same parameters replays the first answer
with ``Idempotent-Replayed: true``; with other parameters it is a 400 ``idempotency_error``),
``Stripe-Version`` echoed, ``Request-Id`` on every answer, list objects, and errors shaped
``{"error": {"type", "code", "message", "param"}}``. Objects carry Stripe's id prefixes and the shapes
of the pinned API version (billing periods on subscription items, ``invoice.parent``, line
``pricing``). State lives in memory.

Webhooks are signed with Stripe's real scheme (``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"t.body">``) with the configured secret. Events caused by API calls are delivered in the background,
in order (like Stripe, asynchronously); events caused by control calls are delivered before the
control call answers, so a test can assert right after it. Connect events (``account.updated``)
carry ``account`` and go to the Connect target.

Control endpoints, under ``/_fake/`` (JSON in, JSON out; the :class:`FakeStripe` handle wraps them):
reset; configure webhook targets; inject faults (the next N API requests, optionally under a path
prefix, answer a status, 0 = drop the connection; faults are not saved for idempotent replay, as if
the request never reached Stripe); complete or expire a checkout session; fail or pay an invoice;
advance a subscription one period (renewal invoice with flat lines for the new period and metered
usage of the ended one, from the meter events received); enable a Connect account; list meter
events, transfers, events, deliveries and requests; sign or re-send any stored event (replays,
out-of-order delivery). Browser pages: ``/_fake/checkout/<id>`` (the session ``url``: pay or cancel)
and ``/_fake/connect/onboarding/<link>`` (an account link ``url``: finish onboarding).

Standalone: ``python -m tests.fakes.stripe_server --port 12111`` (see ``--help``), then set
``STRIPE_API_BASE=http://127.0.0.1:12111 STRIPE_SECRET_KEY=sk_test_fake``.
"""

from __future__ import annotations

import argparse
import calendar
import copy
import hashlib
import hmac
import html
import json
import queue
import re
import secrets
import socket
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

DEFAULT_API_VERSION = "2026-10-28.endive"
DAY = 86400
METER_EVENT_MAX_AGE_S = 35 * DAY
METER_EVENT_MAX_FUTURE_S = 300
ACCOUNT_LINK_TTL_S = 300

Obj = dict[str, Any]


# --- helpers -----------------------------------------------------------------------------------


class StripeHTTPError(Exception):
    """An error answer in Stripe's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002
        code: str | None = None,
        param: str | None = None,
        extra: Obj | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error: Obj = {"type": type, "message": message}
        if code:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            self.error["param"] = param
        self.error.update(extra or {})


def _now() -> int:
    return int(time.time())


def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def new_id(prefix: str) -> str:
    lengths = {"acct": 16, "cs_test": 58, "evt": 24, "req": 14}
    return f"{prefix}_{_rand(lengths.get(prefix, 24))}"


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's ``Stripe-Signature`` header for ``payload`` (kept independent of the app's code)."""
    signed_at = _now() if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), f"{signed_at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={signed_at},v1={digest}"


_KEY_PART = re.compile(r"\[([^\]]*)\]")


def parse_form(pairs: list[tuple[str, str]]) -> Obj:
    """Decode Stripe's bracket notation: ``a[b][0][c]=x`` -> ``{"a": {"b": [{"c": "x"}]}}``."""
    root: Obj = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        parts = [head, *_KEY_PART.findall(key[len(head) :])]
        node = root
        for index, part in enumerate(parts):
            if part == "":  # a[]=x appends
                part = str(len(node))
            if index == len(parts) - 1:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return _listify(root)


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        converted = {key: _listify(item) for key, item in value.items()}
        if converted and all(key.isdigit() for key in converted):
            return [converted[key] for key in sorted(converted, key=int)]
        return converted
    return value


def _int(params: Obj, name: str, *, required: bool = False, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise StripeHTTPError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StripeHTTPError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name) from None


def _bool(value: Any) -> bool:
    return str(value).lower() == "true"


def _str(params: Obj, name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise StripeHTTPError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        return None
    if not isinstance(value, str):
        raise StripeHTTPError(400, f"Invalid string: {name}", code="parameter_invalid_string", param=name)
    return value


def _decimal(value: Any, param: str) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise StripeHTTPError(400, f"Invalid decimal: {value}", code="parameter_invalid_decimal", param=param) from None


def _metadata(params: Obj, current: Obj | None = None) -> Obj:
    result = dict(current or {})
    given = params.get("metadata")
    if given == "":  # metadata="" clears it
        return {}
    if isinstance(given, dict):
        for key, value in given.items():
            if value == "":
                result.pop(key, None)
            else:
                result[key] = str(value)
    return result


def add_month(timestamp: int, anchor_day: int) -> int:
    moment = datetime.fromtimestamp(timestamp, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(anchor_day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def _list(data: list[Obj], url: str, *, has_more: bool = False) -> Obj:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _missing(kind: str, object_id: str, param: str = "id") -> StripeHTTPError:
    # Like Stripe: 404 for the object the URL names, 400 for one a parameter names.
    status = 404 if param == "id" else 400
    return StripeHTTPError(status, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


# --- state ------------------------------------------------------------------------------------


@dataclass
class Fault:
    remaining: int
    status: int
    path_prefix: str | None
    error: Obj | None


@dataclass
class WebhookTarget:
    url: str | None = None
    secret: str | None = None
    auto_deliver: bool = True


@dataclass
class Call:
    """One request being served: what handlers need from it, and the events it caused."""

    method: str
    path: str
    params: Obj
    base_url: str
    api_key: str = ""
    stripe_version: str | None = None
    request_id: str = ""
    idempotency_key: str | None = None
    events: list[Obj] = field(default_factory=list)


class State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.objects: dict[str, Obj] = {}
            self.order: dict[str, list[str]] = {}
            self.private: dict[str, Obj] = {}  # what Stripe keeps but does not show (line items, links)
            self.meter_events: list[Obj] = []
            self.billed_usage: set[str] = set()  # meter event identifiers already on an invoice
            self.pending_prorations: dict[str, list[Obj]] = {}
            self.idempotency: dict[tuple[str, str], Obj] = {}
            self.faults: list[Fault] = []
            self.requests: list[Obj] = []
            self.deliveries: list[Obj] = []
            self.targets = {"platform": WebhookTarget(), "connect": WebhookTarget()}
            self.webhook_api_version: str | None = None
            self.last_api_version: str | None = None
            self.invoice_numbers: dict[str, int] = {}

    def add(self, kind: str, obj: Obj) -> Obj:
        self.objects[obj["id"]] = obj
        self.order.setdefault(kind, []).append(obj["id"])
        return obj

    def get(self, kind: str, object_id: str | None, *, label: str | None = None, param: str = "id") -> Obj:
        obj = self.objects.get(object_id or "")
        if obj is None or obj.get("object") != kind:
            raise _missing(label or kind.split(".")[-1].replace("_", " "), object_id or "", param)
        return obj

    def all(self, kind: str) -> list[Obj]:
        return [self.objects[object_id] for object_id in self.order.get(kind, [])]


# --- the Stripe API -----------------------------------------------------------------------------


class FakeStripeAPI:
    """Handlers for API and control routes; every handler runs under ``state.lock``."""

    def __init__(self, state: State) -> None:
        self.state = state

    # events -----------------------------------------------------------------------------------

    def emit(
        self, call: Call | None, type_: str, obj: Obj, *, previous: Obj | None = None, account: str | None = None
    ) -> Obj:
        data: Obj = {"object": copy.deepcopy(obj)}
        if previous:
            data["previous_attributes"] = copy.deepcopy(previous)
        event: Obj = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": self.state.webhook_api_version or self.state.last_api_version or DEFAULT_API_VERSION,
            "created": _now(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {
                "id": call.request_id if call and call.request_id else None,
                "idempotency_key": call.idempotency_key if call else None,
            },
            "type": type_,
        }
        if account:
            event["account"] = account
        self.state.add("event", event)
        if call is not None:
            call.events.append(event)
        return event

    @staticmethod
    def changed(before: Obj, after: Obj) -> Obj:
        return {key: before.get(key) for key in set(before) | set(after) if before.get(key) != after.get(key)}

    # customers, products, prices, meters ------------------------------------------------------

    def customer_create(self, call: Call) -> Obj:
        p = call.params
        customer: Obj = {
            "id": new_id("cus"),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": _now(),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": _str(p, "description"),
            "discount": None,
            "email": _str(p, "email"),
            "invoice_prefix": _rand(8, string.ascii_uppercase + string.digits),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": _metadata(p),
            "name": _str(p, "name"),
            "phone": _str(p, "phone"),
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        return self.state.add("customer", customer)

    def customer_update(self, call: Call, customer_id: str) -> Obj:
        customer = self.state.get("customer", customer_id)
        for name in ("name", "email", "description", "phone"):
            if name in call.params:
                customer[name] = call.params[name] or None
        customer["metadata"] = _metadata(call.params, customer["metadata"])
        return customer

    def product_create(self, call: Call) -> Obj:
        p = call.params
        now = _now()
        product = {
            "id": _str(p, "id") or new_id("prod"),
            "object": "product",
            "active": p.get("active", "true") != "false",
            "created": now,
            "default_price": None,
            "description": _str(p, "description"),
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": _metadata(p),
            "name": _str(p, "name", required=True),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "unit_label": _str(p, "unit_label"),
            "updated": now,
            "url": None,
        }
        return self.state.add("product", product)

    def price_create(self, call: Call) -> Obj:
        p = call.params
        product_id = _str(p, "product")
        if product_id is None:
            if isinstance(p.get("product_data"), dict):
                product_id = self.product_create(Call("POST", "", p["product_data"], call.base_url))["id"]
            else:
                raise StripeHTTPError(
                    400, "Missing required param: product.", code="parameter_missing", param="product"
                )
        self.state.get("product", product_id, param="product")
        currency = (_str(p, "currency", required=True) or "").lower()
        billing_scheme = p.get("billing_scheme", "per_unit")
        recurring_in = p.get("recurring") if isinstance(p.get("recurring"), dict) else None
        recurring = None
        if recurring_in is not None:
            interval = recurring_in.get("interval")
            if interval not in {"day", "week", "month", "year"}:
                raise StripeHTTPError(400, "Invalid recurring[interval].", param="recurring[interval]")
            usage_type = recurring_in.get("usage_type", "licensed")
            meter = recurring_in.get("meter")
            if usage_type == "metered":
                if not meter:
                    raise StripeHTTPError(
                        400,
                        "Metered prices must be backed by a meter; pass recurring[meter].",
                        code="parameter_missing",
                        param="recurring[meter]",
                    )
                self.state.get("billing.meter", meter, label="billing meter", param="recurring[meter]")
            elif meter:
                raise StripeHTTPError(400, "recurring[meter] requires usage_type=metered.", param="recurring[meter]")
            recurring = {
                "interval": interval,
                "interval_count": _int(recurring_in, "interval_count", default=1),
                "meter": meter or None,
                "trial_period_days": _int(recurring_in, "trial_period_days"),
                "usage_type": usage_type,
            }
        unit_amount = _int(p, "unit_amount")
        unit_amount_decimal = p.get("unit_amount_decimal")
        tiers: list[Obj] | None = None
        if billing_scheme == "tiered":
            if p.get("tiers_mode") not in {"graduated", "volume"} or not isinstance(p.get("tiers"), list):
                raise StripeHTTPError(400, "Tiered prices need tiers and tiers_mode.", param="tiers")
            tiers = []
            for index, tier in enumerate(p["tiers"]):
                up_to = tier.get("up_to")
                tiers.append(
                    {
                        "flat_amount": _int(tier, "flat_amount"),
                        "flat_amount_decimal": str(_decimal(tier.get("flat_amount", 0), f"tiers[{index}]")),
                        "unit_amount": _int(tier, "unit_amount"),
                        "unit_amount_decimal": str(
                            _decimal(tier.get("unit_amount_decimal", tier.get("unit_amount", 0)), f"tiers[{index}]")
                        ),
                        "up_to": None if up_to == "inf" else _int(tier, "up_to", required=True),
                    }
                )
            if tiers[-1]["up_to"] is not None:
                raise StripeHTTPError(400, "The last tier must have up_to=inf.", param="tiers")
            unit_amount = None
            unit_amount_decimal = None
        else:
            if unit_amount is None and unit_amount_decimal is None:
                raise StripeHTTPError(
                    400, "Missing required param: unit_amount.", code="parameter_missing", param="unit_amount"
                )
            if unit_amount_decimal is None:
                unit_amount_decimal = str(unit_amount)
            else:
                unit_amount_decimal = str(_decimal(unit_amount_decimal, "unit_amount_decimal"))
                dec = Decimal(unit_amount_decimal)
                unit_amount = int(dec) if dec == dec.to_integral_value() else None
        transform = p.get("transform_quantity") if isinstance(p.get("transform_quantity"), dict) else None
        price = {
            "id": new_id("price"),
            "object": "price",
            "active": True,
            "billing_scheme": billing_scheme,
            "created": _now(),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": _str(p, "lookup_key"),
            "metadata": _metadata(p),
            "nickname": _str(p, "nickname"),
            "product": product_id,
            "recurring": recurring,
            "tax_behavior": p.get("tax_behavior", "unspecified"),
            "tiers_mode": p.get("tiers_mode") if tiers else None,
            "transform_quantity": (
                {"divide_by": _int(transform, "divide_by", required=True), "round": transform.get("round", "up")}
                if transform
                else None
            ),
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        self.state.private[price["id"]] = {"tiers": tiers}
        return self.state.add("price", price)

    def price_view(self, price: Obj, expand: list[str]) -> Obj:
        view = copy.deepcopy(price)
        if "tiers" in expand:  # like Stripe, tiers only when expanded
            view["tiers"] = copy.deepcopy(self.state.private[price["id"]]["tiers"])
        return view

    def price_amount(self, price: Obj, quantity: Decimal) -> int:
        """What ``quantity`` units cost, in minor units, as Stripe rates a price."""
        tiers = self.state.private.get(price["id"], {}).get("tiers")
        if price["billing_scheme"] == "tiered" and tiers:
            total = Decimal(0)
            if price["tiers_mode"] == "volume":
                tier = next(t for t in tiers if t["up_to"] is None or quantity <= t["up_to"])
                total = quantity * Decimal(tier["unit_amount_decimal"]) + (
                    Decimal(tier["flat_amount_decimal"]) if quantity else 0
                )
            else:
                below = Decimal(0)
                for tier in tiers:
                    top = Decimal("Infinity") if tier["up_to"] is None else Decimal(tier["up_to"])
                    units = max(Decimal(0), min(quantity, top) - below)
                    if units > 0:
                        total += units * Decimal(tier["unit_amount_decimal"]) + Decimal(tier["flat_amount_decimal"])
                    below = top
                    if quantity <= below:
                        break
            return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        units = quantity
        transform = price.get("transform_quantity")
        if transform:
            rounding = ROUND_CEILING if transform["round"] == "up" else ROUND_FLOOR
            units = (quantity / Decimal(transform["divide_by"])).quantize(Decimal(1), rounding=rounding)
        return int((units * Decimal(price["unit_amount_decimal"])).quantize(Decimal(1), rounding=ROUND_HALF_UP))

    def meter_create(self, call: Call) -> Obj:
        p = call.params
        event_name = _str(p, "event_name", required=True)
        display_name = _str(p, "display_name", required=True)
        aggregation: Obj = p["default_aggregation"] if isinstance(p.get("default_aggregation"), dict) else {}
        formula = aggregation.get("formula")
        if formula not in {"sum", "count", "last"}:
            raise StripeHTTPError(
                400, "Missing required param: default_aggregation[formula].", param="default_aggregation[formula]"
            )
        if any(m["event_name"] == event_name and m["status"] == "active" for m in self.state.all("billing.meter")):
            raise StripeHTTPError(
                400, f"An active meter with event_name `{event_name}` already exists.", param="event_name"
            )
        mapping: Obj = p["customer_mapping"] if isinstance(p.get("customer_mapping"), dict) else {}
        value_settings: Obj = p["value_settings"] if isinstance(p.get("value_settings"), dict) else {}
        now = _now()
        meter = {
            "id": new_id("mtr"),
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": mapping.get("event_payload_key", "stripe_customer_id"),
                "type": mapping.get("type", "by_id"),
            },
            "default_aggregation": {"formula": formula},
            "display_name": display_name,
            "event_name": event_name,
            "event_time_window": p.get("event_time_window"),
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": value_settings.get("event_payload_key", "value")},
        }
        return self.state.add("billing.meter", meter)

    def meter_event_create(self, call: Call) -> Obj:
        p = call.params
        event_name = _str(p, "event_name", required=True)
        payload = p.get("payload")
        if not isinstance(payload, dict):
            raise StripeHTTPError(400, "Missing required param: payload.", code="parameter_missing", param="payload")
        meter = next(
            (m for m in self.state.all("billing.meter") if m["event_name"] == event_name and m["status"] == "active"),
            None,
        )
        customer_key = meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
        value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
        if not payload.get(customer_key):
            raise StripeHTTPError(
                400, f"Missing required param: payload[{customer_key}].", param=f"payload[{customer_key}]"
            )
        if value_key not in payload:
            raise StripeHTTPError(400, f"Missing required param: payload[{value_key}].", param=f"payload[{value_key}]")
        _decimal(payload[value_key], f"payload[{value_key}]")
        now = _now()
        timestamp = _int(p, "timestamp", default=now) or now
        if timestamp < now - METER_EVENT_MAX_AGE_S:
            raise StripeHTTPError(
                400,
                "Timestamp must be within the past 35 calendar days.",
                code="timestamp_too_far_in_past",
                param="timestamp",
            )
        if timestamp > now + METER_EVENT_MAX_FUTURE_S:
            raise StripeHTTPError(
                400,
                "Timestamp must not be more than 5 minutes in the future.",
                code="timestamp_in_future",
                param="timestamp",
            )
        identifier = _str(p, "identifier") or f"mev_{_rand(24)}"
        if any(event["identifier"] == identifier for event in self.state.meter_events):
            raise StripeHTTPError(
                400,
                f"An event already exists with identifier {identifier}.",
                code="duplicate_meter_event",
                param="identifier",
            )
        event = {
            "object": "billing.meter_event",
            "created": now,
            "event_name": event_name,
            "identifier": identifier,
            "livemode": False,
            "payload": {key: str(value) for key, value in payload.items()},
            "timestamp": timestamp,
        }
        self.state.meter_events.append(event)
        return copy.deepcopy(event)

    # checkout ---------------------------------------------------------------------------------

    def checkout_session_create(self, call: Call) -> Obj:
        p = call.params
        mode = _str(p, "mode", required=True)
        if mode != "subscription":
            raise StripeHTTPError(400, "This fake supports mode=subscription only.", param="mode")
        if not _str(p, "success_url"):
            raise StripeHTTPError(
                400, "Missing required param: success_url.", code="parameter_missing", param="success_url"
            )
        customer_id = _str(p, "customer")
        customer = self.state.get("customer", customer_id, param="customer") if customer_id else None
        items_in = p.get("line_items")
        if not isinstance(items_in, list) or not items_in:
            raise StripeHTTPError(
                400, "Missing required param: line_items.", code="parameter_missing", param="line_items"
            )
        line_items: list[Obj] = []
        currencies, intervals = set(), set()
        for index, item in enumerate(items_in):
            price = self.state.get("price", item.get("price"), param=f"line_items[{index}][price]")
            recurring = price["recurring"]
            if recurring is None:
                raise StripeHTTPError(
                    400, "Subscription mode needs recurring prices.", param=f"line_items[{index}][price]"
                )
            quantity = _int(item, "quantity")
            if recurring["usage_type"] == "metered" and quantity is not None:
                raise StripeHTTPError(
                    400,
                    f"Quantity should not be specified where usage_type is `metered`. Remove quantity from "
                    f"`line_items[{index}]`.",
                    param=f"line_items[{index}][quantity]",
                )
            if recurring["usage_type"] == "licensed" and quantity is None:
                raise StripeHTTPError(
                    400,
                    f"Missing required param: line_items[{index}][quantity].",
                    code="parameter_missing",
                    param=f"line_items[{index}][quantity]",
                )
            currencies.add(price["currency"])
            intervals.add((recurring["interval"], recurring["interval_count"]))
            line_items.append({"price": price["id"], "quantity": quantity})
        if len(currencies) > 1 or len(intervals) > 1:
            raise StripeHTTPError(
                400, "All prices must share one currency and one billing interval.", param="line_items"
            )
        subscription_data: Obj = p["subscription_data"] if isinstance(p.get("subscription_data"), dict) else {}
        trial_days = _int(subscription_data, "trial_period_days")
        subtotal = sum(
            self.price_amount(self.state.objects[li["price"]], Decimal(li["quantity"]))
            for li in line_items
            if li["quantity"] is not None
        )
        now = _now()
        session_id = new_id("cs_test")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": subtotal,
            "amount_total": 0 if trial_days else subtotal,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": _str(p, "cancel_url"),
            "client_reference_id": _str(p, "client_reference_id"),
            "created": now,
            "currency": currencies.pop(),
            "customer": customer["id"] if customer else None,
            "customer_creation": None if customer else "always",
            "customer_details": (
                {"email": customer["email"], "name": customer["name"], "tax_exempt": "none"} if customer else None
            ),
            "customer_email": _str(p, "customer_email"),
            "expires_at": now + DAY,
            "invoice": None,
            "livemode": False,
            "locale": None,
            "metadata": _metadata(p),
            "mode": "subscription",
            "payment_intent": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "submit_type": None,
            "subscription": None,
            "success_url": _str(p, "success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            "url": f"{call.base_url}/_fake/checkout/{session_id}",
        }
        self.state.private[session_id] = {"line_items": line_items, "subscription_data": subscription_data}
        return self.state.add("checkout.session", session)

    def checkout_session_view(self, session: Obj, expand: list[str]) -> Obj:
        view = copy.deepcopy(session)
        if "line_items" in expand:
            view["line_items"] = self.checkout_line_items(session)
        return view

    def checkout_line_items(self, session: Obj) -> Obj:
        data = []
        for item in self.state.private[session["id"]]["line_items"]:
            price = self.state.objects[item["price"]]
            amount = self.price_amount(price, Decimal(item["quantity"])) if item["quantity"] is not None else 0
            product = self.state.objects[price["product"]]
            data.append(
                {
                    "id": new_id("li"),
                    "object": "item",
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price["currency"],
                    "description": product["name"],
                    "price": copy.deepcopy(price),
                    "quantity": item["quantity"],
                }
            )
        return _list(data, f"/v1/checkout/sessions/{session['id']}/line_items")

    def checkout_session_expire(self, call: Call | None, session_id: str) -> Obj:
        session = self.state.get("checkout.session", session_id, label="checkout.session")
        if session["status"] != "open":
            raise StripeHTTPError(
                400,
                'Only Checkout Sessions with a status in ["open"] can be expired. '
                f"This session is {session['status']}.",
            )
        session["status"] = "expired"
        self.emit(call, "checkout.session.expired", session)
        return session

    def checkout_session_complete(self, call: Call, session_id: str) -> Obj:
        """The buyer paid: a subscription and its first invoice (paid), then the three webhooks."""
        session = self.state.get("checkout.session", session_id, label="checkout.session")
        if session["status"] != "open":
            raise StripeHTTPError(400, f"Checkout Session {session_id} is {session['status']}, not open.")
        private = self.state.private[session_id]
        customer_id = session["customer"]
        if customer_id is None:
            email = session["customer_email"] or "buyer@example.com"
            customer_id = self.customer_create(Call("POST", "", {"email": email}, call.base_url))["id"]
        subscription_data = private["subscription_data"]
        now = _now()
        trial_days = _int(subscription_data, "trial_period_days")
        trial_end = now + trial_days * DAY if trial_days else None
        subscription_id = new_id("sub")
        items = [
            self.subscription_item(subscription_id, li["price"], li["quantity"], now) for li in private["line_items"]
        ]
        anchor = trial_end or now
        for item in items:
            item["current_period_start"] = now
            item["current_period_end"] = trial_end or add_month(now, datetime.fromtimestamp(now, UTC).day)
        subscription = {
            "id": subscription_id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": anchor,
            "billing_cycle_anchor_config": None,
            "billing_mode": {"flexible": None, "type": "classic"},
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": "charge_automatically",
            "created": now,
            "currency": session["currency"],
            "customer": customer_id,
            "days_until_due": None,
            "default_payment_method": new_id("pm"),
            "description": _str(subscription_data, "description"),
            "discounts": [],
            "ended_at": None,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": _list(items, f"/v1/subscription_items?subscription={subscription_id}")
            | {"total_count": len(items)},
            "latest_invoice": None,
            "livemode": False,
            "metadata": _metadata(subscription_data),
            "pending_update": None,
            "schedule": None,
            "start_date": now,
            "status": "trialing" if trial_end else "active",
            "test_clock": None,
            "trial_end": trial_end,
            "trial_start": now if trial_end else None,
        }
        self.state.add("subscription", subscription)
        lines = []
        for item in items:
            price = item["price"]
            if price["recurring"]["usage_type"] != "licensed":
                continue
            quantity = item["quantity"]
            amount = 0 if trial_end else self.price_amount(price, Decimal(quantity))
            product = self.state.objects[price["product"]]
            label = "Trial period for" if trial_end else f"{quantity} ×"
            lines.append(
                self.invoice_line(
                    subscription, item, amount, quantity, f"{label} {product['name']}", now, item["current_period_end"]
                )
            )
        invoice = self.invoice_create(subscription, lines, "subscription_create", now, now)
        self.invoice_mark_paid(invoice)
        subscription["latest_invoice"] = invoice["id"]
        session.update(
            {
                "status": "complete",
                "payment_status": "paid" if invoice["amount_due"] > 0 else "no_payment_required",
                "customer": customer_id,
                "subscription": subscription_id,
                "invoice": invoice["id"],
                "url": None,
            }
        )
        customer = self.state.objects[customer_id]
        session["customer_details"] = {"email": customer["email"], "name": customer["name"], "tax_exempt": "none"}
        self.emit(call, "checkout.session.completed", session)
        self.emit(call, "customer.subscription.created", subscription)
        self.emit(call, "invoice.paid", invoice)
        return {"session": session, "subscription": subscription, "invoice": invoice}

    # subscriptions and invoices ---------------------------------------------------------------

    def subscription_item(self, subscription_id: str, price_id: str, quantity: int | None, now: int) -> Obj:
        price = self.state.objects[price_id]
        item: Obj = {
            "id": new_id("si"),
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": now,
            "current_period_end": None,
            "current_period_start": None,
            "discounts": [],
            "metadata": {},
            "price": copy.deepcopy(price),
            "subscription": subscription_id,
            "tax_rates": [],
        }
        if price["recurring"]["usage_type"] == "licensed":
            item["quantity"] = quantity if quantity is not None else 1
        return item

    def invoice_line(
        self,
        subscription: Obj,
        item: Obj,
        amount: int,
        quantity: int | float | None,
        description: str,
        start: int,
        end: int,
        *,
        proration: bool = False,
    ) -> Obj:
        price = item["price"]
        return {
            "id": new_id("il"),
            "object": "line_item",
            "amount": amount,
            "currency": price["currency"],
            "description": description,
            "discount_amounts": [],
            "discountable": True,
            "discounts": [],
            "invoice": None,
            "livemode": False,
            "metadata": {},
            "parent": {
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": proration,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription["id"],
                    "subscription_item": item["id"],
                },
                "type": "subscription_item_details",
            },
            "period": {"end": end, "start": start},
            "pretax_credit_amounts": [],
            "pricing": {
                "price_details": {"price": price["id"], "product": price["product"]},
                "type": "price_details",
                "unit_amount_decimal": price["unit_amount_decimal"],
            },
            "quantity": quantity,
            "subscription": subscription["id"],
            "taxes": [],
        }

    def invoice_create(self, subscription: Obj, lines: list[Obj], billing_reason: str, start: int, end: int) -> Obj:
        customer = self.state.objects[subscription["customer"]]
        invoice_id = new_id("in")
        for line in lines:
            line["invoice"] = invoice_id
        total = sum(line["amount"] for line in lines)
        amount_due = max(total, 0)
        sequence = self.state.invoice_numbers.get(customer["id"], 0) + 1
        self.state.invoice_numbers[customer["id"]] = sequence
        now = _now()
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Fake Platform",
            "amount_due": amount_due,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": amount_due,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 0,
            "attempted": False,
            "auto_advance": True,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None, "status": None},
            "billing_reason": billing_reason,
            "collection_method": "charge_automatically",
            "created": now,
            "currency": subscription["currency"],
            "customer": customer["id"],
            "customer_email": customer["email"],
            "customer_name": customer["name"],
            "default_payment_method": None,
            "description": None,
            "discounts": [],
            "due_date": None,
            "effective_at": now,
            "ending_balance": 0,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_fake/test_{invoice_id}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/acct_fake/test_{invoice_id}/pdf",
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "lines": _list(lines, f"/v1/invoices/{invoice_id}/lines") | {"total_count": len(lines)},
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": f"{customer['invoice_prefix']}-{sequence:04d}",
            "parent": {
                "quote_details": None,
                "subscription_details": {
                    "metadata": copy.deepcopy(subscription["metadata"]),
                    "subscription": subscription["id"],
                },
                "type": "subscription_details",
            },
            "period_end": end,
            "period_start": start,
            "starting_balance": 0,
            "status": "open",
            "status_transitions": {
                "finalized_at": now,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "subtotal": total,
            "subtotal_excluding_tax": total,
            "total": total,
            "total_discount_amounts": [],
            "total_excluding_tax": total,
            "total_taxes": [],
        }
        return self.state.add("invoice", invoice)

    @staticmethod
    def invoice_mark_paid(invoice: Obj) -> None:
        invoice.update(
            {
                "amount_paid": invoice["amount_due"],
                "amount_remaining": 0,
                "attempt_count": invoice["attempt_count"] + (1 if invoice["amount_due"] else 0),
                "attempted": True,
                "next_payment_attempt": None,
                "status": "paid",
            }
        )
        invoice["status_transitions"]["paid_at"] = _now()

    def invoice_fail(self, call: Call, invoice_id: str) -> Obj:
        invoice = self.state.get("invoice", invoice_id)
        if invoice["status"] != "open":
            raise StripeHTTPError(400, f"Invoice {invoice_id} is {invoice['status']}; only an open invoice can fail.")
        invoice.update(
            {"attempt_count": invoice["attempt_count"] + 1, "attempted": True, "next_payment_attempt": _now() + 3 * DAY}
        )
        self.emit(call, "invoice.payment_failed", invoice)
        subscription = self.state.objects.get(invoice["parent"]["subscription_details"]["subscription"])
        if subscription and subscription["status"] in {"active", "trialing"}:
            before = copy.deepcopy(subscription)
            subscription["status"] = "past_due"
            self.emit(call, "customer.subscription.updated", subscription, previous=self.changed(before, subscription))
        return invoice

    def invoice_pay(self, call: Call, invoice_id: str) -> Obj:
        invoice = self.state.get("invoice", invoice_id)
        if invoice["status"] != "open":
            raise StripeHTTPError(
                400,
                "Invoice is already paid.",
                code="invoice_not_open" if invoice["status"] != "paid" else "invoice_already_paid",
            )
        self.invoice_mark_paid(invoice)
        self.emit(call, "invoice.paid", invoice)
        subscription = self.state.objects.get(invoice["parent"]["subscription_details"]["subscription"])
        if subscription and subscription["status"] == "past_due":
            still_open = any(
                other["status"] == "open"
                and other["parent"]["subscription_details"]["subscription"] == subscription["id"]
                for other in self.state.all("invoice")
            )
            if not still_open:
                before = copy.deepcopy(subscription)
                subscription["status"] = "active"
                self.emit(
                    call, "customer.subscription.updated", subscription, previous=self.changed(before, subscription)
                )
        return invoice

    def usage_lines(self, subscription: Obj, end: int) -> list[Obj]:
        """Lines for metered items: unbilled meter events of the customer up to ``end``."""
        lines = []
        for item in subscription["items"]["data"]:
            price = item["price"]
            if price["recurring"]["usage_type"] != "metered":
                continue
            meter = self.state.objects[price["recurring"]["meter"]]
            key = meter["customer_mapping"]["event_payload_key"]
            value_key = meter["value_settings"]["event_payload_key"]
            events = [
                event
                for event in self.state.meter_events
                if event["event_name"] == meter["event_name"]
                and event["payload"].get(key) == subscription["customer"]
                and event["timestamp"] < end
                and event["identifier"] not in self.state.billed_usage
            ]
            formula = meter["default_aggregation"]["formula"]
            values = [Decimal(event["payload"][value_key]) for event in events]
            if formula == "count":
                usage = Decimal(len(values))
            elif formula == "last":
                usage = values[-1] if values else Decimal(0)
            else:
                usage = sum(values, Decimal(0))
            self.state.billed_usage.update(event["identifier"] for event in events)
            quantity = int(usage) if usage == usage.to_integral_value() else float(usage)
            product = self.state.objects[price["product"]]
            lines.append(
                self.invoice_line(
                    subscription,
                    item,
                    self.price_amount(price, usage),
                    quantity,
                    f"{quantity} × {product['name']} (usage)",
                    item["current_period_start"],
                    end,
                )
            )
        return lines

    def subscription_advance(self, call: Call, subscription_id: str, *, payment_fails: bool) -> Obj:
        """Close the current period: invoice its usage and the next period's flat fees, then renew
        (or end the subscription when it was set to cancel at the period's end)."""
        subscription = self.state.get("subscription", subscription_id)
        if subscription["status"] not in {"active", "trialing", "past_due"}:
            raise StripeHTTPError(400, f"Subscription {subscription_id} is {subscription['status']}.")
        before = copy.deepcopy(subscription)
        items = subscription["items"]["data"]
        start = min(item["current_period_start"] for item in items)
        end = max(item["current_period_end"] for item in items)
        lines = self.usage_lines(subscription, end) + self.state.pending_prorations.pop(subscription_id, [])
        invoice: Obj | None = None
        if subscription["cancel_at_period_end"]:
            if lines:
                invoice = self.invoice_create(subscription, lines, "subscription_cycle", start, end)
                subscription["latest_invoice"] = invoice["id"]
            subscription.update(
                {"status": "canceled", "ended_at": end, "canceled_at": subscription["canceled_at"] or _now()}
            )
            subscription["cancellation_details"]["reason"] = "cancellation_requested"
            self.emit(call, "customer.subscription.deleted", subscription, previous=self.changed(before, subscription))
        else:
            new_end = add_month(end, datetime.fromtimestamp(subscription["billing_cycle_anchor"], UTC).day)
            if subscription["status"] == "trialing":
                subscription["status"] = "active"
            for item in items:
                item["current_period_start"], item["current_period_end"] = end, new_end
                price = item["price"]
                if price["recurring"]["usage_type"] == "licensed":
                    product = self.state.objects[price["product"]]
                    lines.append(
                        self.invoice_line(
                            subscription,
                            item,
                            self.price_amount(price, Decimal(item["quantity"])),
                            item["quantity"],
                            f"{item['quantity']} × {product['name']}",
                            end,
                            new_end,
                        )
                    )
            invoice = self.invoice_create(subscription, lines, "subscription_cycle", start, end)
            subscription["latest_invoice"] = invoice["id"]
            if payment_fails and invoice["amount_due"] > 0:
                subscription["status"] = "past_due"
            self.emit(call, "customer.subscription.updated", subscription, previous=self.changed(before, subscription))
        if invoice is not None:
            if payment_fails and invoice["amount_due"] > 0:
                invoice.update({"attempt_count": 1, "attempted": True, "next_payment_attempt": _now() + 3 * DAY})
                self.emit(call, "invoice.payment_failed", invoice)
            else:
                self.invoice_mark_paid(invoice)
                self.emit(call, "invoice.paid", invoice)
        return {"subscription": subscription, "invoice": invoice}

    def subscription_update(self, call: Call, subscription_id: str) -> Obj:
        p = call.params
        subscription = self.state.get("subscription", subscription_id)
        if subscription["status"] == "canceled":
            raise StripeHTTPError(400, "A canceled subscription can only update its cancellation_details and metadata.")
        before = copy.deepcopy(subscription)
        now = _now()
        items = subscription["items"]["data"]
        changes = p.get("items") or []
        if not isinstance(changes, list):
            raise StripeHTTPError(400, "Invalid array", param="items")
        # Validate everything before changing anything: a refused request leaves no trace.
        for index, change in enumerate(changes):
            if change.get("id") and not any(i["id"] == change["id"] for i in items):
                raise _missing("subscription item", change["id"], f"items[{index}][id]")
            if change.get("price") or not change.get("id"):
                self.state.get("price", change.get("price"), param=f"items[{index}][price]")
        deleted = {c["id"] for c in changes if c.get("id") and _bool(c.get("deleted", "false"))}
        if deleted and len(deleted) >= len(items) and not any(not c.get("id") for c in changes):
            raise StripeHTTPError(400, "A subscription needs at least one item.", param="items")
        start = min(item["current_period_start"] for item in items)
        end = max(item["current_period_end"] for item in items)
        if "cancel_at_period_end" in p:
            flag = _bool(p["cancel_at_period_end"])
            subscription["cancel_at_period_end"] = flag
            subscription["cancel_at"] = end if flag else None
            subscription["canceled_at"] = now if flag else None
            subscription["cancellation_details"]["reason"] = "cancellation_requested" if flag else None
        subscription["metadata"] = _metadata(p, subscription["metadata"])
        behavior = p.get("proration_behavior", "create_prorations")
        prorations: list[Obj] = []
        fraction = Decimal(max(0, end - now)) / Decimal(max(1, end - start))

        def prorate(item: Obj, sign: int, label: str) -> None:
            price = item["price"]
            if behavior == "none" or price["recurring"]["usage_type"] != "licensed":
                return
            full = self.price_amount(price, Decimal(item["quantity"]))
            amount = sign * int((Decimal(full) * fraction).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            product = self.state.objects[price["product"]]
            prorations.append(
                self.invoice_line(
                    subscription, item, amount, item["quantity"], f"{label} {product['name']}", now, end, proration=True
                )
            )

        for index, change in enumerate(changes):
            item_id = change.get("id")
            if item_id:
                item = next(i for i in items if i["id"] == item_id)
                if _bool(change.get("deleted", "false")):
                    prorate(item, -1, "Unused time on")
                    items.remove(item)
                    continue
                prorate(item, -1, "Unused time on")
                if change.get("price"):
                    new_price = self.state.get("price", change["price"], param=f"items[{index}][price]")
                    item["price"] = copy.deepcopy(new_price)
                    if new_price["recurring"]["usage_type"] == "metered":
                        item.pop("quantity", None)
                    else:
                        item.setdefault("quantity", 1)
                if change.get("quantity") is not None and item["price"]["recurring"]["usage_type"] == "licensed":
                    item["quantity"] = _int(change, "quantity")
                prorate(item, 1, "Remaining time on")
            else:
                item = self.subscription_item(subscription_id, change["price"], _int(change, "quantity"), now)
                item["current_period_start"], item["current_period_end"] = start, end
                items.append(item)
                prorate(item, 1, "Remaining time on")
        subscription["items"]["total_count"] = len(items)
        invoice = None
        if prorations and behavior == "always_invoice":
            invoice = self.invoice_create(subscription, prorations, "subscription_update", now, now)
            self.invoice_mark_paid(invoice)
            subscription["latest_invoice"] = invoice["id"]
        elif prorations:
            self.state.pending_prorations.setdefault(subscription_id, []).extend(prorations)
        self.emit(call, "customer.subscription.updated", subscription, previous=self.changed(before, subscription))
        if invoice is not None:
            self.emit(call, "invoice.paid", invoice)
        return subscription

    def subscription_cancel(self, call: Call, subscription_id: str) -> Obj:
        subscription = self.state.get("subscription", subscription_id)
        if subscription["status"] == "canceled":
            raise StripeHTTPError(
                400, f"No such subscription: '{subscription_id}'; it was canceled.", code="resource_missing"
            )
        before = copy.deepcopy(subscription)
        now = _now()
        invoice = None
        if _bool(call.params.get("invoice_now", "false")):
            items = subscription["items"]["data"]
            start = min(item["current_period_start"] for item in items)
            lines = self.usage_lines(subscription, now + 1) + self.state.pending_prorations.pop(subscription_id, [])
            if lines:
                invoice = self.invoice_create(subscription, lines, "subscription_cycle", start, now)
                self.invoice_mark_paid(invoice)
                subscription["latest_invoice"] = invoice["id"]
        subscription.update({"status": "canceled", "canceled_at": now, "ended_at": now, "cancel_at_period_end": False})
        subscription["cancellation_details"]["reason"] = "cancellation_requested"
        self.emit(call, "customer.subscription.deleted", subscription, previous=self.changed(before, subscription))
        if invoice is not None:
            self.emit(call, "invoice.paid", invoice)
        return subscription

    # Connect ----------------------------------------------------------------------------------

    def account_create(self, call: Call) -> Obj:
        p = call.params
        controller_in = p.get("controller") if isinstance(p.get("controller"), dict) else None
        account_type = _str(p, "type")
        if controller_in is None and account_type is None:
            raise StripeHTTPError(400, "Pass either type or controller.", param="controller")
        if controller_in is not None and account_type is not None:
            raise StripeHTTPError(400, "You cannot pass both type and controller.", param="type")
        dashboard = ((controller_in or {}).get("stripe_dashboard") or {}).get("type", "full")
        if controller_in is not None:
            account_type = {"express": "express", "full": "standard", "none": "custom"}.get(dashboard, "none")
        capabilities = {
            name: "inactive"
            for name, wanted in (p.get("capabilities") or {}).items()
            if isinstance(wanted, dict) and _bool(wanted.get("requested"))
        }
        due = ["business_type", "external_account", "tos_acceptance.date", "tos_acceptance.ip"]
        account: Obj = {
            "id": new_id("acct"),
            "object": "account",
            "business_profile": {"mcc": None, "name": None, "support_email": None, "url": None},
            "business_type": None,
            "capabilities": capabilities,
            "charges_enabled": False,
            "controller": {
                "fees": {"payer": ((controller_in or {}).get("fees") or {}).get("payer", "application")},
                "is_controller": True,
                "losses": {"payments": ((controller_in or {}).get("losses") or {}).get("payments", "application")},
                "requirement_collection": (controller_in or {}).get("requirement_collection", "stripe"),
                "stripe_dashboard": {"type": dashboard},
                "type": "application",
            },
            "country": (_str(p, "country") or "US").upper(),
            "created": _now(),
            "default_currency": "usd",
            "details_submitted": False,
            "email": _str(p, "email"),
            "external_accounts": _list([], "/v1/accounts/external_accounts") | {"total_count": 0},
            "future_requirements": {"currently_due": [], "eventually_due": [], "past_due": [], "disabled_reason": None},
            "metadata": _metadata(p),
            "payouts_enabled": False,
            "requirements": {
                "alternatives": [],
                "current_deadline": None,
                "currently_due": list(due),
                "disabled_reason": "requirements.past_due",
                "errors": [],
                "eventually_due": list(due),
                "past_due": list(due),
                "pending_verification": [],
            },
            "settings": {"payouts": {"schedule": {"delay_days": 2, "interval": "daily"}}},
            "tos_acceptance": {"date": None, "ip": None, "user_agent": None},
            "type": account_type,
        }
        return self.state.add("account", account)

    def account_enable(self, call: Call, account_id: str, *, charges_enabled: bool, payouts_enabled: bool) -> Obj:
        account = self.state.get("account", account_id, label="account")
        before = copy.deepcopy(account)
        enabled = charges_enabled or payouts_enabled
        account.update(
            {
                "charges_enabled": charges_enabled,
                "payouts_enabled": payouts_enabled,
                "details_submitted": True,
                "capabilities": {name: "active" if enabled else "inactive" for name in account["capabilities"]},
            }
        )
        account["requirements"].update(
            {"currently_due": [], "eventually_due": [], "past_due": [], "disabled_reason": None}
        )
        account["tos_acceptance"].update({"date": _now(), "ip": "127.0.0.1"})
        self.emit(call, "account.updated", account, previous=self.changed(before, account), account=account_id)
        return account

    def account_link_create(self, call: Call) -> Obj:
        p = call.params
        account_id = _str(p, "account", required=True)
        self.state.get("account", account_id, param="account")
        link_type = _str(p, "type", required=True)
        if link_type not in {"account_onboarding", "account_update"}:
            raise StripeHTTPError(400, f"Invalid type: {link_type}.", param="type")
        refresh_url = _str(p, "refresh_url", required=True)
        return_url = _str(p, "return_url", required=True)
        now = _now()
        link_id = _rand(32)
        self.state.private[f"link_{link_id}"] = {
            "account": account_id,
            "refresh_url": refresh_url,
            "return_url": return_url,
            "expires_at": now + ACCOUNT_LINK_TTL_S,
            "used": False,
        }
        return {
            "object": "account_link",
            "created": now,
            "expires_at": now + ACCOUNT_LINK_TTL_S,
            "url": f"{call.base_url}/_fake/connect/onboarding/{link_id}",
        }

    def transfer_create(self, call: Call) -> Obj:
        p = call.params
        amount = _int(p, "amount", required=True) or 0
        if amount <= 0:
            raise StripeHTTPError(
                400, "This value must be greater than or equal to 1.", code="parameter_invalid_integer", param="amount"
            )
        currency = (_str(p, "currency", required=True) or "").lower()
        destination = _str(p, "destination", required=True) or ""
        account = self.state.objects.get(destination)
        if account is None or account.get("object") != "account":
            raise StripeHTTPError(
                400, f"No such destination: '{destination}'", code="resource_missing", param="destination"
            )
        if account["capabilities"].get("transfers") != "active":
            raise StripeHTTPError(
                400,
                "Your destination account needs to have at least one of the following capabilities enabled: "
                "transfers, crypto_transfers, legacy_payments",
                code="insufficient_capabilities_for_transfer",
                param="destination",
            )
        transfer_id = new_id("tr")
        transfer = {
            "id": transfer_id,
            "object": "transfer",
            "amount": amount,
            "amount_reversed": 0,
            "balance_transaction": new_id("txn"),
            "created": _now(),
            "currency": currency,
            "description": _str(p, "description"),
            "destination": destination,
            "destination_payment": new_id("py"),
            "livemode": False,
            "metadata": _metadata(p),
            "reversals": _list([], f"/v1/transfers/{transfer_id}/reversals") | {"total_count": 0},
            "reversed": False,
            "source_transaction": _str(p, "source_transaction"),
            "source_type": "card",
            "transfer_group": _str(p, "transfer_group"),
        }
        self.state.add("transfer", transfer)
        self.emit(call, "transfer.created", transfer)
        return transfer

    # lists ------------------------------------------------------------------------------------

    def list_of(self, kind: str, call: Call, url: str, keep: Callable[[Obj], bool]) -> Obj:
        limit = max(1, min(100, _int(call.params, "limit", default=10) or 10))
        items = [obj for obj in reversed(self.state.all(kind)) if keep(obj)]  # newest first
        after = call.params.get("starting_after")
        if after:
            ids = [obj.get("id") for obj in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        return _list(copy.deepcopy(items[:limit]), url, has_more=len(items) > limit)


# --- routing ------------------------------------------------------------------------------------

ApiRoute = tuple[str, re.Pattern[str], Callable[[FakeStripeAPI, Call, re.Match[str]], Obj]]


def _expand(call: Call) -> list[str]:
    expand = call.params.get("expand") or []
    return expand if isinstance(expand, list) else [expand]


def _eq(call: Call, obj: Obj, *names: str) -> bool:
    return all(call.params.get(name) in (None, "") or obj.get(name) == call.params[name] for name in names)


def _route(method: str, pattern: str, handler: Callable[[FakeStripeAPI, Call, re.Match[str]], Obj]) -> ApiRoute:
    return (method, re.compile(f"^{pattern}$"), handler)


API_ROUTES: list[ApiRoute] = [
    _route("POST", r"/v1/customers", lambda api, call, m: api.customer_create(call)),
    _route("GET", r"/v1/customers/(?P<id>[^/]+)", lambda api, call, m: api.state.get("customer", m["id"])),
    _route("POST", r"/v1/customers/(?P<id>[^/]+)", lambda api, call, m: api.customer_update(call, m["id"])),
    _route("POST", r"/v1/products", lambda api, call, m: api.product_create(call)),
    _route("GET", r"/v1/products/(?P<id>[^/]+)", lambda api, call, m: api.state.get("product", m["id"])),
    _route("POST", r"/v1/prices", lambda api, call, m: api.price_view(api.price_create(call), _expand(call))),
    _route(
        "GET",
        r"/v1/prices/(?P<id>[^/]+)",
        lambda api, call, m: api.price_view(api.state.get("price", m["id"]), _expand(call)),
    ),
    _route("POST", r"/v1/billing/meters", lambda api, call, m: api.meter_create(call)),
    _route(
        "GET",
        r"/v1/billing/meters",
        lambda api, call, m: api.list_of("billing.meter", call, "/v1/billing/meters", lambda o: _eq(call, o, "status")),
    ),
    _route(
        "GET",
        r"/v1/billing/meters/(?P<id>[^/]+)",
        lambda api, call, m: api.state.get("billing.meter", m["id"], label="billing meter"),
    ),
    _route("POST", r"/v1/billing/meter_events", lambda api, call, m: api.meter_event_create(call)),
    _route("POST", r"/v1/checkout/sessions", lambda api, call, m: api.checkout_session_create(call)),
    _route(
        "GET",
        r"/v1/checkout/sessions/(?P<id>[^/]+)",
        lambda api, call, m: api.checkout_session_view(
            api.state.get("checkout.session", m["id"], label="checkout.session"), _expand(call)
        ),
    ),
    _route(
        "GET",
        r"/v1/checkout/sessions/(?P<id>[^/]+)/line_items",
        lambda api, call, m: api.checkout_line_items(
            api.state.get("checkout.session", m["id"], label="checkout.session")
        ),
    ),
    _route(
        "POST",
        r"/v1/checkout/sessions/(?P<id>[^/]+)/expire",
        lambda api, call, m: api.checkout_session_expire(call, m["id"]),
    ),
    _route(
        "GET",
        r"/v1/subscriptions",
        lambda api, call, m: api.list_of(
            "subscription", call, "/v1/subscriptions", lambda o: _eq(call, o, "customer", "status")
        ),
    ),
    _route("GET", r"/v1/subscriptions/(?P<id>[^/]+)", lambda api, call, m: api.state.get("subscription", m["id"])),
    _route("POST", r"/v1/subscriptions/(?P<id>[^/]+)", lambda api, call, m: api.subscription_update(call, m["id"])),
    _route("DELETE", r"/v1/subscriptions/(?P<id>[^/]+)", lambda api, call, m: api.subscription_cancel(call, m["id"])),
    _route(
        "GET",
        r"/v1/invoices",
        lambda api, call, m: api.list_of(
            "invoice",
            call,
            "/v1/invoices",
            lambda o: (
                _eq(call, o, "customer", "status")
                and call.params.get("subscription") in (None, "", o["parent"]["subscription_details"]["subscription"])
            ),
        ),
    ),
    _route("GET", r"/v1/invoices/(?P<id>[^/]+)", lambda api, call, m: api.state.get("invoice", m["id"])),
    _route("POST", r"/v1/accounts", lambda api, call, m: api.account_create(call)),
    _route("GET", r"/v1/accounts/(?P<id>[^/]+)", lambda api, call, m: api.state.get("account", m["id"])),
    _route(
        "POST",
        r"/v1/accounts/(?P<id>[^/]+)/login_links",
        lambda api, call, m: {
            "object": "login_link",
            "created": _now(),
            "url": f"{call.base_url}/_fake/connect/dashboard/{api.state.get('account', m['id'])['id']}",
        },
    ),
    _route("POST", r"/v1/account_links", lambda api, call, m: api.account_link_create(call)),
    _route("POST", r"/v1/transfers", lambda api, call, m: api.transfer_create(call)),
    _route(
        "GET",
        r"/v1/transfers",
        lambda api, call, m: api.list_of(
            "transfer", call, "/v1/transfers", lambda o: _eq(call, o, "destination", "transfer_group")
        ),
    ),
    _route("GET", r"/v1/transfers/(?P<id>[^/]+)", lambda api, call, m: api.state.get("transfer", m["id"])),
    _route(
        "GET",
        r"/v1/events",
        lambda api, call, m: api.list_of("event", call, "/v1/events", lambda o: _eq(call, o, "type")),
    ),
    _route("GET", r"/v1/events/(?P<id>[^/]+)", lambda api, call, m: api.state.get("event", m["id"])),
]

DEFAULT_FAULT_ERRORS: dict[int, Obj] = {
    400: {"type": "invalid_request_error", "message": "Fake fault: invalid request."},
    401: {"type": "invalid_request_error", "message": "Invalid API Key provided."},
    402: {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "generic_decline",
        "message": "Your card was declined.",
    },
    404: {"type": "invalid_request_error", "code": "resource_missing", "message": "Fake fault: no such object."},
    409: {
        "type": "invalid_request_error",
        "code": "lock_timeout",
        "message": "This object cannot be accessed right now.",
    },
    429: {
        "type": "invalid_request_error",
        "code": "rate_limit",
        "message": "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
    },
}


# --- webhook delivery ---------------------------------------------------------------------------


class Deliverer:
    """Posts events to their target, one at a time, in the order they were emitted."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.queue: queue.Queue[tuple[list[Obj], threading.Event] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="fake-stripe-webhooks", daemon=True)
        self.thread.start()

    def submit(self, events: list[Obj], *, wait: bool) -> None:
        if not events:
            return
        done = threading.Event()
        self.queue.put((events, done))
        if wait:
            done.wait(timeout=60)

    def stop(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            events, done = job
            try:
                for event in events:
                    target = self.target_for(event)
                    if target.url and target.auto_deliver:
                        self.deliver(event, target)
            finally:
                done.set()

    def target_for(self, event: Obj) -> WebhookTarget:
        with self.state.lock:
            return copy.copy(self.state.targets["connect" if event.get("account") else "platform"])

    def deliver(self, event: Obj, target: WebhookTarget, *, timestamp: int | None = None) -> Obj:
        payload = json.dumps(event, indent=2).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign_payload(payload, target.secret or "", timestamp),
        }
        record: Obj = {"event": event["id"], "type": event["type"], "url": target.url, "status": None, "error": None}
        request = urllib.request.Request(target.url or "", data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                record["status"] = response.status
        except urllib.error.HTTPError as exc:
            record["status"] = exc.code
        except OSError as exc:
            record["error"] = str(exc)
        record["delivered_at"] = time.time()
        with self.state.lock:
            self.state.deliveries.append(record)
        return record


# --- the HTTP server ----------------------------------------------------------------------------


class FakeStripeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], *, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.state = State()
        self.api = FakeStripeAPI(self.state)
        self.deliverer = Deliverer(self.state)
        self.verbose = verbose

    def server_close(self) -> None:
        self.deliverer.stop()
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes on a kept-alive connection: without TCP_NODELAY the body
    # waits for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    server: FakeStripeServer
    server_version = "stripe"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    # plumbing ---------------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data, indent=2).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _base_url(self) -> str:
        host, port = str(self.server.server_address[0]), self.server.server_address[1]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        try:
            if parts.path.startswith("/_fake/"):
                self._control(method, parts.path, parts.query)
            else:
                self._api(method, parts.path, parts.query)
        except ConnectionError:
            self.close_connection = True

    # the API ----------------------------------------------------------------------------------

    def _api(self, method: str, path: str, query: str) -> None:
        state = self.server.state
        raw = self._body()
        pairs = parse_qsl(query, keep_blank_values=True)
        if method == "POST":
            pairs += parse_qsl(raw.decode(), keep_blank_values=True)
        params = parse_form(pairs)
        version = self.headers.get("Stripe-Version")
        request_id = new_id("req")
        idem_key = self.headers.get("Idempotency-Key")
        headers = {"Request-Id": request_id, "Stripe-Version": version or DEFAULT_API_VERSION}
        if idem_key:
            headers["Idempotency-Key"] = idem_key
        log: Obj = {
            "method": method,
            "path": path,
            "params": params,
            "idempotency_key": idem_key,
            "stripe_version": version,
            "request_id": request_id,
            "status": None,
            "replayed": False,
            "fault": False,
        }
        with state.lock:
            state.requests.append(log)
            fault = next(
                (f for f in state.faults if f.remaining > 0 and (not f.path_prefix or path.startswith(f.path_prefix))),
                None,
            )
            if fault is not None:
                fault.remaining -= 1
                state.faults = [f for f in state.faults if f.remaining > 0]
                log.update({"status": fault.status, "fault": True})
        if fault is not None:
            if fault.status == 0:  # the connection drops before any answer
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            error = fault.error or DEFAULT_FAULT_ERRORS.get(
                fault.status, {"type": "api_error", "message": "Something went wrong on Stripe's end."}
            )
            self._json(fault.status, {"error": error}, headers)
            return

        auth = self.headers.get("Authorization", "")
        api_key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if not api_key.startswith(("sk_test_", "rk_test_")):
            log["status"] = 401
            shown = f"{api_key[:8]}{'*' * 4}{api_key[-4:]}" if api_key else ""
            message = f"Invalid API Key provided: {shown}" if api_key else "You did not provide an API key."
            self._json(401, {"error": {"type": "invalid_request_error", "message": message}}, headers)
            return

        fingerprint = json.dumps([method, path, params], sort_keys=True)
        call = Call(method, path, params, self._base_url(), api_key, version, request_id, idem_key)
        with state.lock:
            if version:
                state.last_api_version = version
            status, body, headers = self._api_answer(call, fingerprint, headers, log)
        self._send(status, body, {"Content-Type": "application/json", **headers})
        self.server.deliverer.submit(call.events, wait=False)

    def _api_answer(
        self, call: Call, fingerprint: str, headers: dict[str, str], log: Obj
    ) -> tuple[int, bytes, dict[str, str]]:
        """Run (or replay) an API request; the caller holds the state lock."""
        state = self.server.state
        key = (call.api_key, call.idempotency_key or "")
        if call.idempotency_key and call.method == "POST":
            saved = state.idempotency.get(key)
            if saved is not None and saved["fingerprint"] != fingerprint:
                log["status"] = 400
                error = {
                    "type": "idempotency_error",
                    "message": (
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        f"used with. Try using a key other than '{call.idempotency_key}' if you meant to execute a "
                        "different request."
                    ),
                }
                return 400, json.dumps({"error": error}, indent=2).encode(), headers
            if saved is not None:
                log.update({"status": saved["status"], "replayed": True})
                return (
                    saved["status"],
                    saved["body"],
                    {**headers, "Request-Id": saved["request_id"], "Idempotent-Replayed": "true"},
                )
        status, data = self._dispatch(call)
        body = json.dumps(data, indent=2).encode()
        log["status"] = status
        # Stripe saves a result once the request ran, errors included, except parameter errors.
        if call.idempotency_key and call.method == "POST" and (status < 400 or status == 402):
            state.idempotency[key] = {
                "fingerprint": fingerprint,
                "status": status,
                "body": body,
                "request_id": call.request_id,
            }
        return status, body, headers

    def _dispatch(self, call: Call) -> tuple[int, Obj]:
        matched_path = False
        for method, pattern, handler in API_ROUTES:
            match = pattern.match(call.path)
            if match is None:
                continue
            matched_path = True
            if method != call.method:
                continue
            try:
                return 200, copy.deepcopy(handler(self.server.api, call, match))
            except StripeHTTPError as exc:
                call.events.clear()
                return exc.status, {"error": exc.error}
        message = f"Unrecognized request URL ({call.method}: {call.path})."
        if matched_path:
            message = f"This endpoint does not support {call.method} requests."
        return 404, {"error": {"type": "invalid_request_error", "message": message}}

    # control and browser pages ----------------------------------------------------------------

    def _control(self, method: str, path: str, query: str) -> None:
        server = self.server
        state = server.state
        raw = self._body()
        args: Obj = dict(parse_qsl(query))
        if method == "POST" and raw:
            if (self.headers.get("Content-Type") or "").startswith("application/json"):
                args.update(json.loads(raw))
            else:
                args.update(parse_qsl(raw.decode(), keep_blank_values=True))
        call = Call(method, path, {}, self._base_url())
        segments = path.strip("/").split("/")[1:]
        wants_html = method == "GET" and segments[:1] in (["checkout"], ["connect"])
        try:
            with state.lock:
                result = self._control_dispatch(method, segments, args, call)
        except StripeHTTPError as exc:
            if wants_html or args.get("_form"):
                self._send(exc.status, html.escape(str(exc)).encode(), {"Content-Type": "text/html; charset=utf-8"})
            else:
                self._json(exc.status, {"error": exc.error})
            return
        server.deliverer.submit(call.events, wait=True)
        if isinstance(result, _Redirect):
            self._send(303, b"", {"Location": result.location})
        elif isinstance(result, _Page):
            self._send(200, result.html.encode(), {"Content-Type": "text/html; charset=utf-8"})
        else:
            self._json(200, result)

    def _control_dispatch(self, method: str, seg: list[str], args: Obj, call: Call) -> Any:
        state, api = self.server.state, self.server.api
        route = (method, *seg)
        match route:
            case ("POST", "reset"):
                state.reset()
                return {"ok": True}
            case ("POST", "webhooks"):
                target = state.targets["connect" if args.get("connect") else "platform"]
                target.url = args.get("url") or None
                target.secret = args.get("secret")
                target.auto_deliver = bool(args.get("auto_deliver", True))
                if args.get("api_version"):
                    state.webhook_api_version = args["api_version"]
                return {"ok": True}
            case ("POST", "faults"):
                state.faults.append(
                    Fault(int(args.get("count", 1)), int(args["status"]), args.get("path_prefix"), args.get("error"))
                )
                return {"ok": True}
            case ("POST", "checkout", session_id, "complete"):
                return api.checkout_session_complete(call, session_id)
            case ("POST", "checkout", session_id, "expire"):
                return api.checkout_session_expire(call, session_id)
            case ("GET", "checkout", session_id):
                return self._checkout_page(api, session_id)
            case ("POST", "checkout", session_id, "pay"):
                result = api.checkout_session_complete(call, session_id)
                return _Redirect(result["session"]["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id))
            case ("POST", "invoices", invoice_id, "fail"):
                return api.invoice_fail(call, invoice_id)
            case ("POST", "invoices", invoice_id, "pay"):
                return api.invoice_pay(call, invoice_id)
            case ("POST", "subscriptions", subscription_id, "advance"):
                return api.subscription_advance(call, subscription_id, payment_fails=bool(args.get("payment_fails")))
            case ("POST", "accounts", account_id, "enable"):
                return api.account_enable(
                    call,
                    account_id,
                    charges_enabled=bool(args.get("charges_enabled", True)),
                    payouts_enabled=bool(args.get("payouts_enabled", True)),
                )
            case ("GET", "connect", "onboarding", link_id):
                link = self._link(state, link_id)
                if link is None:
                    raise StripeHTTPError(404, "No such account link.")
                if link["used"] or link["expires_at"] < _now():
                    return _Redirect(link["refresh_url"])
                return _Page(_ONBOARDING_PAGE.format(account=html.escape(link["account"]), link=html.escape(link_id)))
            case ("POST", "connect", "onboarding", link_id):
                link = self._link(state, link_id)
                if link is None:
                    raise StripeHTTPError(404, "No such account link.")
                if link["used"] or link["expires_at"] < _now():
                    return _Redirect(link["refresh_url"])
                link["used"] = True
                api.account_enable(call, link["account"], charges_enabled=True, payouts_enabled=True)
                return _Redirect(link["return_url"])
            case ("GET", "connect", "dashboard", account_id):
                account = state.get("account", account_id)
                return _Page(f"<!doctype html><title>Express dashboard</title><h1>{html.escape(account['id'])}</h1>")
            case ("GET", "meter_events"):
                return [
                    copy.deepcopy(event)
                    for event in state.meter_events
                    if args.get("event_name") in (None, event["event_name"])
                    and args.get("customer") in (None, event["payload"].get("stripe_customer_id"))
                ]
            case ("GET", "transfers"):
                return [
                    copy.deepcopy(t)
                    for t in state.all("transfer")
                    if args.get("destination") in (None, t["destination"])
                ]
            case ("GET", "events"):
                return [copy.deepcopy(e) for e in state.all("event") if args.get("type") in (None, e["type"])]
            case ("GET", "events", event_id, "signed"):
                event = state.get("event", event_id)
                target = state.targets["connect" if event.get("account") else "platform"]
                payload = json.dumps(event, indent=2).encode()
                secret = args.get("secret") or target.secret or ""
                timestamp = int(args["timestamp"]) if args.get("timestamp") else None
                return {"payload": payload.decode(), "signature": sign_payload(payload, secret, timestamp)}
            case ("POST", "events", event_id, "send"):
                event = copy.deepcopy(state.get("event", event_id))
                target = copy.copy(state.targets["connect" if event.get("account") else "platform"])
                if not target.url:
                    raise StripeHTTPError(400, "No webhook target configured for this event.")
                timestamp = int(args["timestamp"]) if args.get("timestamp") else None
                state.lock.release()  # the receiver may call back into this server
                try:
                    return self.server.deliverer.deliver(event, target, timestamp=timestamp)
                finally:
                    state.lock.acquire()
            case ("GET", "deliveries"):
                return copy.deepcopy(state.deliveries)
            case ("GET", "requests"):
                return copy.deepcopy(state.requests)
            case ("GET", "objects", object_id):
                obj = state.objects.get(object_id)
                if obj is None:
                    raise _missing("object", object_id)
                return copy.deepcopy(obj)
        raise StripeHTTPError(404, f"Unrecognized fake control URL ({method}: /_fake/{'/'.join(seg)}).")

    @staticmethod
    def _link(state: State, link_id: str) -> Obj | None:
        return state.private.get(f"link_{link_id}")

    @staticmethod
    def _checkout_page(api: FakeStripeAPI, session_id: str) -> _Page:
        session = api.state.get("checkout.session", session_id, label="checkout.session")
        if session["status"] != "open":
            return _Page(f"<!doctype html><title>Checkout</title><p>This checkout session is {session['status']}.</p>")
        rows = "".join(
            f"<li>{html.escape(item['description'])} × {item['quantity'] or 'usage'}: "
            f"{item['amount_total'] / 100:.2f} {item['currency'].upper()}</li>"
            for item in api.checkout_line_items(session)["data"]
        )
        cancel = html.escape(session["cancel_url"] or "/")
        return _Page(
            _CHECKOUT_PAGE.format(
                rows=rows,
                total=f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}",
                session=html.escape(session_id),
                cancel=cancel,
            )
        )


@dataclass
class _Redirect:
    location: str


@dataclass
class _Page:
    html: str


_CHECKOUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fake Stripe Checkout</title></head>
<body><main>
<h1>Fake Stripe Checkout</h1>
<ul>{rows}</ul>
<p>Total due today: <strong>{total}</strong></p>
<p>Card: 4242 4242 4242 4242 (test)</p>
<form method="post" action="/_fake/checkout/{session}/pay"><input type="hidden" name="_form" value="1">
<button type="submit">Pay and subscribe</button></form>
<p><a href="{cancel}">Cancel</a></p>
</main></body></html>"""

_ONBOARDING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fake Stripe Connect onboarding</title></head>
<body><main>
<h1>Set up payouts for {account}</h1>
<p>Test mode: business details and bank account are filled in for you.</p>
<form method="post" action="/_fake/connect/onboarding/{link}"><input type="hidden" name="_form" value="1">
<button type="submit">Agree and submit</button></form>
</main></body></html>"""


# --- a handle for tests -------------------------------------------------------------------------


class FakeStripe:
    """Start a fake Stripe in a thread (``start``), or drive a running one (``FakeStripe.connect``).

    Control methods go over HTTP to ``/_fake/``, so they work the same for both.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.server: FakeStripeServer | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    @classmethod
    def connect(cls, url: str) -> FakeStripe:
        handle = cls()
        handle.url = url.rstrip("/")
        return handle

    def start(self) -> FakeStripe:
        self.server = FakeStripeServer((self.host, self.port))
        host, port = str(self.server.server_address[0]), self.server.server_address[1]
        self.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="fake-stripe", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _request(self, method: str, path: str, body: Obj | None = None, query: Obj | None = None) -> Any:
        url = f"{self.url}/_fake/{path}"
        clean = {k: v for k, v in (query or {}).items() if v is not None}
        if clean:
            url += "?" + urlencode(clean)
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"fake Stripe {method} /_fake/{path}: {exc.code} {detail}") from None

    # configuration
    def reset(self) -> None:
        self._request("POST", "reset")

    def set_webhook_target(
        self,
        url: str | None,
        secret: str,
        *,
        connect: bool = False,
        auto_deliver: bool = True,
        api_version: str | None = None,
    ) -> None:
        """Where events go (``connect=True``: Connect events) and the secret they are signed with.
        ``url=None`` or ``auto_deliver=False``: events are only stored (see ``events``/``send_event``)."""
        self._request(
            "POST",
            "webhooks",
            {
                "url": url,
                "secret": secret,
                "connect": connect,
                "auto_deliver": auto_deliver,
                "api_version": api_version,
            },
        )

    def fail_next(self, n: int, status: int, path_prefix: str | None = None, *, error: Obj | None = None) -> None:
        """The next ``n`` API requests (under ``path_prefix``) answer ``status`` (0: the connection
        drops); ``error`` replaces the default error body."""
        self._request("POST", "faults", {"count": n, "status": status, "path_prefix": path_prefix, "error": error})

    # scenario steps
    def complete_checkout(self, session_id: str) -> Obj:
        """The buyer pays: returns ``{"session", "subscription", "invoice"}``; webhooks delivered."""
        return self._request("POST", f"checkout/{session_id}/complete")

    def expire_checkout(self, session_id: str) -> Obj:
        return self._request("POST", f"checkout/{session_id}/expire")

    def fail_invoice_payment(self, invoice_id: str) -> Obj:
        return self._request("POST", f"invoices/{invoice_id}/fail")

    def pay_invoice(self, invoice_id: str) -> Obj:
        return self._request("POST", f"invoices/{invoice_id}/pay")

    def advance_subscription_period(self, subscription_id: str, *, payment_fails: bool = False) -> Obj:
        """Renew: returns ``{"subscription", "invoice"}`` (the invoice may be None at a final cancel)."""
        return self._request("POST", f"subscriptions/{subscription_id}/advance", {"payment_fails": payment_fails})

    def enable_account(self, account_id: str, *, charges_enabled: bool = True, payouts_enabled: bool = True) -> Obj:
        return self._request(
            "POST",
            f"accounts/{account_id}/enable",
            {"charges_enabled": charges_enabled, "payouts_enabled": payouts_enabled},
        )

    # inspection
    def meter_events(self, *, event_name: str | None = None, customer: str | None = None) -> list[Obj]:
        return self._request("GET", "meter_events", query={"event_name": event_name, "customer": customer})

    def transfers(self, *, destination: str | None = None) -> list[Obj]:
        return self._request("GET", "transfers", query={"destination": destination})

    def events(self, *, type: str | None = None) -> list[Obj]:  # noqa: A002
        return self._request("GET", "events", query={"type": type})

    def signed_event(
        self, event_id: str, *, secret: str | None = None, timestamp: int | None = None
    ) -> tuple[bytes, str]:
        """``(payload, Stripe-Signature)`` exactly as a delivery would carry them."""
        data = self._request("GET", f"events/{event_id}/signed", query={"secret": secret, "timestamp": timestamp})
        return data["payload"].encode(), data["signature"]

    def send_event(self, event_id: str, *, timestamp: int | None = None) -> Obj:
        """Deliver a stored event (again) to its target now; returns the delivery record."""
        return self._request("POST", f"events/{event_id}/send", {"timestamp": timestamp})

    def deliveries(self) -> list[Obj]:
        return self._request("GET", "deliveries")

    def requests(self) -> list[Obj]:
        return self._request("GET", "requests")

    def object(self, object_id: str) -> Obj:
        return self._request("GET", f"objects/{object_id}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake Stripe API on loopback (see the module docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url", help="where platform events are POSTed")
    parser.add_argument("--webhook-secret", default="whsec_fake", help="signing secret for platform events")
    parser.add_argument("--connect-webhook-url", help="where Connect events are POSTed")
    parser.add_argument("--connect-webhook-secret", default="whsec_fake_connect")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    server = FakeStripeServer((args.host, args.port), verbose=args.verbose)
    server.state.targets["platform"] = WebhookTarget(args.webhook_url, args.webhook_secret)
    server.state.targets["connect"] = WebhookTarget(args.connect_webhook_url, args.connect_webhook_secret)
    print(f"fake Stripe listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
