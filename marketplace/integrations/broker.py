"""Celery's broker transports (kombu), with two fixes: one Redis client per channel, and atomic message files;
and a direct publisher for one hot queue on a Redis broker.

Redis: one client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it sends outside its event loop
(``Channel.conn_or_acquire``): each publish, and in a worker each message's unacked bookkeeping and ack. A
``redis.Redis`` object is only a thin, thread-safe wrapper around the channel's connection pool, but building
one fills its table of ~170 reply callbacks, which made up about a fifth of a publish in celery dispatch mode
(profiled: ~0.28 ms of ~1.45 ms under cProfile). Here the channel keeps one client for its pool and hands it out
again; it follows the pool when kombu replaces it after a connection error. Everything else is kombu's.

Filesystem (the embedded default of ``make run``): kombu creates a message file, then locks it and writes it, and
its consumer takes any file whose name matches without looking at the lock: a worker polling at that moment read
an empty file and died on a JSONDecodeError (seen in ``make run``). Here a message is written under a name the
consumer ignores and renamed into place when complete (``os.replace``: atomic in one directory).

Direct publish (:class:`RedisQueuePublisher`): a task message for a direct queue on a Redis broker is, on the
wire, one ``LPUSH <queue> <envelope>``, but ``Task.apply_async`` gets there through routing, a producer from the
pool, entity declaration and copies, signals and kombu's envelope: 0.83–0.97 ms of CPU a message in a loop on this
project's 2-core VM, and a third of a celery-mode web process's GIL time at concurrency 32 (one-off measurements,
docs/benchmarks.md). The publisher builds the message with Celery's own protocol builder (``app.amqp.as_task_v2``),
wraps it as kombu's Redis channel would (``basic_publish`` for the anonymous exchange, then ``_put`` at priority 0)
and pushes it: 0.05–0.07 ms in the same loop, plus the round trip. The worker side is untouched: a stock Celery
worker consumes it. A test compares its messages with ``apply_async``'s.

Selected by ``CELERY_BROKER_TRANSPORT`` (marketplace/settings/celery.py) for Redis and filesystem broker URLs.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.common import Broadcast
from kombu.exceptions import ChannelError
from kombu.transport import filesystem as kombu_filesystem
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        pool = self.pool
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel


class FilesystemChannel(kombu_filesystem.Channel):
    # kombu names the argument "payload" here and "message" in its base class; the filesystem one is the parent.
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"  # kombu's naming: its consumer sorts
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"  # not "<queue>.msg" after the first dot: the consumer skips it
        try:
            with open(partial, "wb") as stream:
                stream.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


def filesystem_transport_options(folder: Path) -> dict[str, Any]:
    """kombu's filesystem transport options for message files under ``folder`` (created if missing)."""
    for sub in ("out", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "out"),
        "data_folder_out": str(folder / "out"),
        "data_folder_processed": str(folder / "processed"),
        "store_processed": False,
        "control_folder": str(folder / "control"),
    }


class FilesystemTransport(kombu_filesystem.Transport):
    Channel = FilesystemChannel


# --- direct publish to a Redis broker's queue ------------------------------------------------------------------

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_DELIVERY_MODES = {"transient": 1, "persistent": 2}


class RedisQueuePublisher:
    """Sends task messages to one direct queue of a Redis broker, each in one ``LPUSH`` (see the module docstring).

    Messages are exactly what ``apply_async(queue=...)`` writes for such a queue: protocol 2, JSON, the anonymous
    exchange with the queue name as routing key, priority 0 (the queue's own list), base64 body."""

    def __init__(self, *, app: Any, queue: str, client: Any) -> None:
        self.app = app
        self.queue = queue
        self.client = client  # a redis.Redis on the broker (thread-safe, pooled)
        declared = app.amqp.queues[queue]  # as apply_async would look it up (created if missing)
        mode = declared.exchange.delivery_mode or app.conf.task_default_delivery_mode
        self.delivery_mode = _DELIVERY_MODES.get(mode, mode)

    def send(self, *, task: str, kwargs: dict[str, Any], expires_s: float, kwargsrepr: str = "") -> str:
        """Send ``task(**kwargs)``, discarded by the worker after ``expires_s``; returns the task id. Raises the
        client's connection and timeout errors (nothing is retried: the caller has a deadline)."""
        task_id = str(uuid.uuid4())
        message = self.app.amqp.as_task_v2(
            task_id, task, kwargs=kwargs, expires=expires_s, argsrepr="", kwargsrepr=kwargsrepr, ignore_result=True
        )
        envelope = {
            "body": base64.b64encode(str_to_bytes(dumps(message.body))).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": {
                **message.properties,
                "argsrepr": "",  # Celery passes its send options on as properties; kept for an identical message
                "kwargsrepr": kwargsrepr,
                "delivery_mode": self.delivery_mode,
                "expiration": str(int(expires_s * 1000)),
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        self.client.lpush(self.queue, dumps(envelope))
        return task_id


def redis_queue_publisher(*, app: Any, queue: str, timeout_s: float = 5.0) -> RedisQueuePublisher | None:
    """A direct publisher for ``queue``, or None where kombu must publish: a broker that is not one Redis URL, a
    global key prefix, eager tasks, a serializer other than JSON or compressed bodies, or a queue whose exchange is
    not direct."""
    import redis

    conf = app.conf
    url = conf.broker_url or ""
    if not url.startswith(REDIS_SCHEMES) or ";" in url or (conf.broker_transport_options or {}).get("global_keyprefix"):
        return None
    if conf.task_always_eager or conf.task_serializer != "json" or conf.task_compression:
        return None
    declared = app.amqp.queues[queue]
    if isinstance(declared, Broadcast) or declared.exchange.type != "direct":
        return None
    # socket_timeout: a hung broker fails the send (a 503 for its callers) instead of holding them.
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=timeout_s, health_check_interval=30)
    return RedisQueuePublisher(app=app, queue=queue, client=client)
