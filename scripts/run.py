#!/usr/bin/env python
"""`make run`: the whole marketplace on one machine, with demo data.

Starts SeaweedFS (object storage), a Celery worker (on a filesystem broker unless
CELERY_BROKER_URL is set), migrates, seeds the demo through the real publishing
pipeline, and serves on http://127.0.0.1:8000. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
PY = sys.executable
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8000"))
S3_PORT = int(os.environ.get("S3_PORT", "8333"))
# The demo buyer's API key, with a fixed, documented value so the banner's curl command works as printed.
# Only `make run` sets it (the seeder creates no key without it); it is a local demo secret, never a real one.
DEMO_API_KEY = "smk_demo00000000_DemoSecretForMakeRunOnly0000000000"
# One flower of the demo's iris specialist: sepal length, sepal width, petal length, petal width (cm).
DEMO_INFER_BODY = '{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'

children: list[subprocess.Popen] = []


def log(message: str) -> None:
    print(f"\033[1m[run]\033[0m {message}", flush=True)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    log(f"starting {name}: {' '.join(args)}")
    logfile = open(VAR / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    children.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(children):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for proc in children:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM (e.g. from a supervisor) stops everything like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    VAR.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    env.setdefault("DEBUG", "1")
    env.setdefault("S3_ENDPOINT_URL", f"http://127.0.0.1:{S3_PORT}")
    env.setdefault("SITE_URL", f"http://{HOST}:{PORT}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # gunicorn runs several worker processes: Prometheus metrics are aggregated through files here.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR / "prometheus"))
    shutil.rmtree(env["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    env.setdefault("DEMO_API_KEY", DEMO_API_KEY)

    try:
        if env["S3_ENDPOINT_URL"] == f"http://127.0.0.1:{S3_PORT}" and not port_open("127.0.0.1", S3_PORT):
            start(
                "seaweedfs",
                [PY, "scripts/seaweedfs.py", "--data-dir", str(VAR / "seaweedfs"), "--s3-port", str(S3_PORT)],
                env,
            )
            deadline = time.monotonic() + 60
            while not port_open("127.0.0.1", S3_PORT):
                if children[-1].poll() is not None or time.monotonic() > deadline:
                    log("SeaweedFS did not start; see var/seaweedfs.log")
                    return 1
                time.sleep(0.3)
        log("migrating the database")
        manage("migrate", "--no-input", "-v", "0", env=env)
        manage("collectstatic", "--no-input", "-v", "0", env=env)
        manage("storage_ready", env=env)

        start(
            "celery",
            # One worker for everything on one machine, with the periodic tasks (-B: usage flush, renewals,
            # meter reports). Production runs validation and inference workers on their own machines.
            [
                PY,
                "-m",
                "celery",
                "-A",
                "marketplace",
                "worker",
                "-B",
                "-s",
                str(VAR / "celerybeat-schedule"),
                "-Q",
                f"default,validation,{env.get('INFERENCE_QUEUE', 'inference')}",
                "-c",
                "2",
                "-l",
                "info",
            ],
            env,
        )
        log("seeding demo data through the publishing pipeline (first run trains seven models: ~1 minute)")
        manage("seed_demo", env=env)

        start(
            "web",
            [
                PY,
                "-m",
                "gunicorn",
                "marketplace.wsgi",
                "-c",
                "scripts/gunicorn_conf.py",
                "-b",
                f"{HOST}:{PORT}",
                "-w",
                "2",
                "--threads",
                "16",
                "--access-logfile",
                "-",
            ],
            env,
        )
        deadline = time.monotonic() + 30
        while not port_open(HOST, PORT):
            if time.monotonic() > deadline:
                log("the web server did not start; see var/web.log")
                return 1
            time.sleep(0.2)
        print(
            f"""
  Specialist Marketplace is running on http://{HOST}:{PORT}

  Demo logins (password for all: demo-pass-123)
    admin@demo.local       platform admin (moderation at /moderation/, Django admin at /admin/)
    publisher@demo.local   owner of the publisher organization "Northwind Labs"
    buyer@demo.local       member of the buyer organization "Contoso Analytics"

  Contoso Analytics subscribes (free plan, 10,000 units / month) to iris-species, wine-cultivar and
  digit-recognizer-8x8. Its demo API key (scopes inference + management): {env["DEMO_API_KEY"]}
    curl -sS http://{HOST}:{PORT}/v2/models/iris-species/infer \\
      -H 'Authorization: Bearer {env["DEMO_API_KEY"]}' -H 'Content-Type: application/json' \\
      -d '{DEMO_INFER_BODY}'
    curl -sS http://{HOST}:{PORT}/api/v1/subscriptions -H 'Authorization: Bearer {env["DEMO_API_KEY"]}'

  API docs: http://{HOST}:{PORT}/api/docs/    Logs: var/*.log    Stop: Ctrl-C
""",
            flush=True,
        )
        while True:
            for proc in children:
                if proc.poll() is not None:
                    log(f"a process exited ({' '.join(map(str, proc.args))}); stopping. See var/*.log")
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        log("stopping")
        return 0
    except subprocess.CalledProcessError as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
