"""The Open Inference Protocol (KServe V2) endpoints under /v2.

Plain Django views, not DRF: this is the hot path. A call costs, in the steady state, no database
query (key, subscription and listing rows are cached per process for at most a second), one Redis
round trip before inference (idempotency, rate and quota decided and reserved by one Lua script) and
none after it: the usage record goes to the usage spool (inference/usage_spool.py), which pushes records to
Redis in batches. Only an idempotent call waits for a second one (its record and stored response together).

Errors are JSON ``{"error": "<message>", "code": "<code>", "fields": {...}}``: KServe V2 puts the
message string under ``error`` (Triton's client prints it), ``code`` is what programs branch on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from accounts.selectors import api_key_authenticate, api_key_touch
from billing.models import PlanKind
from billing.pricing import plan_hard_quota_units, usage_cost
from billing.selectors import subscription_entitled_get
from billing.spend_caps import spend_add, spend_check
from inference import metrics, protocol
from inference.dispatch import InferResult, infer, runs_cheaply
from inference.metering import (
    Admission,
    Decision,
    ErrorEntry,
    Idempotency,
    MeteringUnavailable,
    StoredResponse,
    UsageEntry,
    metering_backend,
)
from marketplace.errors import ApplicationError, Forbidden, NotFound
from marketplace.ttl_cache import TtlCache

logger = logging.getLogger(__name__)

SERVER_NAME = "specialist-marketplace"
SERVER_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
IDEMPOTENCY_HEADER = "HTTP_IDEMPOTENCY_KEY"
IDEMPOTENCY_KEY_MAX = 255
# Headers a stored idempotent response replays.
_REPLAYED_HEADERS = (
    "Content-Type", protocol.HEADER_LENGTH, "X-Request-Id", "X-Usage-Units", "X-Usage-Cost", "X-Usage-Currency",
)  # fmt: skip
# Costs are stated to the ledger's precision (UsageRecord.cost: 6 decimals).
COST_PLACES = Decimal("0.000001")


class NotAuthenticated(ApplicationError):
    status = 401
    code = "not_authenticated"


# --- what is served: listings and versions, cached per process ------------------------------------

LISTING_CACHE_TTL_S = 1.0
_listing_cache: TtlCache[str, ServedListing | None] = TtlCache(ttl_s=LISTING_CACHE_TTL_S, max_entries=10_000)


@dataclass(frozen=True)
class ServedVersion:
    id: int
    version: str
    status: str
    signature: dict
    model: Any  # inference.dispatch.ModelRef


@dataclass(frozen=True)
class ServedListing:
    id: int
    slug: str
    organization_id: int
    current_version_id: int | None
    by_version: dict[str, ServedVersion]  # servable versions by their number
    by_id: dict[int, ServedVersion]
    withdrawn: frozenset[str]


def _listing_load(slug: str) -> ServedListing | None:
    from catalog.models import SERVABLE_STATUSES, Listing, ListingStatus, Version, VersionStatus
    from inference.dispatch import model_ref_from_version

    listing = (
        Listing.objects.filter(slug=slug, status=ListingStatus.PUBLISHED)
        .only("id", "slug", "organization_id", "current_version_id")
        .first()
    )
    if listing is None:
        return None
    servable: list[ServedVersion] = []
    withdrawn: set[str] = set()
    for version in Version.objects.filter(
        listing_id=listing.pk, status__in=[*SERVABLE_STATUSES, VersionStatus.WITHDRAWN]
    ).defer("changelog", "status_reason", "sample_input"):
        if version.status == VersionStatus.WITHDRAWN:
            withdrawn.add(version.version)
        elif version.signature:
            servable.append(
                ServedVersion(
                    id=version.pk,
                    version=version.version,
                    status=version.status,
                    signature=version.signature,
                    model=model_ref_from_version(version),
                )
            )
    return ServedListing(
        id=listing.pk,
        slug=listing.slug,
        organization_id=listing.organization_id,
        current_version_id=listing.current_version_id,
        by_version={v.version: v for v in servable},
        by_id={v.id: v for v in servable},
        withdrawn=frozenset(withdrawn),
    )


def served_listing_get(*, slug: str) -> ServedListing | None:
    """A public listing and its servable versions, cached per process for at most a second (a withdraw or a
    suspension lands within that)."""
    return _listing_cache.get(slug, lambda: _listing_load(slug))


def served_listing_cache_clear() -> None:
    _listing_cache.forget()


def _listing_or_404(slug: str) -> ServedListing:
    served = served_listing_get(slug=slug)
    if served is None:
        raise NotFound(f"No model named '{slug}'.", code="model_not_found")
    return served


def _version_resolve(listing: ServedListing, version: str | None, pinned_version_id: int | None) -> ServedVersion:
    if version is not None:
        served = listing.by_version.get(version)
        if served is not None:
            return served
        if version in listing.withdrawn:
            raise NotFound(
                f"Version {version} of '{listing.slug}' was withdrawn by its publisher and can no longer be called. "
                "Call the model without a version for the current one.",
                code="version_withdrawn",
            )
        raise NotFound(f"'{listing.slug}' has no version {version}.", code="version_not_found")
    if pinned_version_id is not None:
        served = listing.by_id.get(pinned_version_id)
        if served is None:
            raise NotFound(
                f"Your subscription to '{listing.slug}' is pinned to a version that was withdrawn. "
                "Change the pin on your subscription, or name a version in the URL.",
                code="version_withdrawn",
            )
        return served
    served = listing.by_id.get(listing.current_version_id) if listing.current_version_id else None
    if served is None:
        raise NotFound(f"'{listing.slug}' has no version that can be called now.", code="version_not_found")
    return served


# --- responses ------------------------------------------------------------------------------------


def _json(payload: bytes, status: int = 200) -> HttpResponse:
    return HttpResponse(payload, status=status, content_type=protocol.JSON_CONTENT_TYPE)


def _error_response(exc: ApplicationError, request_id: str | None = None) -> HttpResponse:
    response = _json(protocol.error_payload(code=exc.code, message=exc.message, fields=exc.fields), exc.status)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response["Retry-After"] = str(int(retry_after))
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="v2"'
    if request_id:
        response["X-Request-Id"] = request_id
    return response


def _method_not_allowed(allowed: str) -> HttpResponse:
    response = _json(protocol.error_payload(code="method_not_allowed", message=f"Use {allowed} here."), status=405)
    response["Allow"] = allowed
    return response


def _raw_key(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return ""
    return credentials.strip()


def _authenticate(request: HttpRequest, *, required: bool) -> Any:
    raw = _raw_key(request)
    if raw is None:
        if required:
            raise NotAuthenticated("Send an API key: 'Authorization: Bearer <key>'.")
        return None
    api_key = api_key_authenticate(raw_key=raw) if raw else None
    if api_key is None:
        raise NotAuthenticated("The API key is invalid, revoked or expired.", code="invalid_api_key")
    return api_key


@dataclass(frozen=True)
class SessionCaller:
    """A signed-in browser (the listing page's playground) calling for the organization the user acts for. It
    stands where an API key would: no key row, the settings' default rate, counted per user."""

    organization_id: int
    user_id: int
    rate_limit: int
    pk: None = None
    scopes: tuple[str, ...] = ("inference",)
    allowed_listing_ids: None = None  # every listing (the subscription check still applies)

    @property
    def rate_subject(self) -> str:
        return f"session:{self.user_id}"


def _empty_view(request: HttpRequest) -> HttpResponse:
    """Stands in for the view in the CSRF check; it is never called."""
    return HttpResponse()


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> Any:  # the reason, not Django's HTML 403 page
        return reason


def _infer_caller(request: HttpRequest) -> Any:
    """The API key of a Bearer call; without an Authorization header, a signed-in session (with its CSRF
    token, since the view is csrf-exempt for API clients). ``request.user`` is only touched in that case."""
    if _raw_key(request) is None and request.user.is_authenticated:
        check = _CsrfCheck(_empty_view)
        check.process_request(request)
        reason = check.process_view(request, _empty_view, (), {})
        if reason is not None:
            raise Forbidden(f"CSRF check failed: {reason}. Reload the page and try again.", code="csrf_failed")
        organization = getattr(request, "organization", None)
        if organization is None:
            raise Forbidden("Create or join an organization to call models.", code="organization_required")
        return SessionCaller(
            organization_id=organization.pk,
            user_id=request.user.pk,
            rate_limit=settings.INFERENCE_DEFAULT_RATE_PER_SECOND,
        )
    return _authenticate(request, required=True)


def _observe(call: _Call | None, slug: str, status: int, started: float) -> None:
    known = call if call is not None and call.listing_id is not None else None
    metrics.request_observe(
        listing=slug if known is not None else "",
        version=known.version_label if known is not None else "",
        status=status,
        latency_s=time.perf_counter() - started,
        queue_ms=known.queue_ms if known is not None else None,
        compute_ms=known.compute_ms if known is not None else None,
    )


def request_id_new() -> str:
    """A new request id: 128 random bits in 32 hex digits, as ``uuid4().hex`` gives, but from Python's generator
    (seeded by the OS at start and again in every forked child) instead of os.urandom, a system call that
    releases the GIL: with a web process's threads busy, one point fewer a call where the GIL changes hands."""
    return f"{random.getrandbits(128):032x}"


# --- health and metadata --------------------------------------------------------------------------


def server_metadata(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    return _json(
        json.dumps({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}).encode()
    )


def health_live(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=200)


def health_ready(request: HttpRequest) -> HttpResponse:
    """Ready when the database and the metering store answer (every metered call needs both)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means not ready
        logger.warning("Not ready: the database does not answer", exc_info=True)
        return HttpResponse(status=503)
    if not metering_backend().ping():
        return HttpResponse(status=503)
    return HttpResponse(status=200)


def _metadata_target(
    request: HttpRequest, listing_slug: str, version: str | None
) -> tuple[ServedListing, ServedVersion]:
    api_key = _authenticate(request, required=False)
    listing = _listing_or_404(listing_slug)
    pinned = None
    if api_key is not None and version is None:
        subscription = subscription_entitled_get(organization_id=api_key.organization_id, listing_id=listing.id)
        pinned = subscription.pinned_version_id if subscription is not None else None
    return listing, _version_resolve(listing, version, pinned)


def model_metadata(request: HttpRequest, listing: str, version: str | None = None) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        served_listing, served = _metadata_target(request, listing, version)
    except ApplicationError as exc:
        return _error_response(exc)
    signature = served.signature
    versions = sorted(served_listing.by_version, key=lambda v: served_listing.by_version[v].id)
    payload = {
        "name": served_listing.slug,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [{"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in signature["inputs"]],
        "outputs": [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in signature.get("outputs", [])
        ],
    }
    if version is not None:
        payload["version"] = served.version
    return _json(json.dumps(payload).encode())


def model_ready(request: HttpRequest, listing: str, version: str | None = None) -> HttpResponse:
    """200 when the version can be called and the model host has it loaded or can load it without a download."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    from inference.dispatch import model_ready as host_model_ready

    try:
        _served_listing, served = _metadata_target(request, listing, version)
    except ApplicationError as exc:
        return _error_response(exc)
    if host_model_ready(model=served.model):
        return HttpResponse(status=200)
    return _error_response(
        ApplicationError("The model is not loaded yet; the first call loads it.", code="model_not_ready", status=400)
    )


# --- infer ----------------------------------------------------------------------------------------


@dataclass
class _Call:
    """What one call knows so far, for the error ledger."""

    request_id: str
    organization_id: int
    api_key_id: int
    listing_id: int | None = None
    version_id: int | None = None
    version_label: str = ""
    queue_ms: float | None = None
    compute_ms: float | None = None


def _idempotency(
    request: HttpRequest, *, organization_id: int, body: bytes, header_length: str | None
) -> Idempotency | None:
    value = request.META.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > IDEMPOTENCY_KEY_MAX or not value.isprintable():
        raise ApplicationError(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} printable characters.",
            code="invalid_idempotency_key",
            fields={"Idempotency-Key": ["1 to 255 printable characters."]},
        )
    digest = hashlib.sha256()
    digest.update(request.path.encode())
    digest.update(b"\n" + (header_length or "").encode() + b"\n")
    digest.update(body)
    key_hash = hashlib.sha256(value.encode()).hexdigest()[:40]
    return Idempotency(key=f"inf:idem:{organization_id}:{key_hash}", fingerprint=digest.hexdigest())


def _rejection(decision: Decision) -> ApplicationError:
    if decision.outcome == "rate_limited":
        exc = ApplicationError("Too many requests for this API key; slow down.", code="rate_limited", status=429)
    elif decision.outcome == "quota_exceeded":
        exc = ApplicationError(
            "The monthly quota of this subscription is used up. It renews at the end of the period; "
            "a larger plan raises it.",
            code="quota_exceeded",
            status=429,
        )
    elif decision.outcome == "in_progress":
        exc = ApplicationError(
            "A request with this Idempotency-Key is still running; retry after it finishes.",
            code="request_in_progress",
            status=409,
        )
    else:  # reused
        exc = ApplicationError(
            "This Idempotency-Key was used for a different request; use a new key for a new request.",
            code="idempotency_key_reused",
            status=422,
        )
    exc.retry_after = decision.retry_after  # type: ignore[attr-defined]
    return exc


def _replay(stored: StoredResponse) -> HttpResponse:
    response = HttpResponse(stored.body, status=stored.status)
    for name, value in stored.headers.items():
        response[name] = value
    response["Idempotent-Replayed"] = "true"
    return response


def _error_entry(call: _Call, exc: ApplicationError) -> ErrorEntry:
    return ErrorEntry(
        request_id=call.request_id,
        organization_id=call.organization_id,
        api_key_id=call.api_key_id,
        listing_id=call.listing_id,
        version_id=call.version_id,
        status=exc.status,
        code=exc.code,
        finished_at=time.time(),
    )


def _error_record(call: _Call, exc: ApplicationError, admission: Admission | None = None) -> None:
    """Count a failed call (never charged) and give back what was reserved for it."""
    if isinstance(exc, MeteringUnavailable):
        logger.warning("Call %s failed: metering unavailable", call.request_id)
        return
    try:
        metering_backend().fail(admission, _error_entry(call, exc), refund=admission is not None)
    except MeteringUnavailable:
        logger.warning("Could not record the failure of call %s: metering unavailable", call.request_id)


@csrf_exempt
def model_infer(request: HttpRequest, listing: str, version: str | None = None) -> HttpResponse:
    started = time.perf_counter()
    request_id = request_id_new()
    if request.method != "POST":
        return _method_not_allowed("POST")
    max_body = settings.INFERENCE_MAX_BODY_BYTES
    try:
        # Refuse an oversized body by its declared length, before reading it.
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > max_body:
        return _error_response(
            protocol.BodyTooLarge(f"The request body is {declared} bytes; the limit is {max_body}."), request_id
        )
    try:
        api_key = _infer_caller(request)
        if "inference" not in api_key.scopes:
            raise Forbidden("This API key lacks the 'inference' scope.", code="insufficient_scope")
    except ApplicationError as exc:
        return _error_response(exc, request_id)

    call = _Call(request_id=request_id, organization_id=api_key.organization_id, api_key_id=api_key.pk)
    try:
        response = _infer(request, call, api_key, listing, version)
    except ApplicationError as exc:
        response = _error_response(exc, request_id)
    _observe(call, listing, response.status_code, started)

    if api_key.pk is not None:
        api_key_touch(api_key_id=api_key.pk)
    return response


@dataclass
class _Ran:
    """A run's result, or what it raised (raised again once the call is known to be admitted)."""

    result: InferResult | None = None
    error: Exception | None = None

    def get(self) -> InferResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _run(served: ServedVersion, parsed: protocol.InferRequest) -> _Ran:
    try:
        result = infer(
            model=served.model,
            inputs=parsed.inputs,
            output_names=parsed.output_names,
            deadline_s=settings.INFERENCE_DEADLINE_S,
        )
    except Exception as exc:
        return _Ran(error=exc)
    return _Ran(result=result)


def _infer(request: HttpRequest, call: _Call, api_key: Any, slug: str, version: str | None) -> HttpResponse:
    try:
        served_listing = _listing_or_404(slug)
        call.listing_id = served_listing.id
        allowed = api_key.allowed_listing_ids
        if allowed is not None and served_listing.id not in allowed:
            raise Forbidden(f"This API key may not call '{slug}'.", code="key_not_allowed")
        subscription = subscription_entitled_get(organization_id=api_key.organization_id, listing_id=served_listing.id)
        if subscription is None:
            url = request.build_absolute_uri(reverse("catalog:listing-detail", kwargs={"slug": slug}))
            raise Forbidden(
                f"Your organization has no active subscription to '{slug}'. Subscribe at {url}",
                code="subscription_required",
                fields={"subscribe_url": [url]},
            )
        served = _version_resolve(served_listing, version, subscription.pinned_version_id)
        call.version_id = served.id
        call.version_label = served.version

        body = request.read(settings.INFERENCE_MAX_BODY_BYTES + 1)
        if len(body) > settings.INFERENCE_MAX_BODY_BYTES:
            raise protocol.BodyTooLarge(
                f"The request body is over the limit of {settings.INFERENCE_MAX_BODY_BYTES} bytes."
            )
        header_length = request.META.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
        encoding = request.META.get("HTTP_CONTENT_ENCODING")
        if encoding and encoding.lower() != "identity":
            raise ApplicationError(
                f"Content-Encoding {encoding} is not supported; send the body uncompressed.",
                code="unsupported_encoding",
                status=415,
            )
        parsed = protocol.request_parse(
            body=body, header_length=header_length, signature=served.signature,
            max_elements=settings.INFERENCE_MAX_ELEMENTS,
        )  # fmt: skip
        idempotency = _idempotency(
            request, organization_id=api_key.organization_id, body=body, header_length=header_length
        )
    except ApplicationError as exc:
        _error_record(call, exc)
        raise

    plan = subscription.plan
    admission = Admission(
        api_key_id=api_key.pk,
        rate_limit=api_key.rate_limit,
        subscription_id=subscription.pk,
        quota_units=plan_hard_quota_units(plan),
        # A flat plan's included units: the counter says where this call starts, so its cost is exact.
        counted=plan.kind == PlanKind.FLAT and plan.monthly_quota_units is not None,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        units=parsed.units,
        idempotency=idempotency,
        rate_subject=api_key.rate_subject if isinstance(api_key, SessionCaller) else "",
    )
    metering = metering_backend()
    ran: _Ran | None = None
    if runs_cheaply(served.model):
        # A cheap model (inline: runs cheaper than the admission's round trip; celery: a worker said so) runs while
        # the admission's answer travels; the result is used only if the call is admitted (a refused call cost one
        # cheap run more).
        pending = metering.admit_begin(admission)
        try:
            ran = _run(served, parsed) if pending.may_run else None
        finally:
            decision = metering.admit_finish(pending)  # MeteringUnavailable propagates: fail closed (503)
    else:
        decision = metering.admit(admission)  # MeteringUnavailable propagates: fail closed (503)
    if decision.outcome == "replay":
        assert decision.stored is not None
        return _replay(decision.stored)
    if not decision.admitted:
        rejection = _rejection(decision)
        _error_record(call, rejection)
        raise rejection

    # Admitted: units are reserved. From here on every failure refunds them and is counted as an error.
    # The units before this call are reserved too, so the cost is exact, not an estimate, even with concurrent
    # calls at the included-units boundary.
    cost = usage_cost(plan=plan, units=parsed.units, units_before=decision.units_before or 0).quantize(COST_PLACES)
    try:
        spend_check(organization_id=api_key.organization_id, api_key_id=api_key.pk, cost_estimate=cost)
    except ApplicationError as exc:
        _error_record(call, exc, admission)
        raise
    if ran is None:
        ran = _run(served, parsed)
    try:
        result = ran.get()
        usage = {
            "units": parsed.units,
            "queue_ms": round(result.queue_ms, 3),
            "compute_ms": round(result.compute_ms, 3),
            "cost": str(cost),
            "currency": plan.currency,
        }
        body, headers = protocol.response_encode(
            model_name=slug,
            model_version=served.version,
            response_id=parsed.id if parsed.id is not None else call.request_id,
            outputs=result.outputs,
            request=parsed,
            usage=usage,
        )
    except ApplicationError as exc:
        _error_record(call, exc, admission)
        raise
    except Exception:
        logger.exception("Call %s to %s@%s failed", call.request_id, slug, served.version)
        failure = ApplicationError(
            "The call failed on our side; it was not charged.", code="internal_error", status=500
        )
        _error_record(call, failure, admission)
        raise failure from None

    call.queue_ms, call.compute_ms = result.queue_ms, result.compute_ms
    headers["X-Request-Id"] = call.request_id
    headers["X-Usage-Units"] = str(parsed.units)
    headers["X-Usage-Cost"] = str(cost)
    headers["X-Usage-Currency"] = plan.currency
    entry = UsageEntry(
        request_id=call.request_id,
        organization_id=api_key.organization_id,
        api_key_id=api_key.pk,
        subscription_id=subscription.pk,
        listing_id=served_listing.id,
        version_id=served.id,
        units=parsed.units,
        queue_ms=result.queue_ms,
        compute_ms=result.compute_ms,
        provider=result.provider,
        finished_at=time.time(),
        cost=str(cost),
        currency=plan.currency,
    )
    stored = (
        StoredResponse(200, {k: headers[k] for k in _REPLAYED_HEADERS if k in headers}, body) if idempotency else None
    )
    try:
        metering.succeed(admission, entry, stored)
    except MeteringUnavailable:
        # Redis went away during the call: the ledger takes the record directly, so the result the caller
        # gets is recorded exactly once (its idempotency key cannot be stored; it expires as pending).
        from inference.services import usage_record_create

        usage_record_create(entry=entry)
    spend_add(organization_id=api_key.organization_id, api_key_id=api_key.pk, cost=cost)
    response = HttpResponse(body, status=200)
    for name, value in headers.items():
        response[name] = value
    return response
