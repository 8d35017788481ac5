"""The local disk cache of model artifacts, keyed by sha256 and shared by every process on the machine.

Layout: ``MODEL_CACHE_DIR/<sha[:2]>/<sha>.onnx``, with a lock file ``.<sha>.lock`` beside it.

- A file at its final name is complete and verified: downloads stream into a temporary file in the same
  directory, the sha256 is computed while streaming, the file is fsynced and then renamed (atomic).
- One download per machine: a process takes an exclusive ``flock`` on the sha's lock file, looks again, and
  downloads only when the file is still missing; the others wait on the lock and then reuse the file. A
  process that dies releases its lock with it.
- Least recently used: a use sets the file's mtime (atime is unreliable under ``relatime``), and after each
  download the oldest files are deleted until the cache fits ``MODEL_CACHE_DISK_BYTES`` (never the file
  just fetched; a file whose lock is held is skipped). Lock files stay: deleting a lock file that another
  process is waiting on would let two processes download at once.
- A cached artifact is served without asking object storage anything, so storage being down only matters
  for a first load (503 with ``Retry-After``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from inference import metrics
from inference.errors import ModelUnavailable
from marketplace.integrations import s3 as storage

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STALE_TEMP_S = 3600  # temporary files older than this belong to a download that died
STORAGE_RETRY_AFTER_S = 5
INTEGRITY_MESSAGE = "artifact integrity check failed"


def cache_dir() -> Path:
    return Path(settings.MODEL_CACHE_DIR)


def _sha_normalised(sha256: str) -> str:
    sha = (sha256 or "").strip().lower()
    if not _SHA256.match(sha):
        raise ModelUnavailable(f"The model's {INTEGRITY_MESSAGE}: it has no valid sha256.", retry_after=60)
    return sha


def _file_for(sha: str) -> Path:
    return cache_dir() / sha[:2] / f"{sha}.onnx"


def _touch(path: Path) -> bool:
    """Mark a cached file as used now; False when it is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _sha_locked(sha: str, *, blocking: bool = True) -> Iterator[bool]:
    """Exclusive lock on one sha across processes (and threads: each call opens its own file description)."""
    lock_path = cache_dir() / sha[:2] / f".{sha}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def artifact_cached(*, sha256: str) -> bool:
    """Whether the artifact is on local disk already (no download needed)."""
    try:
        return _file_for(_sha_normalised(sha256)).exists()
    except ModelUnavailable:
        return False


def artifact_path(*, artifact_key: str, sha256: str) -> Path:
    """The local path of a verified copy of the artifact, downloading it once per machine when missing.

    Raises ModelUnavailable: 503 with ``retry_after`` when storage is down or the object is missing, and
    "artifact integrity check failed" when the downloaded bytes do not hash to ``sha256``.
    """
    sha = _sha_normalised(sha256)
    path = _file_for(sha)
    if _touch(path):
        metrics.cache_event("hit", "disk")
        return path
    with _sha_locked(sha):
        if _touch(path):  # another process fetched it while this one waited for the lock
            metrics.cache_event("hit", "disk")
            return path
        metrics.cache_event("miss", "disk")
        _download(artifact_key=artifact_key, sha=sha, path=path)
    disk_evict(keep=path)
    return path


def _download(*, artifact_key: str, sha: str, path: Path) -> None:
    temp = path.parent / f".{sha}.{os.getpid()}.{threading.get_ident()}.download"
    hasher = hashlib.sha256()
    started = time.monotonic()
    try:
        try:
            storage.object_download(key=artifact_key, dest=temp, hasher=hasher)
        except storage.StorageUnavailable as exc:
            raise ModelUnavailable(
                "The model cannot be loaded now: object storage is unavailable.", retry_after=STORAGE_RETRY_AFTER_S
            ) from exc
        except storage.StorageObjectMissing as exc:
            raise ModelUnavailable("The model's artifact is missing from object storage.", retry_after=60) from exc
        except storage.StorageError as exc:
            raise ModelUnavailable(f"The model cannot be loaded now: {exc.message}", retry_after=30) from exc
        if hasher.hexdigest() != sha:
            logger.error("Artifact %s does not match its sha256 %s; discarded", artifact_key, sha)
            raise ModelUnavailable(f"The model's {INTEGRITY_MESSAGE}.", retry_after=60)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _dir_fsync(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    logger.info("Downloaded %s (%s bytes) in %.0f ms", artifact_key, path.stat().st_size, _ms_since(started))


def _dir_fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def disk_usage() -> list[tuple[Path, int, float]]:
    """(path, size, mtime) of every cached artifact; stale temporary files are removed on the way."""
    root = cache_dir()
    entries: list[tuple[Path, int, float]] = []
    now = time.time()
    if not root.exists():
        return entries
    for sub in root.iterdir():
        if not sub.is_dir():
            continue
        for item in sub.iterdir():
            try:
                info = item.stat()
            except FileNotFoundError:
                continue
            if item.suffix == ".onnx" and not item.name.startswith("."):
                entries.append((item, info.st_size, info.st_mtime))
            elif item.name.endswith((".download", ".part")) and now - info.st_mtime > _STALE_TEMP_S:
                with contextlib.suppress(FileNotFoundError):
                    item.unlink()
    return entries


def disk_evict(*, keep: Path | None = None) -> list[Path]:
    """Delete least recently used artifacts until the cache fits ``MODEL_CACHE_DISK_BYTES``."""
    budget = settings.MODEL_CACHE_DISK_BYTES
    entries = disk_usage()
    total = sum(size for _, size, _ in entries)
    evicted: list[Path] = []
    if total <= budget:
        return evicted
    for path, size, _ in sorted(entries, key=lambda entry: entry[2]):
        if total <= budget:
            break
        if keep is not None and path == keep:
            continue
        with _sha_locked(path.stem, blocking=False) as locked:
            if not locked:  # being downloaded or checked by another process right now
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
        total -= size
        evicted.append(path)
        metrics.cache_event("evict", "disk")
        logger.info("Evicted %s (%s bytes) from the model disk cache", path.name, size)
    return evicted
