"""Run untrusted-model work in a child process with memory, CPU and wall-clock limits.

The child (`python -m inference._sandbox_child JOB.json`) gets a minimal environment (no
credentials), runs in the private temp dir that holds its copy of the model, limits itself with
RLIMIT_AS/RLIMIT_CPU/RLIMIT_FSIZE/RLIMIT_CORE before it reads the model, and streams one JSON
object per line on stdout. The parent kills the whole process group when the wall clock runs out,
so a hostile model can hang, crash or exhaust memory in the child without touching the worker.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHILD_MODULE = "inference._sandbox_child"
_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
_STDERR_TAIL = 4000


class SandboxError(Exception):
    """The sandbox itself could not run (infrastructure problem, not the model's fault)."""


def memory_reason(memory_limit_mb: int) -> str:
    return (
        f"The model needs more memory than the {memory_limit_mb} MB validation limit. "
        "Check for very large constant or intermediate tensors."
    )


def timeout_reason(timeout_s: float) -> str:
    return f"Loading or running the model took longer than {timeout_s:g} s, the validation time limit."


@dataclass
class SandboxOutcome:
    timeout_s: float
    memory_limit_mb: int
    returncode: int | None = None
    timed_out: bool = False
    messages: list[dict] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def error_message(self) -> dict | None:
        return next((m for m in reversed(self.messages) if m.get("type") == "error"), None)

    def failure_reason(self) -> str | None:
        """Why the child stopped early, in words for the publisher; None if it finished normally."""
        if self.timed_out or self.signal_name == "SIGXCPU":
            return timeout_reason(self.timeout_s)
        error = self.error_message()
        if error is not None:
            if error.get("kind") == "memory":
                return memory_reason(self.memory_limit_mb)
            return f"Validation could not check this model: {error.get('message', 'unknown error')}"
        if self.signal_name is not None:
            # SIGKILL we did not send is the kernel OOM killer; aborts/segfaults are almost always
            # failed allocations that native code did not check under the address-space limit.
            return f"{memory_reason(self.memory_limit_mb)} (The validation process was stopped by {self.signal_name}.)"
        if self.returncode not in (0, None):
            return f"Validation stopped unexpectedly (exit code {self.returncode})."
        return None


def _child_env(work_dir: Path) -> dict[str, str]:
    # Deliberately minimal: the child must not inherit database URLs, S3 keys or the like.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "HOME": str(work_dir),
        "TMPDIR": str(work_dir),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # validation measures on CPU; CUDA and RLIMIT_AS do not mix
    }


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def sandbox_run(
    *,
    job: dict,
    work_dir: Path,
    memory_limit_mb: int,
    timeout_s: float,
    on_message: Callable[[dict], None] | None = None,
) -> SandboxOutcome:
    """Run the child on `job` (written to work_dir/job.json) and pass each JSON line it prints to
    on_message as it arrives. Returns when the child exits or is killed at the deadline."""
    work_dir = Path(work_dir)
    job = {**job, "memory_limit_mb": memory_limit_mb, "timeout_s": timeout_s}
    job_path = work_dir / "job.json"
    job_path.write_text(json.dumps(job))
    stderr_path = work_dir / "child.stderr"
    outcome = SandboxOutcome(timeout_s=timeout_s, memory_limit_mb=memory_limit_mb)
    deadline = time.monotonic() + timeout_s
    with stderr_path.open("wb") as stderr_file:
        try:
            process = subprocess.Popen(
                [sys.executable, "-s", "-m", CHILD_MODULE, str(job_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                cwd=work_dir,
                env=_child_env(work_dir),
                start_new_session=True,  # own process group, so the kill takes everything it started
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError(f"Could not start the validation sandbox: {exc}") from exc
        try:
            _pump(process, outcome, deadline=deadline, on_message=on_message)
        finally:
            if process.poll() is None:
                _kill_group(process)
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
    outcome.returncode = process.returncode
    try:
        with stderr_path.open("rb") as handle:
            handle.seek(max(0, stderr_path.stat().st_size - _STDERR_TAIL))
            outcome.stderr_tail = handle.read().decode("utf-8", "replace")
    except OSError:
        pass
    if outcome.returncode != 0 or outcome.timed_out:
        logger.info(
            "validation sandbox ended rc=%s timed_out=%s stderr=%s",
            outcome.returncode,
            outcome.timed_out,
            outcome.stderr_tail[-1000:],
        )
    return outcome


def _pump(
    process: subprocess.Popen,
    outcome: SandboxOutcome,
    *,
    deadline: float,
    on_message: Callable[[dict], None] | None,
) -> None:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    received = 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = True
                _kill_group(process)
                return
            if not selector.select(timeout=min(remaining, 1.0)):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break  # EOF: the child exited or closed its output
            received += len(chunk)
            if received > _MAX_OUTPUT_BYTES:
                _kill_group(process)
                outcome.messages.append({"type": "error", "kind": "crash", "message": "too much output"})
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                _deliver(line, outcome, on_message)
    # After EOF the child should exit at once; still never wait past the deadline.
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        outcome.timed_out = True
        _kill_group(process)


def _deliver(line: bytes, outcome: SandboxOutcome, on_message: Callable[[dict], None] | None) -> None:
    line = line.strip()
    if not line:
        return
    try:
        message = json.loads(line)
    except ValueError:
        logger.warning("validation sandbox printed a non-JSON line: %r", line[:200])
        return
    if not isinstance(message, dict):
        return
    outcome.messages.append(message)
    if on_message is not None:
        on_message(message)
