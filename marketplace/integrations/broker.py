"""Celery's broker transports (kombu), with two fixes: one Redis client per channel, and atomic message files.

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

Selected by ``CELERY_BROKER_TRANSPORT`` (marketplace/settings/celery.py) for Redis and filesystem broker URLs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic
from typing import Any

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
