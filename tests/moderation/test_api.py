"""The moderation REST API: staff only (reports: any signed-in user), one JSON error shape throughout."""

from __future__ import annotations

import pytest
from django.core import mail
from django.urls import reverse
from rest_framework.test import APIClient

from catalog.models import ListingStatus, VersionStatus
from moderation import services
from moderation.audit import audit_log_write
from moderation.models import AuditAction, Report, ReportStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def staff_api(api, staff_user):
    api.force_authenticate(staff_user)
    return api


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


STAFF_ENDPOINTS = [
    ("get", "api-moderation-queue", {}),
    ("get", "api-moderation-reports", {}),
    ("get", "api-moderation-audit", {}),
    ("post", "api-version-approve", {"version_id": 1}),
    ("post", "api-version-reject", {"version_id": 1}),
    ("post", "api-version-withdraw", {"version_id": 1}),
    ("post", "api-listing-suspend", {"slug": "contract-clauses"}),
    ("post", "api-listing-reinstate", {"slug": "contract-clauses"}),
    ("post", "api-listing-feature", {"slug": "contract-clauses"}),
    ("post", "api-report-resolve", {"report_id": 1}),
]


@pytest.mark.parametrize("method,name,kwargs", STAFF_ENDPOINTS)
def test_staff_endpoints_are_403_for_non_staff_and_anonymous(api, buyer, published_listing, method, name, kwargs):
    url = reverse(name, kwargs=kwargs)
    response = getattr(api, method)(url, {}, format="json")
    assert response.status_code == 403 and error_of(response)["code"] == "not_authenticated"
    api.force_authenticate(buyer)
    response = getattr(api, method)(url, {"reason": "x", "featured": True}, format="json")
    assert response.status_code == 403 and error_of(response)["code"] == "forbidden"
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.PUBLISHED and not published_listing.is_featured


def test_queue_lists_versions_in_review_with_their_reports(staff_api, version_in_review, published_listing):
    response = staff_api.get(reverse("api-moderation-queue"))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    item = body["results"][0]
    assert item["id"] == version_in_review.pk and item["version"] == "1.0.0" and item["status"] == "in_review"
    assert item["listing"]["slug"] == "sepsis-risk" and item["listing"]["organization"]["name"] == "Acme Models"
    assert item["submitted_by"] == "owner@publisher.example"
    assert item["validation_report"]["steps"][0]["status"] == "passed"
    assert item["metrics"]["p50_ms_b1"] == 0.42
    assert item["signature"]["inputs"][0]["name"] == "features"


def test_approve_publishes_then_a_second_approve_is_409(
    staff_api, version_in_review, django_capture_on_commit_callbacks
):
    url = reverse("api-version-approve", kwargs={"version_id": version_in_review.pk})
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(url, {"note": "Fine"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "published" and body["listing"]["status"] == "published"
    assert body["reviewed_at"] and body["published_at"]
    assert [m.subject for m in mail.outbox][0] == "Your version 1.0.0 of Sepsis Risk is live"

    response = staff_api.post(url, {}, format="json")
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "invalid_state" and "published" in error["message"]


def test_approve_unknown_version_is_404(staff_api):
    response = staff_api.post(reverse("api-version-approve", kwargs={"version_id": 987654}), {}, format="json")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


@pytest.mark.parametrize("payload", [{}, {"reason": ""}, {"reason": "   "}])
def test_reject_requires_a_reason(staff_api, version_in_review, payload):
    url = reverse("api-version-reject", kwargs={"version_id": version_in_review.pk})
    response = staff_api.post(url, payload, format="json")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid" and error["fields"]["reason"]
    version_in_review.refresh_from_db()
    assert version_in_review.status == VersionStatus.IN_REVIEW


def test_reject_with_reason(staff_api, version_in_review, django_capture_on_commit_callbacks):
    url = reverse("api-version-reject", kwargs={"version_id": version_in_review.pk})
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(url, {"reason": "Card overstates recall"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "rejected" and response.json()["status_reason"] == "Card overstates recall"
    assert "Card overstates recall" in mail.outbox[0].body


def test_suspend_reinstate_and_feature(staff_api, published_listing):
    slug = published_listing.slug
    response = staff_api.post(reverse("api-listing-suspend", kwargs={"slug": slug}), {"reason": ""}, format="json")
    assert response.status_code == 400 and "reason" in error_of(response)["fields"]

    response = staff_api.post(reverse("api-listing-suspend", kwargs={"slug": slug}), {"reason": "DMCA"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "suspended"
    assert response.json()["status_reason"] == "DMCA"
    # Hidden from the public API and pages.
    anonymous = APIClient()
    assert anonymous.get(f"/s/{slug}/").status_code == 404

    response = staff_api.post(reverse("api-listing-feature", kwargs={"slug": slug}), {"featured": True}, format="json")
    assert response.status_code == 409 and error_of(response)["code"] == "invalid_state"

    response = staff_api.post(reverse("api-listing-reinstate", kwargs={"slug": slug}), {}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "published"
    response = staff_api.post(reverse("api-listing-reinstate", kwargs={"slug": slug}), {}, format="json")
    assert response.status_code == 409

    response = staff_api.post(reverse("api-listing-feature", kwargs={"slug": slug}), {"featured": True}, format="json")
    assert response.status_code == 200 and response.json()["is_featured"] is True
    response = staff_api.post(reverse("api-listing-feature", kwargs={"slug": slug}), {}, format="json")
    assert response.status_code == 400 and "featured" in error_of(response)["fields"]
    response = staff_api.post(reverse("api-listing-suspend", kwargs={"slug": "nope"}), {"reason": "x"}, format="json")
    assert response.status_code == 404


def test_report_create_duplicate_and_resolve(api, buyer, staff_user, published_listing):
    url = reverse("api-listing-report-create", kwargs={"slug": published_listing.slug})
    response = api.post(url, {"reason": "spam"}, format="json")
    assert response.status_code == 403 and error_of(response)["code"] == "not_authenticated"

    api.force_authenticate(buyer)
    response = api.post(url, {"reason": "misleading", "details": "p95 is made up"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "open" and body["listing"] == published_listing.slug and "reporter" not in body

    response = api.post(url, {"reason": "spam"}, format="json")
    assert response.status_code == 409 and error_of(response)["code"] == "duplicate_report"
    response = api.post(url, {"reason": "boring"}, format="json")
    assert response.status_code == 400 and "reason" in error_of(response)["fields"]
    response = api.post(reverse("api-listing-report-create", kwargs={"slug": "missing"}), {"reason": "spam"})
    assert response.status_code == 404
    assert Report.objects.count() == 1

    api.force_authenticate(staff_user)
    response = api.get(reverse("api-moderation-reports"))
    assert response.status_code == 200
    [item] = response.json()["results"]
    assert item["reporter"] == "buyer@example.com" and item["details"] == "p95 is made up"

    resolve = reverse("api-report-resolve", kwargs={"report_id": item["id"]})
    response = api.post(resolve, {"action": "resolve", "note": "Fake", "suspend_listing": True}, format="json")
    assert response.status_code == 200 and response.json()["status"] == ReportStatus.RESOLVED
    published_listing.refresh_from_db()
    assert published_listing.status == ListingStatus.SUSPENDED
    response = api.post(resolve, {"action": "dismiss"}, format="json")
    assert response.status_code == 409
    assert api.get(reverse("api-moderation-reports")).json()["count"] == 0
    assert api.get(reverse("api-moderation-reports"), {"status": "all"}).json()["count"] == 1
    assert api.get(reverse("api-moderation-reports"), {"status": "weird"}).status_code == 400


def test_audit_log_api_filters(staff_api, staff_user, published_listing, version_in_review):
    services.listing_feature(listing=published_listing, actor=staff_user, featured=True)
    services.version_reject(version=version_in_review, actor=staff_user, reason="No card")
    response = staff_api.get(reverse("api-moderation-audit"))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["results"][0]["action"] == AuditAction.VERSION_REJECTED
    assert body["results"][0]["actor"] == staff_user.email and body["results"][0]["version"] == "1.0.0"

    response = staff_api.get(reverse("api-moderation-audit"), {"listing": published_listing.slug})
    assert [e["action"] for e in response.json()["results"]] == [AuditAction.LISTING_FEATURED]
    response = staff_api.get(reverse("api-moderation-audit"), {"action": "version.rejected"})
    assert response.json()["results"][0]["reason"] == "No card"
    response = staff_api.get(reverse("api-moderation-audit"), {"action": "made.up"})
    assert response.status_code == 400


def test_openapi_schema_documents_the_moderation_api(staff_api):
    response = staff_api.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in [
        "/api/v1/moderation/queue",
        "/api/v1/moderation/versions/{version_id}/approve",
        "/api/v1/moderation/versions/{version_id}/reject",
        "/api/v1/moderation/listings/{slug}/suspend",
        "/api/v1/moderation/listings/{slug}/reinstate",
        "/api/v1/moderation/listings/{slug}/feature",
        "/api/v1/listings/{slug}/reports",
        "/api/v1/moderation/reports",
        "/api/v1/moderation/audit",
    ]:
        assert path in paths, path
    reject = paths["/api/v1/moderation/versions/{version_id}/reject"]["post"]
    assert {"200", "400", "403", "404", "409"} <= set(reject["responses"])


def test_withdraw_a_published_version(staff_api, published_listing):
    url = reverse("api-version-withdraw", kwargs={"version_id": published_listing.current_version_id})
    response = staff_api.post(url, {"reason": ""}, format="json")
    assert response.status_code == 400 and "reason" in error_of(response)["fields"]
    response = staff_api.post(url, {"reason": "Hostile file"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "withdrawn" and response.json()["listing"]["status"] == "draft"
    assert staff_api.post(url, {"reason": "Again"}, format="json").status_code == 409


def test_audit_entries_outlive_the_user_and_version_they_name(staff_api, staff_user, make_user, version_in_review):
    """The audit references carry no database constraint: deleting what they name keeps the row readable."""
    from catalog.models import Version

    gone = make_user(email="gone@example.com")
    audit_log_write(
        action=AuditAction.VERSION_REJECTED, actor=gone, version=version_in_review, reason="Before the deletions"
    )
    Version.objects.filter(pk=version_in_review.pk).delete()
    gone.delete()

    response = staff_api.get(reverse("api-moderation-audit"))
    assert response.status_code == 200
    entry = response.json()["results"][0]
    assert (entry["reason"], entry["actor"], entry["version"]) == ("Before the deletions", None, None)
    assert entry["listing"] == version_in_review.listing.slug
    staff_api.force_login(staff_user)  # the audit page is a Django view: a session, not DRF's forced user
    page = staff_api.get(reverse("moderation:audit"))
    assert page.status_code == 200 and "Before the deletions" in page.content.decode()
