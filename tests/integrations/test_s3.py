"""Object storage against a real SeaweedFS, and the real Celery worker fixture."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings
from django.db import transaction

from marketplace.celery import app
from marketplace.integrations import s3 as storage
from tests.plugins.services import wait_for

MIB = 1024 * 1024


def _size(key: str) -> int | None:
    head = storage.object_head(key=key)
    return None if head is None else head["size"]


def _key(name: str = "object") -> str:
    return f"tests/{uuid.uuid4().hex}/{name}"


def _post_upload(post: storage.PresignedPost, data: bytes) -> requests.Response:
    return requests.post(post["url"], data=post["fields"], files={"file": ("model.onnx", data)}, timeout=30)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_presigned_post_accepts_a_file_within_the_limit(s3):
    key = _key("model.onnx")
    post = storage.presigned_post_create(key=key, max_bytes=1000, content_type="application/x-onnx")

    response = _post_upload(post, b"m" * 1000)

    assert response.status_code in (200, 201, 204), response.text
    head = storage.object_head(key=key)
    assert head is not None and (head["size"], head["content_type"]) == (1000, "application/x-onnx")
    assert len(head["etag"]) == 32 and '"' not in head["etag"]
    assert s3.get(key) == b"m" * 1000


def test_presigned_post_rejects_a_file_over_the_limit(s3):
    key = _key()
    post = storage.presigned_post_create(key=key, max_bytes=1000)

    response = _post_upload(post, b"m" * 1001)

    assert response.status_code == 400
    assert "EntityTooLarge" in response.text
    assert storage.object_head(key=key) is None


def test_presigned_urls_are_signed_for_the_public_endpoint(s3, settings):
    # Browsers reach storage at another address than the server does; the signature covers the host.
    port = urlsplit(s3.endpoint_url).port
    settings.S3_PUBLIC_ENDPOINT_URL = f"http://localhost:{port}"
    key = _key()

    post = storage.presigned_post_create(key=key, max_bytes=10)

    assert post["url"].startswith(f"http://localhost:{port}/")
    assert _post_upload(post, b"0123456789").status_code in (200, 201, 204)
    assert _size(key) == 10


def test_multipart_upload_through_presigned_part_urls(s3):
    key = _key("big.onnx")
    first, second = os.urandom(5 * MIB), os.urandom(1234)
    upload_id = storage.multipart_create(key=key)
    urls = storage.multipart_part_urls(key=key, upload_id=upload_id, part_count=2)
    assert [u["part_number"] for u in urls] == [1, 2]

    parts: list[storage.Part] = []
    for url, data in zip(urls, (first, second), strict=True):
        response = requests.put(url["url"], data=data, timeout=30)
        assert response.status_code == 200, response.text
        parts.append({"part_number": url["part_number"], "etag": response.headers["ETag"]})
    assert storage.object_head(key=key) is None  # nothing there until completed

    storage.multipart_complete(key=key, upload_id=upload_id, parts=list(reversed(parts)))

    assert _size(key) == len(first) + len(second)
    assert s3.get(key) == first + second


def test_multipart_complete_without_parts_lists_them_from_storage(s3):
    key = _key()
    upload_id = storage.multipart_create(key=key)
    [url] = storage.multipart_part_urls(key=key, upload_id=upload_id, part_count=1)
    assert requests.put(url["url"], data=b"only part", timeout=30).status_code == 200

    storage.multipart_complete(key=key, upload_id=upload_id, parts=[])

    assert _size(key) == len(b"only part")


def test_multipart_complete_of_an_upload_without_parts_is_refused(s3):
    key = _key()
    upload_id = storage.multipart_create(key=key)

    with pytest.raises(storage.StorageError) as excinfo:
        storage.multipart_complete(key=key, upload_id=upload_id, parts=[])

    assert excinfo.value.code == "upload_incomplete"
    storage.multipart_abort(key=key, upload_id=upload_id)


def test_multipart_abort_drops_the_upload_and_is_idempotent(s3):
    key = _key()
    upload_id = storage.multipart_create(key=key)
    [url] = storage.multipart_part_urls(key=key, upload_id=upload_id, part_count=1)
    etag = requests.put(url["url"], data=b"part", timeout=30).headers["ETag"]

    storage.multipart_abort(key=key, upload_id=upload_id)
    storage.multipart_abort(key=key, upload_id=upload_id)

    with pytest.raises(storage.StorageError):
        storage.multipart_complete(key=key, upload_id=upload_id, parts=[{"part_number": 1, "etag": etag}])
    assert storage.object_head(key=key) is None


def test_cors_preflight_and_etag_exposed_to_browsers(s3):
    key = _key()
    origin = "http://marketplace.example"
    object_url = f"{s3.endpoint_url}/{s3.bucket}/{key}"

    preflight = requests.options(
        object_url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )

    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] in (origin, "*")
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    # The bucket's own rules answer (SeaweedFS's fallback, without rules, would also allow DELETE).
    assert "DELETE" not in preflight.headers["Access-Control-Allow-Methods"]

    upload_id = storage.multipart_create(key=key)
    [url] = storage.multipart_part_urls(key=key, upload_id=upload_id, part_count=1)
    put = requests.put(url["url"], data=b"part", headers={"Origin": origin}, timeout=10)
    assert put.headers["Access-Control-Allow-Origin"] in (origin, "*")
    assert "etag" in put.headers["Access-Control-Expose-Headers"].lower()
    storage.multipart_abort(key=key, upload_id=upload_id)


def test_bucket_ensure_is_idempotent(s3):
    storage.bucket_ensure()
    storage.bucket_ensure()


def test_upload_download_roundtrip(s3, tmp_path):
    key = _key()
    data = os.urandom(3 * MIB + 17)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    storage.object_upload(key=key, source=source)
    storage.object_upload(key=key + ".bytes", source=b"small bytes")

    dest = tmp_path / "out" / "model.onnx"
    storage.object_download(key=key, dest=dest)

    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.onnx"]  # no temp file left behind
    assert _size(key) == len(data)
    assert s3.get(key + ".bytes") == b"small bytes"
    assert sorted(s3.keys(prefix=key)) == [key, key + ".bytes"]


def test_missing_objects(s3, tmp_path):
    key = _key()
    dest = tmp_path / "model.onnx"

    assert storage.object_head(key=key) is None
    with pytest.raises(storage.StorageObjectMissing) as excinfo:
        storage.object_download(key=key, dest=dest)
    assert excinfo.value.status == 404
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    storage.object_delete(key=key)  # deleting what is not there is fine


def test_delete_removes_the_object(s3):
    key = _key()
    storage.object_upload(key=key, source=b"x")
    storage.object_delete(key=key)
    assert storage.object_head(key=key) is None


def test_storage_outage_fails_fast_as_unavailable(settings, tmp_path):
    settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{_closed_port()}"

    for call in (
        lambda: storage.object_head(key="any"),
        lambda: storage.object_download(key="any", dest=tmp_path / "x"),
        lambda: storage.multipart_create(key="any"),
        storage.bucket_ensure,
    ):
        started = time.monotonic()
        with pytest.raises(storage.StorageUnavailable) as excinfo:
            call()
        assert time.monotonic() - started < 5
        assert (excinfo.value.status, excinfo.value.code) == (503, "storage_unavailable")
    assert list(tmp_path.iterdir()) == []


def test_wrong_credentials_are_a_storage_error_not_an_outage(settings, s3):
    settings.S3_SECRET_ACCESS_KEY = "not-the-secret"
    with pytest.raises(storage.StorageError) as excinfo:
        storage.object_upload(key=_key(), source=b"x")
    assert not isinstance(excinfo.value, storage.StorageUnavailable)
    assert "SignatureDoesNotMatch" in excinfo.value.message or "AccessDenied" in excinfo.value.message


# --- Celery ----------------------------------------------------------------------------------

_received: dict[str, str] = {}
_received_lock = threading.Lock()


@app.task(name="tests.ping")
def ping(token: str) -> None:
    with _received_lock:
        _received[token] = threading.current_thread().name


def test_celery_worker_runs_tasks_from_both_queues(celery_worker):
    on_default, on_validation = uuid.uuid4().hex, uuid.uuid4().hex

    ping.delay(on_default)
    ping.apply_async(args=[on_validation], queue=settings.VALIDATION_QUEUE)

    wait_for(lambda: on_default in _received and on_validation in _received, timeout=10)
    assert _received[on_default] != threading.current_thread().name  # run by the worker, not eagerly


def test_celery_worker_gets_tasks_enqueued_on_commit(celery_worker):
    token = uuid.uuid4().hex

    with transaction.atomic():
        transaction.on_commit(lambda: ping.delay(token))
        time.sleep(0.3)
        assert token not in _received  # not sent before the commit

    wait_for(lambda: token in _received, timeout=10)
