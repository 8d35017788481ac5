"""Publisher pages: rendering, forms through the services, and 404 for anyone who does not manage the org."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Membership, Role
from catalog import services
from catalog.models import Listing, Version, VersionStatus


@pytest.fixture
def listing(publisher) -> Listing:
    user, org = publisher
    return services.listing_create(
        organization=org,
        user=user,
        name="Iris Classifier",
        summary="Tells iris species apart.",
        domain="science",
        task="classification",
        tags=["iris"],
        license="apache-2.0",
    )


def _version(listing, status, **extra) -> Version:
    return Version.objects.create(
        listing=listing,
        version="1.0.0",
        major=1,
        status=status,
        artifact_key=f"artifacts/{listing.pk}/{uuid.uuid4().hex}/model.onnx",
        artifact_size=2048,
        artifact_sha256="c" * 64,
        **extra,
    )


def test_dashboard_lists_my_listings_with_version_badges(client, publisher, listing):
    user, _ = publisher
    _version(listing, VersionStatus.INVALID, status_reason="Not ONNX")
    client.force_login(user)
    page = client.get("/publish/").content.decode()
    assert "Iris Classifier" in page and "badge-bad" in page and "Failed validation" not in page
    assert "Invalid" in page and "/publish/versions/" in page


def test_dashboard_explains_when_there_is_nothing_to_manage(client, make_user, make_org, publisher):
    _, org = publisher
    lonely = make_user()
    client.force_login(lonely)
    assert "not in an organization" in client.get("/publish/").content.decode()
    member = make_user()
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    client.force_login(member)
    assert "Only owners and admins publish" in client.get("/publish/").content.decode()
    assert client.get("/publish/listings/new/").status_code == 404


def test_dashboard_needs_login(client):
    response = client.get("/publish/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_create_listing_form(client, publisher):
    user, org = publisher
    client.force_login(user)
    assert client.get("/publish/listings/new/").status_code == 200

    response = client.post("/publish/listings/new/", {"name": "X", "summary": "", "domain": "vision"})
    assert response.status_code == 200 and "errorlist" in response.content.decode()

    response = client.post(
        "/publish/listings/new/",
        {
            "name": "Custom",
            "summary": "S",
            "domain": "vision",
            "task": "detection",
            "license": "custom",
            "tags": "a, b",
        },
    )
    assert response.status_code == 200
    assert "A custom license needs its full terms" in response.content.decode()

    response = client.post(
        "/publish/listings/new/",
        {
            "name": "Defect Finder",
            "summary": "Finds defects.",
            "domain": "industry",
            "task": "detection",
            "license": "mit",
            "tags": "steel, QA",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/publish/listings/defect-finder/versions/new/"
    listing = Listing.objects.get(slug="defect-finder")
    assert listing.organization == org and sorted(listing.tags.values_list("name", flat=True)) == ["qa", "steel"]


def test_manage_page_edits_and_shows_versions(client, publisher, listing):
    user, _ = publisher
    _version(listing, VersionStatus.READY)
    client.force_login(user)
    page = client.get(f"/publish/listings/{listing.slug}/").content.decode()
    assert "1.0.0" in page and "Ready for review" in page and "New version" in page

    response = client.post(
        f"/publish/listings/{listing.slug}/",
        {
            "name": "Iris Classifier",
            "summary": "Better.",
            "domain": "science",
            "task": "classification",
            "license": "apache-2.0",
            "tags": "iris",
        },
    )
    assert response.status_code == 302
    listing.refresh_from_db()
    assert listing.summary == "Better."


def test_new_version_page_wires_the_upload_script(client, publisher, listing):
    user, _ = publisher
    client.force_login(user)
    page = client.get(f"/publish/listings/{listing.slug}/versions/new/").content.decode()
    assert "data-version-upload" in page and "js/upload.js" in page
    assert f'data-create-url="/api/v1/publisher/listings/{listing.slug}/versions"' in page
    assert 'data-complete-url-template="/api/v1/versions/{id}/complete"' in page
    assert 'value="1.0.0"' in page


def test_version_page_shows_progress_live_and_the_verdict(client, publisher, listing):
    user, _ = publisher
    client.force_login(user)
    steps = [{"key": "size", "label": "File size", "status": "passed", "detail": "2 KB", "duration_ms": 1.0}]
    version = _version(listing, VersionStatus.VALIDATING, validation_report={"ok": None, "steps": steps})
    page = client.get(f"/publish/versions/{version.pk}/").content.decode()
    assert "data-version-status" in page and "js/upload.js" in page and "File size" in page
    assert "Submit for review" not in page

    Version.objects.filter(pk=version.pk).update(
        status=VersionStatus.READY,
        signature={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        },
        validation_report={"ok": True, "steps": steps, "metrics": {"p50_ms_b1": 0.2}},
    )
    page = client.get(f"/publish/versions/{version.pk}/").content.decode()
    assert "Submit for review" in page and "js/upload.js" not in page
    assert "<code>input</code>" in page and "[N, 4]" in page and "Latency p50, batch 1" in page

    response = client.post(f"/publish/versions/{version.pk}/submit/")
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.status == VersionStatus.IN_REVIEW

    # A second submit shows the conflict as a message instead of failing.
    response = client.post(f"/publish/versions/{version.pk}/submit/", follow=True)
    assert "cannot become in review" in response.content.decode()


def test_invalid_version_page_says_why(client, publisher, listing):
    user, _ = publisher
    client.force_login(user)
    version = _version(listing, VersionStatus.INVALID, status_reason="This is a Python pickle, not ONNX.")
    page = client.get(f"/publish/versions/{version.pk}/").content.decode()
    assert "failed validation" in page and "This is a Python pickle, not ONNX." in page


def test_pages_are_404_for_members_and_strangers(client, make_user, make_org, publisher, listing):
    _, org = publisher
    version = _version(listing, VersionStatus.READY)
    member = make_user()
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    stranger = make_user()
    make_org(owner=stranger)
    for user in (member, stranger):
        client.force_login(user)
        for url in (
            f"/publish/listings/{listing.slug}/",
            f"/publish/listings/{listing.slug}/versions/new/",
            f"/publish/versions/{version.pk}/",
        ):
            assert client.get(url).status_code == 404, url
        assert client.post(f"/publish/versions/{version.pk}/submit/").status_code == 404
    version.refresh_from_db()
    assert version.status == VersionStatus.READY


def _publisher_seed(*, org, user, listings: int, versions: int) -> Listing:
    from billing.models import Plan

    first = None
    for i in range(listings):
        listing = services.listing_create(
            organization=org,
            user=user,
            name=f"Bulk model {uuid.uuid4().hex[:8]}",
            summary="Seeded for query counts.",
            domain="science",
            task="classification",
            tags=["bulk", f"t{i}"],
            license="apache-2.0",
        )
        for v in range(versions):
            Version.objects.create(
                listing=listing,
                version=f"1.{v}.0",
                major=1,
                minor=v,
                status=VersionStatus.READY,
                artifact_key=f"artifacts/{listing.pk}/{uuid.uuid4().hex}/model.onnx",
                artifact_size=2048,
                artifact_sha256="c" * 64,
            )
            Plan.objects.create(listing=listing, name=f"Free {v}", kind="free")
        first = first or listing
    assert first is not None
    return first


def test_publisher_pages_use_a_constant_number_of_queries(client, publisher, django_assert_max_num_queries):
    user, org = publisher
    client.force_login(user)
    listing = _publisher_seed(org=org, user=user, listings=1, versions=1)
    urls = ["/publish/", f"/publish/listings/{listing.slug}/"]
    for url in urls:
        assert client.get(url).status_code == 200  # warm up session and per-process caches
    few = {}
    for url in urls:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        few[url] = len(ctx.captured_queries)

    _publisher_seed(org=org, user=user, listings=4, versions=4)
    for i in range(4):
        Version.objects.create(
            listing=listing,
            version=f"2.{i}.0",
            major=2,
            minor=i,
            status=VersionStatus.READY,
            artifact_key=f"artifacts/{listing.pk}/{uuid.uuid4().hex}/model.onnx",
            artifact_size=2048,
            artifact_sha256="c" * 64,
        )
    for url in urls:
        with django_assert_max_num_queries(few[url]):
            client.get(url)
