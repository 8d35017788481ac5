"""Celery's Redis broker transport (kombu), with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` object for every command it sends outside its event loop
(``Channel.conn_or_acquire``): each publish, and in a worker each message's unacked bookkeeping and ack. A
``redis.Redis`` object is only a thin, thread-safe wrapper around the channel's connection pool, but building
one fills its table of ~170 reply callbacks, which made up about a fifth of a publish in celery dispatch mode
(profiled: ~0.28 ms of ~1.45 ms under cProfile). Here the channel keeps one client for its pool and hands it out
again; it follows the pool when kombu replaces it after a connection error. Everything else is kombu's.

Selected by ``CELERY_BROKER_TRANSPORT`` (marketplace/settings/celery.py) when the broker URL is Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


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
