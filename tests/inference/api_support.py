"""Builders for the /v2 tests: a published model in object storage, a buyer organization with a subscription
and an API key, and Redis helpers scoped to the metering keys (never the whole database)."""

from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort
import redis
from django.conf import settings

from inference import runtime


def metering_keys_clear(url: str | None = None) -> None:
    """Delete this project's metering keys (``inf:*``) from the test Redis database, nothing else."""
    client = redis.Redis.from_url(url or settings.INFERENCE_REDIS_URL)
    try:
        keys = list(client.scan_iter(match="inf:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.INFERENCE_REDIS_URL)


def evalsha_calls() -> int:
    """Scripts (admissions) the test Redis has run so far: a round-trip counter."""
    return int(redis_client().info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def concurrently(count: int, target) -> list:
    """``target(i)`` from ``count`` threads released together; each result, or the exception it raised."""
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def worker(index: int) -> None:
        barrier.wait()
        try:
            results[index] = target(index)
        except Exception as exc:  # collected and asserted by the test
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def signature_of(onnx_bytes: bytes) -> dict:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return runtime.session_signature(session)


def publish_model(
    *,
    s3: Any,
    onnx_bytes: bytes,
    organization: Any = None,
    slug: str | None = None,
    batchable: bool = True,
    upload: bool = True,
) -> Any:
    """A public listing whose current version is ``onnx_bytes``, stored in the test bucket. Returns the version
    (``version.listing`` is the listing)."""
    from django.utils import timezone

    from catalog.models import ListingStatus
    from tests.catalog.factories import ListingFactory, VersionFactory, example_report

    key = f"artifacts/test/{uuid.uuid4().hex}/model.onnx"
    if upload:
        s3.put(key, onnx_bytes)
    report = example_report()
    report["metrics"]["batchable"] = batchable
    extra: dict[str, Any] = {"organization": organization} if organization is not None else {}
    if slug:
        extra["slug"] = slug
    listing = ListingFactory(status=ListingStatus.PUBLISHED, published_at=timezone.now(), **extra)
    version = VersionFactory(
        listing=listing,
        version="1.0.0",
        artifact_key=key,
        artifact_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        artifact_size=len(onnx_bytes),
        signature=signature_of(onnx_bytes),
        validation_report=report,
    )
    listing.current_version = version
    listing.save(update_fields=["current_version"])
    return version


def add_version(*, s3: Any, listing: Any, onnx_bytes: bytes, version: str, status: str = "published") -> Any:
    from tests.catalog.factories import VersionFactory

    key = f"artifacts/test/{uuid.uuid4().hex}/model.onnx"
    s3.put(key, onnx_bytes)
    return VersionFactory(
        listing=listing,
        version=version,
        status=status,
        artifact_key=key,
        artifact_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        artifact_size=len(onnx_bytes),
        signature=signature_of(onnx_bytes),
    )


@dataclass
class Buyer:
    user: Any
    organization: Any
    subscription: Any
    api_key: Any
    raw_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.raw_key}"}

    @property
    def django_headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.raw_key}"}


_counter = {"n": 0}


def buyer_create(
    *,
    listing: Any,
    quota: int | None = None,
    rate_limit: int | None = None,
    scopes: tuple[str, ...] = ("inference",),
    listing_ids: list[int] | None = None,
    subscribe: bool = True,
    pinned_version: Any = None,
) -> Buyer:
    """An organization (with an owner) subscribed to ``listing`` on a free plan with ``quota`` units a month,
    and an API key."""
    from accounts.models import Membership, Organization, Role, User
    from accounts.services import api_key_create
    from billing.models import Plan
    from billing.services import plan_create, subscription_create

    _counter["n"] += 1
    n = f"{_counter['n']}-{uuid.uuid4().hex[:6]}"
    user = User.objects.create_user(email=f"buyer{n}@example.com", password="pass-Word-123")
    organization = Organization.objects.create(name=f"Buyer {n}", slug=f"buyer-{n}")
    Membership.objects.create(organization=organization, user=user, role=Role.OWNER)
    subscription = None
    if subscribe:
        plan = Plan.objects.filter(listing=listing, monthly_quota_units=quota, is_active=True).first()
        if plan is None:
            publisher = User.objects.create_user(email=f"pub{n}@example.com", password="pass-Word-123")
            Membership.objects.create(organization=listing.organization, user=publisher, role=Role.OWNER)
            plan = plan_create(
                listing=listing, user=publisher, name=f"Free {n}", kind="free", monthly_quota_units=quota
            )
        subscription = subscription_create(
            organization=organization, user=user, plan=plan, accept_license=True, pinned_version=pinned_version
        )
    api_key, raw_key = api_key_create(
        organization=organization,
        user=user,
        name="test key",
        scopes=scopes,
        listing_ids=listing_ids,
        rate_limit_per_second=rate_limit,
    )
    return Buyer(user=user, organization=organization, subscription=subscription, api_key=api_key, raw_key=raw_key)


def caches_clear() -> None:
    """Drop the per-process caches of keys, entitlements and listings (rows change between tests)."""
    from accounts.selectors import api_key_cache_forget
    from billing.selectors import subscription_entitled_cache_forget
    from inference.views import served_listing_cache_clear

    api_key_cache_forget()
    subscription_entitled_cache_forget()
    served_listing_cache_clear()
