"""The usage records of successful calls: on local disk before the response, in Redis soon after, in batches.

Waiting for Redis to acknowledge each usage record was the second Redis round trip of every metered call, and on
a threaded server the costliest part of it: each blocking call hands the GIL to another thread and waits to get it
back (measured by bench/inference.py: (c) at concurrency 32 went from about 1,000 to 1,600 req/s without it). So:

- ``append`` (the hot path, before the response is sent) copies the encoded record as one line into this process's
  spool segment, a file mapped into memory (``mmap``, shared), and queues it. The mapped pages belong to the
  kernel's page cache: the process may die (``kill -9``) right after and the line is still in the file. No system
  call, so the thread keeps the GIL (a ``write()`` would hand it to another thread and wait to get it back). Each
  segment's blocks are allocated when it is created (``posix_fallocate``), so a full disk is an ``OSError`` there
  (the caller then records the usage synchronously), never a SIGBUS on a later write.
- A pusher thread sends what is queued to the Redis usage buffer in one ``RPUSH`` every ``PUSH_DELAY_S`` (50 ms) at most
  (inference.services.usage_flush then moves the buffer to PostgreSQL): one round trip for many calls, and no
  thread woken per call. Redis unreachable: the batch is written to the ledger
  directly; both down: kept and retried, nothing is dropped.
- Segments roll at ``SEGMENT_BYTES``; a rolled segment whose lines are all pushed is deleted. Each
  segment is ``flock``-ed by the process writing it, so one that nobody holds belongs to a process that died:
  ``recover`` pushes its lines again and deletes it. At least once: the ledger drops duplicates by request id.
- ``drain`` (at exit, and before ``usage_flush`` reads the buffer) waits until everything queued is pushed.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import mmap
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024**2  # about 15,000 usage records
PUSH_MAX_LINES = 1_000
# Records are durable once on disk, so the pusher need not wake for each: it gathers for this long after the first
# one, then sends them in one RPUSH (sooner when PUSH_MAX_LINES are waiting, or when drain() asks). Each cycle
# wakes the pusher twice and makes it take the GIL from the request threads, so cycles are few: 50 ms (records
# reach PostgreSQL with the next usage flush, every 2 s, either way).
PUSH_DELAY_S = 0.05
RETRY_S = 1.0

Push = Callable[[list[bytes]], None]  # sends lines to Redis; raises MeteringUnavailable when it cannot
Write = Callable[[list[bytes]], None]  # writes lines to the ledger directly


@dataclass
class _Segment:
    path: Path
    fd: int
    map: mmap.mmap
    offset: int = 0
    written: int = 0
    pushed: int = 0
    rolled: bool = False

    def close(self) -> None:
        if self.fd >= 0:
            self.map.close()
            os.close(self.fd)
            self.fd = -1


class UsageSpool:
    def __init__(self, *, directory: Path, push: Push, write: Write) -> None:
        self.directory = Path(directory)
        self._push = push
        self._write = write
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[tuple[_Segment, bytes]] = deque()
        self._segment: _Segment | None = None
        self._segments: list[_Segment] = []  # rolled ones not fully pushed yet, then the current one
        self._pid = os.getpid()
        self._prefix = f"{socket.gethostname()}-{self._pid}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self._busy = False  # the pusher holds a batch it has not pushed yet
        self._hurry = False  # drain() is waiting: push without gathering
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- the hot path -------------------------------------------------------------------------------

    def append(self, line: bytes) -> None:
        """Make one encoded usage record durable on this machine and queue it for Redis."""
        data = line + b"\n"
        if len(data) > SEGMENT_BYTES:
            raise OSError(f"A usage record of {len(data)} bytes does not fit a spool segment")
        with self._cond:
            segment = self._segment
            if segment is None or segment.offset + len(data) > SEGMENT_BYTES:
                segment = self._roll()
            end = segment.offset + len(data)
            segment.map[segment.offset : end] = data
            segment.offset = end
            segment.written += 1
            self._queue.append((segment, line))
            if self._thread is None:
                self._thread = threading.Thread(target=self._push_loop, name="usage-spool", daemon=True)
                self._thread.start()
            waiting = len(self._queue)
            if waiting == 1 or waiting >= PUSH_MAX_LINES:  # the first one starts the pusher's gathering
                self._cond.notify()

    def _roll(self) -> _Segment:
        """Open a new segment (called with the lock held), holding its flock for as long as this process lives."""
        if self._segment is not None:
            self._segment.rolled = True
            self._segment_release_if_done(self._segment)
            self._segment = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        path = self.directory / f"{self._prefix}-{self._sequence:06d}.spool"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, SEGMENT_BYTES)  # the blocks now, or OSError: never a SIGBUS when writing
            mapped = mmap.mmap(fd, SEGMENT_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        segment = _Segment(path=path, fd=fd, map=mapped)
        self._segment = segment
        self._segments.append(segment)
        return segment

    def _segment_release_if_done(self, segment: _Segment) -> None:
        if segment.rolled and segment.pushed >= segment.written and segment.fd >= 0:
            segment.close()
            segment.path.unlink(missing_ok=True)
            self._segments.remove(segment)

    # --- the pusher thread --------------------------------------------------------------------------

    def _push_loop(self) -> None:
        self.recover()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                if not (self._hurry or self._closed) and len(self._queue) < PUSH_MAX_LINES:
                    self._cond.wait(PUSH_DELAY_S)  # gather; woken early by a full batch or by drain()
                batch = [self._queue.popleft() for _ in range(min(PUSH_MAX_LINES, len(self._queue)))]
                self._busy = True
            if not self._deliver([line for _segment, line in batch]):
                with self._cond:  # both stores down: back to the front of the queue, in order, and wait a little
                    self._queue.extendleft(reversed(batch))
                    self._busy = False
                    self._cond.notify_all()
                time.sleep(RETRY_S)
                continue
            with self._cond:
                for segment, _line in batch:
                    segment.pushed += 1
                for segment in {id(s): s for s, _line in batch}.values():
                    self._segment_release_if_done(segment)
                self._busy = False
                self._cond.notify_all()  # drain() may be waiting

    def _deliver(self, lines: list[bytes]) -> bool:
        from inference.metering import MeteringUnavailable

        try:
            self._push(lines)
            return True
        except MeteringUnavailable:
            pass
        try:
            self._write(lines)  # Redis went away after admitting these calls: the ledger takes them directly
            return True
        except Exception:
            logger.exception("Usage records kept in the spool: neither Redis nor the database took them")
            return False

    # --- exit, flush and recovery -------------------------------------------------------------------

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything appended so far is pushed (True), or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            try:
                while self._queue or self._busy:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._thread is None:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._hurry = False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Push what is queued, then release the segments (kept on disk if something was not pushed)."""
        drained = self.drain(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            for segment in list(self._segments):
                segment.rolled = True
                if drained:
                    self._segment_release_if_done(segment)
            if not drained:
                for segment in self._segments:
                    segment.close()  # the flock goes with it: recover() takes the lines later
                self._segments.clear()
            self._segment = None

    def recover(self) -> int:
        """Push the lines of segments that no live process holds (their writer died), then delete them."""
        if not self.directory.is_dir():
            return 0
        recovered = 0
        for path in sorted(self.directory.glob("*.spool")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive (this one included)
                with os.fdopen(os.dup(fd), "rb") as stream:
                    # Complete lines only: what follows the last newline is the unwritten (zero) rest of the
                    # segment, or a record torn by the death of its writer, whose call never got its response.
                    lines = [line for line in stream.read().split(b"\n")[:-1] if line]
                for start in range(0, len(lines), PUSH_MAX_LINES):
                    if not self._deliver(lines[start : start + PUSH_MAX_LINES]):
                        return recovered  # try again at the next recover
                path.unlink(missing_ok=True)
                recovered += len(lines)
                logger.info("Recovered %s usage records from %s", len(lines), path.name)
            finally:
                os.close(fd)
        return recovered


_spools: dict[tuple[int, str, str], UsageSpool] = {}
_spools_lock = threading.Lock()


def usage_spool_get(*, directory: str | os.PathLike[str], store: str, push: Push, write: Write) -> UsageSpool:
    """This process's spool for ``directory`` and the Redis ``store`` it pushes to (a new one after a fork:
    segments and threads are per process). Called for every recorded call: a dict lookup, no Path built."""
    key = (os.getpid(), os.fspath(directory), store)
    spool = _spools.get(key)
    if spool is None:
        with _spools_lock:
            spool = _spools.get(key)
            if spool is None:
                spool = _spools[key] = UsageSpool(directory=Path(directory), push=push, write=write)
    return spool


def usage_spools_drain(timeout_s: float = 5.0) -> bool:
    """Wait until every spool of this process has pushed what it holds."""
    pid = os.getpid()
    return all(spool.drain(timeout_s) for (owner, *_where), spool in list(_spools.items()) if owner == pid)


def _forget_after_fork() -> None:
    """In a forked child: close the parent's segment files without touching them. The child writes its own; the
    parent's flocks must not outlive the parent through these inherited descriptors."""
    pid = os.getpid()
    for key, spool in list(_spools.items()):
        if key[0] != pid:
            for segment in spool._segments:
                segment.close()
            del _spools[key]


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _close_at_exit() -> None:
    pid = os.getpid()
    for (owner, *_where), spool in list(_spools.items()):
        if owner == pid:
            spool.close()
