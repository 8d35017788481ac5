"""Moderation: staff decisions on versions and listings, and reports that users file.

Every function here is one transaction that writes its own audit row; notification emails go out
only once that transaction has committed, so a rolled-back decision never tells anyone anything.
The email callbacks are ``robust``: a mail server outage is logged and does not turn a committed
decision into an error page.
"""

from __future__ import annotations

from typing import Any, Literal

from django.db import transaction
from django.utils import timezone

from catalog.models import SERVABLE_STATUSES, Listing, ListingStatus, Version, VersionStatus
from catalog.states import version_move
from marketplace.errors import ApplicationError, Conflict, Forbidden, NotFound
from moderation import emails
from moderation.audit import audit_log_write
from moderation.models import AuditAction, Report, ReportReason, ReportStatus

REASON_MAX_LENGTH = 2000
REPORT_DETAILS_MAX_LENGTH = 5000

ReportResolution = Literal["dismiss", "resolve"]


def _staff_required(actor: Any) -> None:
    if actor is None or not getattr(actor, "is_authenticated", False) or not actor.is_staff:
        raise Forbidden("Only marketplace staff can moderate.")


def _required_text(value: str | None, *, field: str, what: str, max_length: int = REASON_MAX_LENGTH) -> str:
    text = (value or "").strip()
    if not text:
        raise ApplicationError(f"{what} is required.", code="invalid", fields={field: [f"{what} is required."]})
    if len(text) > max_length:
        message = f"{what} must be at most {max_length} characters."
        raise ApplicationError(message, code="invalid", fields={field: [message]})
    return text


def _optional_text(value: str | None, *, field: str, max_length: int = REASON_MAX_LENGTH) -> str:
    text = (value or "").strip()
    if len(text) > max_length:
        message = f"At most {max_length} characters."
        raise ApplicationError(message, code="invalid", fields={field: [message]})
    return text


def _version_locked(version: Version) -> Version:
    # Lock the row so two moderators clicking at once cannot both move the same version.
    return (
        Version.objects.select_for_update(of=("self",))
        .select_related("listing", "listing__organization")
        .get(pk=version.pk)
    )


def _listing_locked(listing: Listing) -> Listing:
    # Lock only the listing row (not the organization or the version joined for reading).
    return (
        Listing.objects.select_for_update(of=("self",))
        .select_related("organization", "current_version")
        .get(pk=listing.pk)
    )


# --- versions -------------------------------------------------------------------------------------


@transaction.atomic
def version_approve(*, version: Version, actor: Any, note: str = "") -> Version:
    """in_review → approved → published: an approved version goes live at once.

    On a suspended listing the version is published but the listing stays hidden until reinstated
    (the catalog keeps a suspended listing's status when its versions change).
    """
    from catalog.services import version_publish  # the catalog owns publishing

    _staff_required(actor)
    note = _optional_text(note, field="note")
    version = _version_locked(version)
    version_move(version=version, to=VersionStatus.APPROVED)
    version.status_reason = ""
    version.reviewed_by = actor
    version.reviewed_at = timezone.now()
    version.save(update_fields=["status", "status_reason", "reviewed_by", "reviewed_at", "updated_at"])
    audit_log_write(action=AuditAction.VERSION_APPROVED, actor=actor, version=version, reason=note)

    version = version_publish(version=version, actor=actor)

    version_id = version.pk
    transaction.on_commit(lambda: emails.version_approved_send(version_id=version_id), robust=True)
    return version


@transaction.atomic
def version_reject(*, version: Version, actor: Any, reason: str) -> Version:
    """in_review → rejected, with a reason the publisher reads (they may fix and resubmit)."""
    _staff_required(actor)
    reason = _required_text(reason, field="reason", what="A reason")
    version = _version_locked(version)
    version_move(version=version, to=VersionStatus.REJECTED)
    version.status_reason = reason
    version.reviewed_by = actor
    version.reviewed_at = timezone.now()
    version.save(update_fields=["status", "status_reason", "reviewed_by", "reviewed_at", "updated_at"])
    audit_log_write(action=AuditAction.VERSION_REJECTED, actor=actor, version=version, reason=reason)

    version_id = version.pk
    transaction.on_commit(lambda: emails.version_rejected_send(version_id=version_id), robust=True)
    return version


@transaction.atomic
def version_take_down(*, version: Version, actor: Any, reason: str) -> Version:
    """Withdraw a version for good on staff's decision (e.g. a hostile file found after publishing).

    The catalog's version_withdraw moves the stable channel to the next version; this adds the staff
    check, a required reason and the email to the publisher.
    """
    from catalog.services import version_withdraw

    _staff_required(actor)
    reason = _required_text(reason, field="reason", what="A reason")
    version = version_withdraw(version=version, actor=actor, reason=reason)

    version_id = version.pk
    transaction.on_commit(lambda: emails.version_taken_down_send(version_id=version_id), robust=True)
    return version


# --- listings -------------------------------------------------------------------------------------


@transaction.atomic
def listing_suspend(*, listing: Listing, actor: Any, reason: str) -> Listing:
    """Hide a listing from the catalog (and from new calls) until a moderator reinstates it.

    Drafts can be suspended too, so that a listing under investigation cannot go live by
    getting a version approved in the meantime.
    """
    _staff_required(actor)
    reason = _required_text(reason, field="reason", what="A reason")
    listing = _listing_locked(listing)
    if listing.status == ListingStatus.SUSPENDED:
        raise Conflict(f"{listing.name} is already suspended.", code="invalid_state")
    previous = listing.status
    listing.status = ListingStatus.SUSPENDED
    listing.status_reason = reason
    # A suspended listing must not stay on the front page.
    listing.is_featured = False
    listing.featured_at = None
    listing.save(update_fields=["status", "status_reason", "is_featured", "featured_at", "updated_at"])
    audit_log_write(
        action=AuditAction.LISTING_SUSPENDED,
        actor=actor,
        listing=listing,
        reason=reason,
        data={"previous_status": previous},
    )

    listing_id = listing.pk
    transaction.on_commit(lambda: emails.listing_suspended_send(listing_id=listing_id), robust=True)
    return listing


@transaction.atomic
def listing_reinstate(*, listing: Listing, actor: Any, note: str = "") -> Listing:
    """suspended → published when it still has a published current version, else draft."""
    _staff_required(actor)
    note = _optional_text(note, field="note")
    listing = _listing_locked(listing)
    if listing.status != ListingStatus.SUSPENDED:
        raise Conflict(f"{listing.name} is not suspended.", code="invalid_state")
    current = listing.current_version
    # The same rule as the catalog's stable channel: deprecated versions still serve pinned buyers.
    has_live_version = current is not None and current.status in SERVABLE_STATUSES
    listing.status = ListingStatus.PUBLISHED if has_live_version else ListingStatus.DRAFT
    listing.status_reason = ""
    listing.save(update_fields=["status", "status_reason", "updated_at"])
    audit_log_write(
        action=AuditAction.LISTING_REINSTATED,
        actor=actor,
        listing=listing,
        reason=note,
        data={"status": listing.status},
    )

    listing_id = listing.pk
    transaction.on_commit(lambda: emails.listing_reinstated_send(listing_id=listing_id), robust=True)
    return listing


@transaction.atomic
def listing_feature(*, listing: Listing, actor: Any, featured: bool) -> Listing:
    """Put a published listing on the front page, or take any listing off it."""
    _staff_required(actor)
    listing = _listing_locked(listing)
    if featured and listing.status != ListingStatus.PUBLISHED:
        raise Conflict(
            f"Only published listings can be featured; {listing.name} is {listing.get_status_display().lower()}.",
            code="invalid_state",
        )
    if listing.is_featured == featured:
        return listing  # nothing changes, so nothing to audit
    listing.is_featured = featured
    listing.featured_at = timezone.now() if featured else None
    listing.save(update_fields=["is_featured", "featured_at", "updated_at"])
    audit_log_write(
        action=AuditAction.LISTING_FEATURED if featured else AuditAction.LISTING_UNFEATURED,
        actor=actor,
        listing=listing,
    )
    return listing


# --- reports --------------------------------------------------------------------------------------


@transaction.atomic
def report_create(*, listing: Listing, reporter: Any, reason: str, details: str = "") -> Report:
    """Any signed-in user may report a public listing, once while their report is open."""
    if reporter is None or not getattr(reporter, "is_authenticated", False):
        raise Forbidden("Sign in to report a listing.", code="not_authenticated")
    if reason not in ReportReason.values:
        message = "Choose one of: " + ", ".join(ReportReason.values) + "."
        raise ApplicationError(message, code="invalid", fields={"reason": [message]})
    details = _optional_text(details, field="details", max_length=REPORT_DETAILS_MAX_LENGTH)
    # The listing row lock serialises reports on one listing, which makes the duplicate check safe.
    listing = _listing_locked(listing)
    if listing.status != ListingStatus.PUBLISHED:
        raise NotFound("No such listing.")
    if Report.objects.filter(listing=listing, reporter=reporter, status=ReportStatus.OPEN).exists():
        raise Conflict(
            "You already reported this listing; moderators are looking at your report.",
            code="duplicate_report",
        )
    report = Report.objects.create(listing=listing, reporter=reporter, reason=reason, details=details)
    audit_log_write(
        action=AuditAction.REPORT_FILED,
        actor=reporter,
        listing=listing,
        reason=details,
        data={"report_id": report.pk, "reason": reason},
    )
    return report


@transaction.atomic
def report_resolve(
    *,
    report: Report,
    actor: Any,
    note: str = "",
    action: ReportResolution,
    suspend_listing: bool = False,
) -> Report:
    """Close an open report: "resolve" (it was right) or "dismiss" (no action needed).

    With ``suspend_listing`` the reported listing is suspended in the same transaction, with
    the note as the reason the publisher reads.
    """
    _staff_required(actor)
    if action not in ("dismiss", "resolve"):
        raise ApplicationError(
            'Action must be "dismiss" or "resolve".', code="invalid", fields={"action": ["Choose dismiss or resolve."]}
        )
    if suspend_listing:
        if action != "resolve":
            raise ApplicationError(
                "Suspending the listing resolves the report; it cannot be combined with dismissing it.",
                code="invalid",
                fields={"action": ["Use resolve when suspending the listing."]},
            )
        note = _required_text(note, field="note", what="A note (the suspension reason)")
    else:
        note = _optional_text(note, field="note")

    report = Report.objects.select_for_update(of=("self",)).select_related("listing").get(pk=report.pk)
    if report.status != ReportStatus.OPEN:
        raise Conflict(f"This report is already {report.get_status_display().lower()}.", code="invalid_state")
    report.status = ReportStatus.RESOLVED if action == "resolve" else ReportStatus.DISMISSED
    report.resolved_by = actor
    report.resolved_at = timezone.now()
    report.resolution_note = note
    report.save(update_fields=["status", "resolved_by", "resolved_at", "resolution_note"])
    audit_log_write(
        action=AuditAction.REPORT_RESOLVED if action == "resolve" else AuditAction.REPORT_DISMISSED,
        actor=actor,
        listing=report.listing,
        reason=note,
        data={"report_id": report.pk, "reason": report.reason, "suspended_listing": suspend_listing},
    )
    # Another report may already have led to a suspension; that is not a reason to fail this one.
    if suspend_listing and report.listing.status != ListingStatus.SUSPENDED:
        report.listing = listing_suspend(listing=report.listing, actor=actor, reason=note)
    return report
