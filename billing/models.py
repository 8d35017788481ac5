"""Plans a listing offers, organizations' subscriptions to them, and the license terms they accepted."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class PlanKind(models.TextChoices):
    FREE = "free", "Free"
    FLAT = "flat", "Flat monthly"
    METERED = "metered", "Metered"


class Plan(models.Model):
    listing = models.ForeignKey("catalog.Listing", on_delete=models.CASCADE, related_name="plans")
    name = models.CharField(max_length=80)
    kind = models.CharField(max_length=10, choices=PlanKind.choices, default=PlanKind.FREE)
    # Units are rows along the batch dimension. Free: the monthly cap; flat: included units.
    monthly_quota_units = models.PositiveBigIntegerField(null=True, blank=True, help_text="Empty: unlimited.")
    currency = models.CharField(max_length=3, default="usd")
    monthly_price_cents = models.PositiveIntegerField(default=0)
    price_per_1000_units_cents = models.PositiveIntegerField(default=0)
    trial_days = models.PositiveIntegerField(default=0)
    # Changing a price makes a new plan version; subscribers keep the old one until their period ends.
    version = models.PositiveIntegerField(default=1)
    previous = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    stripe_product_id = models.CharField(max_length=64, blank=True)
    stripe_price_id = models.CharField(max_length=64, blank=True, help_text="Flat monthly price.")
    stripe_metered_price_id = models.CharField(max_length=64, blank=True, help_text="Per-unit price on the meter.")
    is_active = models.BooleanField(
        default=True, help_text="Inactive plans keep their subscribers but take no new ones."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["listing", "monthly_price_cents", "name"]

    def __str__(self) -> str:
        return f"{self.listing.slug}: {self.name}"


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    TRIALING = "trialing", "Trialing"
    PAST_DUE = "past_due", "Past due"
    # Past due beyond the grace period (BILLING_GRACE_DAYS): not entitled until the open invoice is paid.
    SUSPENDED = "suspended", "Suspended"
    CANCELED = "canceled", "Canceled"


# Statuses that entitle an organization to call the listing.
ENTITLED_STATUSES = (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING, SubscriptionStatus.PAST_DUE)


class Subscription(models.Model):
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="subscriptions")
    listing = models.ForeignKey("catalog.Listing", on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    status = models.CharField(max_length=10, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE)
    # A pinned version, or null to follow the stable channel (the listing's current version).
    pinned_version = models.ForeignKey(
        "catalog.Version", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    # A downgrade waits for the period end; an upgrade applies at once.
    scheduled_plan = models.ForeignKey(Plan, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    trial_end = models.DateTimeField(null=True, blank=True)
    past_due_since = models.DateTimeField(null=True, blank=True)
    stripe_subscription_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    # ``created`` of the newest Stripe event applied: older events never overwrite newer state.
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "listing"],
                condition=~models.Q(status="canceled"),
                name="subscription_one_live_per_listing",
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization} → {self.listing} ({self.plan.name}, {self.status})"


class LicenseAcceptance(models.Model):
    """Proof of which terms were accepted, by whom, when: never edited."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="license_acceptances")
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    listing = models.ForeignKey("catalog.Listing", on_delete=models.CASCADE, related_name="+")
    license = models.CharField(max_length=20)
    terms_version = models.CharField(max_length=40)
    terms_sha256 = models.CharField(max_length=64)
    terms_text = models.TextField()
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    accepted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-accepted_at"]

    def __str__(self) -> str:
        return f"{self.organization} accepted {self.license} v{self.terms_version} for {self.listing}"


class PlatformSettings(models.Model):
    """One row (pk=1): the platform fee admins set."""

    platform_fee_percent = models.DecimalField(max_digits=5, decimal_places=2, default=20)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")

    class Meta:
        verbose_name_plural = "platform settings"

    def __str__(self) -> str:
        return f"Platform fee {self.platform_fee_percent}%"


class BillingCustomer(models.Model):
    organization = models.OneToOneField("accounts.Organization", on_delete=models.CASCADE, related_name="billing")
    stripe_customer_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Billing customer {self.organization}"


class CheckoutStatus(models.TextChoices):
    OPEN = "open", "Open"
    COMPLETE = "complete", "Complete"
    EXPIRED = "expired", "Expired"


class CheckoutSession(models.Model):
    """A buyer's checkout for a paid plan; the subscription starts when the payment is confirmed."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    backend = models.CharField(max_length=10)
    session_id = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=1000)
    status = models.CharField(max_length=10, choices=CheckoutStatus.choices, default=CheckoutStatus.OPEN)
    terms_version = models.CharField(max_length=40)
    terms_sha256 = models.CharField(max_length=64)
    # The exact text shown at checkout: recorded as accepted when the payment completes, even if the
    # listing's terms change meanwhile (the subscription then asks for the new ones).
    terms_text = models.TextField(blank=True)
    pinned_version = models.ForeignKey(
        "catalog.Version", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    subscription = models.ForeignKey(Subscription, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Checkout {self.session_id} ({self.status})"


class StripeEventStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored"
    FAILED = "failed", "Failed"


class StripeEvent(models.Model):
    """Each webhook event stored once (unique event id), acknowledged fast and processed by a task."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    api_version = models.CharField(max_length=40, blank=True)
    livemode = models.BooleanField(default=False)
    stripe_created = models.DateTimeField()
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=StripeEventStatus.choices, default=StripeEventStatus.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["status", "received_at"], name="stripeevent_status")]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id} ({self.status})"


class MeterReportStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"  # gave up: outside Stripe's window or rejected; shows in reconciliation


class MeterReport(models.Model):
    """Outbox: one row per metered usage record, written with the record, sent to Stripe meters later."""

    usage_record = models.OneToOneField("inference.UsageRecord", on_delete=models.CASCADE, related_name="meter_report")
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="+")
    stripe_customer_id = models.CharField(max_length=64)
    value = models.PositiveIntegerField()
    occurred_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=MeterReportStatus.choices, default=MeterReportStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="meterreport_due")]

    def __str__(self) -> str:
        return f"Meter report {self.usage_record_id} ({self.status})"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open"
    PAID = "paid", "Paid"
    VOID = "void", "Void"
    UNCOLLECTIBLE = "uncollectible", "Uncollectible"


class Invoice(models.Model):
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="invoices")
    subscription = models.ForeignKey(
        Subscription, on_delete=models.SET_NULL, null=True, blank=True, related_name="invoices"
    )
    backend = models.CharField(max_length=10)
    number = models.CharField(max_length=40, unique=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=15, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    currency = models.CharField(max_length=3, default="usd")
    total_cents = models.BigIntegerField(default=0)
    platform_fee_cents = models.BigIntegerField(default=0)
    # Local: "period_open" (the period's fee, in advance), "period_close" (the period's usage, and its fee
    # unless invoiced in advance) or "proration" (a plan change mid-period). Stripe: its billing_reason.
    billing_reason = models.CharField(max_length=30, blank=True)
    stripe_invoice_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-period_start", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "period_start", "billing_reason"],
                condition=models.Q(backend="local"),
                name="invoice_local_once",
            )
        ]

    def __str__(self) -> str:
        return f"Invoice {self.number} ({self.status})"


class InvoiceLineKind(models.TextChoices):
    FLAT = "flat", "Monthly fee"
    OVERAGE = "overage", "Usage over included units"
    METERED = "metered", "Metered usage"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    subscription = models.ForeignKey(Subscription, on_delete=models.SET_NULL, null=True, related_name="+")
    listing = models.ForeignKey("catalog.Listing", on_delete=models.PROTECT, related_name="+")
    publisher = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=InvoiceLineKind.choices)
    description = models.CharField(max_length=200)
    units = models.BigIntegerField(default=0)
    amount_cents = models.BigIntegerField()
    platform_fee_cents = models.BigIntegerField(default=0)
    publisher_share_cents = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.description


class PublisherAccount(models.Model):
    """A publisher organization's Stripe Connect account (or the local backend's stand-in)."""

    organization = models.OneToOneField(
        "accounts.Organization", on_delete=models.CASCADE, related_name="payout_account"
    )
    stripe_account_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    charges_enabled = models.BooleanField(default=False)
    payouts_enabled = models.BooleanField(default=False)
    details_submitted = models.BooleanField(default=False)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Payout account of {self.organization}"


class PayoutStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PAID = "paid", "Paid"
    BLOCKED = "blocked", "Waiting for the publisher's payout account"
    FAILED = "failed", "Failed"


class Payout(models.Model):
    """The publisher's share of one paid invoice; the idempotency key makes a retry never pay twice."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payouts")
    publisher = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="payouts")
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    idempotency_key = models.CharField(max_length=100, unique=True)
    stripe_transfer_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    status = models.CharField(max_length=10, choices=PayoutStatus.choices, default=PayoutStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["invoice", "publisher"], name="payout_once_per_invoice")]

    def __str__(self) -> str:
        return f"Payout {self.amount_cents} to {self.publisher} ({self.status})"


class SpendCap(models.Model):
    """A monthly spend cap for an organization (api_key empty) or one of its API keys."""

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="spend_caps")
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    monthly_limit_cents = models.BigIntegerField()
    # First day of the month in which the 80% notice went out, so it is sent once a month.
    notice_sent_for = models.DateField(null=True, blank=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization"], condition=models.Q(api_key__isnull=True), name="spendcap_one_per_org"
            ),
            models.UniqueConstraint(fields=["api_key"], name="spendcap_one_per_key"),
        ]

    def __str__(self) -> str:
        return f"Spend cap {self.monthly_limit_cents} for {self.api_key or self.organization}"
