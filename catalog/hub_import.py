"""A new version from a file in a Hugging Face Hub model repository instead of the publisher's disk.

The web request only checks the input and records the version (``uploading``, with ``source``
saying where it comes from). The worker (``catalog.version_hub_import``) fetches the file into the
hub cache, hashes it, copies it to object storage under the version's artifact key and then
completes the upload exactly as a publisher's client would, so validation runs as for any upload.
Whatever stops the import ends the version ``invalid`` with the reason.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from catalog.models import Listing, UploadMode, Version, VersionStatus
from catalog.services import (
    _require_manager,
    _sample_input_clean,
    _version_mark_invalid,
    artifact_key_new,
    size_human,
    version_insert,
    version_number_new,
    version_upload_complete,
)
from marketplace.errors import ApplicationError
from marketplace.integrations import huggingface as hub
from marketplace.integrations import s3 as storage
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)

IMPORT_STEP = {"key": "import", "label": "Import from the Hugging Face Hub"}


def _hub_input_clean(*, repo_id: str, filename: str, revision: str | None) -> tuple[str, str, str | None]:
    repo_id, filename, revision = (repo_id or "").strip(), (filename or "").strip(), (revision or "").strip() or None
    errors: dict[str, list[str]] = {}
    if problem := hub.hub_repo_id_problem(repo_id):
        errors["repo_id"] = [problem]
    if problem := hub.hub_filename_problem(filename):
        errors["filename"] = [problem]
    if revision is not None and (problem := hub.hub_revision_problem(revision)):
        errors["revision"] = [problem]
    if errors:
        raise ApplicationError(next(iter(errors.values()))[0], code="invalid", fields=errors)
    return repo_id, filename, revision


@transaction.atomic
def version_import_from_hub(
    *,
    listing: Listing,
    user: User,
    version: str,
    changelog: str = "",
    repo_id: str,
    filename: str = "model.onnx",
    revision: str | None = None,
    sample_input: dict[str, Any] | None = None,
) -> Version:
    """Record a new version whose file a worker imports from the Hub; it then validates like an upload."""
    _require_manager(user=user, organization=listing.organization)
    number = version_number_new(listing=listing, version=version)
    repo_id, filename, revision = _hub_input_clean(repo_id=repo_id, filename=filename, revision=revision)
    sample = _sample_input_clean(sample_input)

    row = Version(
        listing=listing,
        created_by=user,
        **number,
        changelog=changelog or "",
        artifact_key=artifact_key_new(listing=listing),
        # Size and hash are known once the worker has the file; the upload check compares against them.
        artifact_size=0,
        artifact_sha256="",
        upload_mode=UploadMode.POST,
        sample_input=sample,
        source={"hub": repo_id, "filename": filename, "ref": revision or hub.DEFAULT_REVISION, "revision": None},
        validation_report={"ok": None, "state": "importing", "steps": []},
    )
    version_insert(row)
    audit_log_write(
        action=AuditAction.VERSION_CREATED,
        actor=user,
        version=row,
        data={"version": row.version, "source": row.source},
    )

    from catalog.tasks import version_hub_import as version_hub_import_task

    version_id = row.pk
    transaction.on_commit(lambda: version_hub_import_task.delay(version_id))
    return row


@transaction.atomic
def version_hub_import_fail(*, version_id: int, reason: str) -> Version | None:
    """End an import that cannot finish: the version becomes invalid with the reason (no-op once past uploading)."""
    version = Version.objects.select_for_update().select_related("listing").filter(pk=version_id).first()
    if version is None or version.status != VersionStatus.UPLOADING:
        return None
    version.validation_report = {
        "ok": False,
        "state": "done",
        "reason": reason,
        "steps": [{**IMPORT_STEP, "status": "failed", "detail": reason, "duration_ms": 0}],
    }
    version.validated_at = timezone.now()
    _version_mark_invalid(version=version, reason=reason, data={"source": version.source})
    return version


def version_hub_import_run(*, version_id: int) -> None:
    """The import task body. Hub and storage outages propagate (HubUnavailable, StorageUnavailable) to be retried."""
    version = Version.objects.select_related("listing", "created_by").filter(pk=version_id).first()
    if version is None or version.status != VersionStatus.UPLOADING or not (version.source or {}).get("hub"):
        return  # deleted, withdrawn, or a second delivery of a finished import
    source = dict(version.source)
    max_bytes = settings.ARTIFACT_MAX_BYTES
    try:
        fetched = hub.hub_file_fetch(
            repo_id=source["hub"],
            filename=source["filename"],
            revision=source.get("ref"),
            cache_dir=settings.HUB_CACHE_DIR,
            offline=settings.HUB_OFFLINE,
            token=settings.HUB_TOKEN,
            max_bytes=max_bytes,
        )
    except hub.HubUnavailable:
        raise
    except hub.HubError as exc:
        version_hub_import_fail(version_id=version_id, reason=exc.message)
        return

    size = fetched.path.stat().st_size
    if size == 0:
        version_hub_import_fail(version_id=version_id, reason=f"The file '{fetched.filename}' on the Hub is empty.")
        return
    if size > max_bytes:
        version_hub_import_fail(
            version_id=version_id,
            reason=f"The file '{fetched.filename}' is {size_human(size)}; the limit is {size_human(max_bytes)}.",
        )
        return
    with open(fetched.path, "rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    try:
        storage.object_upload(key=version.artifact_key, source=fetched.path)
    except storage.StorageUnavailable:
        raise
    except storage.StorageError as exc:
        version_hub_import_fail(version_id=version_id, reason=f"The file could not be stored: {exc}")
        return

    source["revision"] = fetched.commit
    updated = Version.objects.filter(pk=version_id, status=VersionStatus.UPLOADING).update(
        artifact_size=size, artifact_sha256=sha256, source=source, updated_at=timezone.now()
    )
    if not updated:
        return  # withdrawn while the file was copied
    version.refresh_from_db()
    if version.created_by is None:
        version_hub_import_fail(version_id=version_id, reason="The account that started the import no longer exists.")
        return
    try:
        # From here on it is an ordinary upload: the same checks, audit entry and validation task.
        version_upload_complete(version=version, user=version.created_by)
    except storage.StorageUnavailable:
        raise
    except ApplicationError as exc:
        version_hub_import_fail(version_id=version_id, reason=exc.message)
