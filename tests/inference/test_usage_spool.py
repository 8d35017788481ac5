"""The usage spool (inference/usage_spool.py): records are on disk when append returns, reach the store in
batches, fall back to the ledger writer, survive a store outage, and are recovered from a process killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from inference import usage_spool
from inference.metering import MeteringUnavailable
from inference.usage_spool import UsageSpool
from tests.plugins.services import wait_for

ROOT = Path(__file__).resolve().parents[2]


class Store:
    """A push target that records batches; it can be made to fail or to block."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, lines: list[bytes]) -> None:
        assert self.gate.wait(10)
        if self.fail:
            raise MeteringUnavailable()
        self.batches.append(list(lines))

    @property
    def lines(self) -> list[bytes]:
        return [line for batch in self.batches for line in batch]


def _spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def test_a_record_is_on_disk_when_append_returns_and_pushed_in_batches(tmp_path):
    store, ledger = Store(), Store()
    spool = UsageSpool(directory=tmp_path, push=store, write=ledger)
    store.gate.clear()  # hold the first push: the next appends queue behind it

    spool.append(b'{"n": 0}')
    assert _spool_files(tmp_path)[0].read_bytes().rstrip(b"\0") == b'{"n": 0}\n'
    wait_for(lambda: spool._busy, timeout=5, message="the pusher did not take the first record")
    for n in range(1, 6):
        spool.append(b'{"n": %d}' % n)
    store.gate.set()

    assert spool.drain(5)
    assert store.lines == [b'{"n": %d}' % n for n in range(6)] and ledger.batches == []
    assert len(store.batches) == 2  # the five that queued during the first push went in one
    spool.close()
    assert _spool_files(tmp_path) == []  # everything pushed: nothing left to recover


def test_when_the_store_is_down_the_ledger_writer_takes_the_records(tmp_path):
    store, ledger = Store(), Store()
    store.fail = True
    spool = UsageSpool(directory=tmp_path, push=store, write=ledger)

    spool.append(b"a")
    spool.append(b"b")

    assert spool.drain(5) and ledger.lines == [b"a", b"b"] and store.lines == []
    spool.close()


def test_with_both_down_records_are_kept_and_delivered_once_a_store_is_back(tmp_path, monkeypatch):
    monkeypatch.setattr(usage_spool, "RETRY_S", 0.05)
    store, ledger = Store(), Store()
    store.fail = ledger.fail = True
    spool = UsageSpool(directory=tmp_path, push=store, write=ledger)

    for name in (b"a", b"b", b"c"):
        spool.append(name)
    assert not spool.drain(0.3)  # still held
    store.fail = False

    assert spool.drain(5) and store.lines == [b"a", b"b", b"c"]
    spool.close()


def test_segments_roll_and_are_deleted_once_pushed(tmp_path, monkeypatch):
    monkeypatch.setattr(usage_spool, "SEGMENT_BYTES", 6)  # three 2-byte lines
    store = Store()
    spool = UsageSpool(directory=tmp_path, push=store, write=Store())

    for n in range(8):
        spool.append(b"%d" % n)
    assert spool.drain(5)

    assert len(store.lines) == 8
    assert len(_spool_files(tmp_path)) == 1  # the current segment (lines 6 and 7); the two rolled ones are gone
    spool.close()
    assert _spool_files(tmp_path) == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, threading, time
    sys.path.insert(0, {root!r})
    from inference.usage_spool import UsageSpool
    blocked = threading.Event()
    spool = UsageSpool(directory={directory!r}, push=lambda lines: blocked.wait(), write=lambda lines: None)
    for n in range(5):
        spool.append(b'{{"n": %d}}' % n)
    print("appended", flush=True)
    time.sleep(60)
    """
)


def test_records_of_a_process_killed_with_sigkill_are_recovered_once(tmp_path):
    store = Store()
    code = _KILLED_WRITER.format(root=str(ROOT), directory=str(tmp_path))
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env={**os.environ})
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"appended"
        live = UsageSpool(directory=tmp_path, push=store, write=Store())
        assert live.recover() == 0 and store.lines == []  # its writer is alive: not touched
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()

    assert live.recover() == 5
    assert store.lines == [b'{"n": %d}' % n for n in range(5)]
    assert _spool_files(tmp_path) == [] and live.recover() == 0  # once


def test_a_torn_last_line_is_dropped_on_recovery(tmp_path):
    (tmp_path / "dead-1-abc-000001.spool").write_bytes(b'{"n": 1}\n{"n": 2}\n{"n"')
    store = Store()

    assert UsageSpool(directory=tmp_path, push=store, write=Store()).recover() == 2
    assert store.lines == [b'{"n": 1}', b'{"n": 2}']


_FORKING_WRITER = textwrap.dedent(
    """
    import os, sys, threading, time
    sys.path.insert(0, {root!r})
    from inference import usage_spool
    blocked = threading.Event()
    spool = usage_spool.usage_spool_get(directory={directory!r}, store="test", push=lambda lines: blocked.wait(),
                                        write=lambda lines: None)
    spool.append(b"parent")
    child = os.fork()
    if child == 0:
        time.sleep(60)  # a forked child lives on; it must not keep the parent's segment locked
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
    """
)


def test_a_forked_child_does_not_keep_a_dead_parents_segment_locked(tmp_path):
    store = Store()
    code = _FORKING_WRITER.format(root=str(ROOT), directory=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env={**os.environ})
    child_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        # The child is still alive, and once it has run (the fork hook closes its copy of the descriptor) the
        # segment is free for recovery.
        recovering = UsageSpool(directory=tmp_path, push=store, write=Store())
        wait_for(lambda: recovering.recover() == 1, timeout=10, message="the dead parent's segment stayed locked")
        assert store.lines == [b"parent"]
    finally:
        if parent.poll() is None:
            parent.kill()
        if child_pid:
            os.kill(child_pid, signal.SIGKILL)
