from django.contrib import admin

from billing.models import (
    BillingCustomer,
    CheckoutSession,
    Invoice,
    InvoiceLine,
    LicenseAcceptance,
    MeterReport,
    Payout,
    Plan,
    PlatformSettings,
    PublisherAccount,
    SpendCap,
    StripeEvent,
    Subscription,
)


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ("name", "listing", "kind", "monthly_quota_units", "monthly_price_cents", "is_active", "created_at")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "listing__name", "listing__slug")
    autocomplete_fields = ["listing"]
    readonly_fields = ("created_at",)


class LicenseAcceptanceInline(admin.TabularInline):
    model = LicenseAcceptance
    extra = 0
    can_delete = False
    fields = ("license", "terms_version", "terms_sha256", "user", "ip_address", "accepted_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("organization", "listing", "plan", "status", "current_period_end", "created_at")
    list_filter = ("status", "plan__kind")
    search_fields = ("organization__name", "organization__slug", "listing__name", "listing__slug")
    list_select_related = ("organization", "listing", "plan")
    autocomplete_fields = ["organization", "listing", "plan", "created_by", "pinned_version"]
    readonly_fields = ("created_at", "canceled_at")
    inlines = [LicenseAcceptanceInline]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        # Subscriptions start through subscription_create, which records the license acceptance.
        return False


@admin.register(LicenseAcceptance)
class LicenseAcceptanceAdmin(admin.ModelAdmin):
    """Proof of what was accepted: read-only."""

    list_display = ("organization", "listing", "license", "terms_version", "user", "accepted_at")
    list_filter = ("license",)
    search_fields = ("organization__name", "listing__slug", "user__email", "terms_sha256")
    list_select_related = ("organization", "listing", "user")

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money records change only through billing services (which audit them): the admin shows, never edits."""

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(PlatformSettings)
class PlatformSettingsAdmin(ReadOnlyAdmin):
    # The fee is set on /billing/admin/, which writes an audit row.
    list_display = ("platform_fee_percent", "updated_by", "updated_at")


@admin.register(BillingCustomer)
class BillingCustomerAdmin(ReadOnlyAdmin):
    list_display = ("organization", "stripe_customer_id", "created_at")
    search_fields = ("organization__name", "stripe_customer_id")


@admin.register(CheckoutSession)
class CheckoutSessionAdmin(ReadOnlyAdmin):
    list_display = ("session_id", "organization", "plan", "backend", "status", "created_at", "completed_at")
    list_filter = ("status", "backend")
    search_fields = ("session_id", "organization__name")
    list_select_related = ("organization", "plan__listing")  # Plan.__str__ reads its listing


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "type", "status", "attempts", "stripe_created", "received_at", "processed_at")
    list_filter = ("status", "type")
    search_fields = ("event_id", "type")


@admin.register(MeterReport)
class MeterReportAdmin(ReadOnlyAdmin):
    list_display = ("usage_record", "subscription", "value", "status", "attempts", "next_attempt_at", "sent_at")
    list_filter = ("status",)
    # Subscription.__str__ reads its organization, listing and plan.
    list_select_related = (
        "usage_record",
        "subscription__organization",
        "subscription__listing",
        "subscription__plan",
    )


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ("kind", "description", "listing", "publisher", "units", "amount_cents", "platform_fee_cents",
              "publisher_share_cents")  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ("number", "organization", "status", "total_cents", "platform_fee_cents", "period_start", "paid_at")
    list_filter = ("status", "backend")
    search_fields = ("number", "organization__name", "stripe_invoice_id")
    list_select_related = ("organization",)
    inlines = [InvoiceLineInline]


@admin.register(PublisherAccount)
class PublisherAccountAdmin(ReadOnlyAdmin):
    list_display = ("organization", "stripe_account_id", "charges_enabled", "payouts_enabled", "details_submitted")
    search_fields = ("organization__name", "stripe_account_id")


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = ("invoice", "publisher", "amount_cents", "currency", "status", "stripe_transfer_id", "paid_at")
    list_filter = ("status",)
    search_fields = ("publisher__name", "stripe_transfer_id", "idempotency_key")
    list_select_related = ("invoice", "publisher")


@admin.register(SpendCap)
class SpendCapAdmin(ReadOnlyAdmin):
    list_display = ("organization", "api_key", "monthly_limit_cents", "notice_sent_for", "updated_at")
    search_fields = ("organization__name",)
    list_select_related = ("organization", "api_key")
