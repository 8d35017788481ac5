"""Entry point of the validation sandbox child: `python -m inference._sandbox_child JOB.json`.

Protocol: one JSON object per line on the original stdout ({"type": "step"|"result"|"error"}).
fd 1 is then pointed at stderr so nothing native code prints can corrupt the protocol.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import traceback


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _limits_apply(*, memory_limit_mb: int, timeout_s: float) -> None:
    # The memory budget is on top of what the interpreter + numpy/onnx/ORT already map, so the
    # limit means "memory the model may use" whatever the runtime's own footprint is.
    address_space = _vm_size_bytes() + memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    cpu = math.ceil(timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 3))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024 * 1024, 64 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:  # die with the parent (Linux); the CPU limit covers it otherwise
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    started = time.monotonic()
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        protocol.write(json.dumps(message, default=str) + "\n")
        protocol.flush()

    with open(argv[1], encoding="utf-8") as handle:
        job = json.load(handle)

    from pathlib import Path

    # Import numpy, onnx and onnxruntime before the limits apply: they are not the model's cost.
    import onnx  # noqa: F401
    from google.protobuf.message import DecodeError  # noqa: F401

    from inference import runtime, validation  # noqa: F401

    _limits_apply(memory_limit_mb=int(job["memory_limit_mb"]), timeout_s=float(job["timeout_s"]))
    deadline = started + float(job["timeout_s"])
    try:
        result = validation.artifact_inspect(
            model_path=Path(job["model_path"]),
            source_dir=Path(job["source_dir"]) if job.get("source_dir") else None,
            sample_input=job.get("sample_input"),
            memory_limit_mb=int(job["memory_limit_mb"]),
            deadline=deadline,
            emit=lambda step: send({"type": "step", "step": step}),
        )
        send({"type": "result", **result})
    except MemoryError:
        send({"type": "error", "kind": "memory"})
        return 3
    except Exception as exc:  # report instead of a bare traceback; the parent blames the current step
        traceback.print_exc()
        send({"type": "error", "kind": "crash", "message": f"{type(exc).__name__}: {exc}"[:500]})
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
