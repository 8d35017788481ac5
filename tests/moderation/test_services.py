"""Moderation services and selectors against PostgreSQL: state changes, audit rows, emails after commit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.db import DatabaseError, connection, transaction
from django.http import Http404
from django.utils import timezone

from catalog.models import ListingStatus, VersionStatus
from catalog.selectors import listing_get_public, listing_search
from marketplace.errors import ApplicationError, Conflict, Forbidden, NotFound
from moderation import selectors, services
from moderation.models import AuditAction, AuditLogEntry, Report, ReportStatus
from tests.catalog.factories import ListingFactory, VersionFactory

pytestmark = pytest.mark.django_db


def actions_for(obj_filter: dict) -> list[str]:
    return list(AuditLogEntry.objects.filter(**obj_filter).order_by("id").values_list("action", flat=True))


def recipients() -> list[str]:
    return sorted(address for message in mail.outbox for address in message.to)


# --- approve --------------------------------------------------------------------------------------


def test_approve_publishes_audits_and_emails_owners_and_admins(
    version_in_review, staff_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        version = services.version_approve(version=version_in_review, actor=staff_user, note="Looks good")

    assert len(callbacks) >= 1
    version.refresh_from_db()
    listing = version.listing
    listing.refresh_from_db()
    assert version.status == VersionStatus.PUBLISHED
    assert version.reviewed_by == staff_user and version.reviewed_at is not None
    assert version.published_at is not None
    assert listing.status == ListingStatus.PUBLISHED
    assert listing.current_version_id == version.pk
    assert listing_get_public(slug=listing.slug, user=None).pk == listing.pk

    assert actions_for({"version": version}) == [AuditAction.VERSION_APPROVED, AuditAction.VERSION_PUBLISHED]
    approved = AuditLogEntry.objects.get(version=version, action=AuditAction.VERSION_APPROVED)
    assert approved.actor == staff_user and approved.reason == "Looks good"
    assert approved.organization_id == listing.organization_id

    # Owners and admins, one message each; plain members are not told.
    assert recipients() == ["admin@publisher.example", "owner@publisher.example"]
    message = mail.outbox[0]
    assert message.subject == "Your version 1.0.0 of Sepsis Risk is live"
    assert f"/s/{listing.slug}/" in message.body


def test_approve_sends_nothing_until_commit(version_in_review, staff_user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.version_approve(version=version_in_review, actor=staff_user)
    assert mail.outbox == []  # the email waits for the commit
    assert len(callbacks) == 2  # the email, and warming the published version where inference runs


def test_approve_by_non_staff_is_forbidden_and_changes_nothing(version_in_review, org_team):
    owner = org_team[0]
    with pytest.raises(Forbidden):
        services.version_approve(version=version_in_review, actor=owner)
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.IN_REVIEW
    assert not AuditLogEntry.objects.filter(version=version_in_review).exists()


@pytest.mark.parametrize("status", [VersionStatus.READY, VersionStatus.REJECTED, VersionStatus.PUBLISHED])
def test_approve_in_wrong_state_is_a_conflict(version_in_review, staff_user, status):
    version_in_review.status = status
    version_in_review.save(update_fields=["status"])
    with pytest.raises(Conflict) as excinfo:
        services.version_approve(version=version_in_review, actor=staff_user)
    assert excinfo.value.status == 409 and excinfo.value.code == "invalid_state"
    version_in_review.refresh_from_db()
    assert version_in_review.status == status
    assert mail.outbox == []


def test_approve_on_suspended_listing_publishes_but_keeps_it_hidden(
    version_in_review, staff_user, django_capture_on_commit_callbacks
):
    listing = version_in_review.listing
    services.listing_suspend(listing=listing, actor=staff_user, reason="Under investigation")
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.version_approve(version=version_in_review, actor=staff_user)
    listing.refresh_from_db()
    assert listing.status == ListingStatus.SUSPENDED
    assert mail.outbox[0].subject == "Your version 1.0.0 of Sepsis Risk is approved"
    assert "suspended" in mail.outbox[0].body

    services.listing_reinstate(listing=listing, actor=staff_user)
    listing.refresh_from_db()
    assert listing.status == ListingStatus.PUBLISHED


# --- reject ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["", "   \n "])
def test_reject_requires_a_reason(version_in_review, staff_user, reason):
    with pytest.raises(ApplicationError) as excinfo:
        services.version_reject(version=version_in_review, actor=staff_user, reason=reason)
    assert excinfo.value.status == 400
    assert "reason" in excinfo.value.fields
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.IN_REVIEW


def test_reject_records_the_reason_audits_and_emails_it(
    version_in_review, staff_user, django_capture_on_commit_callbacks
):
    reason = "The model card claims 99% recall but the benchmark is not described."
    with django_capture_on_commit_callbacks(execute=True):
        version = services.version_reject(version=version_in_review, actor=staff_user, reason=f"  {reason}  ")
    version.refresh_from_db()
    assert version.status == VersionStatus.REJECTED
    assert version.status_reason == reason
    assert version.reviewed_by == staff_user
    assert version.listing.status == ListingStatus.DRAFT

    entry = AuditLogEntry.objects.get(version=version)
    assert entry.action == AuditAction.VERSION_REJECTED and entry.reason == reason and entry.actor == staff_user

    assert recipients() == ["admin@publisher.example", "owner@publisher.example"]
    assert "was not approved" in mail.outbox[0].subject
    assert reason in mail.outbox[0].body  # plain text: no HTML escaping of "%"
    assert "&#" not in mail.outbox[0].body


def test_reject_by_non_staff_is_forbidden(version_in_review, buyer):
    with pytest.raises(Forbidden):
        services.version_reject(version=version_in_review, actor=buyer, reason="No")


def test_rejected_version_can_be_resubmitted_and_approved(version_in_review, staff_user, org_team):
    from catalog.services import version_submit

    services.version_reject(version=version_in_review, actor=staff_user, reason="Fix the card")
    version = version_submit(version=version_in_review, user=org_team[0])
    version = services.version_approve(version=version, actor=staff_user)
    assert version.status == VersionStatus.PUBLISHED


# --- listings -------------------------------------------------------------------------------------


def test_suspend_hides_from_public_and_reinstate_restores(
    published_listing, staff_user, django_capture_on_commit_callbacks
):
    services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    with django_capture_on_commit_callbacks(execute=True):
        listing = services.listing_suspend(listing=published_listing, actor=staff_user, reason="Misleading numbers")
    listing.refresh_from_db()
    assert listing.status == ListingStatus.SUSPENDED
    assert listing.status_reason == "Misleading numbers"
    assert listing.is_featured is False and listing.featured_at is None
    with pytest.raises(Http404):
        listing_get_public(slug=listing.slug, user=None)
    assert listing.pk not in [item.pk for item in listing_search(query="")]
    assert "suspended" in mail.outbox[-1].subject and "Misleading numbers" in mail.outbox[-1].body

    with django_capture_on_commit_callbacks(execute=True):
        listing = services.listing_reinstate(listing=listing, actor=staff_user, note="Numbers fixed")
    listing.refresh_from_db()
    assert listing.status == ListingStatus.PUBLISHED and listing.status_reason == ""
    assert listing_get_public(slug=listing.slug, user=None).pk == listing.pk
    assert "reinstated" in mail.outbox[-1].subject
    assert actions_for({"listing": listing}) == [
        AuditAction.LISTING_FEATURED,
        AuditAction.LISTING_SUSPENDED,
        AuditAction.LISTING_REINSTATED,
    ]
    reinstated = AuditLogEntry.objects.get(listing=listing, action=AuditAction.LISTING_REINSTATED)
    assert reinstated.reason == "Numbers fixed" and reinstated.data == {"status": "published"}


def test_reinstate_without_a_servable_version_goes_back_to_draft(org_team, staff_user):
    listing = ListingFactory(organization=org_team[3], status=ListingStatus.DRAFT)
    VersionFactory(listing=listing, status=VersionStatus.REJECTED, published_at=None)
    services.listing_suspend(listing=listing, actor=staff_user, reason="Spam")
    listing = services.listing_reinstate(listing=listing, actor=staff_user)
    assert listing.status == ListingStatus.DRAFT


def test_reinstate_when_current_version_was_withdrawn_goes_back_to_draft(published_listing, staff_user):
    services.listing_suspend(listing=published_listing, actor=staff_user, reason="Malware")
    version = published_listing.current_version
    version.status = VersionStatus.WITHDRAWN
    version.save(update_fields=["status"])
    listing = services.listing_reinstate(listing=published_listing, actor=staff_user)
    assert listing.status == ListingStatus.DRAFT


def test_suspend_requires_a_reason_and_refuses_twice(published_listing, staff_user):
    with pytest.raises(ApplicationError) as excinfo:
        services.listing_suspend(listing=published_listing, actor=staff_user, reason=" ")
    assert excinfo.value.status == 400 and "reason" in excinfo.value.fields
    services.listing_suspend(listing=published_listing, actor=staff_user, reason="Spam")
    with pytest.raises(Conflict):
        services.listing_suspend(listing=published_listing, actor=staff_user, reason="Spam again")


def test_reinstate_only_suspended(published_listing, staff_user):
    with pytest.raises(Conflict):
        services.listing_reinstate(listing=published_listing, actor=staff_user)


def test_listing_actions_are_staff_only(published_listing, org_team):
    owner = org_team[0]
    with pytest.raises(Forbidden):
        services.listing_suspend(listing=published_listing, actor=owner, reason="x")
    with pytest.raises(Forbidden):
        services.listing_feature(listing=published_listing, actor=owner, featured=True)
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.PUBLISHED and not published_listing.is_featured


def test_only_published_listings_can_be_featured(org_team, published_listing, staff_user):
    draft = ListingFactory(organization=org_team[3], status=ListingStatus.DRAFT)
    with pytest.raises(Conflict):
        services.listing_feature(listing=draft, actor=staff_user, featured=True)
    draft.refresh_from_db()
    assert draft.is_featured is False

    listing = services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    assert listing.is_featured and listing.featured_at is not None
    # Featuring again changes nothing and writes nothing.
    services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    listing = services.listing_feature(listing=published_listing, actor=staff_user, featured=False)
    assert not listing.is_featured and listing.featured_at is None
    assert actions_for({"listing": listing}) == [AuditAction.LISTING_FEATURED, AuditAction.LISTING_UNFEATURED]


# --- reports --------------------------------------------------------------------------------------


def test_report_create_then_duplicate_is_a_conflict(published_listing, buyer, make_user):
    report = services.report_create(listing=published_listing, reporter=buyer, reason="misleading", details="p95 wrong")
    assert report.status == ReportStatus.OPEN and report.reporter == buyer
    entry = AuditLogEntry.objects.get(action=AuditAction.REPORT_FILED)
    assert entry.listing_id == published_listing.pk and entry.data["report_id"] == report.pk

    with pytest.raises(Conflict) as excinfo:
        services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    assert excinfo.value.status == 409 and excinfo.value.code == "duplicate_report"

    # Someone else may report the same listing.
    services.report_create(listing=published_listing, reporter=make_user(), reason="spam", details="")
    assert Report.objects.filter(listing=published_listing).count() == 2


def test_report_create_validates_input_and_listing(published_listing, org_team, buyer):
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(ApplicationError) as excinfo:
        services.report_create(listing=published_listing, reporter=buyer, reason="boring", details="")
    assert excinfo.value.status == 400 and "reason" in excinfo.value.fields
    with pytest.raises(ApplicationError) as excinfo:
        services.report_create(listing=published_listing, reporter=buyer, reason="other", details="x" * 5001)
    assert "details" in excinfo.value.fields
    with pytest.raises(Forbidden):
        services.report_create(listing=published_listing, reporter=AnonymousUser(), reason="spam", details="")
    draft = ListingFactory(organization=org_team[3], status=ListingStatus.DRAFT)
    with pytest.raises(NotFound):
        services.report_create(listing=draft, reporter=buyer, reason="spam", details="")
    assert not Report.objects.exists()


def test_report_resolve_and_dismiss(published_listing, buyer, make_user, staff_user):
    first = services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    second = services.report_create(listing=published_listing, reporter=make_user(), reason="other", details="")

    first = services.report_resolve(report=first, actor=staff_user, note="Not spam", action="dismiss")
    assert first.status == ReportStatus.DISMISSED and first.resolved_by == staff_user
    assert first.resolved_at is not None and first.resolution_note == "Not spam"
    with pytest.raises(Conflict):
        services.report_resolve(report=first, actor=staff_user, note="", action="resolve")

    second = services.report_resolve(report=second, actor=staff_user, note="Card fixed", action="resolve")
    assert second.status == ReportStatus.RESOLVED
    assert actions_for({"action__startswith": "report."}) == [
        AuditAction.REPORT_FILED,
        AuditAction.REPORT_FILED,
        AuditAction.REPORT_DISMISSED,
        AuditAction.REPORT_RESOLVED,
    ]
    # The dismissed report is closed, so the same user may report again.
    services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="Still spam")


def test_report_resolve_with_suspension(published_listing, buyer, staff_user, django_capture_on_commit_callbacks):
    report = services.report_create(listing=published_listing, reporter=buyer, reason="malware", details="")
    with pytest.raises(ApplicationError) as excinfo:
        services.report_resolve(report=report, actor=staff_user, note="", action="resolve", suspend_listing=True)
    assert "note" in excinfo.value.fields
    with pytest.raises(ApplicationError):
        services.report_resolve(report=report, actor=staff_user, note="x", action="dismiss", suspend_listing=True)

    with django_capture_on_commit_callbacks(execute=True):
        report = services.report_resolve(
            report=report, actor=staff_user, note="Ships a payload", action="resolve", suspend_listing=True
        )
    published_listing.refresh_from_db()
    assert report.status == ReportStatus.RESOLVED
    assert published_listing.status == ListingStatus.SUSPENDED
    assert published_listing.status_reason == "Ships a payload"
    assert "Ships a payload" in mail.outbox[-1].body


def test_report_resolve_is_staff_only(published_listing, buyer):
    report = services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    with pytest.raises(Forbidden):
        services.report_resolve(report=report, actor=buyer, note="", action="dismiss")


# --- selectors ------------------------------------------------------------------------------------


def test_review_queue_is_oldest_first_with_related_rows(make_version_in_review, django_assert_num_queries):
    now = timezone.now()
    newer = make_version_in_review(name="Newer", submitted_at=now)
    older = make_version_in_review(name="Older", submitted_at=now - timedelta(hours=3))
    VersionFactory(listing=newer.listing, version="0.9.0", status=VersionStatus.READY)
    with django_assert_num_queries(1):
        queue = list(selectors.review_queue())
        assert [v.pk for v in queue] == [older.pk, newer.pk]
        assert queue[0].listing.organization.name == "Acme Models"
        assert queue[0].created_by.email == "owner@publisher.example"
        assert queue[0].validation_report["steps"][0]["status"] == "passed"


def test_report_queue_and_counts(published_listing, buyer, make_user, staff_user, version_in_review):
    first = services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    services.report_create(listing=published_listing, reporter=make_user(), reason="other", details="")
    services.report_resolve(report=first, actor=staff_user, action="dismiss")
    assert selectors.report_queue().count() == 1
    assert [r.pk for r in selectors.report_queue(status="dismissed")] == [first.pk]
    assert selectors.report_queue(status=None).count() == 2
    assert selectors.moderation_counts() == {"versions_waiting": 1, "open_reports": 1}


def test_audit_log_list_filters(published_listing, version_in_review, staff_user, buyer):
    services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    services.version_reject(version=version_in_review, actor=staff_user, reason="No card")
    services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")

    assert selectors.audit_log_list().count() == 3
    assert selectors.audit_log_list(listing=published_listing).count() == 2
    assert selectors.audit_log_list(listing=published_listing.pk).count() == 2
    assert selectors.audit_log_list(actor=buyer).get().action == AuditAction.REPORT_FILED
    assert selectors.audit_log_list(action=AuditAction.VERSION_REJECTED).get().version_id == version_in_review.pk
    assert selectors.audit_log_list(organization=published_listing.organization).count() == 3
    assert selectors.audit_log_list(listing_slug=version_in_review.listing.slug).count() == 1
    assert selectors.audit_log_list(actor_email="ADMIN@").count() == 2
    newest = selectors.audit_log_list().first()
    assert newest.action == AuditAction.REPORT_FILED


# --- the audit log is append-only ---------------------------------------------------------------


def test_audit_log_refuses_updates_and_deletes_through_the_orm(published_listing, staff_user):
    services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    entry = AuditLogEntry.objects.get()
    entry.reason = "rewritten"
    with pytest.raises(PermissionError):
        entry.save()
    with pytest.raises(PermissionError):
        entry.delete()
    with pytest.raises(PermissionError):
        AuditLogEntry.objects.filter(pk=entry.pk).update(reason="rewritten")
    with pytest.raises(PermissionError):
        AuditLogEntry.objects.all().delete()
    entry.refresh_from_db()
    assert entry.reason == ""


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE moderation_auditlogentry SET reason = 'rewritten' WHERE id = %s",
        "DELETE FROM moderation_auditlogentry WHERE id = %s",
    ],
)
def test_audit_log_refuses_raw_sql_on_postgresql(published_listing, staff_user, sql):
    assert connection.vendor == "postgresql"
    services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    entry = AuditLogEntry.objects.get()
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [entry.pk])
    entry.refresh_from_db()
    assert entry.reason == "" and AuditLogEntry.objects.count() == 1


# --- take down ------------------------------------------------------------------------------------


def test_take_down_withdraws_a_published_version_and_tells_the_publisher(
    published_listing, staff_user, org_team, django_capture_on_commit_callbacks
):
    version = published_listing.current_version
    with pytest.raises(ApplicationError) as excinfo:
        services.version_take_down(version=version, actor=staff_user, reason="")
    assert "reason" in excinfo.value.fields
    with pytest.raises(Forbidden):
        services.version_take_down(version=version, actor=org_team[0], reason="Mine")

    with django_capture_on_commit_callbacks(execute=True):
        version = services.version_take_down(version=version, actor=staff_user, reason="Hostile payload")
    assert version.status == VersionStatus.WITHDRAWN and version.status_reason == "Hostile payload"
    published_listing.refresh_from_db()
    assert published_listing.current_version is None
    assert published_listing.status == ListingStatus.DRAFT  # nothing servable left
    entry = AuditLogEntry.objects.get(action=AuditAction.VERSION_WITHDRAWN)
    assert entry.actor == staff_user and entry.reason == "Hostile payload"
    assert "withdrawn" in mail.outbox[0].subject and "Hostile payload" in mail.outbox[0].body
    with pytest.raises(Conflict):
        services.version_take_down(version=version, actor=staff_user, reason="Again")


# --- after a real commit ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_emails_go_out_after_a_real_commit_and_not_after_a_rollback(make_version_in_review, staff_user):
    version = make_version_in_review()
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            services.version_reject(version=version, actor=staff_user, reason="Bad card")
            raise RuntimeError("something later in the request failed")
    version.refresh_from_db()
    assert version.status == VersionStatus.IN_REVIEW and mail.outbox == []
    assert not AuditLogEntry.objects.exists()

    services.version_approve(version=version, actor=staff_user)  # its own transaction, committed
    assert [m.subject for m in mail.outbox] == ["Your version 1.0.0 of Sepsis Risk is live"] * 2
