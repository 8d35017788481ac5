"""Django admin for the catalog.

State changes (status, featuring, publishing) go through the moderation services so they are
audited; the admin only edits descriptive fields. Listings and versions are never added or deleted
here: publishers create them through the product, and takedowns are suspensions.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html

from catalog.models import Listing, Tag, Version
from catalog.search import listing_search_document_update
from marketplace.errors import ApplicationError
from moderation import services as moderation_services
from moderation.audit import audit_log_write
from moderation.models import AuditAction


def _pretty_json(value: Any) -> str:
    if not value:
        return "—"
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def _apply(modeladmin: admin.ModelAdmin, request: HttpRequest, objects: QuerySet, call: Any, verb: str) -> None:
    """Run a service on each selected object; report successes and each refusal (wrong state etc.)."""
    done = 0
    for obj in objects:
        try:
            call(obj)
            done += 1
        except ApplicationError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", level=messages.ERROR)
    if done:
        modeladmin.message_user(request, f"{verb} {done} item(s).", level=messages.SUCCESS)


class VersionInline(admin.TabularInline):
    model = Version
    fields = ("version", "status", "status_reason", "submitted_at", "reviewed_by", "published_at", "artifact_size")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    ordering = ("-major", "-minor", "-patch", "-created_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SuspendReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=moderation_services.REASON_MAX_LENGTH
    )


@admin.register(Listing)
class ListingAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "slug",
        "organization",
        "status",
        "domain",
        "task",
        "license",
        "is_featured",
        "published_at",
    )
    list_filter = ("status", "domain", "task", "license", "is_featured")
    search_fields = ("name", "slug", "summary", "organization__name")
    list_select_related = ("organization",)
    date_hierarchy = "created_at"
    autocomplete_fields = ("tags",)
    readonly_fields = (
        "organization",
        "created_by",
        "slug",
        "status",
        "status_reason",
        "is_featured",
        "featured_at",
        "current_version",
        "published_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "slug", "organization", "created_by", "summary", "model_card")}),
        ("Classification", {"fields": ("domain", "task", "tags", "license", "license_text")}),
        (
            "Status (change it with the actions or the moderation pages)",
            {"fields": ("status", "status_reason", "is_featured", "featured_at", "current_version", "published_at")},
        ),
        ("Timestamps", {"fields": ("created_at", "updated_at")}),
    )
    inlines = (VersionInline,)
    actions = ("suspend_listings", "reinstate_listings", "feature_listings", "unfeature_listings")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Audit rows reference listings and may never be updated, so listings are suspended, not deleted.
        return False

    def save_model(self, request: HttpRequest, obj: Listing, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and form.changed_data:
            audit_log_write(
                action=AuditAction.LISTING_UPDATED,
                actor=request.user,
                listing=obj,
                data={"fields": sorted(form.changed_data), "via": "admin"},
            )

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # Name, summary, card and tags feed the full-text document.
        listing_search_document_update(listing_ids=[form.instance.pk])

    @admin.action(description="Suspend selected listings (asks for a reason)")
    def suspend_listings(self, request: HttpRequest, queryset: QuerySet[Listing]) -> HttpResponse | None:
        form = SuspendReasonForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            reason = form.cleaned_data["reason"]
            _apply(
                self,
                request,
                queryset,
                lambda listing: moderation_services.listing_suspend(listing=listing, actor=request.user, reason=reason),
                "Suspended",
            )
            return None
        return TemplateResponse(
            request,
            "moderation/admin_suspend.html",
            {
                **self.admin_site.each_context(request),
                "title": "Suspend listings",
                "listings": queryset,
                "form": form,
                "opts": self.model._meta,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    @admin.action(description="Reinstate selected listings")
    def reinstate_listings(self, request: HttpRequest, queryset: QuerySet[Listing]) -> None:
        _apply(
            self,
            request,
            queryset,
            lambda listing: moderation_services.listing_reinstate(listing=listing, actor=request.user),
            "Reinstated",
        )

    @admin.action(description="Feature selected listings")
    def feature_listings(self, request: HttpRequest, queryset: QuerySet[Listing]) -> None:
        _apply(
            self,
            request,
            queryset,
            lambda listing: moderation_services.listing_feature(listing=listing, actor=request.user, featured=True),
            "Featured",
        )

    @admin.action(description="Stop featuring selected listings")
    def unfeature_listings(self, request: HttpRequest, queryset: QuerySet[Listing]) -> None:
        _apply(
            self,
            request,
            queryset,
            lambda listing: moderation_services.listing_feature(listing=listing, actor=request.user, featured=False),
            "Unfeatured",
        )


@admin.register(Version)
class VersionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "listing", "status", "submitted_at", "reviewed_by", "published_at", "created_at")
    list_filter = ("status", "upload_mode")
    search_fields = ("version", "listing__name", "listing__slug", "artifact_sha256", "artifact_key")
    list_select_related = ("listing", "reviewed_by")
    date_hierarchy = "created_at"
    fieldsets = (
        (None, {"fields": ("listing", "version", "changelog", "status", "status_reason", "created_by")}),
        (
            "Artifact",
            {"fields": ("artifact_key", "artifact_size", "artifact_sha256", "upload_mode", "upload_completed_at")},
        ),
        (
            "Validation report",
            {
                "fields": (
                    "validation_started_at",
                    "validated_at",
                    "validation_report_pretty",
                    "signature_pretty",
                    "sample_input_pretty",
                )
            },
        ),
        ("Review", {"fields": ("submitted_at", "reviewed_by", "reviewed_at", "published_at")}),
    )
    readonly_fields = (
        "listing",
        "version",
        "changelog",
        "status",
        "status_reason",
        "created_by",
        "artifact_key",
        "artifact_size",
        "artifact_sha256",
        "upload_mode",
        "upload_completed_at",
        "validation_started_at",
        "validated_at",
        "validation_report_pretty",
        "signature_pretty",
        "sample_input_pretty",
        "submitted_at",
        "reviewed_by",
        "reviewed_at",
        "published_at",
    )
    actions = ("approve_versions",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Validation report")
    def validation_report_pretty(self, obj: Version) -> str:
        return _pretty_json(obj.validation_report)

    @admin.display(description="Signature")
    def signature_pretty(self, obj: Version) -> str:
        return _pretty_json(obj.signature)

    @admin.display(description="Sample input")
    def sample_input_pretty(self, obj: Version) -> str:
        return _pretty_json(obj.sample_input)

    @admin.action(description="Approve and publish selected versions (rejecting needs a reason: use /moderation/)")
    def approve_versions(self, request: HttpRequest, queryset: QuerySet[Version]) -> None:
        _apply(
            self,
            request,
            queryset,
            lambda version: moderation_services.version_approve(version=version, actor=request.user, note="Via admin"),
            "Approved",
        )


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("name", "listing_count")
    search_fields = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tag]:
        return super().get_queryset(request).annotate(listing_count=Count("listings"))

    def save_model(self, request: HttpRequest, obj: Tag, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # A renamed tag changes the full-text document of every listing that carries it.
        listing_search_document_update(listing_ids=obj.listings.values_list("pk", flat=True))

    @admin.display(description="Listings", ordering="listing_count")
    def listing_count(self, obj: Tag) -> int:
        return obj.listing_count  # type: ignore[attr-defined]
