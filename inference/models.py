"""The usage ledger: exactly one row per successful inference, and a row per failed call (never charged)."""

from __future__ import annotations

from django.db import models


class UsageRecord(models.Model):
    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, related_name="+")
    subscription = models.ForeignKey("billing.Subscription", on_delete=models.PROTECT, related_name="usage_records")
    listing = models.ForeignKey("catalog.Listing", on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey("catalog.Version", on_delete=models.PROTECT, related_name="+")
    units = models.PositiveIntegerField(help_text="Rows along the batch dimension.")
    queue_ms = models.FloatField(default=0)
    compute_ms = models.FloatField(default=0)
    provider = models.CharField(max_length=40, blank=True)
    # What this call costs the buyer under its plan, in the plan's currency (0 inside free or included units).
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    currency = models.CharField(max_length=3, default="usd")
    created_at = models.DateTimeField(db_index=True, help_text="When the call finished (not when it was flushed).")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="usage_org_created"),
            models.Index(fields=["subscription", "created_at"], name="usage_subscription_created"),
            models.Index(fields=["listing", "created_at"], name="usage_listing_created"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.units} units"


class InferenceError(models.Model):
    """A call that failed after authentication: counted for dashboards, never charged."""

    request_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, related_name="+")
    listing = models.ForeignKey("catalog.Listing", on_delete=models.CASCADE, null=True, related_name="+")
    version = models.ForeignKey("catalog.Version", on_delete=models.SET_NULL, null=True, related_name="+")
    status = models.PositiveSmallIntegerField()
    code = models.CharField(max_length=40)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "created_at"], name="inferr_org_created")]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.status} {self.code}"
