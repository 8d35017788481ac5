"""Monthly spend caps per organization and per API key, so nobody is surprised by a bill.

Organization owners and admins set a cap on the organization (``api_key`` empty) or on one of its API keys.
A notice goes to the owners and admins once a month when spend reaches ``SPEND_CAP_NOTICE_PERCENT`` of a cap;
at 100% every /v2 call answers 402 ``spend_cap_reached`` until the cap is raised or the month (UTC) ends.

The /v2 hot path calls ``spend_check`` before inference and ``spend_add`` after it. Both are cheap:

- caps are cached per process for at most ``CAPS_CACHE_TTL_S`` (one query per organization and second);
  an organization with no cap costs ``spend_check`` nothing else;
- this month's spend is kept in counters of integer micro-units (the ledger's precision: 6 decimal places),
  one per organization and one per key, keyed by month: in Redis when ``INFERENCE_REDIS_URL`` is set (the
  metering store), else in process memory (the local backend). A missing counter (a new month, a key that
  never had a cap, Redis lost it) is seeded from the usage ledger, ``SUM(cost)`` this month, once;
- ``spend_add`` increments counters that exist (one round trip, only for calls that cost something) and,
  when a counter crosses the notice threshold, enqueues the notice task on commit. Email never goes out on
  the hot path.

Spend between the ledger seed and buffered usage not yet flushed can be counted once too few or too many
times in a narrow race (as the quota counters); the seed flushes the buffer first to keep that window small.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey, Organization, User
from accounts.selectors import user_can_manage
from billing.models import SpendCap
from marketplace.errors import ApplicationError, Forbidden
from marketplace.ttl_cache import TtlCache
from moderation.audit import audit_log_write
from moderation.models import AuditAction

logger = logging.getLogger(__name__)

MICROS_PER_UNIT = 1_000_000  # counters hold micro-units of the currency (the ledger keeps 6 decimals)
MICROS_PER_CENT = 10_000
SPEND_CAP_CURRENCY = "usd"  # caps are in the platform's currency
SPEND_CAP_MAX_CENTS = 10**11  # one billion dollars: anything above is a typo
CAPS_CACHE_TTL_S = 1.0
CAPS_CACHE_MAX_ENTRIES = 50_000
COUNTER_PREFIX = "spend:"
# Counters outlive their month a little, so a request finishing just after midnight still finds its month.
COUNTER_TTL_MARGIN_S = 7 * 24 * 3600


class SpendCapReached(ApplicationError):
    status = 402
    code = "spend_cap_reached"


# --- months ----------------------------------------------------------------------------------------


def month_start(moment: datetime | None = None) -> date:
    """The first day of the (UTC) month of ``moment`` (default now): caps reset at 00:00 UTC on the 1st."""
    moment = (moment or timezone.now()).astimezone(UTC)
    return moment.date().replace(day=1)


def month_next(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def _month_bounds(month: date) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    nxt = month_next(month)
    return start, datetime(nxt.year, nxt.month, 1, tzinfo=UTC)


def money_format(amount: Decimal | int | float, currency: str = SPEND_CAP_CURRENCY) -> str:
    """A major-unit amount for people in the caps' currency: ``$50.00``."""
    from billing import pricing

    return pricing.money_format_major(amount, currency)


def to_micros(amount: Decimal | int | str) -> int:
    return int((Decimal(amount) * MICROS_PER_UNIT).to_integral_value(rounding=ROUND_HALF_UP))


def from_micros(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS_PER_UNIT).quantize(Decimal("0.000001"))


# --- caps, cached per process ------------------------------------------------------------------------


@dataclass(frozen=True)
class OrganizationCaps:
    """An organization's caps in cents: ``organization_cents`` (None: no cap) and one per API key id."""

    organization_slug: str = ""
    organization_cents: int | None = None
    by_key: dict[int, int] = field(default_factory=dict)
    cap_ids: dict[int | None, int] = field(default_factory=dict)  # api key id (None: organization) -> SpendCap id

    @property
    def empty(self) -> bool:
        return self.organization_cents is None and not self.by_key


_caps_cache: TtlCache[int, OrganizationCaps] = TtlCache(ttl_s=CAPS_CACHE_TTL_S, max_entries=CAPS_CACHE_MAX_ENTRIES)


def _caps_load(*, organization_id: int) -> OrganizationCaps:
    rows = list(
        SpendCap.objects.filter(organization_id=organization_id).values(
            "id", "api_key_id", "monthly_limit_cents", "organization__slug"
        )
    )
    if not rows:
        return OrganizationCaps()
    org_cents = next((r["monthly_limit_cents"] for r in rows if r["api_key_id"] is None), None)
    return OrganizationCaps(
        organization_slug=rows[0]["organization__slug"],
        organization_cents=org_cents,
        by_key={r["api_key_id"]: r["monthly_limit_cents"] for r in rows if r["api_key_id"] is not None},
        cap_ids={r["api_key_id"]: r["id"] for r in rows},
    )


def spend_caps_cached(*, organization_id: int) -> OrganizationCaps:
    """The organization's caps, at most ``CAPS_CACHE_TTL_S`` old. Shared between requests: read only."""
    return _caps_cache.get(organization_id, lambda: _caps_load(organization_id=organization_id))


def spend_caps_cache_forget(*, organization_id: int | None = None) -> None:
    """Drop this process's cached caps of one organization (or all); other processes follow within a second."""
    _caps_cache.forget(organization_id)


# --- this month's spend: counters ----------------------------------------------------------------------


def counter_key(*, month: date, organization_id: int, api_key_id: int | None = None) -> str:
    scope = f"key:{api_key_id}" if api_key_id is not None else f"org:{organization_id}"
    return f"{COUNTER_PREFIX}{month:%Y%m}:{scope}"


# KEYS: counters. ARGV[1]: micro-units. Adds to the counters that exist; -1 for a missing one (spend is never
# negative), which the next check seeds from the ledger.
_ADD_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then out[i] = redis.call('INCRBY', key, ARGV[1]) else out[i] = -1 end
end
return out
"""


class RedisSpendCounters:
    """Counters in the metering store; a Redis failure raises MeteringUnavailable (503), as metering does."""

    def __init__(self, metering: Any) -> None:
        self.metering = metering
        self.client = metering.client
        self._add = self.client.register_script(_ADD_LUA)

    def get(self, keys: list[str]) -> list[int | None]:
        values = self.metering._call(self.client.mget, keys)
        return [None if v is None else int(v) for v in values]

    def seed(self, key: str, micros: int, *, ttl_s: int) -> int:
        """Start a counter at ``micros`` unless another process did first; the counter's value either way."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(key, micros, nx=True, ex=ttl_s)
        pipe.get(key)
        _set, value = self.metering._call(pipe.execute)
        return int(value)

    def add(self, keys: list[str], micros: int) -> list[int | None]:
        values = self.metering._call(self._add, keys=keys, args=[micros])
        return [None if int(v) < 0 else int(v) for v in values]

    def forget(self, keys: list[str]) -> None:
        self.metering._call(self.client.delete, *keys)


class LocalSpendCounters:
    """The embedded default: counters in process memory (one process; limits are per process, as quotas)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}
        self._month = ""

    def _prune(self, keys: list[str]) -> None:
        # Keys carry their month: when a new month shows up, drop counters older than last month.
        month = keys[0][len(COUNTER_PREFIX) : len(COUNTER_PREFIX) + 6] if keys else ""
        if month and month > self._month:
            self._month = month
            if len(self._values) > 1000:
                self._values = {k: v for k, v in self._values.items() if k[len(COUNTER_PREFIX) :] >= month}

    def get(self, keys: list[str]) -> list[int | None]:
        with self._lock:
            self._prune(keys)
            return [self._values.get(k) for k in keys]

    def seed(self, key: str, micros: int, *, ttl_s: int) -> int:
        with self._lock:
            return self._values.setdefault(key, micros)

    def add(self, keys: list[str], micros: int) -> list[int | None]:
        out: list[int | None] = []
        with self._lock:
            for key in keys:
                if key in self._values:
                    self._values[key] += micros
                    out.append(self._values[key])
                else:
                    out.append(None)
        return out

    def forget(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._values.pop(key, None)


SpendCounters = RedisSpendCounters | LocalSpendCounters
_counters: tuple[Any, SpendCounters] | None = None
_counters_lock = threading.Lock()


def spend_counters() -> SpendCounters:
    """The counters that go with the current metering backend (rebuilt when it changes, as tests do)."""
    global _counters
    from inference.metering import RedisMetering, metering_backend

    backend = metering_backend()
    current = _counters
    if current is not None and current[0] is backend:
        return current[1]
    with _counters_lock:
        if _counters is None or _counters[0] is not backend:
            counters = RedisSpendCounters(backend) if isinstance(backend, RedisMetering) else LocalSpendCounters()
            _counters = (backend, counters)
        return _counters[1]


def spend_ledger_micros(*, organization_id: int, api_key_id: int | None, month: date) -> int:
    """This month's spend from the usage ledger: where a counter starts."""
    from inference.models import UsageRecord

    start, end = _month_bounds(month)
    records = UsageRecord.objects.filter(organization_id=organization_id, created_at__gte=start, created_at__lt=end)
    if api_key_id is not None:
        records = records.filter(api_key_id=api_key_id)
    total = records.aggregate(total=Sum("cost"))["total"]
    return to_micros(total or 0)


def _counter_seed(
    counters: SpendCounters, *, key: str, organization_id: int, api_key_id: int | None, month: date
) -> int:
    if isinstance(counters, RedisSpendCounters) and not transaction.get_connection().in_atomic_block:
        from inference.services import usage_flush

        # Buffered calls count too: move them to the ledger first. Rare (once per counter and month). Never
        # inside a transaction: a rollback would lose the records the flush took off the buffer.
        usage_flush(wait_s=0)
    micros = spend_ledger_micros(organization_id=organization_id, api_key_id=api_key_id, month=month)
    _start, end = _month_bounds(month)
    ttl_s = max(1, int(end.timestamp() - time.time())) + COUNTER_TTL_MARGIN_S
    return counters.seed(key, micros, ttl_s=ttl_s)


def spend_month_micros(
    *,
    organization_id: int,
    api_key_ids: list[int | None],
    month: date | None = None,
    seeded: list[int | None] | None = None,
) -> dict[int | None, int]:
    """This month's spend in micro-units by API key id (None: the whole organization), seeding missing
    counters from the ledger (their scopes are appended to ``seeded``). One store round trip when every
    counter exists."""
    month = month or month_start()
    counters = spend_counters()
    keys = [counter_key(month=month, organization_id=organization_id, api_key_id=k) for k in api_key_ids]
    values = counters.get(keys) if keys else []
    out: dict[int | None, int] = {}
    for api_key_id, key, value in zip(api_key_ids, keys, values, strict=True):
        if value is None:
            value = _counter_seed(
                counters, key=key, organization_id=organization_id, api_key_id=api_key_id, month=month
            )
            if seeded is not None:
                seeded.append(api_key_id)
        out[api_key_id] = value
    return out


# --- the hot path ------------------------------------------------------------------------------------


def spend_caps_url(*, organization_slug: str) -> str:
    path = reverse("billing:subscriptions") + f"?organization={organization_slug}#spend-caps"
    return settings.SITE_URL.rstrip("/") + path


def _reached(
    *, caps: OrganizationCaps, api_key_id: int | None, cap_cents: int, spent: int, estimate: int, month: date
) -> SpendCapReached:
    url = spend_caps_url(organization_slug=caps.organization_slug)
    resets = month_next(month)
    whose = "this API key's" if api_key_id is not None else "your organization's"
    cap_text = money_format(Decimal(cap_cents) / 100)
    if spent >= cap_cents * MICROS_PER_CENT:
        head = f"{whose[0].upper()}{whose[1:]} monthly spend cap of {cap_text} is reached"
    else:
        head = (
            f"This call ({money_format(from_micros(estimate))}) would go over {whose} monthly spend cap of "
            f"{cap_text} ({money_format(from_micros(spent))} spent this month)"
        )
    message = f"{head}; an admin can raise it at {url}. It resets on {resets:%B} {resets.day}, {resets.year}."
    return SpendCapReached(message, fields={"spend_cap_url": [url]})


def spend_check(
    *, organization_id: int, api_key_id: int | None, cost_estimate: Decimal, now: datetime | None = None
) -> None:
    """Raise SpendCapReached (402) when this month's spend of the organization, or of the API key, has reached
    its cap, or when this call (``cost_estimate``) would take it over. No query and no round trip for an
    organization without caps; otherwise one round trip in the steady state."""
    caps = spend_caps_cached(organization_id=organization_id)
    if caps.empty:
        return
    limits: list[tuple[int | None, int]] = []
    if caps.organization_cents is not None:
        limits.append((None, caps.organization_cents))
    if api_key_id is not None and api_key_id in caps.by_key:
        limits.append((api_key_id, caps.by_key[api_key_id]))
    if not limits:
        return
    month = month_start(now)
    seeded: list[int | None] = []
    spent = spend_month_micros(
        organization_id=organization_id, api_key_ids=[k for k, _ in limits], month=month, seeded=seeded
    )
    for scope, cap_cents in limits:
        # A counter that starts past the threshold (Redis lost it, a new key cap) never crosses it in spend_add:
        # the notice task decides (it sends at most one per cap and month).
        if scope in seeded and spent[scope] >= notice_threshold_micros(cap_cents):
            _notice_enqueue(spend_cap_id=caps.cap_ids[scope], month=month)
    estimate = to_micros(cost_estimate)
    for scope, cap_cents in limits:
        cap = cap_cents * MICROS_PER_CENT
        if spent[scope] >= cap or (estimate > 0 and spent[scope] + estimate > cap):
            raise _reached(
                caps=caps, api_key_id=scope, cap_cents=cap_cents, spent=spent[scope], estimate=estimate, month=month
            )


def notice_threshold_micros(cap_cents: int) -> int:
    return cap_cents * MICROS_PER_CENT * settings.SPEND_CAP_NOTICE_PERCENT // 100


def spend_add(*, organization_id: int, api_key_id: int | None, cost: Decimal, now: datetime | None = None) -> None:
    """Count what a successful call cost (after it). Enqueues the notice, on commit, when this call crosses
    the notice threshold of a cap. Never raises for a store outage: the ledger has the cost either way."""
    micros = to_micros(cost)
    if micros <= 0:
        return
    from inference.metering import MeteringUnavailable

    month = month_start(now)
    scopes: list[int | None] = [None] if api_key_id is None else [None, api_key_id]
    keys = [counter_key(month=month, organization_id=organization_id, api_key_id=s) for s in scopes]
    try:
        totals = spend_counters().add(keys, micros)
    except MeteringUnavailable:
        logger.warning("Could not count spend of organization %s: metering unavailable", organization_id)
        return
    caps = spend_caps_cached(organization_id=organization_id)
    if caps.empty:
        return
    for scope, total in zip(scopes, totals, strict=True):
        cap_cents = caps.organization_cents if scope is None else caps.by_key.get(scope)
        if total is None or cap_cents is None:
            continue
        threshold = notice_threshold_micros(cap_cents)
        if total - micros < threshold <= total:
            _notice_enqueue(spend_cap_id=caps.cap_ids[scope], month=month)


def _notice_enqueue(*, spend_cap_id: int, month: date) -> None:
    from billing.tasks import spend_cap_notice_task

    transaction.on_commit(
        lambda: spend_cap_notice_task.delay(spend_cap_id=spend_cap_id, month=month.isoformat()), robust=True
    )


# --- the notice ------------------------------------------------------------------------------------------


def spend_cap_notice_send(*, spend_cap_id: int, month: date) -> int:
    """Email the organization's owners and admins that spend reached the notice threshold of a cap, once per
    cap and month (``notice_sent_for``). Returns how many emails went out. Called by a Celery task."""
    from django.core.mail import send_mail
    from django.template.loader import render_to_string

    from moderation.emails import organization_manager_emails

    if month != month_start():
        return 0  # a notice for a month that is over helps nobody
    scope = SpendCap.objects.filter(pk=spend_cap_id).values("organization_id", "api_key_id").first()
    if scope is None:
        return 0
    # Read the spend before the transaction: a missing counter is seeded from the ledger, which may flush.
    spent = spend_month_micros(
        organization_id=scope["organization_id"], api_key_ids=[scope["api_key_id"]], month=month
    )[scope["api_key_id"]]
    with transaction.atomic():
        cap = (
            SpendCap.objects.select_for_update(of=("self",))
            .select_related("organization", "api_key")
            .filter(pk=spend_cap_id)
            .first()
        )
        if cap is None or cap.notice_sent_for == month:
            return 0
        if spent < notice_threshold_micros(cap.monthly_limit_cents):
            return 0
        cap.notice_sent_for = month
        cap.save(update_fields=["notice_sent_for", "updated_at"])
        percent = int(spent * 100 // (cap.monthly_limit_cents * MICROS_PER_CENT))
        audit_log_write(
            action=AuditAction.SPEND_CAP_NOTICE_SENT,
            organization=cap.organization,
            data={
                "spend_cap_id": cap.pk,
                "api_key": cap.api_key.prefix if cap.api_key else None,
                "month": month.isoformat(),
                "spent": str(from_micros(spent)),
                "percent": percent,
            },
        )
        recipients = organization_manager_emails(organization_id=cap.organization_id)
        resets = month_next(month)
        context = {
            "organization": cap.organization,
            "api_key": cap.api_key,
            "cap": money_format(Decimal(cap.monthly_limit_cents) / 100),
            "spent": money_format(from_micros(spent)),
            "percent": percent,
            "resets_on": f"{resets:%B} {resets.day}, {resets.year}",
            "url": spend_caps_url(organization_slug=cap.organization.slug),
        }
        subject = f"{cap.organization.name} has used {percent}% of its monthly spend cap"
        if cap.api_key is not None:
            subject = f"API key “{cap.api_key.name}” of {cap.organization.name} has used {percent}% of its spend cap"
        body = render_to_string("emails/spend_cap_notice.txt", context)
        sent = 0
        # Inside the transaction: a mail failure rolls back notice_sent_for, so a retry sends it.
        for recipient in recipients:
            sent += send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient], fail_silently=False)
        return sent


# --- setting caps ------------------------------------------------------------------------------------


def _require_manager(*, user: User, organization: Organization) -> None:
    if not user_can_manage(user=user, organization=organization):
        raise Forbidden("Only owners and admins of the organization may change its spend caps.")


def _api_key_check(*, organization: Organization, api_key: ApiKey | None) -> None:
    if api_key is not None and api_key.organization_id != organization.pk:
        raise ApplicationError(
            "That API key belongs to another organization.", code="invalid", fields={"api_key": ["Unknown key."]}
        )


def _cap_changed(*, organization_id: int) -> None:
    spend_caps_cache_forget(organization_id=organization_id)
    transaction.on_commit(lambda: spend_caps_cache_forget(organization_id=organization_id))


@transaction.atomic
def spend_cap_set(
    *, organization: Organization, user: User, monthly_limit_cents: int, api_key: ApiKey | None = None
) -> SpendCap:
    """Set (or change) the monthly spend cap of the organization, or of one of its API keys (owners and admins).

    A changed cap gets its own notice: ``notice_sent_for`` is cleared and the notice task runs on commit; it
    sends the notice when this month's spend is already at the threshold of the new cap."""
    _require_manager(user=user, organization=organization)
    _api_key_check(organization=organization, api_key=api_key)
    if not isinstance(monthly_limit_cents, int) or not 1 <= monthly_limit_cents <= SPEND_CAP_MAX_CENTS:
        raise ApplicationError(
            "The cap is out of range.",
            code="invalid",
            fields={"monthly_limit_cents": [f"Between 1 and {SPEND_CAP_MAX_CENTS:,} cents."]},
        )
    Organization.objects.select_for_update().filter(pk=organization.pk).exists()  # one writer per organization
    cap = SpendCap.objects.filter(organization=organization, api_key=api_key).first()
    previous = cap.monthly_limit_cents if cap is not None else None
    if cap is None:
        cap = SpendCap(organization=organization, api_key=api_key)
    if previous != monthly_limit_cents:
        cap.notice_sent_for = None
    cap.monthly_limit_cents = monthly_limit_cents
    cap.updated_by = user
    cap.save()
    audit_log_write(
        action=AuditAction.SPEND_CAP_SET,
        actor=user,
        organization=organization,
        data={
            "spend_cap_id": cap.pk,
            "api_key": api_key.prefix if api_key is not None else None,
            "monthly_limit_cents": monthly_limit_cents,
            "previous_cents": previous,
        },
    )
    _cap_changed(organization_id=organization.pk)
    if previous != monthly_limit_cents:
        _notice_enqueue(spend_cap_id=cap.pk, month=month_start())
    return cap


@transaction.atomic
def spend_cap_remove(*, organization: Organization, user: User, api_key: ApiKey | None = None) -> bool:
    """Remove the organization's cap (or one key's). Returns whether there was one."""
    _require_manager(user=user, organization=organization)
    _api_key_check(organization=organization, api_key=api_key)
    cap = SpendCap.objects.select_for_update().filter(organization=organization, api_key=api_key).first()
    if cap is None:
        return False
    data = {
        "spend_cap_id": cap.pk,
        "api_key": api_key.prefix if api_key is not None else None,
        "previous_cents": cap.monthly_limit_cents,
    }
    cap.delete()
    audit_log_write(action=AuditAction.SPEND_CAP_REMOVED, actor=user, organization=organization, data=data)
    _cap_changed(organization_id=organization.pk)
    return True


# --- reads for pages and the API -------------------------------------------------------------------------


@dataclass(frozen=True)
class CapStatus:
    """One cap (or the absence of one) with this month's spend, for pages and the API."""

    api_key: ApiKey | None
    monthly_limit_cents: int | None
    spent: Decimal
    month: date

    @property
    def resets_on(self) -> date:
        return month_next(self.month)

    @property
    def percent(self) -> int | None:
        if not self.monthly_limit_cents:
            return None
        return int(self.spent * 100 * 100 // self.monthly_limit_cents)

    @property
    def level(self) -> str:
        """``ok``, ``warn`` (at the notice threshold) or ``reached``."""
        percent = self.percent
        if percent is None or percent < settings.SPEND_CAP_NOTICE_PERCENT:
            return "ok"
        return "reached" if percent >= 100 else "warn"

    @property
    def limit(self) -> Decimal | None:
        return None if self.monthly_limit_cents is None else Decimal(self.monthly_limit_cents) / 100


def spend_cap_statuses(*, organization: Organization, api_keys: list[ApiKey] | None = None) -> list[CapStatus]:
    """The organization's cap first, then one per API key (every key given in ``api_keys``, capped or not; by
    default the keys that have a cap), each with this month's spend: the counters the caps are enforced with,
    or the ledger where a counter does not exist yet. At most two queries and one store round trip."""
    from inference.models import UsageRecord

    month = month_start()
    caps = {c.api_key_id: c for c in SpendCap.objects.filter(organization=organization).select_related("api_key")}
    if api_keys is None:
        api_keys = [c.api_key for c in caps.values() if c.api_key is not None]
    scopes: list[int | None] = [None, *(k.pk for k in api_keys)]
    keys = [counter_key(month=month, organization_id=organization.pk, api_key_id=s) for s in scopes]
    values = dict(zip(scopes, spend_counters().get(keys), strict=True))
    if any(v is None for v in values.values()):
        start, end = _month_bounds(month)
        by_key = dict(
            UsageRecord.objects.filter(organization=organization, created_at__gte=start, created_at__lt=end)
            .order_by()
            .values_list("api_key_id")
            .annotate(total=Sum("cost"))
            .values_list("api_key_id", "total")
        )
        ledger: dict[int | None, int] = {k: to_micros(v or 0) for k, v in by_key.items() if k is not None}
        ledger[None] = sum(to_micros(v or 0) for v in by_key.values())
        values = {s: v if v is not None else ledger.get(s, 0) for s, v in values.items()}
    keys_by_id = {k.pk: k for k in api_keys}
    return [
        CapStatus(
            api_key=keys_by_id.get(scope) if scope is not None else None,
            monthly_limit_cents=caps[scope].monthly_limit_cents if scope in caps else None,
            spent=from_micros(values[scope] or 0),
            month=month,
        )
        for scope in scopes
    ]
