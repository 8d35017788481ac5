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
