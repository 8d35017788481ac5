"""Object storage over the S3 API: the one module that talks to boto3/botocore.

Two clients: a server-side one on ``S3_ENDPOINT_URL`` (what this process reaches) and a
presigning one on ``S3_PUBLIC_ENDPOINT_URL`` (what browsers reach; a presigned signature
covers the host, so it must be signed for the public address). Settings are read at call
time, so tests can point them elsewhere; clients are cached per endpoint and credentials.

Errors are translated for callers: an unreachable endpoint or a 5xx is
:class:`StorageUnavailable` (503, retry later), a missing object is ``None`` from
:func:`object_head` and :class:`StorageObjectMissing` elsewhere, anything else is
:class:`StorageError`. Catching ``StorageError`` catches all three.

CORS: :func:`bucket_ensure` sets bucket rules (any origin; GET, PUT, POST, HEAD; ETag
exposed, which multipart uploads need to read each part's ETag). SeaweedFS honours them.
Without bucket rules SeaweedFS falls back to its ``-s3.allowedOrigins`` flag (default ``*``),
which also answers preflights and exposes ETag, so uploads work either way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from django.conf import settings

from marketplace.errors import ApplicationError

__all__ = [
    "StorageError",
    "StorageObjectMissing",
    "StorageUnavailable",
    "bucket_ensure",
    "multipart_abort",
    "multipart_complete",
    "multipart_create",
    "multipart_part_urls",
    "object_delete",
    "object_download",
    "object_head",
    "object_keys",
    "object_upload",
    "presigned_get_create",
    "presigned_post_create",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MULTIPART_MAX_PARTS = 10_000
PUT_MAX_BYTES = 5 * 1024**3  # S3's limit for one PUT
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024

CORS_RULES: list[dict[str, Any]] = [
    {
        "AllowedOrigins": ["*"],
        "AllowedMethods": ["GET", "PUT", "POST", "HEAD"],
        "AllowedHeaders": ["*"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 3600,
    }
]

# Codes that mean "the object (or the upload) is not there".
_MISSING_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
# Codes that mean "the service cannot serve now"; some S3s send them with a 4xx status.
_UNAVAILABLE_CODES = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "503", "500"}


class StorageError(ApplicationError):
    """Object storage refused a request; the message says why."""

    status = 502
    code = "storage_error"


class StorageUnavailable(StorageError):
    """Object storage cannot be reached or answers with a server error: try again later."""

    status = 503
    code = "storage_unavailable"


class StorageObjectMissing(StorageError):
    """The object (or multipart upload) does not exist."""

    status = 404
    code = "storage_object_missing"


class ObjectInfo(TypedDict):
    size: int
    etag: str  # without the surrounding quotes
    content_type: str


class PresignedPost(TypedDict):
    url: str
    fields: dict[str, str]


class PartUrl(TypedDict):
    part_number: int
    url: str


class Part(TypedDict):
    part_number: int
    etag: str


# --- clients ---------------------------------------------------------------------------------

_clients: dict[tuple[str, ...], Any] = {}
_clients_lock = threading.Lock()


def _client_config() -> Config:
    return Config(
        signature_version="s3v4",
        region_name=settings.S3_REGION,
        s3={"addressing_style": settings.S3_ADDRESSING_STYLE},
        # Fail fast when storage is down: callers answer 503 or retry the task later.
        connect_timeout=2,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        # Checksums only where S3 requires them: several S3-compatible servers reject the
        # newer default (streaming trailers), and part ETags already verify uploads.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def _client_for(endpoint_url: str) -> Any:
    key = (
        endpoint_url,
        settings.S3_ACCESS_KEY_ID,
        settings.S3_SECRET_ACCESS_KEY,
        settings.S3_REGION,
        settings.S3_ADDRESSING_STYLE,
    )
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                # A session of its own: the default session is not safe to build clients from threads.
                session = boto3.session.Session()
                client = session.client(
                    "s3",
                    endpoint_url=endpoint_url,
                    aws_access_key_id=settings.S3_ACCESS_KEY_ID,
                    aws_secret_access_key=settings.S3_SECRET_ACCESS_KEY,
                    config=_client_config(),
                )
                _clients[key] = client
    return client


def _client() -> Any:
    return _client_for(settings.S3_ENDPOINT_URL)


def _presign_client() -> Any:
    return _client_for(settings.S3_PUBLIC_ENDPOINT_URL or settings.S3_ENDPOINT_URL)


def _bucket() -> str:
    return settings.S3_BUCKET


# --- errors ----------------------------------------------------------------------------------


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is_missing(exc: ClientError) -> bool:
    return _error_status(exc) == 404 or _error_code(exc) in _MISSING_CODES


@contextlib.contextmanager
def _translated(action: str, key: str | None = None) -> Iterator[None]:
    """Turn botocore exceptions into the storage errors callers handle."""
    what = f"{action} {key}" if key else action
    try:
        yield
    except ClientError as exc:
        code, status = _error_code(exc), _error_status(exc)
        message = exc.response.get("Error", {}).get("Message") or code or "no details"
        if status >= 500 or code in _UNAVAILABLE_CODES:
            raise StorageUnavailable(f"Object storage is unavailable ({what}: {message}).") from exc
        if _is_missing(exc):
            raise StorageObjectMissing(f"Object storage has no such object ({what}).") from exc
        raise StorageError(f"Object storage refused the request ({what}): {code}: {message}") from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise StorageUnavailable(f"Object storage cannot be reached ({what}): {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"Object storage request failed ({what}): {exc}") from exc


def _etag_quoted(etag: str) -> str:
    return '"' + etag.strip().strip('"') + '"'


# --- bucket ----------------------------------------------------------------------------------


def bucket_ensure() -> None:
    """Create the bucket when missing and (re)apply the CORS rules browser uploads need."""
    client, bucket = _client(), _bucket()
    with _translated("head bucket", bucket):
        try:
            client.head_bucket(Bucket=bucket)
            exists = True
        except ClientError as exc:
            if not _is_missing(exc) and _error_code(exc) != "NoSuchBucket":
                raise
            exists = False
    if not exists:
        params: dict[str, Any] = {"Bucket": bucket}
        if settings.S3_REGION and settings.S3_REGION != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": settings.S3_REGION}
        with _translated("create bucket", bucket):
            try:
                client.create_bucket(**params)
            except ClientError as exc:
                if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
    with _translated("set bucket CORS", bucket):
        client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": CORS_RULES})


# --- browser uploads -------------------------------------------------------------------------


def presigned_post_create(
    *, key: str, max_bytes: int, content_type: str = DEFAULT_CONTENT_TYPE, min_bytes: int = 1
) -> PresignedPost:
    """A form POST a browser sends the file with; storage rejects bodies outside ``min_bytes..max_bytes``.

    Send ``fields`` as form fields, then the file last as the ``file`` field. Pass ``min_bytes=max_bytes``
    to accept exactly one size (the publisher's declared artifact size).
    """
    if not 1 <= min_bytes <= max_bytes:
        raise ValueError("need 1 <= min_bytes <= max_bytes")
    with _translated("presign POST", key):
        post = _presign_client().generate_presigned_post(
            Bucket=_bucket(),
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", min_bytes, max_bytes]],
            ExpiresIn=settings.S3_PRESIGN_EXPIRY_S,
        )
    return {"url": post["url"], "fields": dict(post["fields"])}


def multipart_create(*, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
    """Start a multipart upload; returns its upload id."""
    with _translated("start multipart upload", key):
        response = _client().create_multipart_upload(Bucket=_bucket(), Key=key, ContentType=content_type)
    return str(response["UploadId"])


def multipart_part_urls(*, key: str, upload_id: str, part_count: int) -> list[PartUrl]:
    """Presigned PUT URLs for parts 1..part_count; each response's ETag header goes to ``multipart_complete``."""
    if not 1 <= part_count <= MULTIPART_MAX_PARTS:
        raise ValueError(f"part_count must be between 1 and {MULTIPART_MAX_PARTS}")
    client, bucket = _presign_client(), _bucket()
    urls: list[PartUrl] = []
    with _translated("presign upload parts", key):
        for number in range(1, part_count + 1):
            url = client.generate_presigned_url(
                "upload_part",
                Params={"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number},
                ExpiresIn=settings.S3_PRESIGN_EXPIRY_S,
            )
            urls.append({"part_number": number, "url": url})
    return urls


def _parts_listed(*, key: str, upload_id: str) -> list[Part]:
    paginator = _client().get_paginator("list_parts")
    parts: list[Part] = []
    with _translated("list upload parts", key):
        for page in paginator.paginate(Bucket=_bucket(), Key=key, UploadId=upload_id):
            parts.extend({"part_number": p["PartNumber"], "etag": p["ETag"]} for p in page.get("Parts", []))
    return parts


def multipart_complete(*, key: str, upload_id: str, parts: list[Part] | None = None) -> None:
    """Assemble the uploaded parts into the object.

    Without ``parts`` the parts storage holds are used (listed server-side).
    Raises ``StorageObjectMissing`` for an unknown upload, ``StorageError`` for bad or too small parts.
    """
    if not parts:
        parts = _parts_listed(key=key, upload_id=upload_id)
        if not parts:
            raise StorageError(f"The multipart upload of {key} has no parts yet.", code="upload_incomplete", status=400)
    ordered = sorted(parts, key=lambda p: int(p["part_number"]))
    with _translated("complete multipart upload", key):
        _client().complete_multipart_upload(
            Bucket=_bucket(),
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": int(p["part_number"]), "ETag": _etag_quoted(p["etag"])} for p in ordered]
            },
        )


def multipart_abort(*, key: str, upload_id: str) -> None:
    """Drop a multipart upload and its parts; an unknown upload is fine (already gone)."""
    with contextlib.suppress(StorageObjectMissing), _translated("abort multipart upload", key):
        _client().abort_multipart_upload(Bucket=_bucket(), Key=key, UploadId=upload_id)


def presigned_get_create(*, key: str, download_name: str | None = None) -> str:
    """A URL a browser can GET the object from until ``S3_PRESIGN_EXPIRY_S`` passes."""
    params: dict[str, Any] = {"Bucket": _bucket(), "Key": key}
    if download_name:
        safe = download_name.replace('"', "").replace("\\", "")
        params["ResponseContentDisposition"] = f'attachment; filename="{safe}"'
    with _translated("presign GET", key):
        return str(
            _presign_client().generate_presigned_url(
                "get_object", Params=params, ExpiresIn=settings.S3_PRESIGN_EXPIRY_S
            )
        )


# --- objects (server side) -------------------------------------------------------------------


def object_head(*, key: str) -> ObjectInfo | None:
    """Size, ETag and content type of an object, or ``None`` when there is none."""
    with _translated("head object", key):
        try:
            response = _client().head_object(Bucket=_bucket(), Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
    return {
        "size": int(response["ContentLength"]),
        "etag": str(response.get("ETag", "")).strip('"'),
        "content_type": str(response.get("ContentType") or DEFAULT_CONTENT_TYPE),
    }


def object_download(*, key: str, dest: Path, hasher: Any = None) -> None:
    """Stream an object to ``dest``; a partial download never appears at ``dest``.

    ``hasher`` (a ``hashlib`` object) is fed every chunk, so a caller can verify a digest
    without reading the file again.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _translated("download object", key):
        body = _client().get_object(Bucket=_bucket(), Key=key)["Body"]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, contextlib.closing(body), _translated("download object", key):
            for chunk in body.iter_chunks(chunk_size=_DOWNLOAD_CHUNK_BYTES):
                out.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def object_upload(*, key: str, source: Path | bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
    """Store bytes or a file (up to 5 GiB, one PUT) under ``key``, replacing any object there."""
    client, bucket = _client(), _bucket()
    if isinstance(source, bytes | bytearray | memoryview):
        with _translated("upload object", key):
            client.put_object(Bucket=bucket, Key=key, Body=bytes(source), ContentType=content_type)
        return
    path = Path(source)
    size = path.stat().st_size
    if size > PUT_MAX_BYTES:
        raise StorageError(f"{path.name} is larger than one upload allows (5 GiB).", code="storage_too_large")
    with path.open("rb") as body, _translated("upload object", key):
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=size, ContentType=content_type)


def object_delete(*, key: str) -> None:
    """Delete an object; deleting a missing one is fine."""
    with contextlib.suppress(StorageObjectMissing), _translated("delete object", key):
        _client().delete_object(Bucket=_bucket(), Key=key)


def object_keys(*, prefix: str = "") -> list[str]:
    """Keys of the objects under ``prefix`` (all of them; meant for small listings and cleanup)."""
    paginator = _client().get_paginator("list_objects_v2")
    keys: list[str] = []
    with _translated("list objects", prefix or "/"):
        for page in paginator.paginate(Bucket=_bucket(), Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys
