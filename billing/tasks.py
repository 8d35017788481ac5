"""Billing tasks: thin wrappers around the billing services, named like them. Tasks take ids.

Periodic (celery beat, marketplace/settings/celery.py): ``billing.subscription_periods_renew`` (local
renewals, cancels at period end, suspensions after the grace period, renewals held for new license
terms, stale checkouts) and ``billing.stripe_events_retry``.
"""

from __future__ import annotations

from celery import shared_task

from marketplace.integrations.stripe import StripeUnavailable


@shared_task(name="billing.subscription_periods_renew")
def subscription_periods_renew_task() -> dict[str, int]:
    """The periodic subscription pass (beat, every few minutes): see ``services.subscriptions_upkeep``."""
    from billing.services import subscriptions_upkeep

    return subscriptions_upkeep()


# Stripe being unavailable (429, 5xx, unreachable) is worth retrying; anything else stays failed on the
# event row for stripe_events_retry and the admin billing page.
@shared_task(
    name="billing.stripe_event_process",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StripeUnavailable,),
    retry_backoff=1,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=12,
)
def stripe_event_process_task(*, event_row_id: int) -> str:
    """Apply one stored Stripe webhook event (once, however often it runs)."""
    from billing.webhooks import stripe_event_process

    return stripe_event_process(event_row_id=event_row_id)


@shared_task(name="billing.stripe_events_retry")
def stripe_events_retry_task() -> int:
    """Re-enqueue webhook events left unprocessed (beat, every few minutes)."""
    from billing.webhooks import stripe_events_retry

    return stripe_events_retry()


@shared_task(
    name="billing.subscription_scheduled_plan_apply",
    acks_late=True,
    autoretry_for=(StripeUnavailable,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=12,
)
def subscription_scheduled_plan_apply_task(*, subscription_id: int) -> int:
    """After a Stripe renewal: put the subscription's scheduled plan in place at Stripe."""
    from billing.services import subscription_scheduled_plan_apply

    return subscription_scheduled_plan_apply(subscription_id=subscription_id).plan_id


# --- spend caps (helper "caps") ---


# A mail server outage (OSError, smtplib errors included) rolls the notice back; retry it later.
@shared_task(name="billing.spend_cap_notice_send", autoretry_for=(OSError,), max_retries=5, retry_backoff=30)
def spend_cap_notice_task(*, spend_cap_id: int, month: str) -> int:
    """Email the spend-cap notice (at SPEND_CAP_NOTICE_PERCENT), once per cap and month."""
    from datetime import date

    from billing.spend_caps import spend_cap_notice_send

    return spend_cap_notice_send(spend_cap_id=spend_cap_id, month=date.fromisoformat(month))


# --- ledger: usage → Stripe meters, invoices, payouts, reconciliation (helper "ledger") ---


@shared_task(name="billing.meter_reports_send")
def meter_reports_send_task() -> dict[str, int]:
    """Send due meter reports to Stripe (beat, every ~10 s); overlapping runs skip each other's rows."""
    from billing.metering import meter_reports_send_all

    return meter_reports_send_all()


@shared_task(name="billing.invoices_local_close_due")
def invoices_local_close_due_task() -> int:
    """Local backend: invoice ended periods of paid subscriptions not invoiced yet."""
    from billing.invoices import invoices_local_close_due

    return invoices_local_close_due()


@shared_task(name="billing.payouts_for_invoice")
def payouts_for_invoice_task(*, invoice_id: int) -> int:
    """Make the paid invoice's payouts (once) and queue them; returns how many it has."""
    from billing.payouts import payouts_for_invoice

    return len(payouts_for_invoice(invoice_id=invoice_id))


PAYOUT_RETRY_MAX = 10


@shared_task(name="billing.payout_send", bind=True, max_retries=PAYOUT_RETRY_MAX)
def payout_send_task(self, *, payout_id: int) -> str:  # noqa: ANN001
    """Pay one payout; while Stripe is unavailable retry with backoff (the same idempotency key). After
    the last retry the payout stays pending for the periodic sweep."""
    from billing.payouts import payout_send
    from marketplace.integrations.stripe import StripeUnavailable

    try:
        return payout_send(payout_id=payout_id).status
    except StripeUnavailable as exc:
        if self.request.retries >= PAYOUT_RETRY_MAX:
            return "pending"
        raise self.retry(exc=exc, countdown=min(30 * 2**self.request.retries, 3600)) from exc


@shared_task(name="billing.payouts_pending_send")
def payouts_pending_send_task(*, publisher_id: int | None = None) -> dict[str, int]:
    """Send waiting payouts (all, or one publisher's once its account can receive them)."""
    from billing.payouts import payouts_pending_send

    return payouts_pending_send(publisher_id=publisher_id)


@shared_task(name="billing.reconciliation_run")
def reconciliation_run_task() -> dict[str, int]:
    """Daily: the usage ledger against what was reported to Stripe; differences are logged as warnings."""
    from billing.reconciliation import reconciliation_daily

    result = reconciliation_daily()
    return {"usage_records": result["usage_records"], "differences": len(result["differences"])}
