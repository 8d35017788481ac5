"""Reads for moderators: the review queue, reports, listings and the audit log."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet

from catalog.models import Listing, ListingStatus, Version, VersionStatus
from marketplace.errors import NotFound
from moderation.models import AuditLogEntry, Report, ReportStatus


def review_queue() -> QuerySet[Version]:
    """Versions waiting for a decision, oldest submission first, with what the review card shows."""
    return (
        Version.objects.filter(status=VersionStatus.IN_REVIEW)
        .select_related("listing", "listing__organization", "created_by")
        .order_by("submitted_at", "created_at", "id")
    )


def version_get_for_review(*, version_id: int) -> Version:
    version = (
        Version.objects.select_related("listing", "listing__organization", "created_by", "reviewed_by")
        .filter(pk=version_id)
        .first()
    )
    if version is None:
        raise NotFound("No such version.")
    return version


def report_queue(*, status: str | None = ReportStatus.OPEN) -> QuerySet[Report]:
    """Reports in one status (all when ``status`` is None or unknown): open ones oldest first, closed newest first."""
    qs = Report.objects.select_related("listing", "listing__organization", "reporter", "resolved_by")
    if status in ReportStatus.values:
        qs = qs.filter(status=status)
    if status == ReportStatus.OPEN:
        return qs.order_by("created_at", "id")
    return qs.order_by("-created_at", "-id")


def report_get(*, report_id: int) -> Report:
    report = Report.objects.select_related("listing").filter(pk=report_id).first()
    if report is None:
        raise NotFound("No such report.")
    return report


def moderation_counts() -> dict[str, int]:
    return {
        "versions_waiting": Version.objects.filter(status=VersionStatus.IN_REVIEW).count(),
        "open_reports": Report.objects.filter(status=ReportStatus.OPEN).count(),
    }


def listing_list_for_moderation(*, query: str = "", status: str | None = None) -> QuerySet[Listing]:
    """Every listing whatever its status, searchable by name, slug or organization."""
    qs = (
        Listing.objects.select_related("organization", "current_version")
        .defer("search_vector", "model_card", "license_text")
        .annotate(open_reports=Count("reports", filter=Q(reports__status=ReportStatus.OPEN)))
    )
    query = query.strip()
    if query:
        qs = qs.filter(Q(name__icontains=query) | Q(slug__icontains=query) | Q(organization__name__icontains=query))
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("name", "id")


def listing_get_for_moderation(*, slug: str) -> Listing:
    listing = Listing.objects.select_related("organization", "current_version").filter(slug=slug).first()
    if listing is None:
        raise NotFound("No such listing.")
    return listing


def listing_get_reportable(*, slug: str) -> Listing:
    """Only listings in the catalog can be reported; anything else does not exist for a reporter."""
    listing = Listing.objects.select_related("organization").filter(slug=slug, status=ListingStatus.PUBLISHED).first()
    if listing is None:
        raise NotFound("No such listing.")
    return listing


def audit_log_list(
    *,
    listing: Any = None,
    organization: Any = None,
    actor: Any = None,
    action: str | None = None,
    listing_slug: str = "",
    actor_email: str = "",
) -> QuerySet[AuditLogEntry]:
    """The audit log, newest first. ``listing``, ``organization`` and ``actor`` take an instance or a
    primary key; the page's text filters use ``listing_slug`` (exact) and ``actor_email`` (contains)."""
    qs = AuditLogEntry.objects.select_related("actor", "organization", "listing", "version")
    if listing is not None:
        qs = qs.filter(listing=listing)
    if organization is not None:
        qs = qs.filter(organization=organization)
    if actor is not None:
        qs = qs.filter(actor=actor)
    if action:
        qs = qs.filter(action=action)
    if listing_slug.strip():
        qs = qs.filter(listing__slug=listing_slug.strip())
    if actor_email.strip():
        qs = qs.filter(actor__email__icontains=actor_email.strip())
    return qs.order_by("-created_at", "-id")
