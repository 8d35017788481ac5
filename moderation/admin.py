"""Django admin for moderation: the audit log (read-only, always) and reports (closed through the services)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.errors import ApplicationError
from moderation import services
from moderation.models import AuditLogEntry, Report


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "action", "actor", "organization", "listing", "version", "short_reason")
    list_filter = ("action",)
    search_fields = ("reason", "actor__email", "listing__slug", "listing__name", "organization__name")
    list_select_related = ("actor", "organization", "listing", "version", "version__listing")
    date_hierarchy = "created_at"
    readonly_fields = ("created_at", "action", "actor", "organization", "listing", "version", "reason", "data")

    # Append-only: nobody adds, changes or deletes entries here (the model and a trigger refuse too).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Reason")
    def short_reason(self, obj: AuditLogEntry) -> str:
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("listing", "reason", "status", "reporter", "created_at", "resolved_by", "resolved_at")
    list_filter = ("status", "reason")
    search_fields = ("listing__name", "listing__slug", "reporter__email", "details")
    list_select_related = ("listing", "reporter", "resolved_by")
    date_hierarchy = "created_at"
    readonly_fields = (
        "listing",
        "reporter",
        "reason",
        "details",
        "status",
        "created_at",
        "resolved_by",
        "resolved_at",
        "resolution_note",
    )
    actions = ("resolve_reports", "dismiss_reports")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _close(self, request: HttpRequest, queryset: QuerySet[Report], action: str) -> None:
        done = 0
        for report in queryset:
            try:
                services.report_resolve(report=report, actor=request.user, note="Via admin", action=action)  # type: ignore[arg-type]
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"{report}: {exc.message}", level=messages.ERROR)
        if done:
            self.message_user(request, f"{action.capitalize()}d {done} report(s).", level=messages.SUCCESS)

    @admin.action(description="Resolve selected reports")
    def resolve_reports(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        self._close(request, queryset, "resolve")

    @admin.action(description="Dismiss selected reports")
    def dismiss_reports(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        self._close(request, queryset, "dismiss")
