"""The audit log (append-only) and reports that users file against listings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class AuditAction(models.TextChoices):
    LISTING_CREATED = "listing.created", "Listing created"
    LISTING_UPDATED = "listing.updated", "Listing updated"
    LISTING_SUSPENDED = "listing.suspended", "Listing suspended"
    LISTING_REINSTATED = "listing.reinstated", "Listing reinstated"
    LISTING_FEATURED = "listing.featured", "Listing featured"
    LISTING_UNFEATURED = "listing.unfeatured", "Listing unfeatured"
    VERSION_CREATED = "version.created", "Version created"
    VERSION_UPLOADED = "version.uploaded", "Version upload completed"
    VERSION_VALIDATED = "version.validated", "Version validated"
    VERSION_INVALID = "version.invalid", "Version failed validation"
    VERSION_SUBMITTED = "version.submitted", "Version submitted for review"
    VERSION_APPROVED = "version.approved", "Version approved"
    VERSION_REJECTED = "version.rejected", "Version rejected"
    VERSION_PUBLISHED = "version.published", "Version published"
    VERSION_DEPRECATED = "version.deprecated", "Version deprecated"
    VERSION_WITHDRAWN = "version.withdrawn", "Version withdrawn"
    REPORT_FILED = "report.filed", "Report filed"
    REPORT_RESOLVED = "report.resolved", "Report resolved"
    REPORT_DISMISSED = "report.dismissed", "Report dismissed"
    ORG_CREATED = "organization.created", "Organization created"
    MEMBER_INVITED = "organization.member_invited", "Member invited"
    MEMBER_JOINED = "organization.member_joined", "Member joined"
    MEMBER_ROLE_CHANGED = "organization.member_role_changed", "Member role changed"
    MEMBER_REMOVED = "organization.member_removed", "Member removed"
    API_KEY_CREATED = "api_key.created", "API key created"
    API_KEY_REVOKED = "api_key.revoked", "API key revoked"
    PLAN_CREATED = "plan.created", "Plan created"
    PLAN_DEACTIVATED = "plan.deactivated", "Plan deactivated"
    SUBSCRIPTION_CREATED = "subscription.created", "Subscription created"
    SUBSCRIPTION_CANCELED = "subscription.canceled", "Subscription canceled"
    SUBSCRIPTION_RENEWED = "subscription.renewed", "Subscription period renewed"
    SPEND_CAP_SET = "spend_cap.set", "Spend cap set"
    SPEND_CAP_REMOVED = "spend_cap.removed", "Spend cap removed"
    SPEND_CAP_NOTICE_SENT = "spend_cap.notice_sent", "Spend cap notice sent"
    PLATFORM_FEE_CHANGED = "platform.fee_changed", "Platform fee changed"
    INVOICE_ISSUED = "invoice.issued", "Invoice issued"
    INVOICE_PAID = "invoice.paid", "Invoice paid"
    PAYOUT_CREATED = "payout.created", "Payout created"
    PAYOUT_PAID = "payout.paid", "Payout paid"
    PAYOUT_BLOCKED = "payout.blocked", "Payout waiting for the payout account"
    PAYOUT_FAILED = "payout.failed", "Payout failed"
    PAYOUT_ACCOUNT_CREATED = "payout_account.created", "Payout account created"
    PAYOUT_ACCOUNT_UPDATED = "payout_account.updated", "Payout account updated"
    METER_REPORT_FAILED = "meter_report.failed", "Usage report to Stripe failed"
    PLAN_PRICE_CHANGED = "plan.price_changed", "Plan price changed (new version)"
    CHECKOUT_STARTED = "checkout.started", "Checkout started"
    CHECKOUT_EXPIRED = "checkout.expired", "Checkout expired or abandoned"
    SUBSCRIPTION_UPDATED = "subscription.updated", "Subscription updated from the payment provider"
    SUBSCRIPTION_PLAN_CHANGED = "subscription.plan_changed", "Subscription plan changed"
    SUBSCRIPTION_PLAN_SCHEDULED = "subscription.plan_scheduled", "Subscription plan change scheduled"
    SUBSCRIPTION_PAST_DUE = "subscription.past_due", "Subscription past due"
    SUBSCRIPTION_SUSPENDED = "subscription.suspended", "Subscription suspended"
    SUBSCRIPTION_REACTIVATED = "subscription.reactivated", "Subscription reactivated"
    SUBSCRIPTION_TERMS_ACCEPTED = "subscription.terms_accepted", "New license terms accepted"
    SUBSCRIPTION_RENEWAL_HELD = "subscription.renewal_held", "Renewal waits for new license terms"


class AuditLogQuerySet(models.QuerySet["AuditLogEntry"]):
    def update(self, **kwargs: Any) -> int:
        raise PermissionError("The audit log is append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("The audit log is append-only.")


class AuditLogEntry(models.Model):
    """One row per state change, written in the same transaction as the change.

    Append-only: the model refuses updates and deletes, and on PostgreSQL a trigger refuses them too.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # References without database constraints: an audit row outlives what it points at, and deleting a user
    # or a listing must not try to rewrite history (the append-only trigger would refuse it anyway).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    action = models.CharField(max_length=40, choices=AuditAction.choices, db_index=True)
    organization = models.ForeignKey(
        "accounts.Organization",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    listing = models.ForeignKey(
        "catalog.Listing", on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    version = models.ForeignKey(
        "catalog.Version", on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    objects = AuditLogQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise PermissionError("The audit log is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("The audit log is append-only.")


class ReportReason(models.TextChoices):
    MISLEADING = "misleading", "Misleading description or numbers"
    LICENSE = "license", "License or copyright problem"
    HARMFUL = "harmful", "Harmful or unsafe behaviour"
    MALWARE = "malware", "Suspicious or malicious file"
    SPAM = "spam", "Spam"
    OTHER = "other", "Other"


class ReportStatus(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"
    DISMISSED = "dismissed", "Dismissed"


class Report(models.Model):
    listing = models.ForeignKey("catalog.Listing", on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    reason = models.CharField(max_length=20, choices=ReportReason.choices)
    details = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=ReportStatus.choices, default=ReportStatus.OPEN)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-created_at"], name="report_status_created")]

    def __str__(self) -> str:
        return f"Report on {self.listing} ({self.get_reason_display()})"
