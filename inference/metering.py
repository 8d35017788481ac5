"""Admission and metering for /v2 calls: per-key rate limits, per-subscription monthly quotas,
Idempotency-Key replays, and the usage buffer.

Two backends behind one interface, chosen by ``settings.INFERENCE_REDIS_URL``:

- ``RedisMetering``: one Lua script per call decides idempotency, rate and quota atomically and reserves
  (one round trip before inference). After it, the usage record goes to this process's usage spool
  (inference/usage_spool.py: one line on local disk before the response, pushed to the Redis buffer list in
  batches by a thread), so the call waits for no second round trip; an idempotent call's record and stored
  response go together in one MULTI pipeline instead. ``inference.services.usage_flush`` moves the buffer
  to PostgreSQL in batches, at least once (a processing list survives a crash), deduplicated by request id.
  Any Redis failure raises ``MeteringUnavailable`` (503): metered calls fail closed, never 500.
- Admission leases (``RedisMetering``): a key calling at a high rate is granted several calls at once. The call whose
  admission asks for a lease (``INFERENCE_ADMISSION_LEASE_MS`` x rate, 4 to 32 calls, and as many units as the call
  times that) is admitted with it, and this process admits the lease's other calls from memory, with no round
  trip, until they are spent or the lease is ``INFERENCE_ADMISSION_LEASE_MS`` old (counted from before the request
  was sent); while one thread asks for the next lease, the process's other calls for the key wait for it. Redis
  grants a lease whole and atomically, or decides the call alone exactly as before: a key at its limit and a
  subscription near its quota (less than 16 leases' worth left) are decided call by call. A key fast enough for
  leases has a burst shorter by a lease's lifetime (90 calls instead of 100 at 100/s), so the calls it
  actually makes stay within ``rate x window + rate`` over every window, leased or not. Unused units go back to the
  counter when the lease ends (a thread does it; a process killed meanwhile leaves them counted: a free quota short
  by at most one lease). No leases for Idempotency-Key calls or plans whose price depends on the units before a call.
- ``LocalMetering`` (empty URL, the embedded default): counters in process memory under a lock, usage
  written straight to the database. Good for one process; limits are per process.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import socket
import struct
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
import redis.connection
from django.conf import settings

from inference import metrics
from inference.json_codec import json_dumps
from inference.usage_spool import UsageSpool, usage_spool_get
from marketplace.errors import ApplicationError

logger = logging.getLogger(__name__)

KEY_PREFIX = "inf:"
USAGE_BUFFER = KEY_PREFIX + "usage:buffer"
USAGE_PROCESSING = KEY_PREFIX + "usage:processing"
ERROR_BUFFER = KEY_PREFIX + "errors:buffer"
ERROR_PROCESSING = KEY_PREFIX + "errors:processing"
FLUSH_LOCK = KEY_PREFIX + "flush:lock"
# Quota counters outlive their period a little so that late refunds find them.
QUOTA_TTL_MARGIN_S = 7 * 24 * 3600
METERING_RETRY_AFTER_S = 5
LEASE_MIN_CALLS = 4  # a smaller lease saves too few round trips to be worth holding calls back from other processes
LEASE_MAX_CALLS = 32


class MeteringUnavailable(ApplicationError):
    status = 503
    code = "metering_unavailable"

    def __init__(self, message: str = "Metering is unavailable; the call was not run. Retry shortly.") -> None:
        super().__init__(message)
        self.retry_after = METERING_RETRY_AFTER_S


@dataclass(frozen=True)
class Idempotency:
    key: str  # namespaced storage key
    fingerprint: str  # sha256 of what the request asked for


@dataclass(frozen=True)
class Admission:
    api_key_id: int | None  # None: a signed-in browser session (the playground)
    rate_limit: int  # requests per second
    subscription_id: int
    quota_units: int | None  # None: unlimited
    period_start: datetime
    period_end: datetime
    units: int
    idempotency: Idempotency | None = None
    # What the rate limit counts: the API key by default; browser sessions pass "session:<user id>".
    rate_subject: str = ""
    # Keep the period's unit counter without a quota (a flat plan with overage: the included-units boundary
    # prices the call), so the decision says how many units came before this call.
    counted: bool = False

    @property
    def counts_units(self) -> bool:
        return self.quota_units is not None or self.counted

    @property
    def quota_key(self) -> str:
        return f"{KEY_PREFIX}quota:{self.subscription_id}:{int(self.period_start.timestamp())}"

    @property
    def rate_key(self) -> str:
        return f"{KEY_PREFIX}rate:{self.rate_subject or self.api_key_id}"

    def seconds_to_period_end(self) -> int:
        return max(1, math.ceil(self.period_end.timestamp() - time.time()))


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Decision:
    """``outcome``: ok | replay | rate_limited | quota_exceeded | in_progress | reused. ``units_before``: the
    period's units before this call (admitted calls whose admission counts units; else None)."""

    outcome: str
    retry_after: int | None = None
    stored: StoredResponse | None = None
    units_before: int | None = None

    @property
    def admitted(self) -> bool:
        return self.outcome == "ok"


@dataclass
class PendingAdmission:
    """An admission sent (``admit_begin``) whose decision is read by ``admit_finish``: the caller runs a cheap
    model while the answer travels. ``connection``: the thread's Redis connection with the reply unread;
    ``decision``: already known (the in-process backend, or the send failed and ``admit_finish`` retries)."""

    admission: Admission
    connection: Any = None
    decision: Decision | None = None
    lease_calls: int = 0  # asked for a lease of this many calls (this thread holds the lease's refill)
    sent_at: float = 0.0  # monotonic, before the admission was sent: a granted lease's lifetime starts here

    @property
    def may_run(self) -> bool:
        """Worth running the model meanwhile: the admission is on its way, or already decided for the call. Not
        when the send failed (Redis is probably down: the call will not be run) or the call is already refused."""
        return self.connection is not None or (self.decision is not None and self.decision.admitted)


@dataclass(frozen=True)
class UsageEntry:
    request_id: str
    organization_id: int
    api_key_id: int | None
    subscription_id: int
    listing_id: int
    version_id: int
    units: int
    queue_ms: float
    compute_ms: float
    provider: str
    finished_at: float  # epoch seconds
    cost: str = "0"  # decimal string in the plan's currency (billing.pricing.usage_cost)
    currency: str = "usd"


@dataclass(frozen=True)
class ErrorEntry:
    request_id: str
    organization_id: int
    api_key_id: int | None
    listing_id: int | None
    version_id: int | None
    status: int
    code: str
    finished_at: float


def entry_encode(entry: UsageEntry | ErrorEntry) -> bytes:
    # Flat dataclasses of plain values: vars() is what asdict() returns, without its recursive deep copy (30 µs a
    # call, on the hot path).
    return json_dumps(vars(entry))


@dataclass
class _Lease:
    """Calls (and their units) granted to this process by one admission, admitted from memory until spent or
    expired. ``position``: the period's units before the next call (-1: not counted)."""

    calls: int
    units: int
    position: int
    expires: float  # monotonic
    quota_key: str  # where unused units go back ('' when the plan counts none)


class _Refill:
    """In the lease table while a thread's admission asks for the next lease: the process's other calls for the
    key wait for it (``done``) instead of each making a round trip of its own."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


def _us_to_retry_after(microseconds: float) -> int:
    return max(1, math.ceil(microseconds / 1_000_000))


# --- Redis ----------------------------------------------------------------------------------------

# KEYS: rate, quota, idempotency. ARGV: rate/s, quota limit (-1 = unlimited), units, fingerprint ('' = none),
# pending ttl ms, '1' to count units without a limit, lease calls (0 = none), lease units, burst (µs).
# Nothing is written unless the call is admitted; an admitted call returns the units counted before it (-1 when
# not counted) and how many calls it was granted (1, or the lease). Rate: GCRA, a burst of `rate` calls, refilled
# at `rate` per second (one key per API key holding the theoretical arrival time in microseconds). For a key fast
# enough for leases (inference/metering.py, "Admission leases") the burst is a lease's lifetime shorter, for every
# call of the key: a lease's calls may be spent up to that lifetime after they are counted here, and the shorter
# burst keeps the calls actually made within `rate x window + rate` over every window, as without leases. A lease
# is granted whole or not at all, and only when its units leave at least 16 leases' worth under the quota;
# otherwise the call alone is decided, exactly as without a lease.
_ADMIT_LUA = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
if ARGV[4] ~= '' then
  local st = redis.call('HMGET', KEYS[3], 'fp', 'state', 'status', 'headers', 'body')
  if st[1] then
    if st[1] ~= ARGV[4] then return {'reused', 0} end
    if st[2] ~= 'done' then return {'in_progress', 0} end
    return {'replay', 0, st[3], st[4], st[5]}
  end
end
local step = math.floor(1000000 / tonumber(ARGV[1]))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now_us then tat = now_us end
local limit = tonumber(ARGV[2])
local units = tonumber(ARGV[3])
local lease = tonumber(ARGV[7])
local granted = 1
local new_tat = tat + step
local burst = tonumber(ARGV[9])
if lease > 1 and tat + lease * step - burst <= now_us then
  local fits = true
  if limit >= 0 then
    local used = redis.call('GET', KEYS[2])
    fits = used ~= false and tonumber(used) + tonumber(ARGV[8]) * 16 <= limit
  end
  if fits then
    granted = lease
    new_tat = tat + lease * step
    if limit >= 0 then units = tonumber(ARGV[8]) end
  end
end
local allow_at = new_tat - burst
if granted == 1 and allow_at > now_us then return {'rate_limited', string.format('%d', allow_at - now_us)} end
local before = -1
if limit >= 0 or ARGV[6] == '1' then
  local used = redis.call('GET', KEYS[2])
  if not used then return {'seed', 0} end
  before = tonumber(used)
  if limit >= 0 and before + units > limit then return {'quota_exceeded', 0} end
  redis.call('INCRBY', KEYS[2], units)
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now_us) / 1000) + 1)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], 'fp', ARGV[4], 'state', 'pending')
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
return {'ok', before, granted}
"""

# A lease's unused units back to the quota counter, if it still exists (a missing one is seeded from the ledger).
_UNRESERVE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECRBY', KEYS[1], ARGV[1]) end
return 0
"""

# Move up to ARGV[1] entries from the head of KEYS[1] (buffer) to the tail of KEYS[2] (processing), atomically.
_CLAIM_LUA = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('RPUSH', KEYS[2], unpack(items))
  redis.call('LTRIM', KEYS[1], #items, -1)
end
return items
"""

_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _KernelTimeoutConnection(redis.connection.Connection):
    """A TCP connection whose socket blocks, its timeouts enforced by the kernel (SO_SNDTIMEO, SO_RCVTIMEO).

    Python waits in poll() before every send and receive on a socket that has a timeout: a command then makes
    four system calls, each releasing the GIL, and with a web process's threads busy each release hands the GIL to
    another thread and waits to get it back (bench/inference.py prints the context switches a request). A blocking
    socket makes it two. A timeout surfaces as EAGAIN, which redis-py reports as a ConnectionError, as it does a
    timeout: the caller's policy (one retry, then 503) is the same.
    """

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        timeout = self.socket_timeout
        if timeout:
            sock.settimeout(None)
            seconds = int(timeout)
            interval = struct.pack("@ll", seconds, int((timeout - seconds) * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        return sock


def _call_if_alive(ref: weakref.ref, method: str) -> None:
    target = ref()
    if target is not None:
        getattr(target, method)()


class RedisMetering:
    def __init__(self, url: str, *, timeout_s: float = 2.0, lease_ms: int | None = None) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        # Short timeouts and one quick retry (a pooled connection may be stale after a Redis restart): with Redis
        # down a call must fail fast with 503, not hang.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        self._admit = self.client.register_script(_ADMIT_LUA)
        self._claim = self.client.register_script(_CLAIM_LUA)
        self._unlock = self.client.register_script(_UNLOCK_LUA)
        self._unreserve = self.client.register_script(_UNRESERVE_LUA)
        self._local = threading.local()
        # At most half a second: the burst of a key with leases is a second minus a lease's lifetime.
        self.lease_s = min(0.5, (settings.INFERENCE_ADMISSION_LEASE_MS if lease_ms is None else lease_ms) / 1000)
        self._leases_forget()
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _call_if_alive(me, "_leases_forget"))
        atexit.register(_call_if_alive, me, "leases_release")

    def _connection(self) -> Any:
        """This thread's own connection for the hot path's commands. redis-py's pool polls every connection it
        hands out for unread data (a syscall) and wraps each command in retry and observability layers: together
        about 25 µs of CPU a command, a good part of what metering costs a call. Over TCP its socket blocks, with
        the kernel enforcing the timeouts (``_KernelTimeoutConnection``)."""
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:  # none yet in this thread, or inherited across a fork
            pool = self.client.connection_pool
            cls = pool.connection_class
            if cls is redis.connection.Connection:
                cls = _KernelTimeoutConnection
            local.conn = cls(**pool.connection_kwargs)
            local.pid = pid
        return local.conn

    def _execute(self, *args: Any, attempts: int = 2) -> Any:
        """One command on this thread's connection, with the client's policy: one retry on a connection error or
        a timeout (a connection may be stale after a Redis restart), any other failure raises
        MeteringUnavailable. A NOSCRIPT error is passed on for the caller to load the script. ``attempts=1``: the
        caller already made the first (``admit_finish``)."""
        from redis.exceptions import NoScriptError

        conn = self._connection()
        for attempt in range(attempts):
            try:
                conn.send_command(*args)
                return conn.read_response()
            except NoScriptError:
                raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                conn.disconnect()
                if attempt == attempts - 1:
                    logger.warning("Metering store unavailable: %s", exc)
                    raise MeteringUnavailable() from exc
            except redis.RedisError as exc:
                logger.warning("Metering store unavailable: %s", exc)
                raise MeteringUnavailable() from exc
            except BaseException:
                conn.disconnect()  # a reply may be left unread: never let the next command read it
                raise
        raise AssertionError("unreachable")

    def _admit_run(self, keys: list[str], args: list[Any], *, attempts: int = 2) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return self._execute("EVALSHA", self._admit.sha, len(keys), *keys, *args, attempts=attempts)
        except NoScriptError:  # Redis restarted or its scripts were flushed: load it again, once
            self._call(self.client.script_load, _ADMIT_LUA)
        try:
            return self._execute("EVALSHA", self._admit.sha, len(keys), *keys, *args)
        except NoScriptError as exc:
            logger.warning("Metering store unavailable: %s", exc)
            raise MeteringUnavailable() from exc

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            logger.warning("Metering store unavailable: %s", exc)
            raise MeteringUnavailable() from exc

    # -- the hot path --

    def _admit_command(self, admission: Admission, lease_calls: int = 0) -> tuple[list[str], list[Any]]:
        idem = admission.idempotency
        keys = [admission.rate_key, admission.quota_key, idem.key if idem else admission.rate_key + ":none"]
        pending_ms = int((settings.INFERENCE_DEADLINE_S * 2 + 30) * 1000)
        args = [
            max(1, admission.rate_limit),
            -1 if admission.quota_units is None else admission.quota_units,
            admission.units,
            idem.fingerprint if idem else "",
            pending_ms,
            "1" if admission.counted else "",
            lease_calls,
            lease_calls * admission.units,
            1_000_000 - int(self.lease_s * 1_000_000) if self._lease_rate(admission.rate_limit) else 1_000_000,
        ]
        return keys, args

    def admit(self, admission: Admission) -> Decision:
        """Decide a call: rate, quota, idempotency, in one round trip (two more to seed a missing quota counter),
        or none when this process holds a lease for it."""
        decision, lease_calls = self._lease_take(admission)
        if decision is not None:
            return decision
        try:
            return self._settle(admission, None, attempts=2, lease_calls=lease_calls, sent_at=time.monotonic())
        finally:
            if lease_calls:
                self._lease_unmark(admission)

    def _settle(
        self, admission: Admission, result: Any, *, attempts: int, lease_calls: int = 0, sent_at: float = 0.0
    ) -> Decision:
        """The decision from the script's ``result`` (None: run it now), seeding a missing quota counter and asking
        again as needed. ``attempts``: tries of each round trip on a connection error (see ``_execute``)."""
        keys, args = self._admit_command(admission, lease_calls)
        for _attempt in range(3):
            if result is None:
                result = self._admit_run(keys, args, attempts=attempts)
            outcome = result[0].decode()
            if outcome != "seed":
                if outcome == "ok":
                    metrics.TALLY.count(metrics.ADMITTED_BY_REDIS)
                    if lease_calls:
                        self._lease_install(admission, result, sent_at=sent_at)
                return self._decision(outcome, result, admission)
            self._quota_seed(admission)
            result = None
        raise MeteringUnavailable("The quota counter could not be initialised; retry shortly.")

    def admit_begin(self, admission: Admission) -> PendingAdmission:
        """Send the admission and return without waiting for its answer (decided at once from a lease). The caller
        must call ``admit_finish`` before this thread sends another command (its reply is still unread)."""
        decision, lease_calls = self._lease_take(admission)
        if decision is not None:
            return PendingAdmission(admission, decision=decision)
        sent_at = time.monotonic()
        keys, args = self._admit_command(admission, lease_calls)
        conn = self._connection()
        try:
            conn.send_command("EVALSHA", self._admit.sha, len(keys), *keys, *args)
        except redis.RedisError:
            conn.disconnect()
            # admit_finish goes the synchronous way, with its retry
            return PendingAdmission(admission, lease_calls=lease_calls, sent_at=sent_at)
        except BaseException:
            conn.disconnect()  # part of a command may have gone: never let the next one follow it
            if lease_calls:
                self._lease_unmark(admission)
            raise
        return PendingAdmission(admission, connection=conn, lease_calls=lease_calls, sent_at=sent_at)

    def admit_finish(self, pending: PendingAdmission) -> Decision:
        """The decision of ``admit_begin``'s admission. Whatever went wrong on the way (a stale connection, a
        script Redis forgot, a quota counter to seed) is settled the synchronous way, as ``admit`` does."""
        try:
            return self._admit_finish(pending)
        finally:
            if pending.lease_calls:
                self._lease_unmark(pending.admission)

    def _admit_finish(self, pending: PendingAdmission) -> Decision:
        conn, pending.connection = pending.connection, None
        if pending.decision is not None:
            return pending.decision
        lease_calls, sent_at = pending.lease_calls, pending.sent_at
        if conn is None:  # the send failed: that was the first attempt, one more (as admit makes two in all)
            return self._settle(pending.admission, None, attempts=1, lease_calls=lease_calls, sent_at=sent_at)
        try:
            result = conn.read_response()
        except redis.exceptions.NoScriptError:
            return self.admit(pending.admission)  # loads the script again
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            return self._settle(pending.admission, None, attempts=1, lease_calls=lease_calls, sent_at=sent_at)
        except redis.RedisError as exc:
            logger.warning("Metering store unavailable: %s", exc)
            raise MeteringUnavailable() from exc
        except BaseException:
            conn.disconnect()
            raise
        return self._settle(pending.admission, result, attempts=2, lease_calls=lease_calls, sent_at=sent_at)

    # -- admission leases (see the module's docstring) --

    def _leases_forget(self) -> None:
        """A new table (at start, and in a forked child: the parent's leases are the parent's to spend)."""
        self._leases: dict[tuple[str, str], _Lease | _Refill] = {}  # (rate key, quota key or '') -> lease
        self._leases_cond = threading.Condition()
        self._unreserved: list[tuple[str, int]] = []  # (quota key, units) for the returner thread
        self._returner: threading.Thread | None = None
        self._returner_idle = False  # waiting with no lease to expire: wake it for a new one

    def _lease_calls(self, admission: Admission) -> int:
        """The calls a lease for this admission would hold; 0: none (leases off, an idempotent call, a price that
        depends on the units before a call, or a rate too low for a lease to save much)."""
        if admission.idempotency is not None or admission.counted:
            return 0
        return self._lease_rate(admission.rate_limit)

    def _lease_rate(self, rate_limit: int) -> int:
        """The calls of a lease at this rate (0: too slow for leases, or leases off). Every call of such a key
        has a burst shorter by a lease's lifetime (see ``_ADMIT_LUA``), leased or not."""
        calls = min(LEASE_MAX_CALLS, int(rate_limit * self.lease_s))
        return calls if calls >= LEASE_MIN_CALLS else 0

    @staticmethod
    def _lease_key(admission: Admission) -> tuple[str, str]:
        return admission.rate_key, admission.quota_key if admission.counts_units else ""

    def _lease_take(self, admission: Admission) -> tuple[Decision | None, int]:
        """Admit the call from this process's lease (no round trip), or say how many calls its admission should
        ask for (0: none: no lease applies, or the next one could not serve this call). While another thread's
        admission asks for the next lease, wait for it (at most a lease's lifetime) rather than make a round trip:
        under load, calls that each went to Redis meanwhile were a sixth of all (a one-off reading of
        ``inference_admissions_total`` on a held server, docs/benchmarks.md)."""
        calls = self._lease_calls(admission)
        if not calls:
            return None, 0
        key = self._lease_key(admission)
        waited = False
        while True:
            now = time.monotonic()
            with self._leases_cond:
                entry = self._leases.get(key)
                if isinstance(entry, _Lease):
                    fits = not entry.quota_key or entry.units >= admission.units
                    if entry.expires > now and entry.calls > 0 and fits:
                        entry.calls -= 1
                        before = entry.position
                        if entry.quota_key:
                            entry.units -= admission.units
                            entry.position += admission.units
                        metrics.TALLY.count(metrics.ADMITTED_BY_LEASE)
                        return Decision("ok", units_before=before if before >= 0 else None), 0
                    del self._leases[key]
                    self._lease_end(entry)
                    entry = None
                if waited:
                    return None, 0  # the lease waited for was refused or is spent: decided alone
                if entry is None:
                    self._leases[key] = _Refill()
                    return None, calls
            entry.done.wait(self.lease_s)
            waited = True

    def _lease_install(self, admission: Admission, result: list, *, sent_at: float) -> None:
        granted, before = int(result[2]), int(result[1])  # a lease is granted whole: all the calls asked for, or 1
        if granted <= 1:
            return
        counted = before >= 0
        lease = _Lease(
            calls=granted - 1,
            units=(granted - 1) * admission.units if counted else 0,
            position=before + admission.units if counted else -1,
            expires=sent_at + self.lease_s,
            quota_key=admission.quota_key if counted else "",
        )
        key = self._lease_key(admission)
        with self._leases_cond:
            refill = self._leases.get(key)
            self._leases[key] = lease
            if isinstance(refill, _Refill):
                refill.done.set()
            if self._returner is None:
                self._returner = threading.Thread(target=self._returner_run, name="metering-leases", daemon=True)
                self._returner.start()
            elif self._returner_idle:
                self._leases_cond.notify()

    def _lease_unmark(self, admission: Admission) -> None:
        """This thread's admission asked for a lease and got none (refused, failed, or decided alone)."""
        key = self._lease_key(admission)
        with self._leases_cond:
            refill = self._leases.get(key)
            if isinstance(refill, _Refill):
                del self._leases[key]
                refill.done.set()

    def _lease_end(self, lease: _Lease) -> None:
        """A lease leaves the table (held: ``_leases_cond``): its unused units go back."""
        if lease.quota_key and lease.units > 0:
            self._unreserved.append((lease.quota_key, lease.units))
            lease.units = 0
            self._leases_cond.notify()

    def _leases_expire(self, now: float) -> float | None:
        """End the expired leases (held: ``_leases_cond``); the next expiry, if any."""
        next_expiry = None
        for key, lease in list(self._leases.items()):
            if isinstance(lease, _Refill):
                continue
            if lease.expires <= now:
                del self._leases[key]
                self._lease_end(lease)
            elif next_expiry is None or lease.expires < next_expiry:
                next_expiry = lease.expires
        return next_expiry

    def _returner_run(self) -> None:
        """Ends leases as they expire and gives their unused units back, so that an idle key holds none."""
        while True:
            with self._leases_cond:
                now = time.monotonic()
                next_expiry = self._leases_expire(now)
                pending, self._unreserved = self._unreserved, []
                if not pending:
                    self._returner_idle = next_expiry is None
                    self._leases_cond.wait(None if next_expiry is None else next_expiry - now)
                    self._returner_idle = False
                    continue
            self._unreserve_send(pending)

    def _unreserve_send(self, pending: list[tuple[str, int]]) -> None:
        totals: dict[str, int] = {}
        for quota_key, units in pending:
            totals[quota_key] = totals.get(quota_key, 0) + units
        try:
            pipe = self.client.pipeline(transaction=False)
            for quota_key, units in totals.items():
                self._unreserve(keys=[quota_key], args=[units], client=pipe)
            self._call(pipe.execute)
        except MeteringUnavailable:
            # Not retried (a lost reply may have been applied): the units stay counted, on the buyer's side.
            logger.warning("Could not give back %d leased units: metering unavailable", sum(totals.values()))

    def leases_release(self) -> None:
        """End every lease now and give back its unused units (at exit, and in tests)."""
        with self._leases_cond:
            self._leases_expire(math.inf)
            pending, self._unreserved = self._unreserved, []
        if pending:
            self._unreserve_send(pending)

    def _decision(self, outcome: str, result: list, admission: Admission) -> Decision:
        if outcome == "rate_limited":
            return Decision(outcome, retry_after=_us_to_retry_after(float(result[1])))
        if outcome == "quota_exceeded":
            return Decision(outcome, retry_after=admission.seconds_to_period_end())
        if outcome == "replay":
            stored = StoredResponse(status=int(result[2]), headers=json.loads(result[3]), body=bytes(result[4] or b""))
            return Decision(outcome, stored=stored)
        if outcome == "in_progress":
            return Decision(outcome, retry_after=1)
        if outcome == "ok":
            before = int(result[1])
            return Decision(outcome, units_before=before if before >= 0 else None)
        return Decision(outcome)

    def _quota_seed(self, admission: Admission) -> None:
        """The counter is missing (a new period, or Redis lost it): start it from the ledger. SET NX, so the first
        seeder wins and concurrent ones agree."""
        from inference.selectors import usage_units_for_period
        from inference.services import usage_flush

        # Records still in the buffer count too (a period that just renewed): move them to the ledger first.
        # Rare (once per subscription and period), so the hot path does not pay for it.
        usage_flush(wait_s=0)
        used = usage_units_for_period(
            subscription_id=admission.subscription_id, start=admission.period_start, end=admission.period_end
        )
        ttl = max(1, int(admission.period_end.timestamp() - time.time())) + QUOTA_TTL_MARGIN_S
        self._call(self.client.set, admission.quota_key, used, nx=True, ex=ttl)

    def succeed(self, admission: Admission, usage: UsageEntry, stored: StoredResponse | None) -> None:
        """Record the usage: through the spool (durable on this machine when this returns, in Redis a moment
        later); for an idempotent call, with its stored response in one atomic round trip."""
        if admission.idempotency is None or stored is None:
            try:
                self.spool().append(entry_encode(usage))
                return
            except OSError:  # no spool (disk full, permissions): the round trip it saves
                logger.exception("Usage spool unavailable; recording usage %s directly", usage.request_id)
            self._execute("RPUSH", USAGE_BUFFER, entry_encode(usage))  # one command: no MULTI needed
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(USAGE_BUFFER, entry_encode(usage))
        key = admission.idempotency.key
        pipe.hset(
            key,
            mapping={
                "fp": admission.idempotency.fingerprint,
                "state": "done",
                "status": stored.status,
                "headers": json.dumps(stored.headers),
                "body": stored.body,
            },
        )
        pipe.expire(key, settings.INFERENCE_IDEMPOTENCY_TTL_S)
        self._call(pipe.execute)

    def spool(self) -> UsageSpool:
        return usage_spool_get(
            directory=settings.USAGE_SPOOL_DIR, store=self.url, push=self._usage_push, write=_usage_write
        )

    def _usage_push(self, lines: list[bytes]) -> None:
        # On the pusher thread's own connection, like the hot path's commands: two system calls, not five.
        self._execute("RPUSH", USAGE_BUFFER, *lines)

    def fail(self, admission: Admission | None, error: ErrorEntry, *, refund: bool) -> None:
        """Give back what ``admit`` reserved (quota units, the idempotency key) and count the error."""
        pipe = self.client.pipeline(transaction=True)
        if refund and admission is not None:
            if admission.counts_units:
                pipe.decrby(admission.quota_key, admission.units)
            if admission.idempotency is not None:
                pipe.delete(admission.idempotency.key)
        pipe.rpush(ERROR_BUFFER, entry_encode(error))
        self._call(pipe.execute)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    # -- the flusher --

    def lock_acquire(self, *, ttl_s: int = 60, wait_s: float = 0.0) -> str | None:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while True:
            if self._call(self.client.set, FLUSH_LOCK, token, nx=True, ex=ttl_s):
                return token
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def lock_refresh(self, token: str, *, ttl_s: int = 60) -> None:
        if self._call(self.client.get, FLUSH_LOCK) == token.encode():
            self._call(self.client.expire, FLUSH_LOCK, ttl_s)

    def lock_release(self, token: str) -> None:
        self._call(self._unlock, keys=[FLUSH_LOCK], args=[token])

    def processing_read(self, processing: str) -> list[bytes]:
        return self._call(self.client.lrange, processing, 0, -1)

    def processing_clear(self, processing: str) -> None:
        self._call(self.client.delete, processing)

    def claim(self, buffer: str, processing: str, batch: int) -> list[bytes]:
        return self._call(self._claim, keys=[buffer, processing], args=[batch])


def _usage_write(lines: list[bytes]) -> None:
    """Straight to the ledger (Redis unreachable after the calls were admitted); duplicates are ignored there."""
    from inference.services import usage_records_write

    usage_records_write(entries=[UsageEntry(**json.loads(line)) for line in lines])


# --- in process ----------------------------------------------------------------------------------


class LocalMetering:
    """The embedded default: the same decisions in process memory; usage goes straight to the database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rate: dict[str, float] = {}  # rate key -> theoretical arrival time (monotonic seconds)
        self._quota: dict[str, int] = {}
        self._idempotency: dict[str, tuple[float, str, str, StoredResponse | None]] = {}  # expiry, fp, state, resp

    def admit(self, admission: Admission) -> Decision:
        quota_key = admission.quota_key
        if admission.counts_units and quota_key not in self._quota:
            from inference.selectors import usage_units_for_period

            used = usage_units_for_period(
                subscription_id=admission.subscription_id, start=admission.period_start, end=admission.period_end
            )
            with self._lock:
                self._quota.setdefault(quota_key, used)
        now = time.monotonic()
        idem = admission.idempotency
        with self._lock:
            if idem is not None:
                held = self._idempotency.get(idem.key)
                if held is not None and held[0] > now:
                    _expiry, fingerprint, state, stored = held
                    if fingerprint != idem.fingerprint:
                        return Decision("reused")
                    if state != "done":
                        return Decision("in_progress", retry_after=1)
                    return Decision("replay", stored=stored)
            tat = max(self._rate.get(admission.rate_key, now), now)
            new_tat = tat + 1.0 / max(1, admission.rate_limit)
            allow_at = new_tat - 1.0
            if allow_at > now:
                return Decision("rate_limited", retry_after=_us_to_retry_after((allow_at - now) * 1_000_000))
            units_before = None
            if admission.counts_units:
                units_before = self._quota[quota_key]
                if admission.quota_units is not None and units_before + admission.units > admission.quota_units:
                    return Decision("quota_exceeded", retry_after=admission.seconds_to_period_end())
                self._quota[quota_key] += admission.units
            self._rate[admission.rate_key] = new_tat
            if idem is not None:
                pending_s = settings.INFERENCE_DEADLINE_S * 2 + 30
                self._idempotency[idem.key] = (now + pending_s, idem.fingerprint, "pending", None)
            if len(self._idempotency) > 10_000:
                self._idempotency = {k: v for k, v in self._idempotency.items() if v[0] > now}
        return Decision("ok", units_before=units_before)

    def admit_begin(self, admission: Admission) -> PendingAdmission:
        return PendingAdmission(admission, decision=self.admit(admission))  # nothing travels: decided now

    def admit_finish(self, pending: PendingAdmission) -> Decision:
        assert pending.decision is not None
        return pending.decision

    def succeed(self, admission: Admission, usage: UsageEntry, stored: StoredResponse | None) -> None:
        from inference.services import usage_records_write

        usage_records_write(entries=[usage])
        if admission.idempotency is not None and stored is not None:
            expiry = time.monotonic() + settings.INFERENCE_IDEMPOTENCY_TTL_S
            with self._lock:
                self._idempotency[admission.idempotency.key] = (
                    expiry,
                    admission.idempotency.fingerprint,
                    "done",
                    stored,
                )

    def fail(self, admission: Admission | None, error: ErrorEntry, *, refund: bool) -> None:
        from inference.services import inference_errors_write

        if refund and admission is not None:
            with self._lock:
                if admission.counts_units and admission.quota_key in self._quota:
                    self._quota[admission.quota_key] -= admission.units
                if admission.idempotency is not None:
                    self._idempotency.pop(admission.idempotency.key, None)
        inference_errors_write(entries=[error])

    def ping(self) -> bool:
        return True


Metering = RedisMetering | LocalMetering
_backend: tuple[str, Metering] | None = None
_backend_lock = threading.Lock()


def metering_backend() -> Metering:
    """The backend for the current settings (rebuilt when INFERENCE_REDIS_URL changes, as tests do)."""
    global _backend
    url = settings.INFERENCE_REDIS_URL or ""
    current = _backend
    if current is not None and current[0] == url:
        return current[1]
    with _backend_lock:
        if _backend is None or _backend[0] != url:
            _backend = (url, RedisMetering(url) if url else LocalMetering())
        return _backend[1]
