"""The model host on real SeaweedFS and ONNX Runtime: the disk cache by sha256 (integrity, one download per
machine, LRU budget, storage outages) and the in-memory session LRU (bytes bound, eviction, one load per version,
metrics)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from inference import cache, metrics, runtime
from inference.errors import ModelUnavailable
from inference.host import SESSION_MEMORY_FACTOR, ModelHost, ModelRef
from tests.inference.onnx_factories import (
    onnx_classifier_bytes,
    onnx_identity_bytes,
    onnx_regressor_bytes,
    random_bytes,
)


def _events(event: str, tier: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value("model_cache_events_total", {"event": event, "tier": tier}) or 0.0


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cache_dir(settings, tmp_path) -> Path:
    path = tmp_path / "model-cache"
    settings.MODEL_CACHE_DIR = str(path)
    return path


def _stored(s3, data: bytes) -> tuple[str, str]:
    key = f"artifacts/host-tests/{uuid.uuid4().hex}/model.onnx"
    s3.put(key, data)
    return key, hashlib.sha256(data).hexdigest()


_version_ids = iter(range(10_000_000, 11_000_000))


def _ref(s3, data: bytes, **extra) -> ModelRef:
    key, sha = _stored(s3, data)
    return ModelRef(version_id=next(_version_ids), artifact_key=key, artifact_sha256=sha, **extra)


# --- disk cache ------------------------------------------------------------------------------------------


def test_artifact_is_downloaded_once_verified_and_stored_by_sha(s3, cache_dir):
    data = random_bytes(200_000, seed=1)
    key, sha = _stored(s3, data)
    misses, hits = _events("miss", "disk"), _events("hit", "disk")

    path = cache.artifact_path(artifact_key=key, sha256=sha)
    again = cache.artifact_path(artifact_key=key, sha256=sha.upper())  # same file, whatever the case

    assert path == again == cache_dir / sha[:2] / f"{sha}.onnx"
    assert path.read_bytes() == data
    assert _events("miss", "disk") - misses == 1 and _events("hit", "disk") - hits == 1
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path.name]  # no temp files
    assert cache.artifact_cached(sha256=sha)


def test_an_artifact_that_does_not_match_its_sha256_is_rejected_and_not_kept(s3, cache_dir):
    key, _ = _stored(s3, random_bytes(50_000, seed=2))
    claimed = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(ModelUnavailable) as excinfo:
        cache.artifact_path(artifact_key=key, sha256=claimed)

    assert excinfo.value.status == 503 and "artifact integrity check failed" in excinfo.value.message
    leftovers = [p for p in cache_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []
    assert not cache.artifact_cached(sha256=claimed)


def _fetch_in_child(key: str, sha: str, barrier, results) -> None:
    from marketplace.integrations import s3 as storage

    storage._clients.clear()  # never share the parent's HTTP connections after fork
    misses, hits = _events("miss", "disk"), _events("hit", "disk")
    barrier.wait()
    path = cache.artifact_path(artifact_key=key, sha256=sha)
    results.put((os.getpid(), _events("miss", "disk") - misses, _events("hit", "disk") - hits, str(path)))


def test_processes_fetching_the_same_artifact_download_it_once(s3, cache_dir):
    data = random_bytes(8_000_000, seed=3)
    key, sha = _stored(s3, data)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()

    children = [context.Process(target=_fetch_in_child, args=(key, sha, barrier, results)) for _ in range(4)]
    for child in children:
        child.start()
    reports = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)

    assert all(child.exitcode == 0 for child in children)
    assert sum(report[1] for report in reports) == 1  # one download on the machine
    assert sum(report[2] for report in reports) == 3  # the others waited on the lock and reused the file
    assert {report[3] for report in reports} == {str(cache_dir / sha[:2] / f"{sha}.onnx")}
    assert Path(reports[0][3]).read_bytes() == data


def test_disk_budget_evicts_the_least_recently_used_artifacts(s3, cache_dir, settings):
    blobs = [random_bytes(100_000, seed=10 + i) for i in range(3)]
    stored = [_stored(s3, blob) for blob in blobs]
    settings.MODEL_CACHE_DISK_BYTES = 250_000  # room for two
    evictions = _events("evict", "disk")

    first = cache.artifact_path(artifact_key=stored[0][0], sha256=stored[0][1])
    second = cache.artifact_path(artifact_key=stored[1][0], sha256=stored[1][1])
    os.utime(first, (1_000, 1_000))
    os.utime(second, (2_000, 2_000))
    cache.artifact_path(artifact_key=stored[0][0], sha256=stored[0][1])  # a use makes the first the most recent
    third = cache.artifact_path(artifact_key=stored[2][0], sha256=stored[2][1])

    assert first.exists() and third.exists() and not second.exists()
    assert _events("evict", "disk") - evictions == 1

    settings.MODEL_CACHE_DISK_BYTES = 50_000  # smaller than one artifact: the one just fetched stays
    again = cache.artifact_path(artifact_key=stored[1][0], sha256=stored[1][1])
    assert again.exists() and not first.exists() and not third.exists()


def test_storage_down_on_a_first_load_is_a_503_and_cached_models_keep_serving(s3, cache_dir, settings):
    cached = _ref(s3, onnx_classifier_bytes())
    uncached = _ref(s3, onnx_regressor_bytes())
    host = ModelHost(memory_bytes=10**9, prefer_gpu=False, intra_op_threads=1)
    host.model_get(cached)

    settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{_closed_port()}"  # object storage stops answering
    with pytest.raises(ModelUnavailable) as excinfo:
        host.model_get(uncached)
    assert excinfo.value.status == 503 and excinfo.value.retry_after >= 1
    assert "object storage is unavailable" in excinfo.value.message

    # Loaded in memory: serves. A new process (fresh host) loads it from the disk cache without storage.
    x = np.ones((2, 4), dtype=np.float32)
    for serving in (host, ModelHost(memory_bytes=10**9, prefer_gpu=False, intra_op_threads=1)):
        hosted = serving.model_get(cached)
        result = hosted.batcher.submit(inputs={"input": x}, output_names=None, timeout_s=5)
        assert result.outputs["label"].shape == (2,)


def test_a_missing_artifact_is_a_503(s3, cache_dir):
    ref = ModelRef(version_id=next(_version_ids), artifact_key="artifacts/none/model.onnx", artifact_sha256="a" * 64)
    with pytest.raises(ModelUnavailable) as excinfo:
        ModelHost(prefer_gpu=False).model_get(ref)
    assert excinfo.value.status == 503 and "missing" in excinfo.value.message


# --- sessions in memory ----------------------------------------------------------------------------------


def test_sessions_are_bounded_in_bytes_and_evicted_least_recently_used(s3, cache_dir):
    models = (onnx_classifier_bytes(), onnx_regressor_bytes(), onnx_identity_bytes())
    refs = [_ref(s3, data) for data in models]
    sizes = [int(len(data) * SESSION_MEMORY_FACTOR) for data in models]
    budget = sizes[0] + sizes[1] + 10  # any two fit together, not all three
    host = ModelHost(memory_bytes=budget, prefer_gpu=False, intra_op_threads=1)
    loads, evictions, hits = _events("load", "memory"), _events("evict", "memory"), _events("hit", "memory")

    host.model_get(refs[0])
    host.model_get(refs[1])
    host.model_get(refs[0])  # used again: the second is now the least recently used
    host.model_get(refs[2])

    assert host.loaded_version_ids() == [refs[0].version_id, refs[2].version_id]
    assert host.used_bytes == sizes[0] + sizes[2] <= budget
    assert _events("load", "memory") - loads == 3
    assert _events("evict", "memory") - evictions == 1
    assert _events("hit", "memory") - hits == 1

    assert host.evict(refs[0].version_id) and not host.evict(refs[0].version_id)
    assert host.loaded_version_ids() == [refs[2].version_id] and host.used_bytes == sizes[2]


def test_a_model_larger_than_the_budget_is_still_served_alone(s3, cache_dir):
    small, large = _ref(s3, onnx_identity_bytes()), _ref(s3, onnx_classifier_bytes())
    host = ModelHost(memory_bytes=10, prefer_gpu=False)
    host.model_get(small)
    host.model_get(large)
    assert host.loaded_version_ids() == [large.version_id]


def test_concurrent_first_requests_load_a_version_once(s3, cache_dir):
    ref = _ref(s3, onnx_classifier_bytes(), batchable=True)
    host = ModelHost(memory_bytes=10**9, prefer_gpu=False, intra_op_threads=1)
    loads, downloads = _events("load", "memory"), _events("miss", "disk")
    got: list = []
    barrier = threading.Barrier(8)

    def first_request() -> None:
        barrier.wait()
        got.append(host.model_get(ref))

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(got) == 8 and len({id(h) for h in got}) == 1
    assert _events("load", "memory") - loads == 1 and _events("miss", "disk") - downloads == 1


def test_the_provider_is_the_one_the_session_really_runs_and_is_exported(s3, cache_dir):
    ref = _ref(s3, onnx_classifier_bytes())
    host = ModelHost(memory_bytes=10**9, prefer_gpu=True)  # CUDA when it really initialises; CPU here

    hosted = host.model_get(ref)

    assert hosted.provider == hosted.handle.session.get_providers()[0]
    labels = {"version": str(ref.version_id), "provider": hosted.provider}
    assert REGISTRY.get_sample_value("model_provider_info", labels) == 1
    assert (REGISTRY.get_sample_value("model_load_duration_seconds_count") or 0) >= 1
    host.evict(ref.version_id)
    assert REGISTRY.get_sample_value("model_provider_info", labels) == 0


@pytest.mark.parametrize(("intra_op_threads", "clock"), [(1, time.thread_time), (2, time.perf_counter)])
def test_a_model_computing_in_the_calling_thread_is_costed_in_its_cpu_time(s3, cache_dir, intra_op_threads, clock):
    """On the CPU provider with one intra-op thread a run computes in the calling thread, so the batcher reads its
    cost from that thread's CPU clock (not the wall time that includes the wait for the GIL); with more threads
    the caller's share is not the cost, and it reads the wall clock."""
    host = ModelHost(memory_bytes=10**9, prefer_gpu=False, intra_op_threads=intra_op_threads)

    hosted = host.model_get(_ref(s3, onnx_classifier_bytes()))

    assert hosted.provider == runtime.CPU_PROVIDER
    assert hosted.batcher._cost_clock is clock


def test_a_new_artifact_under_the_same_version_id_is_never_served_from_the_old_session(s3, cache_dir):
    host = ModelHost(memory_bytes=10**9, prefer_gpu=False)
    old = _ref(s3, onnx_classifier_bytes())
    key, sha = _stored(s3, onnx_regressor_bytes())
    new = ModelRef(version_id=old.version_id, artifact_key=key, artifact_sha256=sha)

    first, second = host.model_get(old), host.model_get(new)

    assert first is not second and second.ref.artifact_sha256 == sha
    assert host.loaded_version_ids() == [old.version_id]
