"""Serving: how inference requests are dispatched, limited and metered, and where models are cached."""

from marketplace.env import VAR_DIR, env

# "inline": the web process hosts the models (single machine, the embedded default).
# "celery": requests go to Celery inference workers on INFERENCE_QUEUE (GPU machines), with a deadline.
INFERENCE_DISPATCH = env.str("INFERENCE_DISPATCH", default="inline")
INFERENCE_QUEUE = env.str("INFERENCE_QUEUE", default="inference")
INFERENCE_DEADLINE_S = env.float("INFERENCE_DEADLINE_S", default=10.0)
# Micro-batching is skipped for a model whose runs take less than this: handing a request to the batcher's
# thread and back costs two thread switches, more than a batch could save (inference/batching.py). On this
# project's 2-core VM a switch costs ~0.05-0.1 ms, and the benchmark's tiny model, 0.015 ms a run in a loop,
# costs 0.07-0.12 ms when each run follows a wake-up (an inference worker at concurrency 1: cold caches).
INFERENCE_BATCH_MIN_RUN_MS = env.float("INFERENCE_BATCH_MIN_RUN_MS", default=0.15)
# Batches of one version a process may run at once; with one intra-op thread a batch keeps one core busy. One for
# web processes hosting models inline (a machine runs several, one batch each: with two each, the large MLP of
# bench/inference.py cost 12.7 instead of 10.2 ms of CPU a row, docs/benchmarks.md); an inference worker, one
# process per GPU or machine, runs with 2 (docs/operations.md), so that one batch runs while the next one fills.
INFERENCE_BATCH_CONCURRENCY = env.int("INFERENCE_BATCH_CONCURRENCY", default=1)
# Celery mode: requests that meet in one web process while a message is being sent go in the next message
# together, up to this many (one publish, one worker receive and one batched run for all of them).
INFERENCE_SEND_MAX_REQUESTS = env.int("INFERENCE_SEND_MAX_REQUESTS", default=64)
# Celery mode, on an inference worker (``-P solo``): threads that run requests for models not loaded yet or not
# cheap, so that concurrent ones meet in a version's batcher; cheap runs of loaded models use the worker's own.
INFERENCE_WORKER_THREADS = env.int("INFERENCE_WORKER_THREADS", default=16)
INFERENCE_MAX_BODY_BYTES = env.int("INFERENCE_MAX_BODY_BYTES", default=16 * 1024**2)
INFERENCE_MAX_ELEMENTS = env.int("INFERENCE_MAX_ELEMENTS", default=2_000_000)
INFERENCE_DEFAULT_RATE_PER_SECOND = env.int("INFERENCE_DEFAULT_RATE_PER_SECOND", default=100)
# Admission leases: a key calling at a high rate (rate x lease >= 4 calls) is granted up to 32 calls at once by the
# Redis admission, which this process then admits without a round trip for at most this long (inference/metering.py).
# 0 turns leases off: every call is one round trip.
INFERENCE_ADMISSION_LEASE_MS = env.int("INFERENCE_ADMISSION_LEASE_MS", default=100)
INFERENCE_PREFER_GPU = env.bool("INFERENCE_PREFER_GPU", default=True)
# One intra-op thread per session by default: a server runs many requests at once (and micro-batches them), and
# ONNX Runtime's per-core spinning thread pool in every process would eat the CPU those requests need.
# 0 means ONNX Runtime's own default (one thread per core), better for one big model per machine.
INFERENCE_INTRA_OP_THREADS = env.int("INFERENCE_INTRA_OP_THREADS", default=1) or None
# Redis for rate limits, quotas, idempotency and the usage buffer. Empty: a local backend that needs no
# server (the embedded default; counters in process memory and usage written straight to the database).
INFERENCE_REDIS_URL = env.str("INFERENCE_REDIS_URL", default="")
# Usage records of successful calls are written here (one line, before the response) and pushed to Redis in
# batches by a thread; segments of a process that died are pushed by the next one (inference/usage_spool.py).
USAGE_SPOOL_DIR = env.path("USAGE_SPOOL_DIR", default=str(VAR_DIR / "usage-spool"))
INFERENCE_IDEMPOTENCY_TTL_S = env.int("INFERENCE_IDEMPOTENCY_TTL_S", default=24 * 3600)

# Model hosting: artifacts on local disk keyed by sha256, sessions in memory, both least-recently-used.
MODEL_CACHE_DIR = env.path("MODEL_CACHE_DIR", default=str(VAR_DIR / "model-cache"))
MODEL_CACHE_DISK_BYTES = env.int("MODEL_CACHE_DISK_BYTES", default=20 * 1024**3)
MODEL_MEMORY_BYTES = env.int("MODEL_MEMORY_BYTES", default=8 * 1024**3)

PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
