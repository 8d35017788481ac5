"""The hot path's per-process cache: values trusted for their TTL, one load per expiry however many threads ask,
failed loads not shared, and a forget() that wins over a load already running."""

from __future__ import annotations

import threading
import time

import pytest

from marketplace.ttl_cache import TtlCache


def test_a_value_is_kept_for_its_ttl_then_loaded_again():
    cache: TtlCache[str, int] = TtlCache(ttl_s=0.2, max_entries=10)
    loads = iter(range(100))
    assert cache.get("k", lambda: next(loads)) == 0
    assert cache.get("k", lambda: next(loads)) == 0
    time.sleep(0.25)
    assert cache.get("k", lambda: next(loads)) == 1


def test_an_expired_value_is_loaded_once_for_all_the_threads_that_want_it():
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, max_entries=10)
    release = threading.Event()
    calls: list[int] = []

    def load() -> str:
        calls.append(1)
        release.wait(5)
        return "row"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", load))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # every thread is in get(): one loading, seven waiting
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == ["row"] * 8
    assert len(calls) == 1


class HeldLoad:
    """A load that signals when it has started and finishes (returning or raising) only when released."""

    def __init__(self, *, returns: str = "", raises: Exception | None = None) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.returns, self.raises = returns, raises

    def __call__(self) -> str:
        self.started.set()
        self.release.wait(5)
        if self.raises is not None:
            raise self.raises
        return self.returns


def test_a_failed_load_is_not_shared_the_waiting_threads_load_for_themselves():
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, max_entries=10)
    failing = HeldLoad(raises=RuntimeError("database down"))

    errors: list[BaseException] = []

    def lead() -> None:
        try:
            cache.get("k", failing)
        except RuntimeError as exc:
            errors.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    failing.started.wait(5)
    follower_result: list[str] = []
    follower = threading.Thread(target=lambda: follower_result.append(cache.get("k", lambda: "own load")))
    follower.start()
    time.sleep(0.1)
    failing.release.set()
    leader.join(5)
    follower.join(5)
    assert [str(e) for e in errors] == ["database down"]
    assert follower_result == ["own load"]
    assert cache.get("k", lambda: "next") == "next"  # nothing was cached by the failure


def test_forget_during_a_load_keeps_that_load_out_of_the_cache():
    """A revoke forgets the key while a request is reloading it: the row that request read may predate the revoke,
    so it must not be trusted for another second."""
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, max_entries=10)
    slow_load = HeldLoad(returns="before the revoke")

    thread = threading.Thread(target=lambda: cache.get("k", slow_load))
    thread.start()
    slow_load.started.wait(5)
    cache.forget("k")
    slow_load.release.set()
    thread.join(5)
    assert cache.get("k", lambda: "after the revoke") == "after the revoke"


@pytest.mark.parametrize("key", ["a", None])
def test_forget_one_or_all(key):
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, max_entries=10)
    cache.get("a", lambda: "a1")
    cache.get("b", lambda: "b1")
    cache.forget(key)
    assert cache.get("a", lambda: "a2") == "a2"
    assert cache.get("b", lambda: "b2") == ("b2" if key is None else "b1")


def test_the_cache_is_bounded():
    cache: TtlCache[int, int] = TtlCache(ttl_s=60, max_entries=3)
    for key in range(3):
        cache.get(key, lambda key=key: key)
    cache.get(3, lambda: 3)  # full: emptied, then this one kept
    assert cache.get(0, lambda: -1) == -1
    assert cache.get(3, lambda: -1) == 3
