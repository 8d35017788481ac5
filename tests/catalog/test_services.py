"""Publishing services: permissions, input rules, the status machine and the stable channel.

Services that reach object storage run against the real SeaweedFS started by the `s3` fixture.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest

from accounts.models import Role
from catalog import services
from catalog.models import Listing, ListingStatus, UploadMode, Version, VersionStatus
from marketplace.errors import ApplicationError, Conflict, Forbidden
from moderation.models import AuditAction, AuditLogEntry

SHA = "a" * 64


def _listing(org, user, **overrides) -> Listing:
    fields = {
        "organization": org,
        "user": user,
        "name": "Clinical NER",
        "summary": "Finds drug names in clinical notes.",
        "domain": "healthcare",
        "task": "token-classification",
        "tags": ["NER", "clinical", "ner "],
        "license": "apache-2.0",
    }
    fields.update(overrides)
    return services.listing_create(**fields)


def _version_row(listing: Listing, number: str, status: str, **extra) -> Version:
    """A version row in a given state, for tests of the later moves (the upload path is tested separately)."""
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
        **extra,
    )


def _audit_actions(**filters) -> list[str]:
    return list(AuditLogEntry.objects.filter(**filters).order_by("id").values_list("action", flat=True))


# --- listings ------------------------------------------------------------------------------------


def test_listing_create_normalises_tags_generates_unique_slugs_and_audits(publisher):
    user, org = publisher
    first = _listing(org, user)
    second = _listing(org, user)

    assert first.slug == "clinical-ner"
    assert second.slug == "clinical-ner-2"
    assert sorted(first.tags.values_list("name", flat=True)) == ["clinical", "ner"]
    assert first.status == ListingStatus.DRAFT and first.created_by == user
    assert _audit_actions(listing=first) == [AuditAction.LISTING_CREATED]


def test_listing_create_is_for_owners_and_admins_only(publisher, make_user, make_org):
    user, org = publisher
    member = make_user()
    from accounts.models import Membership

    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    outsider = make_user()
    make_org(owner=outsider)

    for who in (member, outsider):
        with pytest.raises(Forbidden):
            _listing(org, who)
    assert not Listing.objects.exists()

    admin = make_user()
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    assert _listing(org, admin).organization == org


def test_listing_create_rejects_bad_fields_with_messages_per_field(publisher):
    user, org = publisher
    with pytest.raises(ApplicationError) as exc:
        _listing(org, user, name="  ", summary="", domain="astrology", tags=["ok", "<script>"])
    assert set(exc.value.fields) == {"name", "summary", "domain", "tags"}

    with pytest.raises(ApplicationError) as exc:
        _listing(org, user, license="custom", license_text="  ")
    assert "license_text" in exc.value.fields

    _listing(org, user, slug="my-model")
    for slug in ("my-model", "new", "Not A Slug"):
        with pytest.raises(ApplicationError) as exc:
            _listing(org, user, slug=slug)
        assert "slug" in exc.value.fields
    assert Listing.objects.count() == 1


def test_listing_update_changes_fields_keeps_slug_and_audits_changes(publisher, make_user):
    user, org = publisher
    listing = _listing(org, user, license="custom", license_text="Terms v1")
    updated = services.listing_update(listing=listing, user=user, summary="Better summary.", tags=["drugs"])

    assert updated.summary == "Better summary." and updated.slug == listing.slug
    assert list(updated.tags.values_list("name", flat=True)) == ["drugs"]
    entry = AuditLogEntry.objects.filter(action=AuditAction.LISTING_UPDATED).get()
    assert sorted(entry.data["fields"]) == ["summary", "tags"]

    # Nothing changed: no audit row.
    services.listing_update(listing=updated, user=user, summary="Better summary.")
    assert AuditLogEntry.objects.filter(action=AuditAction.LISTING_UPDATED).count() == 1

    with pytest.raises(ApplicationError) as exc:
        services.listing_update(listing=updated, user=user, license_text="")
    assert "license_text" in exc.value.fields
    with pytest.raises(ApplicationError) as exc:
        services.listing_update(listing=updated, user=user, slug="other", status="published")
    assert set(exc.value.fields) == {"slug", "status"}
    with pytest.raises(Forbidden):
        services.listing_update(listing=updated, user=make_user(), summary="Hijacked")


# --- versions: input rules -----------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1.0.0", "0.1.2", "2.0.0-rc.1", "10.20.30-alpha-1.beta"])
def test_semver_accepts(number):
    assert services.semver_parse(number)[0] == int(number.split(".")[0])


@pytest.mark.parametrize("number", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0+build", "", "1.0.0-rc..1"])
def test_semver_rejects(number):
    with pytest.raises(ApplicationError) as exc:
        services.semver_parse(number)
    assert "version" in exc.value.fields


def test_semver_order_puts_a_release_above_its_prereleases(publisher):
    user, org = publisher
    listing = _listing(org, user)
    rows = [_version_row(listing, n, VersionStatus.READY) for n in ("1.0.0-rc.2", "1.0.0", "1.0.0-rc.10", "0.9.9")]
    ordered = [v.version for v in sorted(rows, key=services.semver_sort_key)]
    assert ordered == ["0.9.9", "1.0.0-rc.2", "1.0.0-rc.10", "1.0.0"]


def test_version_create_checks_number_size_and_checksum_before_touching_storage(publisher, settings):
    user, org = publisher
    listing = _listing(org, user)
    settings.ARTIFACT_MAX_BYTES = 1000

    def create(**overrides):
        fields = {"listing": listing, "user": user, "version": "1.0.0", "artifact_size": 10, "artifact_sha256": SHA}
        fields.update(overrides)
        return services.version_create(**fields)

    with pytest.raises(ApplicationError) as exc:
        create(artifact_size=1001)
    assert exc.value.fields["artifact_size"] == ["The artifact is 1001 bytes; the limit is 1000 bytes."]
    with pytest.raises(ApplicationError) as exc:
        create(artifact_size=0)
    assert "artifact_size" in exc.value.fields
    with pytest.raises(ApplicationError) as exc:
        create(artifact_sha256="xyz")
    assert "artifact_sha256" in exc.value.fields
    with pytest.raises(ApplicationError) as exc:
        create(version="1.0")
    assert "version" in exc.value.fields
    with pytest.raises(ApplicationError) as exc:
        create(sample_input="[1, 2")
    assert "sample_input" in exc.value.fields
    with pytest.raises(ApplicationError) as exc:
        create(sample_input=[[1.0]])
    assert "sample_input" in exc.value.fields

    _version_row(listing, "1.0.0", VersionStatus.INVALID)
    with pytest.raises(ApplicationError) as exc:
        create()
    assert exc.value.fields["version"] == ["Version 1.0.0 already exists for this listing; choose a new number."]
    assert listing.versions.count() == 1


def test_version_create_is_for_managers_only(publisher, make_user):
    user, org = publisher
    listing = _listing(org, user)
    with pytest.raises(Forbidden):
        services.version_create(
            listing=listing, user=make_user(), version="1.0.0", artifact_size=10, artifact_sha256=SHA
        )


def test_version_create_presigned_post_for_small_files(publisher, s3):
    user, org = publisher
    listing = _listing(org, user)
    version, upload = services.version_create(
        listing=listing,
        user=user,
        version="1.0.0",
        changelog="First.",
        artifact_size=1234,
        artifact_sha256=SHA.upper(),
        sample_input='{"x": [[1.0]]}',
    )

    assert version.status == VersionStatus.UPLOADING and version.upload_mode == UploadMode.POST
    assert version.artifact_sha256 == SHA and version.sample_input == {"x": [[1.0]]}
    assert version.artifact_key.startswith(f"artifacts/{listing.pk}/") and version.artifact_key.endswith("/model.onnx")
    assert upload["mode"] == "post" and upload["url"].startswith("http")
    assert upload["fields"]["key"] == version.artifact_key
    assert _audit_actions(version=version) == [AuditAction.VERSION_CREATED]


def test_version_create_multipart_above_the_threshold(publisher, s3, settings):
    user, org = publisher
    listing = _listing(org, user)
    settings.UPLOAD_MULTIPART_THRESHOLD = 1000
    settings.UPLOAD_PART_SIZE = 5 * 1024 * 1024
    size = 12 * 1024 * 1024
    version, upload = services.version_create(
        listing=listing, user=user, version="1.0.0", artifact_size=size, artifact_sha256=SHA
    )

    assert version.upload_mode == UploadMode.MULTIPART and version.upload_id
    assert upload["mode"] == "multipart" and upload["upload_id"] == version.upload_id
    assert upload["part_size"] == 5 * 1024 * 1024
    assert [p["part_number"] for p in upload["parts"]] == [1, 2, 3]
    assert all(p["url"].startswith("http") for p in upload["parts"])


# --- versions: upload completion -----------------------------------------------------------------


def test_upload_complete_before_the_file_arrived_is_a_409_and_changes_nothing(publisher, s3):
    user, org = publisher
    listing = _listing(org, user)
    version, _ = services.version_create(
        listing=listing, user=user, version="1.0.0", artifact_size=10, artifact_sha256=SHA
    )

    with pytest.raises(Conflict) as exc:
        services.version_upload_complete(version=version, user=user)
    assert exc.value.code == "upload_missing" and "has not arrived yet" in exc.value.message
    version.refresh_from_db()
    assert version.status == VersionStatus.UPLOADING and version.upload_completed_at is None


def test_upload_complete_with_a_different_size_makes_the_version_invalid(publisher, s3, tmp_path):
    from marketplace.integrations import s3 as storage

    user, org = publisher
    listing = _listing(org, user)
    data = b"not the declared size"
    version, _ = services.version_create(
        listing=listing, user=user, version="1.0.0", artifact_size=len(data) + 5, artifact_sha256=SHA
    )
    source = tmp_path / "model.onnx"
    source.write_bytes(data)
    storage.object_upload(key=version.artifact_key, source=source)

    version = services.version_upload_complete(version=version, user=user)
    assert version.status == VersionStatus.INVALID
    assert f"{len(data)} bytes but {len(data) + 5} bytes were declared" in version.status_reason
    assert version.validation_report["ok"] is False
    assert _audit_actions(version=version) == [AuditAction.VERSION_CREATED, AuditAction.VERSION_INVALID]
    # Calling complete again is harmless.
    assert services.version_upload_complete(version=version, user=user).status == VersionStatus.INVALID


def test_upload_complete_moves_to_validating_once_and_enqueues_on_commit(
    publisher, s3, tmp_path, django_capture_on_commit_callbacks
):
    from marketplace.integrations import s3 as storage

    user, org = publisher
    listing = _listing(org, user)
    data = b"0123456789"
    version, _ = services.version_create(
        listing=listing,
        user=user,
        version="1.0.0",
        artifact_size=len(data),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
    )
    (tmp_path / "m").write_bytes(data)
    storage.object_upload(key=version.artifact_key, source=tmp_path / "m")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        version = services.version_upload_complete(version=version, user=user)
    assert version.status == VersionStatus.VALIDATING and version.upload_completed_at is not None
    assert len(callbacks) == 1

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        again = services.version_upload_complete(version=version, user=user)
    assert again.status == VersionStatus.VALIDATING and callbacks == []
    assert _audit_actions(version=version) == [AuditAction.VERSION_CREATED, AuditAction.VERSION_UPLOADED]


def test_upload_complete_after_withdrawal_is_a_conflict(publisher, s3):
    user, org = publisher
    listing = _listing(org, user)
    version, _ = services.version_create(
        listing=listing, user=user, version="1.0.0", artifact_size=10, artifact_sha256=SHA
    )
    services.version_withdraw(version=version, actor=user, reason="Wrong file")
    with pytest.raises(Conflict) as exc:
        services.version_upload_complete(version=version, user=user)
    assert exc.value.code == "invalid_state"


# --- validation verdicts -------------------------------------------------------------------------


def test_validation_finish_stores_the_verdict_once(publisher):
    user, org = publisher
    listing = _listing(org, user)
    version = _version_row(listing, "1.0.0", VersionStatus.VALIDATING)
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}
    report = {"ok": True, "reason": None, "steps": [], "signature": signature, "metrics": {"p50_ms_b1": 0.1}}

    services.version_validation_finish(version_id=version.pk, report=report)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY and version.signature == signature
    assert version.validated_at is not None and version.metrics == {"p50_ms_b1": 0.1}

    # A second delivery of the task body changes nothing.
    assert services.version_validation_finish(version_id=version.pk, report={"ok": False, "reason": "x"}) is None
    services.version_validate(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY
    assert _audit_actions(version=version) == [AuditAction.VERSION_VALIDATED]


def test_validation_failure_keeps_the_reason(publisher):
    user, org = publisher
    listing = _listing(org, user)
    version = _version_row(listing, "1.0.0", VersionStatus.VALIDATING)
    services.version_validation_finish(
        version_id=version.pk,
        report={"ok": False, "reason": "Not an ONNX file: it is a Python pickle.", "steps": []},
    )
    version.refresh_from_db()
    assert version.status == VersionStatus.INVALID
    assert version.status_reason == "Not an ONNX file: it is a Python pickle."
    assert _audit_actions(version=version) == [AuditAction.VERSION_INVALID]


# --- review, publish, withdraw ------------------------------------------------------------------


def test_submit_only_from_ready_and_only_by_managers(publisher, make_user):
    user, org = publisher
    listing = _listing(org, user)
    validating = _version_row(listing, "1.0.0", VersionStatus.VALIDATING)
    with pytest.raises(Conflict) as exc:
        services.version_submit(version=validating, user=user)
    assert "cannot become in review" in exc.value.message

    ready = _version_row(listing, "1.1.0", VersionStatus.READY)
    with pytest.raises(Forbidden):
        services.version_submit(version=ready, user=make_user())
    submitted = services.version_submit(version=ready, user=user)
    assert submitted.status == VersionStatus.IN_REVIEW and submitted.submitted_at is not None
    assert _audit_actions(version=ready) == [AuditAction.VERSION_SUBMITTED]


def test_publish_sets_the_current_version_to_the_highest_release(publisher, staff_user):
    user, org = publisher
    listing = _listing(org, user)
    v1 = _version_row(listing, "1.0.0", VersionStatus.APPROVED)
    v2 = _version_row(listing, "1.2.0", VersionStatus.APPROVED)
    v11 = _version_row(listing, "1.1.0", VersionStatus.APPROVED)
    rc = _version_row(listing, "2.0.0-rc.1", VersionStatus.APPROVED)

    services.version_publish(version=v1, actor=staff_user)
    listing.refresh_from_db()
    assert listing.status == ListingStatus.PUBLISHED and listing.published_at is not None
    assert listing.current_version == v1

    services.version_publish(version=v2, actor=staff_user)
    services.version_publish(version=v11, actor=staff_user)  # an older number published later
    services.version_publish(version=rc, actor=staff_user)  # pre-releases never take the stable channel
    listing.refresh_from_db()
    assert listing.current_version == v2
    assert _audit_actions(version=v2) == [AuditAction.VERSION_PUBLISHED]

    with pytest.raises(Conflict):
        services.version_publish(version=v2, actor=staff_user)  # already published


def test_publish_requires_approval(publisher, staff_user):
    user, org = publisher
    listing = _listing(org, user)
    with pytest.raises(Conflict):
        services.version_publish(version=_version_row(listing, "1.0.0", VersionStatus.IN_REVIEW), actor=staff_user)
    listing.refresh_from_db()
    assert listing.status == ListingStatus.DRAFT and listing.current_version is None


def test_withdraw_moves_the_stable_channel_down_and_empties_the_listing(publisher, staff_user, make_user):
    user, org = publisher
    listing = _listing(org, user)
    v1 = _version_row(listing, "1.0.0", VersionStatus.APPROVED)
    v2 = _version_row(listing, "2.0.0", VersionStatus.APPROVED)
    services.version_publish(version=v1, actor=staff_user)
    services.version_publish(version=v2, actor=staff_user)

    with pytest.raises(Forbidden):
        services.version_withdraw(version=v2, actor=make_user(), reason="Not mine")

    services.version_withdraw(version=v2, actor=user, reason="Regression in 2.0")
    listing.refresh_from_db()
    assert listing.current_version == v1 and listing.status == ListingStatus.PUBLISHED
    v2.refresh_from_db()
    assert v2.status == VersionStatus.WITHDRAWN and v2.status_reason == "Regression in 2.0"

    services.version_withdraw(version=v1, actor=staff_user, reason="Takedown")  # staff may withdraw too
    listing.refresh_from_db()
    assert listing.current_version is None and listing.status == ListingStatus.DRAFT
    with pytest.raises(Conflict):
        services.version_withdraw(version=v1, actor=user, reason="again")
    assert _audit_actions(action=AuditAction.VERSION_WITHDRAWN) == [AuditAction.VERSION_WITHDRAWN] * 2


def test_deprecate_keeps_the_version_servable_but_prefers_published_ones(publisher, staff_user):
    user, org = publisher
    listing = _listing(org, user)
    v1 = _version_row(listing, "1.0.0", VersionStatus.APPROVED)
    v2 = _version_row(listing, "2.0.0", VersionStatus.APPROVED)
    services.version_publish(version=v1, actor=staff_user)
    services.version_publish(version=v2, actor=staff_user)

    services.version_deprecate(version=v2, user=user)
    listing.refresh_from_db()
    assert listing.current_version == v1
    services.version_deprecate(version=v1, user=user)
    listing.refresh_from_db()
    # Only deprecated versions left: the listing stays up for pinned buyers, on the highest one.
    assert listing.status == ListingStatus.PUBLISHED and listing.current_version == v2
    with pytest.raises(Conflict):
        services.version_deprecate(version=_version_row(listing, "3.0.0", VersionStatus.READY), user=user)


def test_part_size_grows_so_no_upload_needs_more_than_10000_parts(settings):
    settings.UPLOAD_PART_SIZE = 5 * 1024 * 1024
    assert services.upload_part_size(artifact_size=100 * 1024 * 1024) == 5 * 1024 * 1024
    huge = 100 * 1024**3
    assert services.upload_part_size(artifact_size=huge) * 10_000 >= huge


def test_storage_outage_during_validation_leaves_the_version_validating_for_a_retry(publisher, s3, settings):
    from catalog.tasks import version_validate as version_validate_task
    from marketplace.integrations.s3 import StorageUnavailable
    from tests.inference.onnx_factories import onnx_classifier_bytes

    user, org = publisher
    listing = _listing(org, user)
    data = onnx_classifier_bytes()
    version, _ = services.version_create(
        listing=listing,
        user=user,
        version="1.0.0",
        artifact_size=len(data),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
    )
    s3.put(version.artifact_key, data)
    version = services.version_upload_complete(version=version, user=user)  # (`db` tests never run on_commit)

    endpoint = settings.S3_ENDPOINT_URL
    settings.S3_ENDPOINT_URL = "http://127.0.0.1:9"  # nothing listens there
    with pytest.raises(StorageUnavailable):
        services.version_validate(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.VALIDATING and version.status_reason == ""
    # The task retries exactly this error, with backoff.
    assert version_validate_task.autoretry_for == (StorageUnavailable,)
    assert version_validate_task.retry_backoff and version_validate_task.max_retries == 5

    settings.S3_ENDPOINT_URL = endpoint  # storage is back: the retry finishes the job
    services.version_validate(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY
    assert version.signature["inputs"][0]["name"] == "input"
    assert [s["status"] for s in version.validation_report["steps"]] == ["passed"] * 10
