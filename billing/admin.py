from django.contrib import admin

from billing.models import LicenseAcceptance, Plan, Subscription


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
