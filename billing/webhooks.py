"""Stripe webhooks: verify, store once, acknowledge, process in a task, in any order.

The view (:func:`billing.views.stripe_webhook`) verifies the signature over the raw body and calls
:func:`stripe_event_store`, which inserts the event under its unique id (a replay finds the row and
changes nothing) and enqueues ``billing.stripe_event_process`` when the row commits. Processing
(:func:`stripe_event_process`) locks the event row, so an event is applied once however often it is
delivered or enqueued, and records failures on the row (``attempts``, ``last_error``); Stripe being
unavailable is retried by the task with backoff, anything left over by :func:`stripe_events_retry`.

Order does not matter: subscription events older than the newest one applied (``created`` against
``Subscription.stripe_synced_at``) are ignored; the rest re-fetch the subscription and apply its current
state. Whichever of ``checkout.session.completed``, ``customer.subscription.*`` and ``invoice.*``
arrives first provisions the subscription from its checkout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import checkout, invoices, payouts, services
from billing.models import CheckoutStatus, StripeEvent, StripeEventStatus, Subscription
from marketplace.integrations import stripe as payments

logger = logging.getLogger(__name__)

EVENT_MAX_ATTEMPTS = 20  # after that a failed event waits for a person (admin billing page)
EVENT_RETRY_AFTER = timedelta(minutes=5)

Handler = Callable[[StripeEvent, Mapping[str, Any]], str]


def _created(event: Mapping[str, Any]) -> datetime:
    return datetime.fromtimestamp(int(event.get("created") or 0), UTC)


def stripe_event_store(*, event: Mapping[str, Any]) -> tuple[StripeEvent, bool]:
    """Store a verified event once; ``(row, created)``. A new event of a handled type is processed by a
    task after the row commits; others are stored as ``ignored``. An api_version other than the pinned
    one is logged (the handlers re-fetch objects with the pinned version)."""
    event_type = str(event.get("type") or "")
    api_version = str(event.get("api_version") or "")
    if api_version and api_version != settings.STRIPE_API_VERSION:
        logger.warning(
            "Stripe event %s has api_version %s, pinned %s", event.get("id"), api_version, settings.STRIPE_API_VERSION
        )
    handled = event_type in HANDLERS
    try:
        with transaction.atomic():
            row = StripeEvent.objects.create(
                event_id=str(event["id"]),
                type=event_type,
                api_version=api_version,
                livemode=bool(event.get("livemode")),
                stripe_created=_created(event),
                payload=dict(event),
                status=StripeEventStatus.RECEIVED if handled else StripeEventStatus.IGNORED,
            )
            if handled:
                _enqueue_on_commit(row.pk)
    except IntegrityError:
        return StripeEvent.objects.get(event_id=str(event["id"])), False
    return row, True


def _enqueue_on_commit(event_row_id: int) -> None:
    from billing.tasks import stripe_event_process_task

    # robust: a broker outage must not turn the acknowledgement into a 500; stripe_events_retry resends.
    transaction.on_commit(lambda: stripe_event_process_task.delay(event_row_id=event_row_id), robust=True)


def stripe_event_process(*, event_row_id: int) -> str:
    """Apply one stored event; returns its status. Safe to call any number of times, concurrently too:
    the event row is locked while it is applied and a processed event is not applied again. A failure
    is recorded on the row and raised (``StripeUnavailable`` is worth retrying)."""
    failure: Exception | None = None
    with transaction.atomic():
        row = StripeEvent.objects.select_for_update().get(pk=event_row_id)
        if row.status in (StripeEventStatus.PROCESSED, StripeEventStatus.IGNORED):
            return row.status
        row.attempts += 1
        try:
            with transaction.atomic():
                handler = HANDLERS.get(row.type)
                outcome = handler(row, row.payload["data"]["object"]) if handler else StripeEventStatus.IGNORED
        except Exception as exc:
            failure = exc
            row.status = StripeEventStatus.FAILED
            row.last_error = f"{type(exc).__name__}: {exc}"[:4000]
            row.save(update_fields=["status", "attempts", "last_error"])
        else:
            row.status = outcome
            row.last_error = ""
            row.processed_at = timezone.now()
            row.save(update_fields=["status", "attempts", "last_error", "processed_at"])
    if failure is not None:
        log = logger.warning if isinstance(failure, payments.StripeUnavailable) else logger.error
        log("Stripe event %s (%s) failed: %s", row.event_id, row.type, failure)
        raise failure
    return row.status


def stripe_events_retry(*, now: datetime | None = None) -> int:
    """Enqueue events still unprocessed some minutes after they arrived (a lost task, a broker outage,
    a failure that outlived the task's retries). Returns how many were enqueued."""
    from billing.tasks import stripe_event_process_task

    now = now or timezone.now()
    due = list(
        StripeEvent.objects.filter(
            status__in=(StripeEventStatus.RECEIVED, StripeEventStatus.FAILED),
            received_at__lt=now - EVENT_RETRY_AFTER,
            attempts__lt=EVENT_MAX_ATTEMPTS,
        )
        .order_by("stripe_created")
        .values_list("pk", flat=True)[:500]
    )
    for pk in due:
        stripe_event_process_task.delay(event_row_id=pk)
    return len(due)


# --- handlers: each returns "processed" or "ignored" ---------------------------------------------


def _subscription_for_stripe(
    *, stripe_subscription_id: str, event_created: datetime, fetched: Mapping[str, Any] | None = None
) -> Subscription | None:
    """Our subscription for a Stripe subscription, brought up to its current state (fetched unless
    given); provisioned from its checkout if no event did that yet. None: not one of ours."""
    existing = Subscription.objects.filter(stripe_subscription_id=stripe_subscription_id).first()
    current = fetched or payments.subscription_retrieve(subscription=stripe_subscription_id)
    if existing is not None:
        locked = services._subscription_lock(existing)
        services.subscription_apply_stripe_state(
            subscription=locked, stripe_subscription=current, event_created=event_created
        )
        return locked
    session = checkout.checkout_session_for_stripe(metadata=current.get("metadata") or {})
    if session is None:
        return None
    return checkout.checkout_complete_from_stripe(
        checkout_session_id=session.pk, stripe_subscription=current, event_created=event_created
    )


def _checkout_completed(row: StripeEvent, obj: Mapping[str, Any]) -> str:
    session = checkout.checkout_session_for_stripe(stripe_session=obj)
    if session is None or obj.get("mode") != "subscription" or not obj.get("subscription"):
        return StripeEventStatus.IGNORED
    stripe_subscription = payments.subscription_retrieve(subscription=str(obj["subscription"]))
    checkout.checkout_complete_from_stripe(
        checkout_session_id=session.pk, stripe_subscription=stripe_subscription, event_created=row.stripe_created
    )
    return StripeEventStatus.PROCESSED


def _checkout_expired(row: StripeEvent, obj: Mapping[str, Any]) -> str:
    session = checkout.checkout_session_for_stripe(stripe_session=obj)
    if session is None or session.status != CheckoutStatus.OPEN:
        return StripeEventStatus.IGNORED
    checkout.checkout_mark_expired(checkout_session_id=session.pk, reason="expired")
    return StripeEventStatus.PROCESSED


def _subscription_changed(row: StripeEvent, obj: Mapping[str, Any]) -> str:
    stripe_id = str(obj["id"])
    synced = Subscription.objects.filter(stripe_subscription_id=stripe_id).values_list("stripe_synced_at", flat=True)
    newest = synced.first()
    if newest is not None and row.stripe_created < newest:
        return StripeEventStatus.IGNORED  # older than what we applied: out of order
    subscription = _subscription_for_stripe(stripe_subscription_id=stripe_id, event_created=row.stripe_created)
    return StripeEventStatus.PROCESSED if subscription is not None else StripeEventStatus.IGNORED


def _invoice_subscription(row: StripeEvent, obj: Mapping[str, Any]) -> Subscription | None:
    stripe_id = payments.invoice_subscription_id(obj)
    if not stripe_id:
        return None
    return _subscription_for_stripe(stripe_subscription_id=stripe_id, event_created=row.stripe_created)


def _invoice_paid(row: StripeEvent, obj: Mapping[str, Any]) -> str:
    subscription = _invoice_subscription(row, obj)
    if subscription is None and payments.invoice_subscription_id(obj):
        return StripeEventStatus.IGNORED  # another platform's subscription on the same account
    # The mirror queues the paid invoice's payouts (payouts.payouts_for_invoice) when it commits.
    invoices.invoice_from_stripe(stripe_invoice=dict(obj), event_created=int(row.stripe_created.timestamp()))
    return StripeEventStatus.PROCESSED


def _invoice_payment_failed(row: StripeEvent, obj: Mapping[str, Any]) -> str:
    # The subscription's current state says whether it is past due (a later payment may have cured it).
    subscription = _invoice_subscription(row, obj)
    return StripeEventStatus.PROCESSED if subscription is not None else StripeEventStatus.IGNORED


def _account_updated(row: StripeEvent, obj: Mapping[str, Any]) -> str:
    payouts.publisher_account_sync(stripe_account=dict(obj), event_created=int(row.stripe_created.timestamp()))
    return StripeEventStatus.PROCESSED


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.expired": _checkout_expired,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
    "account.updated": _account_updated,
}


def stripe_event_failed_list(*, limit: int = 50) -> list[StripeEvent]:
    """Events that failed or wait too long, newest first (for the admin billing page)."""
    stale = timezone.now() - EVENT_RETRY_AFTER
    return list(
        StripeEvent.objects.filter(
            Q(status=StripeEventStatus.FAILED) | Q(status=StripeEventStatus.RECEIVED, received_at__lt=stale)
        ).order_by("-received_at")[:limit]
    )
