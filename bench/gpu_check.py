#!/usr/bin/env python
"""GPU check: does the CUDA provider really run, and what does micro-batching give on it?

    .venv/bin/python bench/gpu_check.py [--seconds 3] [--dims 1024,4096,4096,1000] [--concurrency 64]

Builds an MLP (1024→4096→4096→1000, FP32, dynamic batch, random weights) with onnx.helper, creates a session
through inference.runtime with the CUDA provider preferred and checks what the session really got, then prints:

- bare ONNX Runtime throughput (rows/s) at batch 1, 8 and 64 (one thread);
- bare ONNX Runtime at ``--concurrency`` threads each running batch 1 (what serving without batching does);
- the model host + micro-batcher (inference.dispatch.infer_local, the serving code path) at the same
  concurrency, one row per request, and its ratio to both bare figures;
- "CUDA provider active: yes/no".

On a machine with an NVIDIA GPU (``/dev/nvidia0`` or ``nvidia-smi``) the CUDA provider must be active: the script
exits with status 1 when the session fell back to CPU (missing CUDA/cuDNN libraries, driver too old for the
onnxruntime-gpu build). Without a GPU it runs everything on CPU and says so; pass ``--small`` there for a quick run.
Needs no database, broker or object storage: the model is placed in a temporary model cache by its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def gpu_present() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def mlp_bytes(dims: list[int], *, seed: int = 0) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    previous = "input"
    for index, (fan_in, fan_out) in enumerate(zip(dims, dims[1:], strict=False)):
        weight = (rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, name=f"w{index}"),
            numpy_helper.from_array(np.zeros(fan_out, dtype=np.float32), name=f"b{index}"),
        ]
        out = "output" if index == len(dims) - 2 else f"h{index}"
        gemm = f"g{index}" if out != "output" else "output"
        nodes.append(helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [gemm]))
        if out != "output":
            nodes.append(helper.make_node("Relu", [gemm], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", dims[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", dims[-1]])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


def rows_per_second(run, *, rows_per_call: int, seconds: float) -> float:
    run()  # warm-up (CUDA kernels, arena growth)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        calls += 1
    return calls * rows_per_call / (time.perf_counter() - started)


def concurrent_rows_per_second(call, *, threads: int, seconds: float) -> float:
    stop = time.perf_counter() + seconds
    counts = [0] * threads
    errors: list[BaseException] = []

    def loop(index: int) -> None:
        try:
            while time.perf_counter() < stop:
                call()
                counts[index] += 1
        except BaseException as exc:  # reported below; a benchmark must not hide failures
            errors.append(exc)

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return sum(counts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    parser.add_argument("--dims", default="1024,4096,4096,1000", help="layer widths of the MLP")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    parser.add_argument("--small", action="store_true", help="a 256→512→512→100 MLP and 1 s per figure (CPU)")
    args = parser.parse_args()
    if args.small:
        args.dims, args.seconds = "256,512,512,100", 1.0
    dims = [int(d) for d in args.dims.split(",")]

    cache_dir = tempfile.mkdtemp(prefix="gpu-check-cache-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    os.environ["MODEL_CACHE_DIR"] = cache_dir
    os.environ.setdefault("INFERENCE_PREFER_GPU", "true")
    import django

    django.setup()
    import numpy as np

    from inference import runtime
    from inference.dispatch import ModelRef, infer_local
    from inference.host import model_host

    try:
        data = mlp_bytes(dims)
        sha = hashlib.sha256(data).hexdigest()
        cached = Path(cache_dir) / sha[:2] / f"{sha}.onnx"
        cached.parent.mkdir(parents=True)
        cached.write_bytes(data)
        print(f"MLP {'→'.join(map(str, dims))}, {len(data) / 1e6:.1f} MB, FP32, dynamic batch")
        print(f"ORT providers available: {', '.join(runtime.available_providers())}")

        handle = runtime.session_create(model_bytes_or_path=cached, prefer_gpu=True)
        active = handle.provider == runtime.CUDA_PROVIDER
        print(f"Session providers: {', '.join(handle.providers)} (runs on {handle.provider})")
        if gpu_present() and not active:
            print("CUDA provider active: no — a GPU is present but the session fell back to CPU")
            return 1
        session = handle.session
        rng = np.random.default_rng(1)

        bare: dict[int, float] = {}
        for batch in (1, 8, 64):
            x = rng.standard_normal((batch, dims[0]), dtype=np.float32)
            bare[batch] = rows_per_second(
                lambda x=x: session.run(None, {"input": x}), rows_per_call=batch, seconds=args.seconds
            )
            print(f"bare ORT, batch {batch:>2}, 1 thread: {bare[batch]:>12,.0f} rows/s")

        one_row = rng.standard_normal((1, dims[0]), dtype=np.float32)
        bare_concurrent = concurrent_rows_per_second(
            lambda: session.run(None, {"input": one_row}), threads=args.concurrency, seconds=args.seconds
        )
        print(f"bare ORT, batch  1, {args.concurrency} threads: {bare_concurrent:>10,.0f} rows/s")

        model = ModelRef(
            version_id=1,
            artifact_key="gpu-check/mlp.onnx",
            artifact_sha256=sha,
            max_batch_size=args.max_batch_size,
            max_queue_delay_ms=args.max_queue_delay_ms,
            batchable=True,
        )
        hosted = model_host().model_get(model)
        hosted_rows = concurrent_rows_per_second(
            lambda: infer_local(model=model, inputs={"input": one_row}, output_names=None, deadline_s=30),
            threads=args.concurrency,
            seconds=args.seconds,
        )
        print(
            f"model host + micro-batcher, 1 row a request, {args.concurrency} threads: {hosted_rows:>10,.0f} rows/s "
            f"on {hosted.provider} (max batch {args.max_batch_size}, max delay {args.max_queue_delay_ms} ms)"
        )
        print(f"  × bare ORT at the same concurrency: {hosted_rows / bare_concurrent:.2f}")
        print(f"  × bare ORT batch 64 (the ceiling):  {hosted_rows / bare[64]:.2f}")
        print(f"CUDA provider active: {'yes' if active else 'no'}")
        return 0
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
