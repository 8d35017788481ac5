"""The per-process model host: ONNX Runtime sessions in memory, least recently used, bounded in bytes.

Whichever process runs inference (the web process in inline mode, an inference worker in celery mode) has one
:class:`ModelHost` (:func:`model_host`). It gets artifacts from the machine's disk cache (inference/cache.py),
creates sessions through inference.runtime (CUDA when the build has it and it really initialises on the
session, CPU otherwise; the provider is logged and exported as a metric) and gives each loaded version a
micro-batcher (inference/batching.py).

Memory accounting: a session is counted as ``artifact bytes × SESSION_MEMORY_FACTOR``. ORT keeps the
initialisers (about the file size), and graph optimisation adds pre-packed or fused copies of many weights;
measuring real RSS per session is not possible from inside one process, so a conservative factor stands in.
``MODEL_MEMORY_BYTES`` bounds the sum; loading past it evicts the least recently used sessions first. One
model larger than the whole budget is still loaded (alone): refusing it would make it unservable.

Thread-safe: concurrent first requests for one version load it once (a lock per version); requests for
loaded versions take only a short global lock to mark the use.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from inference import cache, metrics, runtime
from inference.batching import Batcher
from inference.errors import ModelUnavailable

_cpu_fallback_logged = False
logger = logging.getLogger(__name__)

SESSION_MEMORY_FACTOR = 2.0
_DISK_TOUCH_INTERVAL_S = 600.0  # how often a model served from memory refreshes its disk-cache recency


@dataclass(frozen=True)
class ModelRef:
    """What a host needs to serve a version; plain values so it travels in a Celery message."""

    version_id: int
    artifact_key: str
    artifact_sha256: str
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    batchable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRef:
        return cls(**data)


@dataclass
class HostedModel:
    ref: ModelRef
    handle: runtime.InferenceSessionHandle
    provider: str
    size_bytes: int
    path: Path
    batcher: Batcher
    loaded_at: float
    disk_touched_at: float


class ModelHost:
    def __init__(
        self,
        *,
        memory_bytes: int | None = None,
        prefer_gpu: bool | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        self.memory_bytes = settings.MODEL_MEMORY_BYTES if memory_bytes is None else memory_bytes
        self.prefer_gpu = settings.INFERENCE_PREFER_GPU if prefer_gpu is None else prefer_gpu
        self.intra_op_threads = settings.INFERENCE_INTRA_OP_THREADS if intra_op_threads is None else intra_op_threads
        self._models: OrderedDict[int, HostedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[int, threading.Lock] = {}
        self._bytes = 0

    # --- reads ---------------------------------------------------------------------------------------

    def is_loaded(self, version_id: int) -> bool:
        return version_id in self._models

    def loaded_get(self, model: ModelRef) -> HostedModel | None:
        """The hosted model when this artifact of the version is in memory; never loads, never counts as a use."""
        hosted = self._models.get(model.version_id)
        return hosted if hosted is not None and hosted.ref.artifact_sha256 == model.artifact_sha256 else None

    def loaded_version_ids(self) -> list[int]:
        """Least recently used first."""
        with self._lock:
            return list(self._models)

    @property
    def used_bytes(self) -> int:
        return self._bytes

    # --- serving -------------------------------------------------------------------------------------

    def model_get(self, model: ModelRef) -> HostedModel:
        """The hosted model for a version, loading it (download included) when it is not in memory."""
        hosted = self.loaded_get(model)
        if hosted is not None:
            self._used(hosted, model)
            return hosted
        with self._load_lock(model.version_id):
            hosted = self.loaded_get(model)
            if hosted is not None:
                self._used(hosted, model)
                return hosted
            if model.version_id in self._models:  # same version id, different artifact: never serve the old bytes
                self.evict(model.version_id)
            return self._load(model)

    def _used(self, hosted: HostedModel, model: ModelRef) -> None:
        with self._lock:
            if model.version_id in self._models:
                self._models.move_to_end(model.version_id)
        metrics.cache_event("hit", "memory")
        if hosted.ref != model:  # batching settings edited since the load
            hosted.batcher.configure(max_batch_size=model.max_batch_size, max_queue_delay_ms=model.max_queue_delay_ms)
            hosted.batcher.batchable = model.batchable
            hosted.ref = model
        now = time.monotonic()
        if now - hosted.disk_touched_at > _DISK_TOUCH_INTERVAL_S:
            hosted.disk_touched_at = now
            try:
                os.utime(hosted.path)
            except OSError:
                pass  # evicted from disk meanwhile; the session in memory does not need the file

    def _load_lock(self, version_id: int) -> threading.Lock:
        with self._lock:
            lock = self._load_locks.get(version_id)
            if lock is None:
                lock = self._load_locks[version_id] = threading.Lock()
            return lock

    def _load(self, model: ModelRef) -> HostedModel:
        metrics.cache_event("miss", "memory")
        started = time.monotonic()
        path = cache.artifact_path(artifact_key=model.artifact_key, sha256=model.artifact_sha256)
        try:
            handle = self._session_create(path)
        except runtime.RuntimeFailure as exc:
            if path.exists():
                raise ModelUnavailable(f"The model could not be loaded: {exc.message}", retry_after=30) from exc
            # Another process evicted the file between the cache lookup and the load: fetch it again.
            path = cache.artifact_path(artifact_key=model.artifact_key, sha256=model.artifact_sha256)
            try:
                handle = self._session_create(path)
            except runtime.RuntimeFailure as again:
                raise ModelUnavailable(f"The model could not be loaded: {again.message}", retry_after=30) from again
        elapsed = time.monotonic() - started
        size = int(path.stat().st_size * SESSION_MEMORY_FACTOR)
        name = str(model.version_id)

        def run(feeds: dict[str, np.ndarray], output_names: list[str] | None) -> dict[str, np.ndarray]:
            return runtime.session_run(handle, feeds, output_names)

        in_calling_thread = handle.provider == runtime.CPU_PROVIDER and self.intra_op_threads == 1
        batcher = Batcher(
            run=run,
            name=name,
            batchable=model.batchable,
            max_batch_size=model.max_batch_size,
            max_queue_delay_ms=model.max_queue_delay_ms,
            provider=handle.provider,
            min_run_ms=settings.INFERENCE_BATCH_MIN_RUN_MS,
            max_concurrent_batches=settings.INFERENCE_BATCH_CONCURRENCY,
            # On the CPU provider with one intra-op thread the run computes in the calling thread: that thread's
            # CPU time is the run's cost, without the wait for the GIL afterwards (inference/batching.py).
            cost_clock=time.thread_time if in_calling_thread else time.perf_counter,
        )
        now = time.monotonic()
        hosted = HostedModel(
            ref=model,
            handle=handle,
            provider=handle.provider,
            size_bytes=size,
            path=path,
            batcher=batcher,
            loaded_at=now,
            disk_touched_at=now,
        )
        with self._lock:
            self._models[model.version_id] = hosted
            self._bytes += size
            victims = []
            while self._bytes > self.memory_bytes and len(self._models) > 1:
                victim_id, victim = next(iter(self._models.items()))
                if victim_id == model.version_id:
                    break
                del self._models[victim_id]
                self._bytes -= victim.size_bytes
                victims.append(victim)
            used = self._bytes
        for victim in victims:
            self._evicted(victim)
        metrics.cache_event("load", "memory")
        metrics.MODEL_LOAD_TIME.observe(elapsed)
        metrics.PROVIDER_INFO.labels(version=name, provider=handle.provider).set(1)
        metrics.MEMORY_BYTES.set(used)
        if handle.requested_gpu and not handle.gpu:
            # onnxruntime-gpu lists the CUDA provider even where no GPU or CUDA libraries are: say it once.
            global _cpu_fallback_logged
            level = logging.INFO if _cpu_fallback_logged else logging.WARNING
            _cpu_fallback_logged = True
            logger.log(level, "Version %s: CUDA was requested but the session runs on %s", name, handle.provider)
        logger.info(
            "Loaded version %s (%s bytes accounted) on %s in %.0f ms",
            name,
            size,
            handle.provider,
            elapsed * 1000,
        )
        return hosted

    def _session_create(self, path: Path) -> runtime.InferenceSessionHandle:
        return runtime.session_create(
            model_bytes_or_path=path, prefer_gpu=self.prefer_gpu, intra_op_threads=self.intra_op_threads
        )

    # --- eviction ------------------------------------------------------------------------------------

    def evict(self, version_id: int) -> bool:
        """Drop a version's session (requests already running on it finish). True when it was loaded."""
        with self._lock:
            hosted = self._models.pop(version_id, None)
            if hosted is None:
                return False
            self._bytes -= hosted.size_bytes
            used = self._bytes
        self._evicted(hosted)
        metrics.MEMORY_BYTES.set(used)
        return True

    def _evicted(self, hosted: HostedModel) -> None:
        hosted.batcher.close()
        metrics.cache_event("evict", "memory")
        metrics.PROVIDER_INFO.labels(version=str(hosted.ref.version_id), provider=hosted.provider).set(0)
        logger.info("Evicted version %s (%s bytes accounted) from memory", hosted.ref.version_id, hosted.size_bytes)

    def clear(self) -> None:
        for version_id in self.loaded_version_ids():
            self.evict(version_id)


# --- the process's host --------------------------------------------------------------------------------

_host: ModelHost | None = None
_host_lock = threading.Lock()


def model_host() -> ModelHost:
    """This process's host, made on first use (settings are read then)."""
    host = _host
    if host is None:
        with _host_lock:
            host = _host
            if host is None:
                host = ModelHost()
                _host_set(host)
    return host


def _host_set(host: ModelHost | None) -> ModelHost | None:
    global _host
    _host = host
    return host


def model_host_reset() -> None:
    """Forget this process's host (tests that change settings; after fork)."""
    global _host
    old, _host = _host, None
    if old is not None and os.getpid() == _host_pid:
        old.clear()


_host_pid = os.getpid()


def _after_fork() -> None:
    # Sessions, batcher threads and locks do not survive fork(): a child starts with an empty host.
    global _host, _host_lock, _host_pid
    _host, _host_lock, _host_pid = None, threading.Lock(), os.getpid()


os.register_at_fork(after_in_child=_after_fork)
