#!/usr/bin/env python
"""`make test`: the whole suite against PostgreSQL and Redis on loopback.

SeaweedFS and the Celery worker are started by the tests themselves (tests/plugins/services.py).
Extra arguments go to pytest, e.g. `make test ARGS=-k search` or `.venv/bin/python scripts/test.py -x`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reachable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def main() -> int:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/marketplace")
    env.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    for name, port in (("PostgreSQL", 5432), ("Redis", 6379)):
        if not reachable("127.0.0.1", port):
            print(f"{name} is not answering on 127.0.0.1:{port}; start it first (see README).", file=sys.stderr)
            return 2
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        print(
            "Debian's chromium is not installed: browser tests will fail (apt-get install chromium).", file=sys.stderr
        )
    args = [sys.executable, "-m", "pytest", *sys.argv[1:], *os.environ.get("ARGS", "").split()]
    return subprocess.call(args, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
