"""Real services for the tests: SeaweedFS (S3) and an in-thread Celery worker.

Fixtures:
- ``s3_server`` (session): starts SeaweedFS on free loopback ports in a temp dir, points the
  S3 settings and ``STORAGES["default"]`` at it with a bucket of its own, yields the endpoint.
- ``s3`` (function): the running server as an :class:`S3Service`; empties the bucket afterwards.
- ``celery_worker`` (function): a real Celery worker consuming the test broker; implies
  ``transactional_db``.
- ``wait_for(predicate, timeout=...)``: a plain helper that polls until ``predicate()`` is truthy.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _seaweedfs_module() -> Any:
    """scripts/ is not a package; load scripts/seaweedfs.py by path (once)."""
    name = "marketplace_scripts_seaweedfs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "seaweedfs.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def wait_for(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, message: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(message or f"Condition not met within {timeout} s: {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


# --- object storage --------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Service:
    """The test session's SeaweedFS. The methods go through ``marketplace.integrations.s3``,
    so they use the current settings (the ones a test may have changed), except ``clear``."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str

    def put(self, key: str, data: bytes) -> None:
        from marketplace.integrations import s3

        s3.object_upload(key=key, source=data)

    def get(self, key: str) -> bytes:
        from marketplace.integrations import s3

        with tempfile.TemporaryDirectory(prefix="s3-get-") as tmp:
            path = Path(tmp) / "object"
            s3.object_download(key=key, dest=path)
            return path.read_bytes()

    def keys(self, prefix: str = "") -> list[str]:
        from marketplace.integrations import s3

        return s3.object_keys(prefix=prefix)

    def clear(self) -> None:
        """Delete every object in the session's bucket, whatever the current settings say."""
        from django.test.utils import override_settings

        from marketplace.integrations import s3

        with override_settings(
            S3_ENDPOINT_URL=self.endpoint_url,
            S3_BUCKET=self.bucket,
            S3_ACCESS_KEY_ID=self.access_key,
            S3_SECRET_ACCESS_KEY=self.secret_key,
        ):
            for key in s3.object_keys():
                s3.object_delete(key=key)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """SeaweedFS for the whole session, with the S3 settings pointed at it and the bucket made."""
    from django.conf import settings
    from django.test.utils import override_settings

    from marketplace.integrations import s3

    seaweedfs = _seaweedfs_module()
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    log = (data_dir / "weed.log").open("wb")
    server = seaweedfs.SeaweedFS(
        data_dir=data_dir,
        access_key=settings.S3_ACCESS_KEY_ID,
        secret_key=settings.S3_SECRET_ACCESS_KEY,
        volume_size_limit_mb=64,
        log=log,
    )
    endpoint = server.start()
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    storages = cast(dict[str, dict[str, Any]], copy.deepcopy(settings.STORAGES))
    storages["default"]["OPTIONS"] = {
        **storages["default"].get("OPTIONS", {}),
        "endpoint_url": endpoint,
        "bucket_name": bucket,
        "access_key": settings.S3_ACCESS_KEY_ID,
        "secret_key": settings.S3_SECRET_ACCESS_KEY,
    }
    # override_settings (not plain assignment) so Django drops its cached storage backends.
    override = override_settings(
        S3_ENDPOINT_URL=endpoint, S3_PUBLIC_ENDPOINT_URL=endpoint, S3_BUCKET=bucket, STORAGES=storages
    )
    override.enable()
    try:
        s3.bucket_ensure()
        yield S3Service(
            endpoint_url=endpoint,
            bucket=bucket,
            access_key=settings.S3_ACCESS_KEY_ID,
            secret_key=settings.S3_SECRET_ACCESS_KEY,
        )
    finally:
        override.disable()
        server.stop()
        log.close()


@pytest.fixture
def s3(s3_server: S3Service) -> Iterator[S3Service]:
    """Object storage for one test; whatever the test stored is deleted afterwards."""
    yield s3_server
    s3_server.clear()


# --- Celery ----------------------------------------------------------------------------------


def _queues_purge(app: Any, queues: list[str]) -> None:
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_purge(queue)


@pytest.fixture
def celery_worker(transactional_db: None) -> Iterator[Any]:
    """A real Celery worker (solo pool, in a thread) consuming ``default`` and the validation queue.

    It runs tasks in another thread with its own database connection, so it sees only committed
    rows: this fixture therefore requests ``transactional_db`` (don't combine it with a test that
    needs ``db``'s rollback). Tasks enqueued with ``transaction.on_commit`` reach it when the
    surrounding transaction commits (at once outside ``atomic``). Eager mode is off while it runs;
    both queues are purged first so nothing from an earlier test runs here. Poll for the effects
    of its tasks with ``wait_for``.
    """
    from celery.contrib.testing.worker import start_worker
    from django.conf import settings

    from marketplace.celery import app

    queues = [app.conf.task_default_queue or "default", settings.VALIDATION_QUEUE]
    saved = {key: app.conf[key] for key in ("task_always_eager", "worker_hijack_root_logger")}
    app.conf.task_always_eager = False
    app.conf.worker_hijack_root_logger = False  # keep pytest's log capture
    try:
        _queues_purge(app, queues)
        with start_worker(
            app,
            pool="solo",
            concurrency=1,
            queues=queues,
            perform_ping_check=False,  # it needs a result backend; the fixture waits for the consumer instead
            shutdown_timeout=30.0,
        ) as worker:
            yield worker
    finally:
        app.conf.update(saved)
