from django.contrib import admin

from inference.models import InferenceError, UsageRecord


class LedgerAdmin(admin.ModelAdmin):
    """The usage ledger is written by the inference path only; the admin reads it."""

    date_hierarchy = "created_at"

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(LedgerAdmin):
    list_display = ("request_id", "organization", "listing", "version", "units", "cost", "compute_ms", "created_at")
    list_filter = ("provider",)
    search_fields = ("request_id", "organization__name", "listing__slug")
    list_select_related = ("organization", "listing", "version")


@admin.register(InferenceError)
class InferenceErrorAdmin(LedgerAdmin):
    list_display = ("request_id", "organization", "listing", "status", "code", "created_at")
    list_filter = ("status", "code")
    search_fields = ("request_id", "organization__name", "listing__slug")
    list_select_related = ("organization", "listing")
