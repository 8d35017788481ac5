"""Import a version from a Hugging Face Hub repository: a local folder laid out as the hub cache, offline.

The cache is built the way huggingface_hub writes it (``models--org--name/refs/<ref>`` holding the
commit, ``snapshots/<commit>/<file>`` linking to ``blobs/<sha256>``) and read with
``local_files_only``; the real worker copies the file to SeaweedFS and validates it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from catalog import services
from catalog.models import Version, VersionStatus
from marketplace.integrations import huggingface as hub
from moderation.models import AuditAction, AuditLogEntry
from tests.inference.onnx_factories import onnx_classifier_bytes
from tests.plugins.services import wait_for

REPO = "acme/iris"
IRIS_SAMPLE = {"input": [[5.1, 3.5, 1.4, 0.2]]}
FINISHED = (VersionStatus.READY, VersionStatus.INVALID)


def hub_repo_add(cache: Path, repo_id: str, files: dict[str, bytes], *, refs: tuple[str, ...] = ("main",)) -> str:
    """Put one commit of a model repository into a hub cache folder; return the commit hash."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = repo / "snapshots" / commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return commit


@pytest.fixture
def hub_cache(tmp_path, settings) -> Path:
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    settings.HUB_CACHE_DIR = cache
    settings.HUB_OFFLINE = True
    return cache


@pytest.fixture
def iris_repo(hub_cache) -> str:
    return hub_repo_add(
        hub_cache,
        REPO,
        {"model.onnx": onnx_classifier_bytes(), "onnx/quantized.onnx": b"not a model", "README.md": b"# Iris\n"},
        refs=("main", "v1"),
    )


def _listing(publisher):
    user, org = publisher
    return user, services.listing_create(
        organization=org,
        user=user,
        name="Iris",
        summary="Iris species from petal and sepal sizes.",
        domain="science",
        task="classification",
        tags=["iris"],
        license="mit",
    )


def _api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _import_url(listing) -> str:
    return reverse("api-publisher-listing-versions-import", kwargs={"slug": listing.slug})


def _finished(version_id: int) -> Version:
    wait_for(lambda: Version.objects.get(pk=version_id).status in FINISHED, timeout=90, message="import stuck")
    return Version.objects.get(pk=version_id)


# --- the integration, on its own -------------------------------------------------------------------


def test_fetch_reads_the_cache_and_resolves_the_commit(hub_cache, iris_repo):
    fetched = hub.hub_file_fetch(repo_id=REPO, filename="model.onnx", cache_dir=hub_cache, offline=True)
    assert fetched.commit == iris_repo
    assert fetched.path.read_bytes() == onnx_classifier_bytes()

    nested = hub.hub_file_fetch(
        repo_id=REPO, filename="onnx/quantized.onnx", revision="v1", cache_dir=hub_cache, offline=True
    )
    assert nested.commit == iris_repo and nested.path.read_bytes() == b"not a model"
    pinned = hub.hub_file_fetch(
        repo_id=REPO, filename="model.onnx", revision=iris_repo, cache_dir=hub_cache, offline=True
    )
    assert pinned.commit == iris_repo


def test_fetch_errors_say_what_is_missing(hub_cache, iris_repo):
    with pytest.raises(hub.HubRepoNotFound, match="acme/nothing was not found"):
        hub.hub_file_fetch(repo_id="acme/nothing", filename="model.onnx", cache_dir=hub_cache, offline=True)
    with pytest.raises(hub.HubRevisionNotFound) as revision_error:
        hub.hub_file_fetch(repo_id=REPO, filename="model.onnx", revision="v9", cache_dir=hub_cache, offline=True)
    assert "'v9' does not exist in acme/iris" in revision_error.value.message
    assert "main, v1" in revision_error.value.message
    with pytest.raises(hub.HubFileNotFound) as file_error:
        hub.hub_file_fetch(repo_id=REPO, filename="iris.onnx", cache_dir=hub_cache, offline=True)
    assert file_error.value.message == (
        "The file 'iris.onnx' is not in revision main of acme/iris; "
        "files there: README.md, model.onnx, onnx/quantized.onnx."
    )
    assert file_error.value.status == 404 and file_error.value.code == "hub_file_not_found"


@pytest.mark.parametrize(
    ("repo_id", "ok"),
    [
        ("acme/iris", True),
        ("acme/iris-v2.1_b", True),
        ("iris", False),
        ("a/b/c", False),
        ("acme/../x", False),
        ("acme/iris--x", False),
        ("-acme/iris", False),
        ("acme/ iris", False),
    ],
)
def test_repo_id_format(repo_id, ok):
    assert (hub.hub_repo_id_problem(repo_id) is None) is ok


# --- the whole import: API → worker → storage → validation --------------------------------------------


def test_import_is_fetched_stored_and_validated_by_the_worker(publisher, hub_cache, iris_repo, s3, celery_worker):
    user, listing = _listing(publisher)
    response = _api(user).post(
        _import_url(listing),
        {
            "version": "1.0.0",
            "repo_id": REPO,
            "revision": "v1",
            "sample_input": IRIS_SAMPLE,
            "changelog": "From the Hub.",
        },
        format="json",
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == VersionStatus.UPLOADING
    assert body["source"] == {"hub": REPO, "filename": "model.onnx", "ref": "v1", "revision": None}

    version = _finished(body["id"])
    assert version.status == VersionStatus.READY, version.status_reason
    assert version.signature is not None
    assert [tensor["name"] for tensor in version.signature["inputs"]] == ["input"]
    assert version.validation_report["smoke"]["input_source"] == "sample"
    data = onnx_classifier_bytes()
    assert version.artifact_size == len(data) and version.artifact_sha256 == hashlib.sha256(data).hexdigest()
    assert version.source == {"hub": REPO, "filename": "model.onnx", "ref": "v1", "revision": iris_repo}
    assert s3.get(version.artifact_key) == data
    actions = set(AuditLogEntry.objects.filter(version=version).values_list("action", flat=True))
    assert {AuditAction.VERSION_CREATED, AuditAction.VERSION_UPLOADED, AuditAction.VERSION_VALIDATED} <= actions

    detail = _api(user).get(reverse("api-version-detail", kwargs={"version_id": version.pk})).json()
    assert detail["source"]["revision"] == iris_repo and detail["status"] == VersionStatus.READY


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"repo_id": "acme/unknown"}, "The repository acme/unknown was not found on the Hugging Face Hub"),
        ({"filename": "iris.onnx"}, "The file 'iris.onnx' is not in revision main of acme/iris; files there: "),
        ({"revision": "v2"}, "The revision 'v2' does not exist in acme/iris"),
        ({"filename": "onnx/quantized.onnx"}, ""),  # fetched, then refused by validation
    ],
    ids=["unknown-repo", "missing-file", "missing-revision", "not-a-model"],
)
def test_failed_import_ends_invalid_with_the_reason(publisher, hub_cache, iris_repo, s3, celery_worker, fields, reason):
    user, listing = _listing(publisher)
    response = _api(user).post(_import_url(listing), {"version": "1.0.0", "repo_id": REPO, **fields}, format="json")
    assert response.status_code == 202, response.content

    version = _finished(response.json()["id"])
    assert version.status == VersionStatus.INVALID
    assert version.status_reason.startswith(reason), version.status_reason
    assert version.validation_report["ok"] is False and version.validation_report["reason"]
    assert AuditLogEntry.objects.filter(version=version, action=AuditAction.VERSION_INVALID).count() == 1
    if reason:  # the import itself failed: nothing reached storage
        assert version.validation_report["steps"][0]["key"] == "import"
        assert s3.keys(prefix=version.artifact_key) == []


def test_file_over_the_limit_is_not_stored(publisher, hub_cache, iris_repo, s3, celery_worker, settings):
    settings.ARTIFACT_MAX_BYTES = 100
    user, listing = _listing(publisher)
    response = _api(user).post(_import_url(listing), {"version": "1.0.0", "repo_id": REPO}, format="json")

    version = _finished(response.json()["id"])
    assert version.status == VersionStatus.INVALID
    assert "the limit is 100 bytes" in version.status_reason
    assert s3.keys(prefix=version.artifact_key) == []


# --- input errors: 400 before anything is recorded ---------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"repo_id": "not a repo"}, "repo_id"),
        ({"repo_id": "acme"}, "repo_id"),
        ({"filename": "model.bin"}, "filename"),
        ({"filename": "../secrets.onnx"}, "filename"),
        ({"revision": "main..x"}, "revision"),
        ({"version": "one"}, "version"),
        ({"sample_input": "[1, 2]"}, "sample_input"),
    ],
)
def test_bad_input_is_a_400_field_error(publisher, fields, field):
    user, listing = _listing(publisher)
    response = _api(user).post(_import_url(listing), {"version": "1.0.0", "repo_id": REPO, **fields}, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and list(error["fields"]) == [field]
    assert not Version.objects.filter(listing=listing).exists()


@pytest.mark.django_db
def test_other_organizations_cannot_import(publisher, make_user):
    _, listing = _listing(publisher)
    response = _api(make_user()).post(_import_url(listing), {"version": "1.0.0", "repo_id": REPO}, format="json")
    assert response.status_code == 404


# --- the publisher's page ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_new_version_page_imports_from_the_hub(publisher, client):
    user, listing = _listing(publisher)
    client.force_login(user)
    page = client.get(reverse("publish:version-create", kwargs={"slug": listing.slug}))
    assert "Import from Hugging Face Hub" in page.content.decode()

    url = reverse("publish:version-import", kwargs={"slug": listing.slug})
    bad = client.post(url, {"hub-version": "1.0.0", "hub-repo_id": "nope", "hub-filename": "model.onnx"})
    assert bad.status_code == 200
    assert "is not a Hugging Face repository id" in bad.content.decode()

    good = client.post(url, {"hub-version": "1.0.0", "hub-repo_id": REPO, "hub-filename": "model.onnx"})
    version = Version.objects.get(listing=listing)
    assert good.status_code == 302 and good.url == reverse("publish:version-detail", kwargs={"version_id": version.pk})
    assert version.status == VersionStatus.UPLOADING and version.source["hub"] == REPO
    detail = client.get(good.url).content.decode()
    assert "Importing" in detail and REPO in detail
