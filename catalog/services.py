"""Writes for listings and versions: the publisher flow from listing to published version.

Every function is keyword-only, runs in one transaction and writes an audit row for each state
change in that same transaction. Object storage is reached only through
``marketplace.integrations.s3``; the web process never handles artifact bytes.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import Organization, User
from accounts.selectors import user_can_manage
from catalog.models import (
    Domain,
    LicenseTemplate,
    Listing,
    ListingStatus,
    Tag,
    Task,
    UploadMode,
    Version,
    VersionStatus,
)
from catalog.search import listing_search_document_update
from catalog.states import version_move
from marketplace.errors import ApplicationError, Conflict, Forbidden
from marketplace.integrations import s3 as storage
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)


SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9 +#._-]*$")
MAX_TAGS = 12
# Slugs that would shadow fixed URLs such as /publish/listings/new/.
RESERVED_SLUGS = {"new", "search", "api", "admin", "publish", "edit"}
SAMPLE_INPUT_MAX_CHARS = 1_000_000
ARTIFACT_CONTENT_TYPE = "application/octet-stream"
MULTIPART_MAX_PARTS = 10_000

LISTING_EDITABLE_FIELDS = ("name", "summary", "model_card", "domain", "task", "tags", "license", "license_text")


def _invalid(field: str, message: str) -> ApplicationError:
    return ApplicationError(message, code="invalid", fields={field: [message]})


def _require_manager(*, user: User, organization: Organization) -> None:
    if not user_can_manage(user=user, organization=organization):
        raise Forbidden("Only owners and admins of the organization may change its listings.")


def size_human(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{num_bytes} bytes"  # pragma: no cover


# --- semantic versions ------------------------------------------------------------------------


def semver_parse(value: str) -> tuple[int, int, int, str]:
    match = SEMVER_RE.match(value or "")
    if match is None:
        raise _invalid(
            "version", f"“{value}” is not a semantic version; use major.minor.patch, e.g. 1.2.0 or 2.0.0-rc.1."
        )
    major, minor, patch, prerelease = match.groups()
    return int(major), int(minor), int(patch), prerelease or ""


def semver_sort_key(version: Version) -> tuple[Any, ...]:
    """Semver precedence: a release outranks its pre-releases; numeric identifiers sort below text."""
    if not version.prerelease:
        pre: tuple[Any, ...] = (1,)
    else:
        idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.prerelease.split("."))
        pre = (0, idents)
    return (version.major, version.minor, version.patch, pre)


# --- listings ---------------------------------------------------------------------------------


def _tags_clean(tags: list[str]) -> list[str]:
    if isinstance(tags, str):
        tags = [t for t in tags.split(",")]
    cleaned: list[str] = []
    for raw in tags:
        tag = " ".join(str(raw).strip().lower().split())
        if not tag:
            continue
        if len(tag) > 40 or not TAG_RE.match(tag):
            raise _invalid(
                "tags", f"“{tag[:40]}” is not a valid tag: use up to 40 letters, digits, spaces or - _ . + #."
            )
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise _invalid("tags", f"Use at most {MAX_TAGS} tags.")
    return cleaned


def _listing_fields_validate(fields: dict[str, Any]) -> None:
    """Check the editable listing fields that are present; raise one error with every bad field."""
    errors: dict[str, list[str]] = {}
    if "name" in fields:
        name = (fields["name"] or "").strip()
        if not name:
            errors["name"] = ["Give the listing a name."]
        elif len(name) > 120:
            errors["name"] = ["Use at most 120 characters."]
        fields["name"] = name
    if "summary" in fields:
        summary = (fields["summary"] or "").strip()
        if not summary:
            errors["summary"] = ["Write a one-line summary of what the model does."]
        elif len(summary) > 280:
            errors["summary"] = ["Use at most 280 characters."]
        fields["summary"] = summary
    if "model_card" in fields:
        fields["model_card"] = fields["model_card"] or ""
    if "domain" in fields and fields["domain"] not in Domain.values:
        errors["domain"] = [f"Choose one of: {', '.join(Domain.values)}."]
    if "task" in fields and fields["task"] not in Task.values:
        errors["task"] = [f"Choose one of: {', '.join(Task.values)}."]
    if "license" in fields and fields["license"] not in LicenseTemplate.values:
        errors["license"] = [f"Choose one of: {', '.join(LicenseTemplate.values)}."]
    if "license_text" in fields:
        fields["license_text"] = (fields["license_text"] or "").strip()
    if "tags" in fields:
        try:
            fields["tags"] = _tags_clean(fields["tags"] or [])
        except ApplicationError as exc:
            errors.update(exc.fields)
    if errors:
        raise ApplicationError("Some fields are invalid.", code="invalid", fields=errors)


def _license_text_check(*, license: str, license_text: str) -> None:
    if license == LicenseTemplate.CUSTOM and not license_text:
        raise _invalid("license_text", "A custom license needs its full terms in the license text.")


def _slug_available(slug: str) -> str:
    base = (slugify(slug)[:70].strip("-")) or "listing"
    candidate, n = base, 1
    while candidate in RESERVED_SLUGS or Listing.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _tags_set(*, listing: Listing, tags: list[str]) -> None:
    objs = [Tag.objects.get_or_create(name=name)[0] for name in tags]
    listing.tags.set(objs)


@transaction.atomic
def listing_create(
    *,
    organization: Organization,
    user: User,
    name: str,
    summary: str,
    model_card: str = "",
    domain: str,
    task: str,
    tags: list[str],
    license: str,
    license_text: str = "",
    slug: str | None = None,
) -> Listing:
    _require_manager(user=user, organization=organization)
    fields: dict[str, Any] = {
        "name": name,
        "summary": summary,
        "model_card": model_card,
        "domain": domain,
        "task": task,
        "tags": tags,
        "license": license,
        "license_text": license_text,
    }
    _listing_fields_validate(fields)
    _license_text_check(license=fields["license"], license_text=fields["license_text"])

    if slug:
        slug = slug.strip().lower()
        if len(slug) > 80 or slugify(slug) != slug:
            raise _invalid("slug", "Use lowercase letters, digits and hyphens (at most 80).")
        if slug in RESERVED_SLUGS or Listing.objects.filter(slug=slug).exists():
            raise _invalid("slug", f"The address “{slug}” is taken; choose another.")
    else:
        slug = _slug_available(fields["name"])

    tag_names = fields.pop("tags")
    try:
        with transaction.atomic():
            listing = Listing.objects.create(organization=organization, created_by=user, slug=slug, **fields)
    except IntegrityError as exc:  # two publishers raced for the same slug
        raise _invalid("slug", f"The address “{slug}” is taken; choose another.") from exc
    _tags_set(listing=listing, tags=tag_names)
    listing_search_document_update(listing_ids=[listing.pk])
    audit_log_write(
        action=AuditAction.LISTING_CREATED,
        actor=user,
        listing=listing,
        data={"slug": listing.slug, "name": listing.name},
    )
    return listing


@transaction.atomic
def listing_update(*, listing: Listing, user: User, **fields: Any) -> Listing:
    """Change the editable fields given; the slug never changes (buyers' URLs and API calls use it)."""
    _require_manager(user=user, organization=listing.organization)
    unknown = sorted(set(fields) - set(LISTING_EDITABLE_FIELDS))
    if unknown:
        raise ApplicationError(
            f"These fields cannot be changed: {', '.join(unknown)}.",
            code="invalid",
            fields={name: ["This field cannot be changed."] for name in unknown},
        )
    listing = Listing.objects.select_for_update().get(pk=listing.pk)
    _listing_fields_validate(fields)
    _license_text_check(
        license=fields.get("license", listing.license), license_text=fields.get("license_text", listing.license_text)
    )

    changed: list[str] = []
    tag_names = fields.pop("tags", None)
    for name, value in fields.items():
        if getattr(listing, name) != value:
            setattr(listing, name, value)
            changed.append(name)
    if changed:
        listing.save(update_fields=[*changed, "updated_at"])
    if tag_names is not None and sorted(tag_names) != sorted(listing.tags.values_list("name", flat=True)):
        _tags_set(listing=listing, tags=tag_names)
        changed.append("tags")
    if changed:
        listing_search_document_update(listing_ids=[listing.pk])
        audit_log_write(action=AuditAction.LISTING_UPDATED, actor=user, listing=listing, data={"fields": changed})
    return listing


# --- versions: create and upload --------------------------------------------------------------


def _sample_input_clean(sample_input: Any) -> dict[str, Any] | None:
    if sample_input in (None, "", {}):
        return None
    if isinstance(sample_input, str):
        try:
            sample_input = json.loads(sample_input)
        except ValueError as exc:
            raise _invalid("sample_input", f"This is not valid JSON: {exc}.") from exc
    if not isinstance(sample_input, dict) or not all(isinstance(k, str) and k for k in sample_input):
        raise _invalid(
            "sample_input", 'Give a JSON object mapping input names to nested lists, e.g. {"x": [[1.0, 2.0]]}.'
        )
    if len(json.dumps(sample_input)) > SAMPLE_INPUT_MAX_CHARS:
        raise _invalid("sample_input", "The sample input is too large; keep it under 1 MB of JSON.")
    return sample_input


def upload_part_size(*, artifact_size: int) -> int:
    """UPLOAD_PART_SIZE, grown when needed so no upload needs more than S3's 10,000 parts."""
    return max(settings.UPLOAD_PART_SIZE, math.ceil(artifact_size / MULTIPART_MAX_PARTS))


def version_upload_instructions(*, version: Version) -> dict[str, Any]:
    """Where and how the client sends the bytes: one presigned POST, or presigned multipart part URLs."""
    if version.upload_mode == UploadMode.POST:
        # Storage accepts exactly the declared size, so a different file fails at upload time.
        post = storage.presigned_post_create(
            key=version.artifact_key,
            min_bytes=version.artifact_size,
            max_bytes=version.artifact_size,
            content_type=ARTIFACT_CONTENT_TYPE,
        )
        return {"mode": "post", "url": post["url"], "fields": post["fields"]}
    part_size = upload_part_size(artifact_size=version.artifact_size)
    part_count = max(1, math.ceil(version.artifact_size / part_size))
    parts = storage.multipart_part_urls(key=version.artifact_key, upload_id=version.upload_id, part_count=part_count)
    return {"mode": "multipart", "upload_id": version.upload_id, "part_size": part_size, "parts": parts}


def _version_exists(version: str) -> ApplicationError:
    return _invalid("version", f"Version {version} already exists for this listing; choose a new number.")


def version_number_new(*, listing: Listing, version: str) -> dict[str, Any]:
    """A new version number of the listing as Version fields (``version``, ``major`` ... ``prerelease``).

    Refuses a number that is not a semantic version or that the listing already has.
    """
    version = (version or "").strip()
    major, minor, patch, prerelease = semver_parse(version)
    if Version.objects.filter(listing=listing, version=version).exists():
        raise _version_exists(version)
    return {"version": version, "major": major, "minor": minor, "patch": patch, "prerelease": prerelease}


def artifact_key_new(*, listing: Listing) -> str:
    return f"artifacts/{listing.pk}/{uuid.uuid4().hex}/model.onnx"


def version_insert(row: Version) -> None:
    """Save a new version row; the same number created concurrently is the same field error."""
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError as exc:
        raise _version_exists(row.version) from exc


@transaction.atomic
def version_create(
    *,
    listing: Listing,
    user: User,
    version: str,
    changelog: str = "",
    artifact_size: int,
    artifact_sha256: str,
    sample_input: dict[str, Any] | None = None,
) -> tuple[Version, dict[str, Any]]:
    """Record a new version and return it with the upload instructions for its artifact."""
    _require_manager(user=user, organization=listing.organization)
    number = version_number_new(listing=listing, version=version)

    max_bytes = settings.ARTIFACT_MAX_BYTES
    if not isinstance(artifact_size, int) or artifact_size <= 0:
        raise _invalid("artifact_size", "Give the artifact's size in bytes (a positive whole number).")
    if artifact_size > max_bytes:
        exact = f" ({max_bytes} bytes)" if max_bytes >= 1024 else ""
        raise _invalid(
            "artifact_size",
            f"The artifact is {size_human(artifact_size)}; the limit is {size_human(max_bytes)}{exact}.",
        )
    sha256 = (artifact_sha256 or "").strip().lower()
    if not SHA256_RE.match(sha256):
        raise _invalid("artifact_sha256", "Give the artifact's SHA-256 as 64 hexadecimal characters.")
    sample = _sample_input_clean(sample_input)

    key = artifact_key_new(listing=listing)
    multipart = artifact_size > settings.UPLOAD_MULTIPART_THRESHOLD
    row = Version(
        listing=listing,
        created_by=user,
        **number,
        changelog=changelog or "",
        artifact_key=key,
        artifact_size=artifact_size,
        artifact_sha256=sha256,
        upload_mode=UploadMode.MULTIPART if multipart else UploadMode.POST,
        sample_input=sample,
    )
    if multipart:
        # Started before the row is saved: if storage is down the client gets a 503 and nothing is kept.
        row.upload_id = storage.multipart_create(key=key)
    version_insert(row)
    instructions = version_upload_instructions(version=row)
    audit_log_write(
        action=AuditAction.VERSION_CREATED,
        actor=user,
        version=row,
        data={"version": row.version, "artifact_size": artifact_size, "upload_mode": row.upload_mode},
    )
    return row, instructions


def _parts_clean(parts: Any) -> list[storage.Part]:
    if not parts or not isinstance(parts, list):
        raise _invalid("parts", "A multipart upload needs the list of parts: [{part_number, etag}, ...].")
    cleaned: dict[int, str] = {}
    for part in parts:
        if not isinstance(part, dict):
            raise _invalid("parts", "Each part is an object with part_number and etag.")
        number, etag = part.get("part_number"), part.get("etag") or part.get("ETag")
        if not isinstance(number, int) or not 1 <= number <= 10000 or not isinstance(etag, str) or not etag:
            raise _invalid(
                "parts", "Each part needs a part_number from 1 to 10000 and the ETag storage returned for it."
            )
        cleaned[number] = etag
    return [storage.Part(part_number=n, etag=cleaned[n]) for n in sorted(cleaned)]


def _version_mark_invalid(*, version: Version, reason: str, actor: Any = None, data: dict | None = None) -> None:
    version_move(version=version, to=VersionStatus.INVALID)
    version.status_reason = reason
    version.save(
        update_fields=[
            "status",
            "status_reason",
            "validation_report",
            "validated_at",
            "upload_completed_at",
            "signature",
            "updated_at",
        ]
    )
    audit_log_write(action=AuditAction.VERSION_INVALID, actor=actor, version=version, reason=reason, data=data or {})


@transaction.atomic
def version_upload_complete(*, version: Version, user: User, parts: list[dict[str, Any]] | None = None) -> Version:
    """The client says its upload finished: check the object and hand the version to the validation worker."""
    _require_manager(user=user, organization=version.listing.organization)
    version = Version.objects.select_for_update().select_related("listing").get(pk=version.pk)
    if version.status != VersionStatus.UPLOADING:
        if version.upload_completed_at is not None:
            return version  # a retried "complete": the first one already went through
        version_move(version=version, to=VersionStatus.VALIDATING)  # raises the 409 that explains the state

    head = storage.object_head(key=version.artifact_key)
    if version.upload_mode == UploadMode.MULTIPART and head is None:
        cleaned = _parts_clean(parts)
        try:
            storage.multipart_complete(key=version.artifact_key, upload_id=version.upload_id, parts=cleaned)
        except storage.StorageUnavailable:
            raise
        except storage.StorageError as exc:
            raise _invalid("parts", f"Object storage could not assemble the parts: {exc}") from exc
        head = storage.object_head(key=version.artifact_key)
    if head is None:
        raise Conflict(
            "The upload has not arrived yet. Finish sending the file to object storage, then call complete again.",
            code="upload_missing",
        )

    version.upload_completed_at = timezone.now()
    if head["size"] != version.artifact_size:
        reason = (
            f"The uploaded file is {head['size']} bytes but {version.artifact_size} bytes were declared; "
            "upload the file again as a new version."
        )
        version.validation_report = {
            "ok": False,
            "reason": reason,
            "steps": [{"key": "size", "label": "Size", "status": "failed", "detail": reason, "duration_ms": 0}],
        }
        version.validated_at = timezone.now()
        _version_mark_invalid(
            version=version, reason=reason, actor=user, data={"declared": version.artifact_size, "actual": head["size"]}
        )
        return version

    version_move(version=version, to=VersionStatus.VALIDATING)
    version.validation_report = {"ok": None, "state": "queued", "steps": []}
    version.save(update_fields=["status", "upload_completed_at", "validation_report", "updated_at"])
    audit_log_write(action=AuditAction.VERSION_UPLOADED, actor=user, version=version, data={"size": head["size"]})

    from catalog.tasks import version_validate as version_validate_task

    version_id = version.pk
    transaction.on_commit(lambda: version_validate_task.delay(version_id))
    return version


# --- versions: validation (the worker) --------------------------------------------------------


def _report_progress_save(*, version_id: int, report: dict[str, Any], **fields: Any) -> None:
    # A short autocommitted UPDATE per step, so the publisher's page sees progress while the worker runs.
    Version.objects.filter(pk=version_id, status=VersionStatus.VALIDATING).update(
        validation_report=report, updated_at=timezone.now(), **fields
    )


@transaction.atomic
def version_validation_finish(*, version_id: int, report: dict[str, Any]) -> Version | None:
    """Store the final report and move the version to ready or invalid; no-op if already finished."""
    version = Version.objects.select_for_update().select_related("listing").filter(pk=version_id).first()
    if version is None or version.status != VersionStatus.VALIDATING:
        return None  # a duplicate delivery lost the race to the first one
    version.validation_report = report
    version.validated_at = timezone.now()
    if report.get("ok"):
        version.signature = report.get("signature")
        version_move(version=version, to=VersionStatus.READY)
        version.status_reason = ""
        version.save(
            update_fields=["status", "status_reason", "signature", "validation_report", "validated_at", "updated_at"]
        )
        audit_log_write(
            action=AuditAction.VERSION_VALIDATED,
            version=version,
            data={"metrics": report.get("metrics") or {}, "sha256": version.artifact_sha256},
        )
    else:
        reason = report.get("reason") or "The artifact failed validation."
        version.signature = report.get("signature")
        _version_mark_invalid(
            version=version,
            reason=reason,
            data={"failed_steps": [s.get("key") for s in report.get("steps") or [] if s.get("status") == "failed"]},
        )
    return version


def version_validation_fail(*, version_id: int, reason: str) -> Version | None:
    """Finish a validation that could not run to the end (it crashed or ran out of time)."""
    report = Version.objects.filter(pk=version_id).values_list("validation_report", flat=True).first() or {}
    report = {**report, "ok": False, "reason": reason, "state": "done"}
    return version_validation_finish(version_id=version_id, report=report)


def version_validate(*, version_id: int) -> None:
    """The validation task body: fetch the artifact, validate it step by step, store the verdict.

    Not atomic on purpose: progress is saved after each step for the live report, and only the verdict
    is written in one transaction. Storage outages propagate (StorageUnavailable) so the task retries
    while the version stays validating.
    """
    from inference.validation import artifact_validate

    version = Version.objects.filter(pk=version_id).first()
    if version is None or version.status != VersionStatus.VALIDATING:
        return  # deleted, or a second delivery of a task that already finished

    steps: list[dict[str, Any]] = []
    report: dict[str, Any] = {"ok": None, "state": "running", "steps": steps}
    _report_progress_save(version_id=version_id, report=report, validation_started_at=timezone.now())

    def on_step(step: dict[str, Any]) -> None:
        for i, existing in enumerate(steps):
            if existing.get("key") == step.get("key"):
                steps[i] = dict(step)
                break
        else:
            steps.append(dict(step))
        _report_progress_save(version_id=version_id, report=report)

    with tempfile.TemporaryDirectory(prefix="validate-", dir=settings.VALIDATION_WORK_DIR) as work_dir:
        path = Path(work_dir) / "model.onnx"
        try:
            storage.object_download(key=version.artifact_key, dest=path)
        except storage.StorageUnavailable:
            raise
        except storage.StorageError as exc:
            version_validation_fail(version_id=version_id, reason=f"The artifact could not be read from storage: {exc}")
            return
        try:
            final = artifact_validate(
                path=path,
                expected_size=version.artifact_size,
                expected_sha256=version.artifact_sha256,
                max_bytes=settings.ARTIFACT_MAX_BYTES,
                sample_input=version.sample_input,
                memory_limit_mb=settings.VALIDATION_MEMORY_LIMIT_MB,
                timeout_s=settings.VALIDATION_TIMEOUT_S,
                on_step=on_step,
                work_dir=settings.VALIDATION_WORK_DIR,
            )
        except storage.StorageUnavailable:
            raise
        except Exception:
            # A bug on our side must not leave the version stuck in "validating" forever.
            logger.exception("Validation of version %s crashed", version_id)
            version_validation_fail(
                version_id=version_id,
                reason="Validation stopped because of an error on our side. Upload the file again as a new version; "
                "if it keeps happening, contact support.",
            )
            return
    version_validation_finish(version_id=version_id, report={**final, "state": "done"})


# --- versions: review and lifecycle -----------------------------------------------------------


def _listing_current_refresh(*, listing: Listing) -> None:
    """Point the stable channel at the highest published version (deprecated ones only as a fallback).

    A listing with nothing servable left goes back to draft; a suspended listing keeps its status.
    """
    listing = Listing.objects.select_for_update().get(pk=listing.pk)
    versions = list(listing.versions.filter(status__in=[VersionStatus.PUBLISHED, VersionStatus.DEPRECATED]))
    published = [v for v in versions if v.status == VersionStatus.PUBLISHED]
    pool = published or versions
    # Stable buyers get a release over any pre-release, even a higher one (2.0.0-rc.1 waits for 2.0.0).
    current = max(pool, key=lambda v: (not v.prerelease, semver_sort_key(v))) if pool else None
    update = ["current_version", "updated_at"]
    listing.current_version = current
    if current is not None and listing.status == ListingStatus.DRAFT:
        listing.status = ListingStatus.PUBLISHED
        listing.published_at = listing.published_at or timezone.now()
        update += ["status", "published_at"]
    elif current is None and listing.status == ListingStatus.PUBLISHED:
        listing.status = ListingStatus.DRAFT
        listing.published_at = None
        update += ["status", "published_at"]
    listing.save(update_fields=update)
    listing_search_document_update(listing_ids=[listing.pk])


@transaction.atomic
def version_submit(*, version: Version, user: User) -> Version:
    _require_manager(user=user, organization=version.listing.organization)
    version = Version.objects.select_for_update().select_related("listing").get(pk=version.pk)
    version_move(version=version, to=VersionStatus.IN_REVIEW)
    version.submitted_at = timezone.now()
    version.status_reason = ""
    version.save(update_fields=["status", "status_reason", "submitted_at", "updated_at"])
    audit_log_write(action=AuditAction.VERSION_SUBMITTED, actor=user, version=version)
    return version


@transaction.atomic
def version_publish(*, version: Version, actor: User | None) -> Version:
    """Approved → published. Called by moderation's approve action, which checks that the actor is staff."""
    version = Version.objects.select_for_update().select_related("listing").get(pk=version.pk)
    version_move(version=version, to=VersionStatus.PUBLISHED)
    version.published_at = version.published_at or timezone.now()
    version.save(update_fields=["status", "published_at", "updated_at"])
    _listing_current_refresh(listing=version.listing)
    audit_log_write(action=AuditAction.VERSION_PUBLISHED, actor=actor, version=version)
    from inference.dispatch import model_warm_on_commit

    model_warm_on_commit(version=version)  # load it where inference runs before the first request does
    version.listing.refresh_from_db()
    return version


@transaction.atomic
def version_deprecate(*, version: Version, user: User) -> Version:
    _require_manager(user=user, organization=version.listing.organization)
    version = Version.objects.select_for_update().select_related("listing").get(pk=version.pk)
    version_move(version=version, to=VersionStatus.DEPRECATED)
    version.save(update_fields=["status", "updated_at"])
    _listing_current_refresh(listing=version.listing)
    audit_log_write(action=AuditAction.VERSION_DEPRECATED, actor=user, version=version)
    version.listing.refresh_from_db()
    return version


@transaction.atomic
def version_withdraw(*, version: Version, actor: User, reason: str = "") -> Version:
    """Take a version out for good, by its publisher or by staff; the stable channel moves to the next one."""
    if not (
        getattr(actor, "is_staff", False) or user_can_manage(user=actor, organization=version.listing.organization)
    ):
        raise Forbidden("Only owners and admins of the organization, or staff, may withdraw a version.")
    version = Version.objects.select_for_update().select_related("listing").get(pk=version.pk)
    was_uploading = version.status == VersionStatus.UPLOADING
    version_move(version=version, to=VersionStatus.WITHDRAWN)
    version.status_reason = (reason or "").strip()
    version.save(update_fields=["status", "status_reason", "updated_at"])
    _listing_current_refresh(listing=version.listing)
    audit_log_write(action=AuditAction.VERSION_WITHDRAWN, actor=actor, version=version, reason=version.status_reason)
    from inference.dispatch import model_evict_on_commit

    model_evict_on_commit(version_id=version.pk)
    if was_uploading and version.upload_mode == UploadMode.MULTIPART and version.upload_id:
        key, upload_id = version.artifact_key, version.upload_id

        def _abort() -> None:
            try:
                storage.multipart_abort(key=key, upload_id=upload_id)
            except storage.StorageError:  # leftover parts are cleaned by the bucket's lifecycle rule
                logger.warning("Could not abort multipart upload %s for %s", upload_id, key)

        transaction.on_commit(_abort)
    version.listing.refresh_from_db()
    return version
