"""Publisher REST API: field errors, tenancy (other orgs' drafts are 404), state conflicts."""

from __future__ import annotations

import base64
import uuid

import pytest
from rest_framework.test import APIClient

from accounts.models import Membership, Role
from catalog import services
from catalog.models import Listing, Version, VersionStatus

SHA = "b" * 64
PASSWORD = "pass-Word-123"


@pytest.fixture
def client_for():
    def _client(user) -> APIClient:
        client = APIClient()
        client.force_login(user)
        return client

    return _client


def _listing(org, user, **extra) -> Listing:
    fields = {
        "name": "Invoice Parser",
        "summary": "Reads totals from invoices.",
        "domain": "finance",
        "task": "classification",
        "tags": ["invoices"],
        "license": "mit",
    }
    fields.update(extra)
    return services.listing_create(organization=org, user=user, **fields)


def _version_row(listing, number="1.0.0", status=VersionStatus.UPLOADING) -> Version:
    major, minor, patch, pre = services.semver_parse(number)
    return Version.objects.create(
        listing=listing,
        version=number,
        major=major,
        minor=minor,
        patch=patch,
        prerelease=pre,
        status=status,
        artifact_key=f"artifacts/{listing.pk}/{uuid.uuid4().hex}/model.onnx",
        artifact_size=100,
        artifact_sha256=SHA,
    )


def _basic_client(user) -> APIClient:
    client = APIClient()
    token = base64.b64encode(f"{user.email}:{PASSWORD}".encode()).decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {token}")
    return client


def test_create_listing_with_basic_auth(publisher):
    user, org = publisher
    client = _basic_client(user)
    response = client.post(
        "/api/v1/publisher/listings",
        {
            "name": "Invoice Parser",
            "summary": "Reads totals from invoices.",
            "domain": "finance",
            "task": "classification",
            "tags": ["invoices", "OCR"],
            "license": "mit",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "invoice-parser" and body["organization"] == org.slug
    assert body["status"] == "draft" and body["tags"] == ["invoices", "ocr"] and body["versions"] == []


def test_create_listing_field_errors_are_400_with_messages(publisher, client_for):
    user, _ = publisher
    response = client_for(user).post(
        "/api/v1/publisher/listings",
        {"name": "", "summary": "x" * 300, "domain": "astrology", "task": "classification", "license": "custom"},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert set(error["fields"]) == {"name", "summary", "domain"}
    assert all(isinstance(messages, list) and messages for messages in error["fields"].values())

    # The service's own rules come back the same way.
    response = client_for(user).post(
        "/api/v1/publisher/listings",
        {"name": "Terms", "summary": "s", "domain": "legal", "task": "other", "license": "custom"},
        format="json",
    )
    assert response.status_code == 400
    assert "license_text" in response.json()["error"]["fields"]


def test_create_listing_needs_an_organization_choice_when_several_are_managed(publisher, make_org, client_for):
    user, org = publisher
    second = make_org(owner=user, name="Second Lab")
    payload = {"name": "A", "summary": "B", "domain": "other", "task": "other", "license": "mit"}

    # A script (basic auth) has no org switcher: it must say which organization.
    response = _basic_client(user).post("/api/v1/publisher/listings", payload, format="json")
    assert response.status_code == 400 and "organization" in response.json()["error"]["fields"]
    response = _basic_client(user).post(
        "/api/v1/publisher/listings", {**payload, "organization": second.slug}, format="json"
    )
    assert response.status_code == 201 and response.json()["organization"] == second.slug

    # In the browser, the organization chosen in the switcher is used.
    client = client_for(user)
    session = client.session
    session["current_organization_id"] = second.pk
    session.save()
    response = client.post("/api/v1/publisher/listings", {**payload, "name": "C"}, format="json")
    assert response.status_code == 201 and response.json()["organization"] == second.slug


def test_members_cannot_create_and_outsiders_cannot_name_the_org(publisher, make_user, client_for):
    user, org = publisher
    member = make_user()
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    payload = {
        "name": "A",
        "summary": "B",
        "domain": "other",
        "task": "other",
        "license": "mit",
        "organization": org.slug,
    }

    response = client_for(member).post("/api/v1/publisher/listings", payload, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    response = client_for(make_user()).post("/api/v1/publisher/listings", payload, format="json")
    assert response.status_code == 400 and "organization" in response.json()["error"]["fields"]
    assert not Listing.objects.exists()


def test_other_organizations_drafts_are_404(publisher, make_user, make_org, client_for):
    user, org = publisher
    listing = _listing(org, user)
    version = _version_row(listing)
    stranger = make_user()
    make_org(owner=stranger)
    client = client_for(stranger)

    for method, url in [
        ("get", f"/api/v1/publisher/listings/{listing.slug}"),
        ("patch", f"/api/v1/publisher/listings/{listing.slug}"),
        ("get", f"/api/v1/publisher/listings/{listing.slug}/versions"),
        ("post", f"/api/v1/publisher/listings/{listing.slug}/versions"),
        ("get", f"/api/v1/versions/{version.pk}"),
        ("get", f"/api/v1/versions/{version.pk}/upload"),
        ("post", f"/api/v1/versions/{version.pk}/complete"),
        ("post", f"/api/v1/versions/{version.pk}/submit"),
        ("post", f"/api/v1/versions/{version.pk}/withdraw"),
    ]:
        response = getattr(client, method)(url, {}, format="json")
        assert response.status_code == 404, (method, url, response.status_code)
        assert response.json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/publisher/listings").json()["results"] == []

    anonymous = APIClient().get(f"/api/v1/versions/{version.pk}")
    assert anonymous.status_code in (401, 403)


def test_members_read_versions_but_only_managers_change_them(publisher, make_user, client_for):
    user, org = publisher
    listing = _listing(org, user)
    version = _version_row(listing, status=VersionStatus.READY)
    member = make_user()
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)

    response = client_for(member).get(f"/api/v1/versions/{version.pk}")
    assert response.status_code == 200
    assert response.json()["status"] == "ready" and response.json()["listing"] == listing.slug
    assert client_for(member).post(f"/api/v1/versions/{version.pk}/submit").status_code == 403
    assert (
        client_for(member)
        .patch(f"/api/v1/publisher/listings/{listing.slug}", {"summary": "x"}, format="json")
        .status_code
        == 403
    )

    response = client_for(user).post(f"/api/v1/versions/{version.pk}/submit")
    assert response.status_code == 200 and response.json()["status"] == "in_review"


def test_patch_listing(publisher, client_for):
    user, org = publisher
    listing = _listing(org, user)
    client = client_for(user)
    response = client.patch(
        f"/api/v1/publisher/listings/{listing.slug}", {"summary": "New summary.", "tags": ["a", "b"]}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["summary"] == "New summary." and response.json()["tags"] == ["a", "b"]
    response = client.patch(f"/api/v1/publisher/listings/{listing.slug}", {"domain": "nope"}, format="json")
    assert response.status_code == 400 and "domain" in response.json()["error"]["fields"]


def test_version_create_field_errors(publisher, client_for, settings):
    user, org = publisher
    listing = _listing(org, user)
    settings.ARTIFACT_MAX_BYTES = 2 * 1024**3
    url = f"/api/v1/publisher/listings/{listing.slug}/versions"
    client = client_for(user)

    response = client.post(url, {"version": "one", "artifact_size": 0, "artifact_sha256": "zz"}, format="json")
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"artifact_size", "artifact_sha256"}

    response = client.post(url, {"version": "one", "artifact_size": 10, "artifact_sha256": SHA}, format="json")
    assert response.status_code == 400 and "semantic version" in response.json()["error"]["fields"]["version"][0]

    response = client.post(
        url, {"version": "1.0.0", "artifact_size": 3 * 1024**3, "artifact_sha256": SHA}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["artifact_size"] == [
        "The artifact is 3.0 GiB; the limit is 2.0 GiB (2147483648 bytes)."
    ]
    assert not listing.versions.exists()


def test_version_create_returns_upload_instructions_and_complete_waits_for_the_file(publisher, client_for, s3):
    user, org = publisher
    listing = _listing(org, user)
    client = client_for(user)
    response = client.post(
        f"/api/v1/publisher/listings/{listing.slug}/versions",
        {"version": "1.0.0", "artifact_size": 10, "artifact_sha256": SHA, "sample_input": {"x": [[1.0]]}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["version"]["status"] == "uploading" and body["version"]["sample_input"] == {"x": [[1.0]]}
    assert body["upload"]["mode"] == "post" and body["upload"]["fields"]["key"]
    version_id = body["version"]["id"]

    response = client.get(f"/api/v1/versions/{version_id}/upload")
    assert response.status_code == 200 and response.json()["mode"] == "post"

    response = client.post(f"/api/v1/versions/{version_id}/complete", {}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "upload_missing"

    response = client.post(f"/api/v1/versions/{version_id}/submit")
    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"

    response = client.post(f"/api/v1/versions/{version_id}/withdraw", {"reason": "Wrong file"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "withdrawn" and response.json()["status_reason"] == "Wrong file"
    assert client.get(f"/api/v1/versions/{version_id}/upload").status_code == 409


def test_openapi_schema_lists_the_publishing_routes(client_for, publisher):
    user, _ = publisher
    response = client_for(user).get("/api/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/publisher/listings",
        "/api/v1/publisher/listings/{slug}/versions",
        "/api/v1/versions/{version_id}/complete",
        "/api/v1/versions/{version_id}",
    ):
        assert path in paths


def test_deprecate_moves_a_published_version_and_only_for_the_organization(client_for, publisher, make_user):
    user, org = publisher
    listing = _listing(org, user)
    version = _version_row(listing, status=VersionStatus.PUBLISHED)

    outsider = make_user()
    assert client_for(outsider).post(f"/api/v1/versions/{version.pk}/deprecate").status_code == 404

    response = client_for(user).post(f"/api/v1/versions/{version.pk}/deprecate")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "deprecated"
    version.refresh_from_db()
    assert version.status == VersionStatus.DEPRECATED

    response = client_for(user).post(f"/api/v1/versions/{version.pk}/deprecate")
    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"
