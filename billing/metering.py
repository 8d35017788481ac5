"""Usage → Stripe Billing meters, through an outbox.

The usage flush writes one ``MeterReport`` per usage record of a Stripe-billed subscription whose plan
prices usage (a metered price), in the same transaction as the record (:func:`meter_reports_create`):
a record is never stored without its report. A periodic task (:func:`meter_reports_send`) sends due
reports as meter events and marks them sent. The event identifier is the usage record's request id: a
report sent twice (a crash after Stripe accepted it, before we marked it sent) is refused by Stripe as a
duplicate within its 24-hour identifier window and counted once, which we treat as sent. While Stripe
is unavailable (429, 5xx, unreachable) reports stay pending with an exponential backoff: nothing is
lost. Reports outside Stripe's time window for meter events (more than 35 days old, or more than 5
minutes ahead) or refused for another reason are marked failed with the reason, never dropped:
reconciliation lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from billing.models import MeterReport, MeterReportStatus, PlanKind, Subscription
from inference.models import UsageRecord
from marketplace.integrations import stripe as payments
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)

# Stripe accepts meter events stamped within the past 35 days and at most 5 minutes ahead.
METER_EVENT_MAX_AGE = timedelta(days=35)
METER_EVENT_MAX_AHEAD = timedelta(minutes=5)
# Backoff while Stripe is unavailable: 10 s, 20 s, 40 s, ... at most 15 minutes between tries.
RETRY_BASE_S = 10
RETRY_MAX_S = 15 * 60


def meter_event_name(*, listing_id: int) -> str:
    """The Stripe meter event name of a listing's usage.

    One meter per listing: Stripe sums a meter's events per customer and bills that sum on every
    subscription item priced on the meter, so two listings sharing a meter would bill a buyer
    subscribed to both twice. The listing's metered prices must be created on this meter.
    """
    return f"{settings.STRIPE_METER_EVENT_NAME}_{listing_id}"


def meter_event_identifier(*, request_id: str) -> str:
    """Stable per usage record, so Stripe deduplicates a resend."""
    return str(request_id)


def meter_retry_delay(*, attempts: int) -> timedelta:
    return timedelta(seconds=min(RETRY_BASE_S * 2 ** max(attempts - 1, 0), RETRY_MAX_S))


def metered_subscriptions() -> QuerySet[Subscription]:
    """Subscriptions whose usage goes to Stripe meters: paid plans billed by Stripe (a Stripe
    subscription) for a customer with a Stripe customer id, whose plan prices usage at Stripe (a metered
    price: metered plans, and flat plans with an overage price). A flat plan without overage has nothing
    to meter."""
    return (
        Subscription.objects.exclude(plan__kind=PlanKind.FREE)
        .filter(stripe_subscription_id__isnull=False, organization__billing__stripe_customer_id__isnull=False)
        .exclude(stripe_subscription_id="")
        .exclude(organization__billing__stripe_customer_id="")
        .exclude(plan__stripe_metered_price_id="")
    )


def metered_subscription_customers(*, subscription_ids: Sequence[int] | None = None) -> dict[int, str]:
    """``{subscription id: Stripe customer id}`` of :func:`metered_subscriptions`."""
    qs = metered_subscriptions()
    if subscription_ids is not None:
        qs = qs.filter(pk__in=set(subscription_ids))
    return {pk: customer or "" for pk, customer in qs.values_list("pk", "organization__billing__stripe_customer_id")}


def meter_reports_create(*, usage_records: Sequence[UsageRecord]) -> int:
    """Queue a meter report for each given usage record that Stripe meters. Returns how many were queued.

    Call it in the transaction that inserts the records. Records are read back by request id (a bulk
    insert that skips conflicts leaves primary keys unset), and a record that already has a report
    gets no second one, so calling it twice for the same records queues each once.
    """
    request_ids = {record.request_id for record in usage_records}
    if not request_ids:
        return 0
    customers = metered_subscription_customers(subscription_ids=[r.subscription_id for r in usage_records])
    if not customers:
        return 0
    rows = (
        UsageRecord.objects.filter(
            request_id__in=request_ids, subscription_id__in=customers, units__gt=0, meter_report__isnull=True
        )
        .order_by("pk")
        .values_list("pk", "subscription_id", "units", "created_at")
    )
    reports = [
        MeterReport(
            usage_record_id=pk,
            subscription_id=subscription_id,
            stripe_customer_id=customers[subscription_id],
            value=units,
            occurred_at=created_at,
        )
        for pk, subscription_id, units, created_at in rows
    ]
    # A concurrent flush of the same records (it holds a lock, but be safe) must not fail the flush.
    MeterReport.objects.bulk_create(reports, ignore_conflicts=True)
    return len(reports)


def _outside_window(*, occurred_at: datetime, now: datetime) -> str | None:
    if occurred_at < now - METER_EVENT_MAX_AGE:
        return (
            f"Outside Stripe's meter event window: occurred {occurred_at.isoformat()}, more than 35 days "
            "before it could be sent."
        )
    if occurred_at > now + METER_EVENT_MAX_AHEAD:
        return f"Outside Stripe's meter event window: occurred {occurred_at.isoformat()}, more than 5 minutes ahead."
    return None


def _report_failed(*, report: MeterReport, reason: str) -> None:
    report.status = MeterReportStatus.FAILED
    report.last_error = reason[:2000]
    report.next_attempt_at = None
    logger.warning("Meter report of usage record %s failed: %s", report.usage_record_id, reason)
    audit_log_write(
        action=AuditAction.METER_REPORT_FAILED,
        organization=report.subscription.organization,
        reason=reason[:500],
        data={
            "meter_report_id": report.pk,
            "usage_record_id": report.usage_record_id,
            "subscription_id": report.subscription_id,
            "value": report.value,
        },
    )


def meter_reports_send(*, batch_size: int = 500, now: datetime | None = None) -> dict[str, int]:
    """Send one batch of due pending reports to Stripe meters; returns counts by outcome.

    Rows are claimed with ``SELECT … FOR UPDATE SKIP LOCKED`` in id order and stay locked while their
    events go out, so concurrent runs never send the same row at once. Outcomes: ``sent`` (Stripe
    accepted), ``duplicates`` (Stripe already had the identifier: also sent), ``failed`` (outside the
    time window or refused: marked failed with the reason), ``retry`` (Stripe unavailable: pending, next
    try after the backoff), ``selected`` (rows claimed).
    """
    now = now or timezone.now()
    counts = {"selected": 0, "sent": 0, "duplicates": 0, "failed": 0, "retry": 0}
    fields = ["status", "attempts", "next_attempt_at", "sent_at", "last_error"]
    with transaction.atomic():
        reports = list(
            MeterReport.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("usage_record", "subscription__organization")
            .filter(status=MeterReportStatus.PENDING)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .order_by("pk")[:batch_size]
        )
        counts["selected"] = len(reports)
        if not reports:
            return counts
        to_send: dict[str, MeterReport] = {}
        for report in reports:
            reason = _outside_window(occurred_at=report.occurred_at, now=now)
            if reason is not None:
                _report_failed(report=report, reason=reason)
                counts["failed"] += 1
            else:
                to_send[meter_event_identifier(request_id=report.usage_record.request_id)] = report
        events: list[payments.MeterEventInput] = [
            {
                "event_name": meter_event_name(listing_id=report.usage_record.listing_id),
                "identifier": identifier,
                "customer": report.stripe_customer_id,
                "value": report.value,
                "timestamp": report.occurred_at,
            }
            for identifier, report in to_send.items()
        ]
        results = payments.meter_events_create(events=events) if events else []
        retry_at: datetime | None = None
        for result in results:
            report = to_send[result["identifier"]]
            error = result["error"]
            if result["status"] in ("created", "duplicate"):
                report.status = MeterReportStatus.SENT
                report.attempts += 1
                report.sent_at = now
                report.next_attempt_at = None
                report.last_error = "Stripe already had this identifier." if result["status"] == "duplicate" else ""
                counts["sent" if result["status"] == "created" else "duplicates"] += 1
            elif result["status"] == "failed" and error is not None and error.retryable:
                report.attempts += 1
                retry_at = now + meter_retry_delay(attempts=report.attempts)
                report.next_attempt_at = retry_at
                report.last_error = f"{error.message} (attempt {report.attempts})"
                counts["retry"] += 1
            elif result["status"] == "failed":
                report.attempts += 1
                detail = f"{error.message} [{error.stripe_code}]" if error is not None else "refused"
                _report_failed(report=report, reason=f"Stripe refused the meter event: {detail}")
                counts["failed"] += 1
            else:  # not_sent: Stripe became unavailable earlier in this batch; wait as long as that row.
                report.next_attempt_at = retry_at or now + meter_retry_delay(attempts=1)
                counts["retry"] += 1
        MeterReport.objects.bulk_update(reports, fields=fields)
    if counts["retry"]:
        logger.info("Stripe meters unavailable; %s reports stay pending until %s", counts["retry"], retry_at)
    return counts


def meter_reports_send_all(*, batch_size: int = 500, budget_s: float = 50.0) -> dict[str, int]:
    """Send batches until none is due, Stripe is unavailable, or ``budget_s`` has passed (the task)."""
    started = timezone.now()
    totals = {"selected": 0, "sent": 0, "duplicates": 0, "failed": 0, "retry": 0}
    while True:
        counts = meter_reports_send(batch_size=batch_size)
        for key, value in counts.items():
            totals[key] += value
        if counts["selected"] < batch_size or counts["retry"]:
            return totals
        if (timezone.now() - started).total_seconds() > budget_s:
            return totals
