"""Publisher payouts: Stripe Connect accounts, and each publisher's share of every paid invoice.

Connect (separate charges and transfers): buyers pay the platform; after an invoice is paid,
:func:`payouts_for_invoice` makes one ``Payout`` per publisher on it (the sum of its lines'
``publisher_share_cents``) and :func:`payout_send` transfers it. A payout never pays twice: the row is
unique per invoice and publisher and locked while it is sent, the transfer carries the payout's
idempotency key (a retry within Stripe's 24-hour window gets the first transfer back), and a retry
looks for an earlier transfer of the payout in the invoice's transfer group first (after that window).
A payout waits (``blocked``) while the publisher's account cannot receive payouts and goes out when
``account.updated`` says it can. The local backend's payouts are marked paid with no external call.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from accounts.models import Organization, User
from accounts.selectors import user_can_manage
from billing.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Payout,
    PayoutStatus,
    PublisherAccount,
)
from marketplace.errors import Forbidden
from marketplace.integrations import stripe as payments
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)

PAYOUT_BLOCKED_MESSAGE = "Waiting for the publisher's payout account: finish Stripe onboarding to receive payouts."
# Stripe codes that mean "not now" rather than "never": the payout stays pending and is retried.
TRANSFER_RETRY_LATER_CODES = {"balance_insufficient"}
# Stripe codes that mean the destination cannot receive transfers yet: wait for account.updated.
TRANSFER_ACCOUNT_NOT_READY_CODES = {"insufficient_capabilities_for_transfer", "account_invalid"}


def _backend() -> str:
    return settings.BILLING_BACKEND


# --- reads -------------------------------------------------------------------------------------


def publisher_account_get(*, organization: Organization) -> PublisherAccount | None:
    return PublisherAccount.objects.filter(organization=organization).first()


def payout_list_for_publisher(*, organization: Organization) -> QuerySet[Payout]:
    return Payout.objects.filter(publisher=organization).select_related("invoice").order_by("-created_at", "-pk")


def payout_idempotency_key(*, invoice_id: int, publisher_id: int) -> str:
    return f"payout-{invoice_id}-{publisher_id}"


def payout_transfer_group(*, invoice_id: int) -> str:
    return f"invoice_{invoice_id}"


# --- Connect accounts --------------------------------------------------------------------------


@transaction.atomic
def publisher_account_ensure(*, organization: Organization, user: User | None = None) -> PublisherAccount:
    """The organization's payout account, made once. Stripe backend: a connected account is created
    the first time (under the row lock, with an idempotency key, so never twice). Local backend: a
    stand-in account that can receive payouts at once."""
    account, created = PublisherAccount.objects.select_for_update().get_or_create(organization=organization)
    if _backend() != "stripe":
        if not account.payouts_enabled:
            account.charges_enabled = account.payouts_enabled = account.details_submitted = True
            account.save(update_fields=["charges_enabled", "payouts_enabled", "details_submitted"])
            audit_log_write(
                action=AuditAction.PAYOUT_ACCOUNT_CREATED,
                actor=user,
                organization=organization,
                data={"publisher_account_id": account.pk, "backend": "local"},
            )
        return account
    if not account.stripe_account_id:
        email = (user.email if user is not None else "") or f"billing+{organization.slug}@invalid.example"
        stripe_account = payments.account_create(
            email=email,
            country=settings.STRIPE_CONNECT_COUNTRY,
            metadata={"organization_id": str(organization.pk), "organization": organization.slug},
            # A transaction rolled back after Stripe created the account gets the same account back.
            idempotency_key=f"connect-account-{organization.pk}-{user.pk if user is not None else 0}",
        )
        account.stripe_account_id = stripe_account["id"]
        account.charges_enabled = bool(stripe_account.get("charges_enabled"))
        account.payouts_enabled = bool(stripe_account.get("payouts_enabled"))
        account.details_submitted = bool(stripe_account.get("details_submitted"))
        account.save()
        audit_log_write(
            action=AuditAction.PAYOUT_ACCOUNT_CREATED,
            actor=user,
            organization=organization,
            data={"publisher_account_id": account.pk, "stripe_account_id": account.stripe_account_id},
        )
    return account


def publisher_account_onboarding_link(
    *, organization: Organization, user: User, return_url: str, refresh_url: str
) -> str:
    """Where to send the publisher's owner or admin to set up payouts: a fresh single-use Stripe
    account link (redirect at once, never store it), or ``return_url`` under the local backend."""
    if not user_can_manage(user=user, organization=organization):
        raise Forbidden("Only owners and admins can set up payouts.", code="not_a_manager")
    account = publisher_account_ensure(organization=organization, user=user)
    if _backend() != "stripe":
        return return_url
    link = payments.account_link_create(
        account=account.stripe_account_id or "", refresh_url=refresh_url, return_url=return_url
    )
    return link["url"]


def publisher_account_refresh(*, organization: Organization) -> PublisherAccount | None:
    """Read the account from Stripe now (the publisher came back from onboarding) and apply it."""
    account = publisher_account_get(organization=organization)
    if account is None or not account.stripe_account_id or _backend() != "stripe":
        return account
    stripe_account = payments.account_retrieve(account=account.stripe_account_id)
    return publisher_account_sync(stripe_account=stripe_account, event_created=None)


def publisher_account_sync(
    *, stripe_account: dict[str, Any], event_created: int | None = None
) -> PublisherAccount | None:
    """Apply an ``account.updated`` event's account (or, ``event_created`` None, one just read from
    Stripe) to the publisher's account row.

    Order-safe without trusting the event's copy: an event older than the newest one applied changes
    nothing; for any other the account is read from Stripe now, so an event delivered late can never
    bring back an older state. Only event times move the mark (our clock is not Stripe's). When payouts
    become possible the publisher's waiting payouts are sent (on commit). Unknown accounts: None.
    """
    with transaction.atomic():
        account = (
            PublisherAccount.objects.select_for_update(of=("self",))
            .select_related("organization")
            .filter(stripe_account_id=stripe_account.get("id") or "")
            .first()
        )
        if account is None:
            logger.info("account.updated for unknown Connect account %s ignored", stripe_account.get("id"))
            return None
        if event_created is not None:
            created = datetime.fromtimestamp(int(event_created), tz=UTC)
            if account.stripe_synced_at is not None and created < account.stripe_synced_at:
                return account
            stripe_account = payments.account_retrieve(account=account.stripe_account_id or "")
            account.stripe_synced_at = created
        before = (account.charges_enabled, account.payouts_enabled, account.details_submitted)
        account.charges_enabled = bool(stripe_account.get("charges_enabled"))
        account.payouts_enabled = bool(stripe_account.get("payouts_enabled"))
        account.details_submitted = bool(stripe_account.get("details_submitted"))
        account.save(update_fields=["charges_enabled", "payouts_enabled", "details_submitted", "stripe_synced_at"])
        after = (account.charges_enabled, account.payouts_enabled, account.details_submitted)
        if after != before:
            audit_log_write(
                action=AuditAction.PAYOUT_ACCOUNT_UPDATED,
                organization=account.organization,
                data={
                    "publisher_account_id": account.pk,
                    "stripe_account_id": account.stripe_account_id,
                    "charges_enabled": account.charges_enabled,
                    "payouts_enabled": account.payouts_enabled,
                    "details_submitted": account.details_submitted,
                },
            )
        if account.payouts_enabled:
            publisher_id = account.organization_id
            waiting = Payout.objects.filter(
                publisher_id=publisher_id, status__in=[PayoutStatus.BLOCKED, PayoutStatus.PENDING]
            ).exists()
            if waiting:
                from billing.tasks import payouts_pending_send_task

                transaction.on_commit(lambda: payouts_pending_send_task.delay(publisher_id=publisher_id))
        return account


# --- payouts -----------------------------------------------------------------------------------


def payouts_for_invoice(*, invoice_id: int) -> list[Payout]:
    """One payout per publisher with a positive share on the paid invoice (made once), each sent on
    commit. Returns the invoice's payouts; none for an invoice that is not paid."""
    from billing.tasks import payout_send_task

    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
        if invoice.status != InvoiceStatus.PAID:
            return []
        shares = (
            InvoiceLine.objects.filter(invoice=invoice)
            .values("publisher_id")
            .annotate(total=Sum("publisher_share_cents"))
            .order_by("publisher_id")
        )
        existing = set(Payout.objects.filter(invoice=invoice).values_list("publisher_id", flat=True))
        for share in shares:
            publisher_id, total = share["publisher_id"], int(share["total"] or 0)
            if total <= 0 or publisher_id in existing:
                continue
            payout = Payout.objects.create(
                invoice=invoice,
                publisher_id=publisher_id,
                amount_cents=total,
                currency=invoice.currency,
                idempotency_key=payout_idempotency_key(invoice_id=invoice.pk, publisher_id=publisher_id),
            )
            audit_log_write(
                action=AuditAction.PAYOUT_CREATED,
                organization=payout.publisher,
                data={
                    "payout_id": payout.pk,
                    "invoice_id": invoice.pk,
                    "amount_cents": total,
                    "currency": payout.currency,
                },
            )
        payouts = list(Payout.objects.filter(invoice=invoice).order_by("publisher_id"))
        waiting = [p.pk for p in payouts if p.status in (PayoutStatus.PENDING, PayoutStatus.BLOCKED)]
        for payout_id in waiting:
            transaction.on_commit(functools.partial(payout_send_task.delay, payout_id=payout_id))
    return payouts


def _transfer_find(*, payout: Payout) -> dict[str, Any] | None:
    """The transfer an earlier try of this payout made, if any (a crash after Stripe accepted it)."""
    for transfer in payments.transfer_list(transfer_group=payout_transfer_group(invoice_id=payout.invoice_id)):
        if (transfer.get("metadata") or {}).get("payout_id") == str(payout.pk):
            return transfer
    return None


def _payout_mark(*, payout: Payout, status: str, error: str = "") -> None:
    payout.status = status
    payout.last_error = error[:2000]
    actions: dict[str, str] = {
        PayoutStatus.PAID: AuditAction.PAYOUT_PAID,
        PayoutStatus.BLOCKED: AuditAction.PAYOUT_BLOCKED,
        PayoutStatus.FAILED: AuditAction.PAYOUT_FAILED,
    }
    action = actions.get(status)
    if action is not None:
        audit_log_write(
            action=action,
            organization=payout.publisher,
            reason=error[:500],
            data={
                "payout_id": payout.pk,
                "invoice_id": payout.invoice_id,
                "amount_cents": payout.amount_cents,
                "currency": payout.currency,
                "stripe_transfer_id": payout.stripe_transfer_id,
            },
        )


def payout_send(*, payout_id: int) -> Payout:
    """Pay one payout; a paid payout is left alone, so calling this again is safe.

    Raises :class:`~marketplace.integrations.stripe.StripeUnavailable` (after recording the attempt) when
    Stripe cannot be reached: the caller retries later with the same idempotency key.
    """
    unavailable: payments.StripeUnavailable | None = None
    with transaction.atomic():
        payout = Payout.objects.select_for_update(of=("self",)).select_related("invoice", "publisher").get(pk=payout_id)
        if payout.status == PayoutStatus.PAID:
            return payout
        if payout.invoice.backend != "stripe":
            payout.paid_at = timezone.now()
            payout.attempts += 1
            _payout_mark(payout=payout, status=PayoutStatus.PAID)
            payout.save(update_fields=["status", "last_error", "paid_at", "attempts"])
            return payout
        account = PublisherAccount.objects.filter(organization_id=payout.publisher_id).first()
        if account is None or not account.stripe_account_id or not account.payouts_enabled:
            if payout.status != PayoutStatus.BLOCKED:
                _payout_mark(payout=payout, status=PayoutStatus.BLOCKED, error=PAYOUT_BLOCKED_MESSAGE)
                payout.save(update_fields=["status", "last_error"])
            return payout
        payout.attempts += 1
        try:
            transfer = _transfer_find(payout=payout) if payout.attempts > 1 else None
            if transfer is None:
                transfer = payments.transfer_create(
                    amount=payout.amount_cents,
                    currency=payout.currency,
                    destination=account.stripe_account_id,
                    transfer_group=payout_transfer_group(invoice_id=payout.invoice_id),
                    idempotency_key=payout.idempotency_key,
                    description=f"Share of invoice {payout.invoice.number}",
                    metadata={"payout_id": str(payout.pk), "invoice_id": str(payout.invoice_id)},
                )
        except payments.StripeUnavailable as exc:
            unavailable = exc
            payout.status = PayoutStatus.PENDING
            payout.last_error = f"{exc.message} (attempt {payout.attempts})"
        except payments.PaymentsError as exc:
            detail = f"Stripe refused the transfer: {exc.message} [{exc.stripe_code}]"
            if exc.stripe_code in TRANSFER_RETRY_LATER_CODES:
                payout.status, payout.last_error = PayoutStatus.PENDING, detail
            elif exc.stripe_code in TRANSFER_ACCOUNT_NOT_READY_CODES:
                _payout_mark(payout=payout, status=PayoutStatus.BLOCKED, error=detail)
            else:
                _payout_mark(payout=payout, status=PayoutStatus.FAILED, error=detail)
        else:
            payout.stripe_transfer_id = transfer["id"]
            payout.paid_at = timezone.now()
            _payout_mark(payout=payout, status=PayoutStatus.PAID)
        payout.save(update_fields=["status", "last_error", "attempts", "stripe_transfer_id", "paid_at"])
    if unavailable is not None:
        raise unavailable
    return payout


def payouts_pending_send(*, publisher_id: int | None = None) -> dict[str, int]:
    """Send payouts that are waiting: pending ones (a lost task, Stripe was down) and blocked ones whose
    publisher can now receive payouts. Stops at the first unavailable answer. Returns counts."""
    qs = Payout.objects.filter(
        Q(status=PayoutStatus.PENDING) | Q(status=PayoutStatus.BLOCKED, publisher__payout_account__payouts_enabled=True)
    )
    if publisher_id is not None:
        qs = qs.filter(publisher_id=publisher_id)
    counts = {"paid": 0, "waiting": 0}
    for payout_id in qs.order_by("pk").values_list("pk", flat=True):
        try:
            payout = payout_send(payout_id=payout_id)
        except payments.StripeUnavailable:
            counts["waiting"] += 1
            break
        counts["paid" if payout.status == PayoutStatus.PAID else "waiting"] += 1
    return counts
