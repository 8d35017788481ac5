"""The publishing pipeline end to end: real SeaweedFS, HTTP uploads to presigned URLs, a real Celery worker.

Create a version → upload straight to object storage with `requests` → complete → the worker validates
→ ready (or invalid with a reason). Kept to a few cases; the validation engine has its own tests.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper

from catalog import services
from catalog.models import Version, VersionStatus
from marketplace.errors import Conflict
from moderation.models import AuditAction, AuditLogEntry
from tests.inference.onnx_factories import model_bytes, onnx_classifier_bytes, pickle_bytes
from tests.plugins.services import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

IRIS_SAMPLE = {"input": [[5.1, 3.5, 1.4, 0.2]]}
VALIDATION_TIMEOUT_S = 90


@pytest.fixture
def pipeline(publisher, s3, celery_worker):
    user, org = publisher
    listing = services.listing_create(
        organization=org,
        user=user,
        name="Iris",
        summary="Iris species from petal and sepal sizes.",
        domain="science",
        task="classification",
        tags=["iris"],
        license="mit",
    )
    return user, listing


def _upload(upload: dict, data: bytes) -> list[dict] | None:
    """What a publisher's script does: send the bytes to storage, never to the web app."""
    if upload["mode"] == "post":
        response = requests.post(upload["url"], data=upload["fields"], files={"file": ("model.onnx", data)}, timeout=30)
        assert response.status_code in (200, 201, 204), response.text
        return None
    parts = []
    for part in upload["parts"]:
        start = (part["part_number"] - 1) * upload["part_size"]
        response = requests.put(part["url"], data=data[start : start + upload["part_size"]], timeout=30)
        assert response.status_code == 200, response.text
        parts.append({"part_number": part["part_number"], "etag": response.headers["ETag"]})
    return parts


def _publish_flow(
    user, listing, data: bytes, *, number: str = "1.0.0", sha256: str | None = None, sample=None
) -> Version:
    version, upload = services.version_create(
        listing=listing,
        user=user,
        version=number,
        artifact_size=len(data),
        artifact_sha256=sha256 or hashlib.sha256(data).hexdigest(),
        sample_input=sample,
    )
    parts = _upload(upload, data)
    version = services.version_upload_complete(version=version, user=user, parts=parts)
    assert version.status == VersionStatus.VALIDATING
    wait_for(
        lambda: Version.objects.get(pk=version.pk).status != VersionStatus.VALIDATING, timeout=VALIDATION_TIMEOUT_S
    )
    version.refresh_from_db()
    return version


def test_presigned_post_upload_is_validated_by_the_worker(pipeline):
    user, listing = pipeline
    version = _publish_flow(user, listing, onnx_classifier_bytes(), sample=IRIS_SAMPLE)

    assert version.status == VersionStatus.READY, version.status_reason
    assert [tensor["name"] for tensor in version.signature["inputs"]] == ["input"]
    report = version.validation_report
    assert report["ok"] is True and report["state"] == "done"
    assert {step["key"] for step in report["steps"]} >= {"size", "sha256", "checker", "load", "smoke", "latency"}
    assert all(step["status"] == "passed" for step in report["steps"]), report["steps"]
    assert report["smoke"]["input_source"] == "sample"
    assert version.validated_at is not None and version.validation_started_at is not None
    assert AuditLogEntry.objects.filter(version=version, action=AuditAction.VERSION_VALIDATED).count() == 1

    # A redelivered task is a no-op on a finished version.
    services.version_validate(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY
    assert services.version_submit(version=version, user=user).status == VersionStatus.IN_REVIEW


def _padded_model_bytes(floats: int) -> bytes:
    """A valid model whose weights make the file bigger than one 5 MiB multipart part."""
    weights = numpy_helper.from_array(np.linspace(0, 1, floats, dtype=np.float32), name="weights")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["weights", "idx"], ["value"])],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [-1])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [-1])],
        initializer=[weights],
    )
    return model_bytes(graph)


def test_multipart_upload_is_assembled_and_validated(pipeline, settings):
    user, listing = pipeline
    settings.UPLOAD_MULTIPART_THRESHOLD = 1024 * 1024
    settings.UPLOAD_PART_SIZE = 5 * 1024 * 1024
    data = _padded_model_bytes(1_500_000)  # ~6 MB: two parts
    version = _publish_flow(user, listing, data, sample={"idx": [0, 1, 2]})

    assert version.upload_mode == "multipart"
    assert version.status == VersionStatus.READY, version.status_reason
    assert version.signature["inputs"][0]["name"] == "idx"


def test_wrong_checksum_is_invalid_with_the_reason(pipeline):
    user, listing = pipeline
    version = _publish_flow(user, listing, onnx_classifier_bytes(), sha256="0" * 64)

    assert version.status == VersionStatus.INVALID
    assert "SHA-256" in version.status_reason or "sha256" in version.status_reason.lower()
    assert AuditLogEntry.objects.filter(version=version, action=AuditAction.VERSION_INVALID).count() == 1


def test_hostile_file_is_rejected_and_can_never_be_published(pipeline, staff_user):
    user, listing = pipeline
    version = _publish_flow(user, listing, pickle_bytes())

    assert version.status == VersionStatus.INVALID
    assert "pickle" in version.status_reason.lower()
    assert version.signature is None
    with pytest.raises(Conflict):
        services.version_submit(version=version, user=user)
    with pytest.raises(Conflict):
        services.version_publish(version=version, actor=staff_user)
    listing.refresh_from_db()
    assert listing.status == "draft" and listing.current_version is None


def test_storage_refuses_a_post_upload_of_another_size(pipeline):
    user, listing = pipeline
    data = onnx_classifier_bytes()
    version, upload = services.version_create(
        listing=listing,
        user=user,
        version="1.0.0",
        artifact_size=len(data),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
    )
    # The presigned policy accepts exactly the declared size: bigger and smaller files are refused.
    for wrong in (data + b"extra", data[:-5]):
        response = requests.post(
            upload["url"], data=upload["fields"], files={"file": ("model.onnx", wrong)}, timeout=30
        )
        assert response.status_code >= 400, len(wrong)
    with pytest.raises(Conflict):
        services.version_upload_complete(version=version, user=user)
