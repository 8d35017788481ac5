#!/usr/bin/env python
"""Inference benchmark: the cost of the metered /v2 path over bare ONNX Runtime, and what micro-batching buys.

    .venv/bin/python bench/inference.py [--duration 6] [--redis-url redis://127.0.0.1:6379/15]

It starts everything it needs on this machine (SeaweedFS from scripts/seaweedfs.py, gunicorn like scripts/run.py,
a Celery inference worker), recreates and migrates the PostgreSQL database ``marketplace_bench_inference``, seeds
published listings, free plans, a subscription and an API key through the services (each version is validated by
the real validation pipeline, run eagerly here), measures, prints a table, and stops and removes what it started
(its Redis keys are deleted by pattern; nothing else in that Redis database is touched).

One small ONNX model (an MLP, 20 features → 2 scores, one row a request) is measured, with the same request:
  (a) bare ``session.run`` in this process, from Python threads;
  (b) ``POST /bench/session-run``: a minimal Django view that only decodes the JSON, runs the session and encodes
      the outputs (bench/bench_urls.py, routed only by bench/settings.py), in gunicorn like the product;
  (c) ``POST /v2/models/<listing>/infer``: the full metered path (key, subscription, rate limit, quota, usage
      record, metrics), ``INFERENCE_DISPATCH=inline``;
  (d) the same in celery mode: the web process sends each request to a Celery worker (``-P solo``, 16 run threads).
at concurrency 1 and 32. Micro-batching: two batchable MLPs (256 → 1024 → 1024 → 10, whose row costs less than
the request around it, and 2048 → 8192 → 8192 → 10, 336 MB, where one row alone is a memory-bound matrix-vector
product) through the /v2 path at concurrency 64, one row a request, with ``max_batch_size`` 32 and
``max_queue_delay_ms`` 2 against ``max_batch_size`` 1 (off), alternating in ``--rounds`` rounds.

By default the servers run as the product does (gunicorn 2 workers × 16 threads, one ONNX Runtime intra-op
thread per session: INFERENCE_INTRA_OP_THREADS=1). For comparison with more threads:

    .venv/bin/python bench/inference.py --threads 32

HTTP load: ``wrk`` (Debian package ``wrk``) with a Lua script for the POST body, keep-alive connections, loopback.
The machine has 2 cores: the load generator, gunicorn, Redis, PostgreSQL and the worker share them, so the
client's CPU use is printed next to each figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/marketplace_bench_inference"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
# The product's web server (scripts/run.py): gunicorn, 2 workers × 16 threads (gthread).
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 16
WORKER_THREADS = 16  # INFERENCE_WORKER_THREADS of the Celery inference worker
TINY_SIZES = (20, 64, 64, 2)
# Batchable models: the small MLP makes a row cheap next to the request around it; the large one is where one row
# alone wastes most of a matrix multiply (memory-bound at batch 1), as in the models micro-batching is for.
BATCH_MODELS = {"small": (256, 1024, 1024, 10), "large": (2048, 8192, 8192, 10)}
TARGETS = {
    "c_over_b_rps": 0.6,
    "c_minus_b_p50_ms": 1.0,
    "d_minus_b_p50_ms": 3.0,
    "d_rps_c32": 600.0,
    "batching_gain": 3.0,
}
# Keys this script may leave in its Redis database; deleted on exit (never FLUSHDB: the database may be shared).
REDIS_PATTERNS = ("inf:*", "inference:reply:*", "celery-task-meta-*", "_kombu.*", "unacked*", "inference*", "celery")


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# --- models -------------------------------------------------------------------------------------------------


def mlp_bytes(sizes: tuple[int, ...], *, seed: int = 7) -> bytes:
    """A ReLU MLP built with onnx.helper: input 'x' FP32 [N, sizes[0]], output 'y' FP32 [N, sizes[-1]]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous = "x"
    last = len(sizes) - 2
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        bias = np.zeros(fan_out, np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]))
        added = "y" if i == last else f"a{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [added]))
        if i != last:
            nodes.append(helper.make_node("Relu", [added], [f"h{i}"]))
            previous = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench")
    model.ir_version = 9
    return model.SerializeToString()


def request_body(features: int, *, seed: int = 1) -> tuple[bytes, dict[str, Any]]:
    row = np.round(np.random.default_rng(seed).standard_normal(features), 4).tolist()
    sample = {"x": [row]}
    body = {"inputs": [{"name": "x", "shape": [1, features], "datatype": "FP32", "data": [row]}]}
    return json.dumps(body).encode(), sample


# --- processes ----------------------------------------------------------------------------------------------


@dataclass
class Processes:
    running: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, args: list[str], *, env: dict[str, str], log_dir: Path) -> subprocess.Popen:
        logfile = (log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.running.append((name, process))
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 15.0) -> None:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.running = [(n, p) for n, p in self.running if p is not process]

    def stop_all(self) -> None:
        for _name, process in reversed(list(self.running)):
            self.stop(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, *, process: subprocess.Popen, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited during startup")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s")
        time.sleep(0.2)


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system CPU ticks) of every process (from /proc; Linux only)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def _tree(roots: set[int], table: dict[int, tuple[int, int]]) -> list[int]:
    """The processes ``roots`` and all their descendants."""
    members = []
    for pid in table:
        ancestor = pid
        while ancestor in table:
            if ancestor in roots:
                members.append(pid)
                break
            ancestor = table[ancestor][0]
    return members


def tree_cpu_seconds(roots: set[int]) -> float:
    """User + system CPU of the processes ``roots`` and all their descendants."""
    table = _process_table()
    return sum(table[pid][1] for pid in _tree(roots, table)) / os.sysconf("SC_CLK_TCK")


def tree_context_switches(roots: set[int]) -> int:
    """Context switches, voluntary and not, of every thread of the processes ``roots`` and their descendants: each
    time a thread gave up or lost the CPU (waiting for the GIL, a lock, a socket), which costs more than it shows in
    CPU time on a VM."""
    switches = 0
    for pid in _tree(roots, _process_table()):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                status = Path(f"/proc/{pid}/task/{task}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if "ctxt_switches:" in line:  # voluntary_ctxt_switches, nonvoluntary_ctxt_switches
                    switches += int(line.split()[-1])
    return switches


def database_recreate(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    if not name.startswith("marketplace_bench"):
        raise SystemExit(f"Refusing to drop {name!r}: the benchmark only recreates a marketplace_bench* database.")
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def redis_cleanup(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    removed = 0
    for pattern in REDIS_PATTERNS:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 500):
            removed += client.delete(*keys[start : start + 500])
    client.close()
    return removed


# --- seeding through the services ---------------------------------------------------------------------------


@dataclass
class Seeded:
    raw_key: str
    slugs: dict[str, str]  # model name -> listing slug
    versions: dict[str, int]  # model name -> version id


def seed(models: dict[str, tuple[bytes, dict[str, Any]]]) -> Seeded:
    """Publish each model as a listing (validated by the real pipeline, eagerly), offer a free plan, subscribe a
    buyer organization to all of them and give it an API key with a rate limit no benchmark reaches."""
    from accounts.services import API_KEY_RATE_LIMIT_MAX, api_key_create, organization_create, user_create
    from billing.services import PLAN_QUOTA_MAX_UNITS, plan_create, subscription_create
    from catalog import services as catalog_services
    from catalog.models import VersionStatus
    from marketplace.celery import app
    from marketplace.integrations import s3
    from moderation.services import version_approve

    app.conf.task_always_eager = True  # validation runs here, in this process
    s3.bucket_ensure()
    admin = user_create(email="admin@bench.local", password="bench-pass-123", name="Bench Admin")
    admin.is_staff = admin.is_superuser = True
    admin.save(update_fields=["is_staff", "is_superuser"])
    publisher = user_create(email="publisher@bench.local", password="bench-pass-123", name="Bench Publisher")
    buyer = user_create(email="buyer@bench.local", password="bench-pass-123", name="Bench Buyer")
    publisher_org = organization_create(user=publisher, name="Bench Labs")
    buyer_org = organization_create(user=buyer, name="Bench Buyer Inc")
    slugs, versions = {}, {}
    for name, (payload, sample) in models.items():
        listing = catalog_services.listing_create(
            organization=publisher_org,
            user=publisher,
            name=f"Bench {name}",
            slug=f"bench-{name}",
            summary=f"Benchmark model {name}.",
            domain="other",
            task="classification",
            tags=["bench"],
            license="mit",
        )
        version, _instructions = catalog_services.version_create(
            listing=listing,
            user=publisher,
            version="1.0.0",
            artifact_size=len(payload),
            artifact_sha256=hashlib.sha256(payload).hexdigest(),
            sample_input=sample,
        )
        s3.object_upload(key=version.artifact_key, source=payload)
        catalog_services.version_upload_complete(version=version, user=publisher)
        version.refresh_from_db()
        if version.status != VersionStatus.READY:
            raise RuntimeError(f"{name}: validation ended in {version.status}: {version.status_reason}")
        version = catalog_services.version_submit(version=version, user=publisher)
        version_approve(version=version, actor=admin, note="benchmark")
        plan = plan_create(
            listing=listing, user=publisher, name="Bench free", kind="free", monthly_quota_units=PLAN_QUOTA_MAX_UNITS
        )
        subscription_create(organization=buyer_org, user=buyer, plan=plan, accept_license=True)
        slugs[name], versions[name] = listing.slug, version.pk
    _key, raw_key = api_key_create(
        organization=buyer_org, user=buyer, name="bench", rate_limit_per_second=API_KEY_RATE_LIMIT_MAX
    )
    app.conf.task_always_eager = False
    return Seeded(raw_key=raw_key, slugs=slugs, versions=versions)


def batching_configure(*, version_id: int, max_batch_size: int, max_queue_delay_ms: float) -> None:
    """Per-version serving settings (an operator's change; there is no publisher-facing service for them)."""
    from catalog.models import Version

    Version.objects.filter(pk=version_id).update(max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms)


# --- load generators ----------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    concurrency: int
    requests: int
    failures: int
    seconds: float
    p50_ms: float
    p99_ms: float
    client_cores: float  # CPU the load generator itself used, in cores
    server_cpu_ms: float = 0.0  # CPU of the serving processes (gunicorn, and the Celery worker) per request
    server_switches: float = 0.0  # context switches of their threads per request
    worker_cpu_ms: float = 0.0  # the Celery worker's part of it
    rows_per_request: int = 1

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rps * self.rows_per_request


_WRK_LUA = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,"non2xx":%%d,' ..
    '"socket_errors":%%d}\\n', summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


def servers_settle(servers: dict[str, int], *, timeout_s: float = 15.0) -> float:
    """Wait until the servers have finished what the last load left them: wrk stops with up to ``concurrency``
    requests in flight, and the servers compute those after it (for the large MLP without batching, most of a
    second), during the next measurement if it started at once. Idle: at most one clock tick (10 ms) of CPU in
    0.2 s. Returns the seconds waited."""
    roots = set(servers.values())
    started = time.monotonic()
    last = tree_cpu_seconds(roots)
    while time.monotonic() - started < timeout_s:
        time.sleep(0.2)
        now = tree_cpu_seconds(roots)
        if now - last <= 1.5 / os.sysconf("SC_CLK_TCK"):
            break
        last = now
    return time.monotonic() - started


def wrk_run(
    *,
    label: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    work_dir: Path,
    servers: dict[str, int],
) -> Result:
    header_lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    script = work_dir / "post.lua"
    script.write_text(_WRK_LUA % (_lua_string(body.decode()), header_lines))
    threads = min(concurrency, 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = {name: tree_cpu_seconds({pid}) for name, pid in servers.items()}
    switches_before = tree_context_switches(set(servers.values()))
    completed = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "10s", "-s",
         str(script), url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = {name: tree_cpu_seconds({pid}) - server_before[name] for name, pid in servers.items()}
    switches = tree_context_switches(set(servers.values())) - switches_before
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{completed.stdout}\n{completed.stderr}")
    data = json.loads(line[6:])
    waited = servers_settle(servers)
    if waited > 1.0:
        log(f"  the servers finished what that load left them {waited:.1f} s after it")
    duration = data["duration_us"] / 1e6
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    answered = data["requests"]
    return Result(
        label=label,
        concurrency=concurrency,
        requests=answered - data["non2xx"],
        failures=data["non2xx"] + data["socket_errors"],
        seconds=duration,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        client_cores=client_cpu / duration if duration else 0.0,
        server_cpu_ms=sum(server_cpu.values()) * 1000 / answered if answered else 0.0,
        server_switches=switches / answered if answered else 0.0,
        worker_cpu_ms=server_cpu.get("worker", 0.0) * 1000 / answered if answered else 0.0,
    )


def bare_run(*, label: str, session: Any, feeds: dict[str, np.ndarray], concurrency: int, seconds: float) -> Result:
    """(a): Python threads calling ``session.run`` back to back for ``seconds``: the same closed loop as wrk's."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds
    barrier = threading.Barrier(concurrency + 1)

    def loop(out: list[float]) -> None:
        barrier.wait()
        clock = time.perf_counter
        while True:
            started = clock()
            if started >= stop_at:
                return
            session.run(None, feeds)
            out.append(clock() - started)

    threads = [threading.Thread(target=loop, args=(out,)) for out in latencies]
    for thread in threads:
        thread.start()
    begin = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - begin
    every = sorted(x for out in latencies for x in out)
    return Result(
        label=label,
        concurrency=concurrency,
        requests=len(every),
        failures=0,
        seconds=elapsed,
        p50_ms=statistics.median(every) * 1000,
        p99_ms=every[min(len(every) - 1, int(len(every) * 0.99))] * 1000,
        client_cores=0.0,
    )


# --- servers ------------------------------------------------------------------------------------------------


def gunicorn_start(
    procs: Processes, *, env: dict[str, str], port: int, workers: int, threads: int, log_dir: Path, name: str
):
    # As scripts/run.py serves the product, without the access log (a per-request write to stdout).
    args = [PY, "-m", "gunicorn", "marketplace.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(workers),
            "--threads", str(threads), "--worker-class", "gthread", "--keep-alive", "75"]  # fmt: skip
    process = procs.start(name, args, env=env, log_dir=log_dir)
    wait_http(f"http://127.0.0.1:{port}/v2/health/live", process=process)
    return process


def celery_start(procs: Processes, *, env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    from marketplace.celery import app

    hostname = f"bench-inference-{os.getpid()}@{socket.gethostname()}"
    queues = f"{env.get('INFERENCE_QUEUE', 'inference')},{env.get('INFERENCE_QUEUE', 'inference')}.broadcast"
    args = [PY, "-m", "celery", "-A", "marketplace", "worker", "-Q", queues, "-P", "solo", "-n", hostname,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]  # fmt: skip
    # As docs/operations.md runs inference workers: at-most-once tasks only, so no unacked bookkeeping; one batch
    # runs while the next fills.
    worker_env = {
        **env,
        "CELERY_BROKER_ACK_EMULATION": "false",
        "INFERENCE_BATCH_CONCURRENCY": env.get("INFERENCE_BATCH_CONCURRENCY", "2"),
        "INFERENCE_WORKER_THREADS": str(WORKER_THREADS),
    }
    process = procs.start("celery", args, env=worker_env, log_dir=log_dir)
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"The Celery worker did not start; see {log_dir / 'celery.log'}")
    return process


# --- report -------------------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _median_round(measured: list[Result], *, key: Callable[[Result], float]) -> Result:
    """The round whose ``key`` is the median (the lower of the two middle ones for an even count)."""
    return sorted(measured, key=key)[(len(measured) - 1) // 2]


def _paired_median(
    runs: dict[str, list[Result]], top: str, bottom: str, value: Callable[[Result, Result], float]
) -> float:
    """The median over rounds of value(top run, bottom run of the same round)."""
    return statistics.median(value(t, b) for t, b in zip(runs[top], runs[bottom], strict=False))


def report(
    results: dict[str, Result],
    runs: dict[str, list[Result]],
    batching: dict[str, list[Result]],
    load: tuple[float, float],
    workers: int,
    threads: int,
) -> str:
    intra = os.environ.get("INFERENCE_INTRA_OP_THREADS") or "1 (the default)"
    batches = os.environ.get("INFERENCE_BATCH_CONCURRENCY") or "1 in the web processes (the default), 2 in the worker"
    rounds = max((len(measured) for measured in runs.values()), default=1)
    lines = [
        f"gunicorn {workers} workers × {threads} threads (gthread); Celery worker -P solo with "
        f"{WORKER_THREADS} run threads; INFERENCE_BATCH_CONCURRENCY: {batches}; "
        f"INFERENCE_INTRA_OP_THREADS: {intra}; server CPU excludes Redis and PostgreSQL. "
        f"(b)–(d): the median of {rounds} rounds (b and c alternating); ratios are medians of same-round pairs.",
        "",
        "| path | concurrency | req/s | p50 ms | p99 ms | failed | server CPU ms/req | context switches/req "
        "| client CPU (cores) | req/s by round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, result in results.items():
        server = f"{result.server_cpu_ms:.2f}" if result.server_cpu_ms else "—"
        if result.worker_cpu_ms:
            server += f" ({result.worker_cpu_ms:.2f} in the worker)"
        by_round = " / ".join(f"{r.rps:,.0f}" for r in runs.get(key, []))
        switches = f"{result.server_switches:.1f}" if result.server_switches else "—"
        lines.append(
            f"| {result.label} | {result.concurrency} | {result.rps:,.0f} | {result.p50_ms:.3f} | {result.p99_ms:.3f} "
            f"| {result.failures} | {server} | {switches} | {result.client_cores:.2f} | {by_round} |"
        )
    lines.append("")
    b1, b32 = results.get("b1"), results.get("b32")
    c1, c32 = results.get("c1"), results.get("c32")
    d1, d32 = results.get("d1"), results.get("d32")
    lines += ["| ratio | value | target |", "|---|---|---|"]
    ratio_target, verdict = TARGETS["c_over_b_rps"], _verdict
    if b1 and c1:
        ratio = _paired_median(runs, "c1", "b1", lambda c, b: c.rps / b.rps)
        lines.append(f"| (c)/(b) req/s at 1 | {ratio:.2f}× | ≥ 0.6×: {verdict(ratio >= ratio_target)} |")
    if b32 and c32:
        ratio = _paired_median(runs, "c32", "b32", lambda c, b: c.rps / b.rps)
        lines.append(f"| (c)/(b) req/s at 32 | {ratio:.2f}× | ≥ 0.6×: {verdict(ratio >= ratio_target)} |")
    if b1 and c1:
        diff = _paired_median(runs, "c1", "b1", lambda c, b: c.p50_ms - b.p50_ms)
        ok = diff <= TARGETS["c_minus_b_p50_ms"]
        lines.append(f"| (c) − (b) p50 at 1 | {diff:+.2f} ms | ≤ 1 ms: {_verdict(ok)} |")
    if b1 and d1:
        diff = _paired_median(runs, "d1", "b1", lambda d, b: d.p50_ms - b.p50_ms)
        ok = diff <= TARGETS["d_minus_b_p50_ms"]
        lines.append(f"| (d) − (b) p50 at 1 | {diff:+.2f} ms | ≤ 3 ms: {_verdict(ok)} |")
    if d32:
        lines.append(f"| (d) req/s at 32 | {d32.rps:,.0f} | ≥ 600: {_verdict(d32.rps >= TARGETS['d_rps_c32'])} |")
    if b32 and d32:
        lines.append(f"| (d)/(b) req/s at 32 | {d32.rps / b32.rps:.2f}× | |")
    if results.get("a1") and b1:
        lines.append(f"| (b) − (a) p50 at 1 | {b1.p50_ms - results['a1'].p50_ms:+.2f} ms | |")
    lines.append("")
    if batching:
        lines += [
            f"Micro-batching: the median of {max(len(r) for r in batching.values())} rounds (on and off alternating); "
            "each gain is the median of same-round ratios.",
            "",
            "| micro-batching (/v2, concurrency 64) | rows/s | p50 ms | p99 ms | failed | server CPU ms/row "
            "| rows/s by round |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, measured in batching.items():
            result = _median_round(measured, key=lambda r: r.rows_per_s)
            lines.append(
                f"| {result.label} | {result.rows_per_s:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | "
                f"{result.failures} | {result.server_cpu_ms:.2f}"
                + (f" ({result.worker_cpu_ms:.2f} in the worker)" if result.worker_cpu_ms else "")
                + f" | {' / '.join(f'{r.rows_per_s:,.0f}' for r in batching[key])} |"
            )
        lines.append("")
        for mode in ("inline", "celery"):
            for name in BATCH_MODELS:
                on, off = batching.get(f"{mode}-{name}-on"), batching.get(f"{mode}-{name}-off")
                if on and off and all(r.rows_per_s for r in off):
                    gains = [a.rows_per_s / b.rows_per_s for a, b in zip(on, off, strict=False)]
                    gain = statistics.median(gains)
                    met = _verdict(gain >= TARGETS["batching_gain"])
                    by_round = " / ".join(f"{g:.2f}×" for g in gains)
                    lines.append(
                        f"Batching gain, {mode}, {name} MLP: {gain:.2f}× (target ≥ 3×: {met}; by round {by_round})"
                    )
    lines.append(f"\nLoad average (1 min) before: {load[0]:.2f}, after: {load[1]:.2f}; {os.cpu_count()} CPUs.")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement (default 6)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each server's runs")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--threads", type=int, default=GUNICORN_THREADS, help="gunicorn threads per worker")
    parser.add_argument("--workers", type=int, default=GUNICORN_WORKERS, help="gunicorn worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (b), (c) and (d); medians are reported")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,d,batching")
    args = parser.parse_args()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    duration = max(1, int(round(args.duration)))
    warmup = max(1, int(round(args.warmup)))

    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    procs = Processes()
    seaweed = None
    load_before = os.getloadavg()[0]
    results: dict[str, Result] = {}
    runs: dict[str, list[Result]] = {}  # every round of (b), (c) and (d)
    batching: dict[str, list[Result]] = {}  # every round of each batching measurement
    try:
        # Object storage.
        sys.path.insert(0, str(ROOT / "scripts"))
        import seaweedfs  # scripts/seaweedfs.py

        seaweed = seaweedfs.SeaweedFS(
            data_dir=work / "seaweedfs",
            access_key=seaweedfs.DEFAULT_ACCESS_KEY,
            secret_key=seaweedfs.DEFAULT_SECRET_KEY,
            volume_size_limit_mb=256,
            log=(work / "seaweedfs.log").open("wb"),
        )
        endpoint = seaweed.start()
        tiny = mlp_bytes(TINY_SIZES)
        tiny_body, tiny_sample = request_body(TINY_SIZES[0])
        batch_models = {name: mlp_bytes(sizes) for name, sizes in BATCH_MODELS.items()}
        batch_requests = {name: request_body(sizes[0], seed=2) for name, sizes in BATCH_MODELS.items()}
        model_path = work / "tiny.onnx"
        model_path.write_bytes(tiny)
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "bench.settings",
                "DEBUG": "0",
                "DATABASE_URL": args.database_url,
                "CELERY_BROKER_URL": args.redis_url,
                "CELERY_RESULT_BACKEND": args.redis_url,
                "INFERENCE_REDIS_URL": args.redis_url,
                "S3_ENDPOINT_URL": endpoint,
                "S3_BUCKET": "bench-inference",
                "S3_ACCESS_KEY_ID": seaweedfs.DEFAULT_ACCESS_KEY,
                "S3_SECRET_ACCESS_KEY": seaweedfs.DEFAULT_SECRET_KEY,
                "MODEL_CACHE_DIR": str(work / "model-cache"),
                "PROMETHEUS_MULTIPROC_DIR": str(work / "prometheus"),
                "VALIDATION_WORK_DIR": str(work / "validation"),
                "USAGE_SPOOL_DIR": str(work / "usage-spool"),
                "BENCH_MODEL_PATH": str(model_path),
                "PYTHONUNBUFFERED": "1",
                "EMAIL_URL": "dummymail://",  # the publish notifications go nowhere
            }
        )
        for folder in ("model-cache", "prometheus", "validation"):
            (work / folder).mkdir()
        os.environ.update(env)
        log(f"recreating {args.database_url.rsplit('/', 1)[1]} and migrating")
        database_recreate(args.database_url)
        subprocess.run([PY, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
        redis_cleanup(args.redis_url)

        import django

        django.setup()
        log("seeding listings, plans, a subscription and a key through the services (validation included)")
        to_seed = {"tiny": (tiny, tiny_sample)}
        if "batching" not in skip:
            for name, payload in batch_models.items():
                for state in ("on", "off"):
                    to_seed[f"{name}-{state}"] = (payload, batch_requests[name][1])
        seeded = seed(to_seed)
        for name in BATCH_MODELS if "batching" not in skip else ():
            batching_configure(version_id=seeded.versions[f"{name}-on"], max_batch_size=32, max_queue_delay_ms=2.0)
            batching_configure(version_id=seeded.versions[f"{name}-off"], max_batch_size=1, max_queue_delay_ms=0.0)

        def batching_runs(mode: str) -> None:
            # On and off alternate, round after round (off first in every other round), so that a slow spell of
            # this machine hits both: single back-to-back runs swung the small MLP's gain from 0.5x to 1.8x.
            for name, sizes in BATCH_MODELS.items():
                body = batch_requests[name][0]
                shape = "→".join(str(n) for n in sizes)
                urls = {state: f"{base}/v2/models/{seeded.slugs[f'{name}-{state}']}/infer" for state in ("on", "off")}
                for url in urls.values():
                    # As long as a measurement: every serving process loads its own copy of the model on its first
                    # request, and ONNX Runtime's first runs at each new batch size are slow (the first round of
                    # the large MLP with batching on ran at a third of the later ones after a 2 s warm-up).
                    http("warm-up", url, body, auth, 64, max(warmup, duration))
                for round_ in range(1, args.rounds + 1):
                    for state in ("on", "off") if round_ % 2 else ("off", "on"):
                        log(f"round {round_}: batching {state}, {name} MLP, {mode}, concurrency 64")
                        batching.setdefault(f"{mode}-{name}-{state}", []).append(
                            http(
                                f"{mode}, MLP {shape}, batching {state} (max_batch_size {32 if state == 'on' else 1})",
                                urls[state], body, auth, 64, duration,
                            )
                        )  # fmt: skip

        auth = {"Authorization": f"Bearer {seeded.raw_key}"}

        if "a" not in skip:
            from inference import runtime

            session = runtime.session_create(model_bytes_or_path=str(model_path)).session
            feeds = {"x": np.asarray(json.loads(tiny_body)["inputs"][0]["data"], dtype=np.float32)}
            bare_run(label="warm-up", session=session, feeds=feeds, concurrency=1, seconds=0.5)
            for c in (1, 32):
                log(f"(a) bare session.run, {c} threads")
                results[f"a{c}"] = bare_run(
                    label="(a) session.run in process", session=session, feeds=feeds, concurrency=c, seconds=duration
                )

        servers: dict[str, int] = {}
        served = {"v2": 0}

        def http(label: str, url: str, body: bytes, headers: dict[str, str], c: int, seconds: int) -> Result:
            result = wrk_run(
                label=label,
                url=url,
                body=body,
                headers=headers,
                concurrency=c,
                seconds=seconds,
                work_dir=work,
                servers=servers,
            )
            if "/v2/" in url:
                served["v2"] += result.requests
            return result

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        tiny_url = f"{base}/v2/models/{seeded.slugs['tiny']}/infer"
        if not {"b", "c", "batching"} <= skip:
            log(f"gunicorn inline: {args.workers} workers × {args.threads} threads")
            web = gunicorn_start(
                procs, env={**env, "INFERENCE_DISPATCH": "inline"}, port=port, workers=args.workers,
                threads=args.threads, log_dir=work, name="web-inline",
            )  # fmt: skip
            servers = {"web": web.pid}
            if "b" not in skip:
                http("warm-up", f"{base}/bench/session-run", tiny_body, {}, 32, warmup)
            if "c" not in skip:
                http("warm-up", tiny_url, tiny_body, auth, 32, warmup)
            # (b) and (c) alternate, round after round, so that a slow spell of this shared machine hits both.
            for round_ in range(1, args.rounds + 1):
                for c in (1, 32):
                    if "b" not in skip:
                        log(f"round {round_}: (b) minimal view, concurrency {c}")
                        runs.setdefault(f"b{c}", []).append(
                            http("(b) minimal Django view", f"{base}/bench/session-run", tiny_body, {}, c, duration)
                        )
                    if "c" not in skip:
                        log(f"round {round_}: (c) /v2 inline, concurrency {c}")
                        runs.setdefault(f"c{c}", []).append(
                            http("(c) /v2 metered, inline", tiny_url, tiny_body, auth, c, duration)
                        )
            if "batching" not in skip:
                batching_runs("inline")
            procs.stop(web)

        if "d" not in skip or "batching" not in skip:
            log(f"Celery worker (-P solo, {WORKER_THREADS} run threads) and gunicorn in celery mode")
            celery_env = {**env, "INFERENCE_DISPATCH": "celery"}
            worker = celery_start(procs, env=celery_env, log_dir=work)
            web = gunicorn_start(
                procs, env=celery_env, port=port, workers=args.workers, threads=args.threads, log_dir=work,
                name="web-celery",
            )  # fmt: skip
            servers = {"web": web.pid, "worker": worker.pid}
            if "d" not in skip:
                http("warm-up", tiny_url, tiny_body, auth, 32, warmup)
                for round_ in range(1, args.rounds + 1):
                    for c in (1, 32):
                        log(f"round {round_}: (d) /v2 celery, concurrency {c}")
                        runs.setdefault(f"d{c}", []).append(
                            http("(d) /v2 metered, celery", tiny_url, tiny_body, auth, c, duration)
                        )
            if "batching" not in skip:
                batching_runs("celery")
            procs.stop(web)
            procs.stop(worker)

        # Exactly one usage record per successful call: the buffer is flushed to PostgreSQL and counted. wrk counts
        # the responses it read before its timer stopped; calls still in flight then finish and are recorded too.
        from inference.models import UsageRecord
        from inference.services import usage_flush

        flushed_at = time.perf_counter()
        usage_flush(wait_s=10)  # drains the whole buffer
        records = UsageRecord.objects.count()
        log(
            f"ledger: {records:,} usage records for {served['v2']:,} successful /v2 responses counted by wrk "
            f"(flushed in {time.perf_counter() - flushed_at:.1f} s)"
        )
        for key, measured in runs.items():
            results[key] = _median_round(measured, key=lambda r: r.rps)
        order = ["a1", "a32", "b1", "b32", "c1", "c32", "d1", "d32"]
        results = {k: results[k] for k in order if k in results}
        print()
        print(report(results, runs, batching, (load_before, os.getloadavg()[0]), args.workers, args.threads))
        return 0
    finally:
        procs.stop_all()
        if seaweed is not None:
            seaweed.stop()
        try:
            redis_cleanup(args.redis_url)
        except Exception as exc:  # Redis gone: nothing to clean
            log(f"Redis cleanup skipped: {exc}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
