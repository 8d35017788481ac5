"""Inference workers for the tests: real ``celery worker`` subprocesses on the inference queue.

Fixtures:
- ``model_cache_dir`` (session, autouse): ``MODEL_CACHE_DIR`` points at a temp dir for the whole session, so
  no test (nor a warm thread started by a publish) writes into ``var/model-cache``.
- ``inference_worker_factory`` (function): ``start(**options) -> InferenceWorker``; every worker it started is
  stopped afterwards. Needs ``s3_server`` (the worker downloads artifacts from it).
- ``inference_worker_process`` (function): one started worker, and ``INFERENCE_DISPATCH="celery"`` for the
  test, so ``inference.dispatch.infer`` sends requests to it. ``.pid``, ``.kill()`` (SIGKILL by default),
  ``.log()``.

A worker is ``celery -A marketplace worker -Q <INFERENCE_QUEUE>,<INFERENCE_BROADCAST_QUEUE> -P solo``
with the test's database (the test database's name), broker, result backend, S3 settings and model cache
dir in its environment. ``start`` returns once the worker answers a control ping, so its queues (the
broadcast subscription included) are consumed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 60.0


@pytest.fixture(scope="session", autouse=True)
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from django.test.utils import override_settings

    from inference.host import model_host_reset

    path = tmp_path_factory.mktemp("model-cache")
    override = override_settings(MODEL_CACHE_DIR=str(path))
    override.enable()
    model_host_reset()
    try:
        yield path
    finally:
        override.disable()
        model_host_reset()


@dataclass
class InferenceWorker:
    process: subprocess.Popen
    hostname: str
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker (SIGKILL: dies at once, mid-request) and wait for it to exit."""
        if self.alive():
            os.kill(self.process.pid, sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), SIGKILL when it does not exit in time."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _database_url() -> str:
    """The URL of the database the tests use now (pytest-django's test_<name>), for another process."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    engine = db["ENGINE"]
    if "postgresql" not in engine:
        return os.environ.get("DATABASE_URL", "")
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def inference_worker_env(**extra: str) -> dict[str, str]:
    """The environment a worker needs to serve like this test process would."""
    from django.conf import settings

    from marketplace.celery import app

    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "marketplace.settings.test",
            "DATABASE_URL": _database_url(),
            # What this process's Celery app really uses (Celery prefers the environment over settings).
            "CELERY_BROKER_URL": app.conf.broker_url,
            "CELERY_RESULT_BACKEND": app.conf.result_backend or app.conf.broker_url,
            "INFERENCE_REDIS_URL": settings.INFERENCE_REDIS_URL,
            "INFERENCE_QUEUE": settings.INFERENCE_QUEUE,
            "INFERENCE_BROADCAST_QUEUE": settings.INFERENCE_BROADCAST_QUEUE,
            "INFERENCE_PREFER_GPU": "true" if settings.INFERENCE_PREFER_GPU else "false",
            "INFERENCE_INTRA_OP_THREADS": str(settings.INFERENCE_INTRA_OP_THREADS or 0),
            "MODEL_CACHE_DIR": str(settings.MODEL_CACHE_DIR),
            "MODEL_CACHE_DISK_BYTES": str(settings.MODEL_CACHE_DISK_BYTES),
            "MODEL_MEMORY_BYTES": str(settings.MODEL_MEMORY_BYTES),
            "S3_ENDPOINT_URL": settings.S3_ENDPOINT_URL,
            "S3_PUBLIC_ENDPOINT_URL": settings.S3_PUBLIC_ENDPOINT_URL,
            "S3_BUCKET": settings.S3_BUCKET,
            "S3_ACCESS_KEY_ID": settings.S3_ACCESS_KEY_ID,
            "S3_SECRET_ACCESS_KEY": settings.S3_SECRET_ACCESS_KEY,
            "PYTHONUNBUFFERED": "1",
            # As docs/operations.md runs inference workers: at-most-once tasks only, no unacked bookkeeping; one
            # batch runs while the next fills.
            "CELERY_BROKER_ACK_EMULATION": "false",
            "INFERENCE_BATCH_CONCURRENCY": "2",
        }
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def _queues_purge(queues: list[str]) -> None:
    from marketplace.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_purge(queue)


def inference_worker_start(
    *, log_dir: Path, concurrency: int = 16, env: dict[str, str] | None = None, timeout: float = _START_TIMEOUT_S
) -> InferenceWorker:
    from django.conf import settings

    from marketplace.celery import app

    hostname = f"inference-{uuid.uuid4().hex[:10]}@{socket.gethostname()}"
    log_path = log_dir / f"{hostname.split('@')[0]}.log"
    env = {**(env if env is not None else inference_worker_env()), "INFERENCE_WORKER_THREADS": str(concurrency)}
    queues = f"{settings.INFERENCE_QUEUE},{settings.INFERENCE_BROADCAST_QUEUE}"
    command = [
        sys.executable, "-m", "celery", "-A", "marketplace", "worker",
        "-Q", queues, "-P", "solo", "-n", hostname,
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = InferenceWorker(process=process, hostname=hostname, log_path=log_path, env=env)
    deadline = time.monotonic() + timeout
    while True:
        if not worker.alive():
            raise RuntimeError(f"The inference worker exited during startup:\n{worker.log()[-4000:]}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            return worker
        if time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(
                f"The inference worker {hostname} did not answer a ping in {timeout} s:\n{worker.log()[-4000:]}"
            )


@pytest.fixture
def inference_worker_factory(s3_server: Any, tmp_path: Path) -> Iterator[Callable[..., InferenceWorker]]:
    from django.conf import settings

    started: list[InferenceWorker] = []
    _queues_purge([settings.INFERENCE_QUEUE])

    def start(*, concurrency: int = 16, **env_extra: str) -> InferenceWorker:
        worker = inference_worker_start(
            log_dir=tmp_path, concurrency=concurrency, env=inference_worker_env(**env_extra)
        )
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture
def inference_worker_process(inference_worker_factory: Callable[..., InferenceWorker]) -> Iterator[InferenceWorker]:
    """One inference worker subprocess, and celery dispatch for this test."""
    from django.test.utils import override_settings

    worker = inference_worker_factory()
    with override_settings(INFERENCE_DISPATCH="celery"):
        yield worker
