"""Moderation pages through Django's test client, the report page, and the Django admin."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.core import mail
from django.urls import reverse

from catalog.models import Listing, ListingStatus, VersionStatus
from moderation import services
from moderation.audit import audit_log_write
from moderation.models import AuditAction, AuditLogEntry, Report, ReportStatus

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode()


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


STAFF_PAGES = [
    ("moderation:dashboard", {}),
    ("moderation:listings", {}),
    ("moderation:reports", {}),
    ("moderation:audit", {}),
]


# --- access ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kwargs", STAFF_PAGES)
def test_pages_are_404_for_signed_in_non_staff(client, buyer, name, kwargs):
    client.force_login(buyer)
    assert client.get(reverse(name, kwargs=kwargs)).status_code == 404


@pytest.mark.parametrize("name,kwargs", STAFF_PAGES)
def test_pages_send_anonymous_visitors_to_login(client, name, kwargs):
    url = reverse(name, kwargs=kwargs)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login")) and "next=" in response["Location"]


def test_version_pages_and_actions_are_404_for_non_staff(client, org_team, version_in_review):
    owner = org_team[0]  # even the publisher cannot approve their own version
    client.force_login(owner)
    assert client.get(reverse("moderation:version-detail", args=[version_in_review.pk])).status_code == 404
    assert client.post(reverse("moderation:version-approve", args=[version_in_review.pk])).status_code == 404
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.IN_REVIEW


# --- queue and version review ---------------------------------------------------------------------


def test_dashboard_shows_counts_and_the_queue_with_reports(staff_client, version_in_review, published_listing, buyer):
    services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    response = staff_client.get(reverse("moderation:dashboard"))
    assert response.status_code == 200
    assert response.context["counts"] == {"versions_waiting": 1, "open_reports": 1}
    body = text(response)
    assert 'data-count="versions_waiting">1<' in body and 'data-count="open_reports">1<' in body
    assert "Sepsis Risk 1.0.0" in body and "Acme Models" in body
    assert "Checksum (SHA-256)" in body and "badge-ok" in body  # validation steps with pass/fail
    assert "<code>features</code>" in body and "[N, 8]" in body  # the signature
    assert "0.42 ms" in body  # the metrics
    assert reverse("moderation:version-approve", args=[version_in_review.pk]) in body
    assert 'name="reason" rows="3" required' in body  # the reject form needs a reason
    assert f"{reverse('moderation:version-detail', args=[version_in_review.pk])}#model-card" in body


def test_version_detail_renders_the_model_card(staff_client, version_in_review):
    response = staff_client.get(reverse("moderation:version-detail", args=[version_in_review.pk]))
    assert response.status_code == 200
    body = text(response)
    assert "<strong>sepsis</strong>" in body
    assert "Approve and publish" in body
    assert staff_client.get(reverse("moderation:version-detail", args=[999999])).status_code == 404


def test_approve_from_the_queue_publishes(staff_client, version_in_review, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("moderation:version-approve", args=[version_in_review.pk]), {"note": "ok"}, follow=True
        )
    assert response.redirect_chain[-1][0] == reverse("moderation:dashboard")
    assert any("Approved and published" in m for m in page_messages(response))
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.PUBLISHED
    assert mail.outbox and "is live" in mail.outbox[0].subject
    assert "Nothing waiting for review" in text(response)


def test_mail_outage_does_not_undo_or_hide_a_committed_decision(
    staff_client, version_in_review, monkeypatch, django_capture_on_commit_callbacks
):
    """The notification callbacks are robust: a failing mail server is logged, the approval still stands."""
    import smtplib

    def refuse(*args, **kwargs):
        raise smtplib.SMTPException("mail server down")

    monkeypatch.setattr("moderation.emails.send_mail", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("moderation:version-approve", args=[version_in_review.pk]), {"note": ""})
    assert response.status_code == 302
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.PUBLISHED
    assert mail.outbox == []


def test_reject_without_reason_keeps_the_version_in_review(staff_client, version_in_review):
    detail = reverse("moderation:version-detail", args=[version_in_review.pk])
    response = staff_client.post(
        reverse("moderation:version-reject", args=[version_in_review.pk]), {"reason": "  ", "next": detail}, follow=True
    )
    assert response.redirect_chain[-1][0] == detail
    assert any("required" in m for m in page_messages(response))
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.IN_REVIEW
    assert not AuditLogEntry.objects.exists()


def test_reject_with_reason(staff_client, version_in_review, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("moderation:version-reject", args=[version_in_review.pk]), {"reason": "No model card"}, follow=True
        )
    assert response.status_code == 200
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.REJECTED and version_in_review.status_reason == "No model card"
    assert "No model card" in mail.outbox[0].body
    assert "This version is rejected" in text(response)


def test_action_in_wrong_state_shows_the_reason(staff_client, version_in_review, staff_user):
    services.version_reject(version=version_in_review, actor=staff_user, reason="No")
    response = staff_client.post(reverse("moderation:version-approve", args=[version_in_review.pk]), follow=True)
    assert any("cannot become approved" in m for m in page_messages(response))


def test_next_must_stay_on_this_site(staff_client, version_in_review):
    response = staff_client.post(
        reverse("moderation:version-reject", args=[version_in_review.pk]),
        {"reason": "x", "next": "https://evil.example/"},
    )
    assert response["Location"] == reverse("moderation:version-detail", args=[version_in_review.pk])


# --- listings -------------------------------------------------------------------------------------


def test_listings_search_suspend_reinstate_and_feature(staff_client, published_listing, make_version_in_review):
    make_version_in_review(name="Radiology Triage")
    response = staff_client.get(reverse("moderation:listings"), {"q": "contract"})
    body = text(response)
    assert "Contract Clauses" in body and "Radiology Triage" not in body
    assert reverse("moderation:listing-suspend", args=[published_listing.slug]) in body

    url = reverse("moderation:listing-suspend", args=[published_listing.slug])
    staff_client.post(url, {"reason": ""})
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.PUBLISHED

    staff_client.post(reverse("moderation:listing-feature", args=[published_listing.slug]), {"featured": "1"})
    published_listing.refresh_from_db()
    assert published_listing.is_featured

    response = staff_client.post(url, {"reason": "Misleading numbers"}, follow=True)
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.SUSPENDED and not published_listing.is_featured
    assert "Reinstate" in text(response)
    # Hidden from the public catalog page.
    staff_client.logout()
    assert staff_client.get(f"/s/{published_listing.slug}/").status_code == 404


def test_listing_reinstate_and_feature_refusal(staff_client, published_listing, org_team, staff_user):
    services.listing_suspend(listing=published_listing, actor=staff_user, reason="Spam")
    response = staff_client.post(
        reverse("moderation:listing-feature", args=[published_listing.slug]), {"featured": "1"}, follow=True
    )
    assert any("Only published listings can be featured" in m for m in page_messages(response))
    staff_client.post(reverse("moderation:listing-reinstate", args=[published_listing.slug]), {"note": "ok"})
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.PUBLISHED
    response = staff_client.get(reverse("moderation:listings"), {"status": "suspended"})
    assert "No listings match" in text(response)


# --- reports --------------------------------------------------------------------------------------


def test_reports_page_resolve_with_suspension(staff_client, published_listing, buyer):
    report = services.report_create(listing=published_listing, reporter=buyer, reason="malware", details="Odd ops")
    response = staff_client.get(reverse("moderation:reports"))
    assert "Odd ops" in text(response) and "Also suspend the listing" in text(response)

    staff_client.post(
        reverse("moderation:report-resolve", args=[report.pk]),
        {"action": "resolve", "note": "Confirmed", "suspend_listing": "1"},
    )
    report.refresh_from_db()
    published_listing.refresh_from_db()
    assert report.status == ReportStatus.RESOLVED
    assert published_listing.status == ListingStatus.SUSPENDED
    assert "No reports here" in text(staff_client.get(reverse("moderation:reports")))
    assert "Confirmed" in text(staff_client.get(reverse("moderation:reports"), {"status": "all"}))


def test_report_dismiss(staff_client, published_listing, buyer):
    report = services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    staff_client.post(reverse("moderation:report-resolve", args=[report.pk]), {"action": "dismiss"})
    report.refresh_from_db()
    assert report.status == ReportStatus.DISMISSED
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.PUBLISHED


# --- audit log ------------------------------------------------------------------------------------


def test_audit_page_filters_and_paginates(staff_client, published_listing, staff_user, version_in_review):
    for _ in range(30):
        services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
        services.listing_feature(listing=published_listing, actor=staff_user, featured=False)
    services.version_reject(version=version_in_review, actor=staff_user, reason="Bad card")

    response = staff_client.get(reverse("moderation:audit"))
    assert response.context["page"].paginator.count == 61
    assert len(response.context["page"].object_list) == 50
    assert "Next" in text(response)
    assert len(staff_client.get(reverse("moderation:audit"), {"page": 2}).context["page"].object_list) == 11

    response = staff_client.get(reverse("moderation:audit"), {"action": AuditAction.VERSION_REJECTED})
    assert [e.reason for e in response.context["page"].object_list] == ["Bad card"]
    response = staff_client.get(reverse("moderation:audit"), {"listing": published_listing.slug})
    assert response.context["page"].paginator.count == 60
    response = staff_client.get(reverse("moderation:audit"), {"actor": "nobody@"})
    assert response.context["page"].paginator.count == 0


# --- reporting a listing (any signed-in user) -----------------------------------------------------


def test_report_page_for_signed_in_users(client, published_listing, buyer):
    url = reverse("moderation:report-listing", args=[published_listing.slug])
    assert client.get(url).status_code == 302  # anonymous → login

    client.force_login(buyer)
    response = client.get(url)
    assert response.status_code == 200
    assert '<select name="reason"' in text(response) and "Misleading description" in text(response)

    response = client.post(url, {"reason": "misleading", "details": "The p95 is wrong"})
    assert response.status_code == 302 and response["Location"] == f"/s/{published_listing.slug}/"
    report = Report.objects.get()
    assert report.reporter == buyer and report.details == "The p95 is wrong"

    response = client.post(url, {"reason": "spam", "details": ""})
    assert response.status_code == 409
    assert "already reported" in text(response)
    assert Report.objects.count() == 1

    response = client.post(url, {"reason": "nonsense"})
    assert response.status_code == 400


def test_report_page_404_for_hidden_listings(client, buyer, version_in_review):
    client.force_login(buyer)
    url = reverse("moderation:report-listing", args=[version_in_review.listing.slug])
    assert client.get(url).status_code == 404


def test_listing_page_links_to_report_page(client, published_listing, buyer):
    client.force_login(buyer)
    body = text(client.get(f"/s/{published_listing.slug}/"))
    assert reverse("moderation:report-listing", args=[published_listing.slug]) in body


# --- Django admin ---------------------------------------------------------------------------------


def test_every_admin_changelist_returns_200_for_a_superuser(
    client, staff_user, published_listing, version_in_review, buyer
):
    services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    client.force_login(staff_user)
    failures = []
    for model in admin.site._registry:
        meta = model._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        status = client.get(url).status_code
        if status != 200:
            failures.append((url, status))
    assert not failures
    assert {m._meta.label for m in admin.site._registry} >= {
        "catalog.Listing",
        "catalog.Version",
        "catalog.Tag",
        "moderation.AuditLogEntry",
        "moderation.Report",
    }


def test_admin_change_pages_and_audit_log_is_read_only(client, staff_user, published_listing, buyer):
    report = services.report_create(listing=published_listing, reporter=buyer, reason="spam", details="")
    entry = AuditLogEntry.objects.get()
    client.force_login(staff_user)
    assert client.get(reverse("admin:catalog_listing_change", args=[published_listing.pk])).status_code == 200
    version_url = reverse("admin:catalog_version_change", args=[published_listing.current_version_id])
    response = client.get(version_url)
    assert response.status_code == 200 and "p50_ms_b1" in text(response)
    assert client.get(reverse("admin:moderation_report_change", args=[report.pk])).status_code == 200

    entry_url = reverse("admin:moderation_auditlogentry_change", args=[entry.pk])
    response = client.get(entry_url)
    assert response.status_code == 200 and 'name="_save"' not in text(response)
    assert client.post(entry_url, {"reason": "rewritten"}).status_code == 403
    assert client.get(reverse("admin:moderation_auditlogentry_add")).status_code == 403
    assert client.get(reverse("admin:moderation_auditlogentry_delete", args=[entry.pk])).status_code == 403
    entry.refresh_from_db()
    assert entry.reason == ""


def test_admin_suspend_action_asks_for_a_reason_and_audits(client, staff_user, published_listing):
    client.force_login(staff_user)
    url = reverse("admin:catalog_listing_changelist")
    data = {"action": "suspend_listings", "_selected_action": [published_listing.pk]}
    response = client.post(url, data)
    assert response.status_code == 200 and 'name="reason"' in text(response)

    client.post(url, {**data, "apply": "Suspend", "reason": "Takedown notice"})
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.SUSPENDED
    entry = AuditLogEntry.objects.get(action=AuditAction.LISTING_SUSPENDED)
    assert entry.reason == "Takedown notice" and entry.actor == staff_user

    client.post(url, {"action": "reinstate_listings", "_selected_action": [published_listing.pk]})
    client.post(url, {"action": "feature_listings", "_selected_action": [published_listing.pk]})
    listing = Listing.objects.get(pk=published_listing.pk)
    assert listing.status == ListingStatus.PUBLISHED and listing.is_featured
    assert AuditLogEntry.objects.filter(action=AuditAction.LISTING_FEATURED).count() == 1


def test_take_down_from_the_version_page(staff_client, published_listing, django_capture_on_commit_callbacks):
    version = published_listing.current_version
    detail = reverse("moderation:version-detail", args=[version.pk])
    assert "Withdraw this version" in text(staff_client.get(detail))
    url = reverse("moderation:version-take-down", args=[version.pk])
    staff_client.post(url, {"reason": ""})
    version.refresh_from_db()
    assert version.status == VersionStatus.PUBLISHED
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, {"reason": "Malicious operator"}, follow=True)
    version.refresh_from_db()
    assert version.status == VersionStatus.WITHDRAWN
    assert "Withdraw this version" not in text(response)
    assert "Malicious operator" in mail.outbox[0].body


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("moderation:version-approve", [999999]),
        ("moderation:version-reject", [999999]),
        ("moderation:listing-suspend", ["no-such-listing"]),
        ("moderation:listing-feature", ["no-such-listing"]),
        ("moderation:report-resolve", [999999]),
    ],
)
def test_actions_on_missing_objects_are_404_for_staff(staff_client, name, args):
    assert staff_client.post(reverse(name, args=args), {"reason": "x", "action": "resolve"}).status_code == 404


def test_staff_pages_do_not_query_per_row(staff_client, make_version_in_review, published_listing, make_user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_per_page() -> dict[str, int]:
        counts = {}
        for name, kwargs in STAFF_PAGES:
            with CaptureQueriesContext(connection) as captured:
                assert staff_client.get(reverse(name, kwargs=kwargs)).status_code == 200
            counts[name] = len(captured)
        return counts

    def add_rows(index: int) -> None:
        version = make_version_in_review(name=f"Model {index}")
        reporter = make_user(email=f"reporter{index}@example.com")
        services.report_create(listing=published_listing, reporter=reporter, reason="spam")
        audit_log_write(action=AuditAction.VERSION_REJECTED, actor=reporter, version=version)

    add_rows(0)
    few = queries_per_page()
    for index in range(1, 4):
        add_rows(index)
    assert queries_per_page() == few
