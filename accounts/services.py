"""Writes for users, organizations, memberships and invitations.

Every function is keyword-only, runs in one transaction and leaves a row in the audit log.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from accounts.middleware import SESSION_KEY
from accounts.models import MANAGER_ROLES, ApiKey, ApiKeyScope, Invitation, Membership, Organization, Role, User
from accounts.selectors import api_key_cache_forget, api_key_hash, api_key_parse
from catalog.models import Listing, ListingStatus
from marketplace.errors import ApplicationError, Conflict, Forbidden, NotFound
from moderation.audit import audit_log_write
from moderation.models import AuditAction

INVITATION_TTL = timedelta(days=7)
SLUG_MAX_LENGTH = Organization._meta.get_field("slug").max_length or 60
# Slugs that would collide with fixed URLs under /accounts/organizations/.
RESERVED_SLUGS = frozenset({"switch", "new"})

AUDIT_MEMBER_ROLE_CHANGED = AuditAction.MEMBER_ROLE_CHANGED
AUDIT_MEMBER_REMOVED = AuditAction.MEMBER_REMOVED


# --- users -------------------------------------------------------------------------------------


_EMAIL_TAKEN = {"email": ["An account with this email already exists. Log in instead?"]}


def _email_normalize(email: str) -> str:
    return User.objects.normalize_email(email.strip()).lower()


@transaction.atomic
def user_create(*, email: str, password: str, name: str = "") -> User:
    """Create a user and a personal organization they own, so they can publish or buy at once."""
    email = _email_normalize(email)
    name = name.strip()
    if not email:
        raise ApplicationError("An email address is required.", code="invalid", fields={"email": ["Required."]})
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict("An account with this email already exists.", code="email_taken", fields=_EMAIL_TAKEN)
    candidate = User(email=email, name=name)
    try:
        validate_password(password, user=candidate)
    except DjangoValidationError as exc:
        raise ApplicationError(
            "Choose a stronger password.", code="weak_password", fields={"password": exc.messages}
        ) from exc

    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password, name=name)
    except IntegrityError:
        # Two signups with one address at the same moment: the unique index decides.
        raise Conflict("An account with this email already exists.", code="email_taken", fields=_EMAIL_TAKEN) from None
    organization_create(user=user, name=f"{user.display_name}'s organization")
    return user


# --- organizations -----------------------------------------------------------------------------


def _slug_unique(*, base: str) -> str:
    base = (slugify(base) or "org")[: SLUG_MAX_LENGTH - 5].strip("-") or "org"
    slug, n = base, 1
    while slug in RESERVED_SLUGS or Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def organization_create(*, user: User, name: str, slug: str | None = None) -> Organization:
    """Create an organization with ``user`` as its owner; the slug is derived from the name unless given."""
    name = name.strip()
    if not name:
        raise ApplicationError("Give the organization a name.", code="invalid", fields={"name": ["Required."]})
    if slug:
        slug = slugify(slug)[:SLUG_MAX_LENGTH]
        if not slug:
            raise ApplicationError(
                "The address may only contain letters, numbers and hyphens.",
                code="invalid",
                fields={"slug": ["Use letters, numbers and hyphens."]},
            )
        if slug in RESERVED_SLUGS or Organization.objects.filter(slug=slug).exists():
            raise Conflict(
                "This address is taken.", code="slug_taken", fields={"slug": ["This address is already taken."]}
            )
    else:
        slug = _slug_unique(base=name)

    organization = Organization.objects.create(name=name, slug=slug)
    Membership.objects.create(organization=organization, user=user, role=Role.OWNER)
    audit_log_write(
        action=AuditAction.ORG_CREATED,
        actor=user,
        organization=organization,
        data={"name": name, "slug": slug},
    )
    return organization


def organization_switch(*, request_session: Any, user: User, organization_id: int | str) -> Organization:
    """Remember in the session which of the user's organizations they act for."""
    try:
        organization_id = int(organization_id)
    except (TypeError, ValueError):
        raise NotFound("No such organization.") from None
    organization = Organization.objects.filter(pk=organization_id, memberships__user=user).first()
    if organization is None:
        # Same answer for "does not exist" and "not yours": nothing leaks about other tenants.
        raise NotFound("No such organization.")
    request_session[SESSION_KEY] = organization.pk
    return organization


# --- memberships -------------------------------------------------------------------------------


def _membership_of(*, user: User, organization: Organization, lock: bool = False) -> Membership | None:
    qs = Membership.objects.filter(user=user, organization=organization)
    if lock:
        qs = qs.select_for_update()
    return qs.first()


def _require_manager(*, user: User, organization: Organization) -> Membership:
    membership = _membership_of(user=user, organization=organization)
    if membership is None:
        raise NotFound("No such organization.")
    if membership.role not in MANAGER_ROLES:
        raise Forbidden("Only owners and admins can manage members.", code="not_a_manager")
    return membership


def _owners_locked(*, organization: Organization) -> list[Membership]:
    # Lock every owner row so two concurrent demotions cannot both pass the "another owner" check.
    return list(
        Membership.objects.select_for_update().filter(organization=organization, role=Role.OWNER).order_by("pk")
    )


@transaction.atomic
def membership_role_change(*, membership: Membership, role: str, actor: User) -> Membership:
    """Change a member's role. Only owners may grant or take away the owner role; one owner always remains."""
    if role not in Role.values:
        raise ApplicationError("Unknown role.", code="invalid", fields={"role": [f"Choose one of {Role.values}."]})
    organization = membership.organization
    actor_membership = _require_manager(user=actor, organization=organization)
    owners = _owners_locked(organization=organization)
    membership.refresh_from_db()
    if membership.role == role:
        return membership
    touches_owner = Role.OWNER in (role, membership.role)
    if touches_owner and actor_membership.role != Role.OWNER:
        raise Forbidden("Only owners can grant or take away the owner role.", code="owner_required")
    if membership.role == Role.OWNER and len(owners) <= 1:
        raise Conflict("An organization needs at least one owner. Make someone else owner first.", code="last_owner")

    old_role = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_log_write(
        action=AUDIT_MEMBER_ROLE_CHANGED,
        actor=actor,
        organization=organization,
        data={"user_id": membership.user_id, "email": membership.user.email, "from": old_role, "to": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User) -> None:
    """Remove a member (managers), or leave (anyone, themselves). One owner always remains."""
    organization = membership.organization
    leaving = membership.user_id == actor.pk
    if not leaving:
        actor_membership = _require_manager(user=actor, organization=organization)
        if membership.role == Role.OWNER and actor_membership.role != Role.OWNER:
            raise Forbidden("Only owners can remove an owner.", code="owner_required")
    owners = _owners_locked(organization=organization)
    membership.refresh_from_db()
    if membership.role == Role.OWNER and len(owners) <= 1:
        raise Conflict("An organization needs at least one owner. Make someone else owner first.", code="last_owner")

    data = {"user_id": membership.user_id, "email": membership.user.email, "role": membership.role}
    membership.delete()
    audit_log_write(action=AUDIT_MEMBER_REMOVED, actor=actor, organization=organization, data=data)


# --- invitations -------------------------------------------------------------------------------


def invitation_accept_url(*, invitation: Invitation) -> str:
    return settings.SITE_URL.rstrip("/") + reverse("accounts:invitation_accept", kwargs={"token": invitation.token})


def _invitation_email_send(*, invitation_id: int) -> None:
    invitation = Invitation.objects.select_related("organization", "invited_by").get(pk=invitation_id)
    context = {
        "invitation": invitation,
        "organization": invitation.organization,
        "invited_by": invitation.invited_by,
        "accept_url": invitation_accept_url(invitation=invitation),
        "role": invitation.get_role_display(),
    }
    send_mail(
        subject=f"You are invited to join {invitation.organization.name} on Specialist Marketplace",
        message=render_to_string("accounts/email/invitation.txt", context),
        from_email=None,
        recipient_list=[invitation.email],
    )


@transaction.atomic
def invitation_create(*, organization: Organization, invited_by: User, email: str, role: str) -> Invitation:
    """Invite someone by email; the email with the accept link goes out once the transaction commits."""
    email = _email_normalize(email)
    if not email:
        raise ApplicationError("An email address is required.", code="invalid", fields={"email": ["Required."]})
    if role not in Role.values:
        raise ApplicationError("Unknown role.", code="invalid", fields={"role": [f"Choose one of {Role.values}."]})
    inviter = _require_manager(user=invited_by, organization=organization)
    if role == Role.OWNER and inviter.role != Role.OWNER:
        raise Forbidden("Only owners can invite new owners.", code="owner_required")
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise Conflict(
            "This person is already a member.", code="already_member", fields={"email": ["Already a member."]}
        )
    now = timezone.now()
    if Invitation.objects.filter(
        organization=organization, email__iexact=email, accepted_at__isnull=True, expires_at__gt=now
    ).exists():
        raise Conflict(
            "This person already has a pending invitation.",
            code="already_invited",
            fields={"email": ["Already invited; the invitation is still pending."]},
        )

    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        token=secrets.token_urlsafe(32),
        invited_by=invited_by,
        expires_at=now + INVITATION_TTL,
    )
    audit_log_write(
        action=AuditAction.MEMBER_INVITED,
        actor=invited_by,
        organization=organization,
        data={"invitation_id": invitation.pk, "email": email, "role": role},
    )
    transaction.on_commit(lambda: _invitation_email_send(invitation_id=invitation.pk))
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Join the organization with the invited role. The invitation is single-use and bound to its email."""
    invitation = Invitation.objects.select_for_update().select_related("organization").filter(token=token).first()
    if invitation is None:
        raise NotFound("This invitation does not exist.", code="invitation_not_found")
    if invitation.accepted_at is not None:
        raise Conflict("This invitation has already been used.", code="invitation_used")
    if invitation.expires_at <= timezone.now():
        raise ApplicationError("This invitation has expired. Ask for a new one.", code="invitation_expired", status=410)
    if invitation.email.lower() != user.email.lower():
        raise Forbidden(
            f"This invitation was sent to {invitation.email}. Log in with that address to accept it.",
            code="invitation_wrong_email",
        )
    if Membership.objects.filter(organization=invitation.organization, user=user).exists():
        raise Conflict("You are already a member of this organization.", code="already_member")

    membership = Membership.objects.create(organization=invitation.organization, user=user, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_log_write(
        action=AuditAction.MEMBER_JOINED,
        actor=user,
        organization=invitation.organization,
        data={"invitation_id": invitation.pk, "role": invitation.role},
    )
    return membership


# --- API keys ----------------------------------------------------------------------------------

API_KEY_PUBLIC_ID_LENGTH = 12
API_KEY_PUBLIC_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
API_KEY_SECRET_BYTES = 32  # token_urlsafe(32) gives 43 characters
API_KEY_NAME_MAX_LENGTH = ApiKey._meta.get_field("name").max_length or 80
API_KEY_RATE_LIMIT_MAX = 100_000


def _api_key_public_id_new() -> str:
    while True:
        public_id = "".join(secrets.choice(API_KEY_PUBLIC_ID_ALPHABET) for _ in range(API_KEY_PUBLIC_ID_LENGTH))
        if not ApiKey.objects.filter(public_id=public_id).exists():
            return public_id


def _api_key_scopes_clean(scopes: Iterable[str]) -> list[str]:
    if isinstance(scopes, str):
        scopes = [scopes]
    cleaned: list[str] = []
    for scope in scopes:
        if scope not in ApiKeyScope.values:
            raise ApplicationError(
                f"Unknown scope “{scope}”.",
                code="invalid",
                fields={"scopes": [f"Choose from {', '.join(ApiKeyScope.values)}."]},
            )
        if scope not in cleaned:
            cleaned.append(scope)
    if not cleaned:
        raise ApplicationError(
            "A key needs at least one scope.", code="invalid", fields={"scopes": ["Choose at least one scope."]}
        )
    # Stored in a fixed order so equal scope sets compare equal.
    return [s for s in ApiKeyScope.values if s in cleaned]


def _api_key_listings_clean(listing_ids: Iterable[int] | None) -> list[Listing]:
    if not listing_ids:
        return []
    try:
        ids = sorted({int(i) for i in listing_ids})
    except (TypeError, ValueError):
        raise ApplicationError(
            "Listings are given by id.", code="invalid", fields={"listing_ids": ["Give listing ids."]}
        ) from None
    # Any public listing: whether the organization may call it is the subscription's business, checked per call.
    listings = list(Listing.objects.filter(pk__in=ids, status=ListingStatus.PUBLISHED))
    missing = sorted(set(ids) - {listing.pk for listing in listings})
    if missing:
        raise ApplicationError(
            "Some listings do not exist or are not public.",
            code="invalid",
            fields={"listing_ids": [f"No public listing with id {', '.join(map(str, missing))}."]},
        )
    return listings


def _api_key_fields_check(
    *, name: str, expires_at: datetime | None, rate_limit_per_second: int | None
) -> tuple[str, datetime | None, int | None]:
    name = name.strip()
    if not name:
        raise ApplicationError("Give the key a name.", code="invalid", fields={"name": ["Required."]})
    if len(name) > API_KEY_NAME_MAX_LENGTH:
        raise ApplicationError(
            "The name is too long.",
            code="invalid",
            fields={"name": [f"At most {API_KEY_NAME_MAX_LENGTH} characters."]},
        )
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            expires_at = timezone.make_aware(expires_at)
        if expires_at <= timezone.now():
            raise ApplicationError(
                "The expiry must be in the future.", code="invalid", fields={"expires_at": ["Pick a future time."]}
            )
    if rate_limit_per_second is not None and not 1 <= rate_limit_per_second <= API_KEY_RATE_LIMIT_MAX:
        raise ApplicationError(
            "The rate limit is out of range.",
            code="invalid",
            fields={"rate_limit_per_second": [f"Between 1 and {API_KEY_RATE_LIMIT_MAX:,} requests per second."]},
        )
    return name, expires_at, rate_limit_per_second


def _api_key_insert(
    *,
    organization: Organization,
    user: User,
    name: str,
    public_id: str,
    raw_key: str,
    scopes: Iterable[str],
    listing_ids: Iterable[int] | None,
    expires_at: datetime | None,
    rate_limit_per_second: int | None,
) -> ApiKey:
    manager = _membership_of(user=user, organization=organization)
    if manager is None:
        raise NotFound("No such organization.")
    if manager.role not in MANAGER_ROLES:
        raise Forbidden("Only owners and admins can create API keys.", code="not_a_manager")
    name, expires_at, rate_limit_per_second = _api_key_fields_check(
        name=name, expires_at=expires_at, rate_limit_per_second=rate_limit_per_second
    )
    scope_list = _api_key_scopes_clean(scopes)
    listings = _api_key_listings_clean(listing_ids)

    api_key = ApiKey.objects.create(
        organization=organization,
        created_by=user,
        name=name,
        public_id=public_id,
        secret_hash=api_key_hash(raw_key=raw_key),
        scopes=scope_list,
        rate_limit_per_second=rate_limit_per_second,
        expires_at=expires_at,
    )
    if listings:
        api_key.listings.set(listings)
    audit_log_write(
        action=AuditAction.API_KEY_CREATED,
        actor=user,
        organization=organization,
        data={
            "api_key_id": api_key.pk,
            "prefix": api_key.prefix,
            "name": name,
            "scopes": scope_list,
            "listing_ids": [listing.pk for listing in listings],
            "expires_at": expires_at.isoformat() if expires_at else None,
            "rate_limit_per_second": rate_limit_per_second,
        },
    )
    return api_key


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    user: User,
    name: str,
    scopes: Iterable[str] = (ApiKeyScope.INFERENCE,),
    listing_ids: Iterable[int] | None = None,
    expires_at: datetime | None = None,
    rate_limit_per_second: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``organization`` (owners and admins). Returns the row and the raw key.

    The raw key ``smk_<public id>_<secret>`` exists only in the return value: show it once. Only its
    SHA-256 is stored. ``listing_ids`` restricts the key to those listings (empty: every listing the
    organization subscribes to).
    """
    public_id = _api_key_public_id_new()
    raw_key = f"smk_{public_id}_{secrets.token_urlsafe(API_KEY_SECRET_BYTES)}"
    api_key = _api_key_insert(
        organization=organization,
        user=user,
        name=name,
        public_id=public_id,
        raw_key=raw_key,
        scopes=scopes,
        listing_ids=listing_ids,
        expires_at=expires_at,
        rate_limit_per_second=rate_limit_per_second,
    )
    return api_key, raw_key


@transaction.atomic
def api_key_import(
    *,
    organization: Organization,
    user: User,
    name: str,
    raw_key: str,
    scopes: Iterable[str] = (ApiKeyScope.INFERENCE,),
) -> ApiKey:
    """Register a key whose raw value was chosen elsewhere (the demo's documented key). Same rules as create."""
    parsed = api_key_parse(raw_key=raw_key)
    if parsed is None:
        raise ApplicationError(
            "The key must look like smk_<12 lower-case letters or digits>_<32+ URL-safe characters>.",
            code="invalid",
            fields={"raw_key": ["Malformed key."]},
        )
    public_id, _secret = parsed
    if ApiKey.objects.filter(public_id=public_id).exists():
        raise Conflict("A key with this public id exists.", code="api_key_exists")
    return _api_key_insert(
        organization=organization,
        user=user,
        name=name,
        public_id=public_id,
        raw_key=raw_key,
        scopes=scopes,
        listing_ids=None,
        expires_at=None,
        rate_limit_per_second=None,
    )


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, user: User) -> ApiKey:
    """Revoke a key (owners and admins). Every process stops accepting it within a second."""
    manager = _membership_of(user=user, organization=api_key.organization)
    if manager is None:
        raise NotFound("No such API key.")
    if manager.role not in MANAGER_ROLES:
        raise Forbidden("Only owners and admins can revoke API keys.", code="not_a_manager")
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked_at is not None:
        return api_key
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    audit_log_write(
        action=AuditAction.API_KEY_REVOKED,
        actor=user,
        organization=api_key.organization,
        data={"api_key_id": api_key.pk, "prefix": api_key.prefix, "name": api_key.name},
    )
    public_id = api_key.public_id

    # This process stops accepting it at once; the others when their one-second cache entry lapses.
    transaction.on_commit(lambda: api_key_cache_forget(public_id=public_id))
    return api_key
