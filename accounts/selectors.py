"""Reads for users, organizations and memberships."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Case, IntegerField, Prefetch, Q, QuerySet, Value, When
from django.utils import timezone

from accounts.models import MANAGER_ROLES, ApiKey, Invitation, Membership, Organization, Role, User
from marketplace.ttl_cache import TtlCache


def organization_list_for_user(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def organization_current(*, user: User, organization_id: int | None) -> Organization | None:
    """The organization chosen in the switcher, or the user's first one."""
    orgs = organization_list_for_user(user=user)
    if organization_id is not None:
        org = orgs.filter(pk=organization_id).first()
        if org is not None:
            return org
    return orgs.first()


def membership_get(*, user: User, organization: Organization) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, organization=organization).first()


def user_can_manage(*, user: User, organization: Organization) -> bool:
    """Owners and admins may change an organization's listings and invite people."""
    membership = membership_get(user=user, organization=organization)
    return membership is not None and membership.role in MANAGER_ROLES


def user_is_member(*, user: User, organization: Organization) -> bool:
    return membership_get(user=user, organization=organization) is not None


def organization_get_for_member(*, user: User, slug: str) -> Organization | None:
    """The organization with this slug if ``user`` belongs to it; None otherwise (callers answer 404)."""
    if not user.is_authenticated:
        return None
    return Organization.objects.filter(slug=slug, memberships__user=user).first()


def organization_list_with_roles(*, user: User) -> QuerySet[Membership]:
    """The user's memberships with their organizations, for "my organizations" lists."""
    return Membership.objects.filter(user=user).select_related("organization").order_by("organization__name")


def membership_list(*, organization: Organization) -> QuerySet[Membership]:
    # Owners first, then admins, then members; alphabetical within a role.
    role_order = Case(
        *(When(role=role, then=Value(i)) for i, role in enumerate(Role.values)), output_field=IntegerField()
    )
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .annotate(role_order=role_order)
        .order_by("role_order", "user__email")
    )


def invitation_list_pending(*, organization: Organization) -> QuerySet[Invitation]:
    return (
        Invitation.objects.filter(organization=organization, accepted_at__isnull=True, expires_at__gt=timezone.now())
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation_get_by_token(*, token: str) -> Invitation | None:
    return Invitation.objects.select_related("organization", "invited_by").filter(token=token).first()


# --- API keys ----------------------------------------------------------------------------------

# smk_<public id: 12 of [a-z0-9]>_<secret: URL-safe base64, 32 to 128 characters>
API_KEY_RE = re.compile(r"smk_([a-z0-9]{12})_([A-Za-z0-9_-]{32,128})")
# How long a process trusts its copy of a key row: a revoke takes effect everywhere within this.
API_KEY_CACHE_TTL_S = 1.0
API_KEY_CACHE_MAX_ENTRIES = 50_000
_api_key_cache: TtlCache[str, ApiKey | None] = TtlCache(
    ttl_s=API_KEY_CACHE_TTL_S, max_entries=API_KEY_CACHE_MAX_ENTRIES
)


def api_key_parse(*, raw_key: str) -> tuple[str, str] | None:
    """``(public_id, secret)`` of a well-formed raw key, else None."""
    match = API_KEY_RE.fullmatch(raw_key) if isinstance(raw_key, str) else None
    return (match.group(1), match.group(2)) if match else None


def api_key_hash(*, raw_key: str) -> str:
    """SHA-256 of the whole raw key. Keys are long random strings, so a fast hash is the right one."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _api_key_load(*, public_id: str) -> ApiKey | None:
    """The key row by its unique (indexed) public id, with its listing ids; one query on PostgreSQL."""
    qs = ApiKey.objects.filter(public_id=public_id)
    api_key: ApiKey | None
    if connection.vendor == "postgresql":
        from django.contrib.postgres.aggregates import ArrayAgg

        qs = qs.annotate(_listing_ids=ArrayAgg("listings__id", filter=Q(listings__isnull=False), default=Value([])))
        api_key = qs.first()
        listing_ids = api_key._listing_ids if api_key is not None else []  # type: ignore[attr-defined]
    else:
        api_key = qs.first()
        listing_ids = list(api_key.listings.values_list("id", flat=True)) if api_key is not None else []
    if api_key is None:
        return None
    api_key.allowed_listing_ids = frozenset(listing_ids) or None  # type: ignore[attr-defined]
    api_key.rate_limit = api_key.rate_limit_per_second or settings.INFERENCE_DEFAULT_RATE_PER_SECOND  # type: ignore[attr-defined]
    return api_key


def api_key_cache_forget(*, public_id: str | None = None) -> None:
    """Drop one cached key (or all): the next authenticate reads the database."""
    _api_key_cache.forget(public_id)


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The key for ``raw_key``; None when it is malformed, unknown, wrong, revoked or expired.

    One indexed lookup by public id, then a constant-time comparison of SHA-256 digests. Rows (and
    unknown ids) are cached per process for at most ``API_KEY_CACHE_TTL_S``; revocation and expiry are
    checked on every call against the cached row, so an expiry is exact and a revoke lands within a
    second. The returned row is shared between requests of this process: read it, never change it.
    It carries ``allowed_listing_ids`` (frozenset of ids, or None for all) and ``rate_limit`` (requests
    per second, the platform default when the key has none).
    """
    parsed = api_key_parse(raw_key=raw_key)
    if parsed is None:
        return None
    public_id = parsed[0]
    api_key = _api_key_cache.get(public_id, lambda: _api_key_load(public_id=public_id))
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, api_key_hash(raw_key=raw_key)):
        return None
    return api_key if api_key_status(api_key=api_key) == "active" else None


# Per process: when each key's last_used_at was last written, so a busy key costs one UPDATE a minute.
API_KEY_TOUCH_INTERVAL_S = 60.0
_api_key_touched: dict[int, float] = {}
_api_key_touched_lock = threading.Lock()


def api_key_touch(*, api_key_id: int) -> None:
    """Record that a key was used: at most one UPDATE per key per minute (per process by memory, and
    across processes by the WHERE clause). Bookkeeping beside the lookup it follows, hence here."""
    now_mono = time.monotonic()
    with _api_key_touched_lock:
        last = _api_key_touched.get(api_key_id)
        if last is not None and now_mono - last < API_KEY_TOUCH_INTERVAL_S:
            return
        if len(_api_key_touched) >= API_KEY_CACHE_MAX_ENTRIES:
            _api_key_touched.clear()
        _api_key_touched[api_key_id] = now_mono
    now = timezone.now()
    ApiKey.objects.filter(pk=api_key_id).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - timedelta(seconds=API_KEY_TOUCH_INTERVAL_S))
    ).update(last_used_at=now)


def api_key_list_for_organization(*, organization: Organization) -> QuerySet[ApiKey]:
    """An organization's keys, newest first, with their creators and listing restrictions."""
    from catalog.models import Listing

    return (
        ApiKey.objects.filter(organization=organization)
        .select_related("created_by")
        .prefetch_related(Prefetch("listings", queryset=Listing.objects.only("id", "name", "slug").order_by("name")))
        .order_by("-created_at", "-id")
    )


def api_key_get_for_member(*, user: User, organization: Organization, public_id: str) -> ApiKey | None:
    if not user_is_member(user=user, organization=organization):
        return None
    return (
        api_key_list_for_organization(organization=organization)
        .select_related("organization")
        .filter(public_id=public_id)
        .first()
    )


def api_key_status(*, api_key: ApiKey) -> str:
    """``active``, ``revoked`` or ``expired``, for lists."""
    if api_key.revoked_at is not None:
        return "revoked"
    if api_key.expires_at is not None and api_key.expires_at <= timezone.now():
        return "expired"
    return "active"
