"""A per-process cache for rows the metered path reads on every call (API keys, entitlements, spend caps, served
listings): a value is trusted for ``ttl_s`` seconds, so a change made anywhere lands in every process within that.

Single flight: when a value expires while many threads want it, one of them loads it and the others wait for that
load, instead of each running the same query (with a web process's 16 threads busy on one key, an expiry cost up to
16 queries for one row). A ``forget`` during a load keeps that load's result out of the cache: it may predate the
change that called ``forget``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Load:
    __slots__ = ("done", "value", "failed")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.failed = False


class TtlCache(Generic[K, V]):
    def __init__(self, *, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._values: dict[K, tuple[float, V]] = {}
        self._loads: dict[K, _Load] = {}
        self._generation = 0  # bumped by forget(): loads that started before it do not store their result
        self._lock = threading.Lock()

    def get(self, key: K, load: Callable[[], V]) -> V:
        """The cached value of ``key``, or what ``load()`` returns (one thread loads; the others wait for it). A
        load that raises is not shared: each waiting thread then loads for itself, and sees its own error."""
        started = time.monotonic()
        cached = self._values.get(key)
        if cached is not None and started - cached[0] < self.ttl_s:
            return cached[1]
        with self._lock:
            pending = self._loads.get(key)
            leading = pending is None
            if pending is None:
                pending = self._loads[key] = _Load()
            generation = self._generation
        if not leading:
            pending.done.wait()
            if not pending.failed:
                return pending.value  # type: ignore[return-value]
            return load()
        try:
            value = load()
        except BaseException:
            pending.failed = True
            raise
        else:
            pending.value = value
            with self._lock:
                if generation == self._generation:
                    if len(self._values) >= self.max_entries:
                        self._values.clear()
                    self._values[key] = (started, value)
            return value
        finally:
            with self._lock:
                if self._loads.get(key) is pending:
                    del self._loads[key]
            pending.done.set()

    def forget(self, key: K | None = None) -> None:
        """Drop one value, or all of them when ``key`` is None: the next ``get`` loads again."""
        with self._lock:
            self._generation += 1
            if key is None:
                self._values.clear()
            else:
                self._values.pop(key, None)
