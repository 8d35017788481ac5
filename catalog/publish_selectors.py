"""Reads for the publisher side: what a member or manager of an organization may see.

Anything the user may not see is reported as missing (404), so other tenants' drafts never leak.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet

from accounts.models import MANAGER_ROLES, Organization, User
from catalog.models import Listing, Version
from marketplace.errors import NotFound


def organization_list_managed(*, user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user, memberships__role__in=MANAGER_ROLES).order_by("name")


def listing_list_for_organization(*, organization: Organization) -> QuerySet[Listing]:
    return (
        Listing.objects.filter(organization=organization)
        .select_related("current_version")
        .prefetch_related("tags", Prefetch("versions", queryset=Version.objects.order_by("-created_at")))
        .order_by("-created_at")
    )


def _listing_qs(*, user: User, manager: bool) -> QuerySet[Listing]:
    if not user.is_authenticated:
        return Listing.objects.none()
    memberships: dict[str, Any] = {"organization__memberships__user": user}
    if manager:
        memberships["organization__memberships__role__in"] = MANAGER_ROLES
    return Listing.objects.filter(**memberships).select_related("organization", "current_version")


def listing_get_for_member(*, user: User, slug: str) -> Listing:
    listing = _listing_qs(user=user, manager=False).prefetch_related("tags").filter(slug=slug).first()
    if listing is None:
        raise NotFound("No listing with this address in your organizations.")
    return listing


def listing_get_for_manager(*, user: User, slug: str) -> Listing:
    listing = _listing_qs(user=user, manager=True).prefetch_related("tags").filter(slug=slug).first()
    if listing is None:
        raise NotFound("No listing with this address that you manage.")
    return listing


def _version_qs(*, user: User, manager: bool) -> QuerySet[Version]:
    if not user.is_authenticated:
        return Version.objects.none()
    filters: dict[str, Any] = {"listing__organization__memberships__user": user}
    if manager:
        filters["listing__organization__memberships__role__in"] = MANAGER_ROLES
    return Version.objects.filter(**filters).select_related("listing", "listing__organization")


def version_get_for_member(*, user: User, version_id: int) -> Version:
    version = _version_qs(user=user, manager=False).filter(pk=version_id).first()
    if version is None:
        raise NotFound("No version with this id in your organizations.")
    return version


def version_get_for_manager(*, user: User, version_id: int) -> Version:
    version = _version_qs(user=user, manager=True).filter(pk=version_id).first()
    if version is None:
        raise NotFound("No version with this id that you manage.")
    return version


def version_list_for_listing(*, listing: Listing) -> QuerySet[Version]:
    return listing.versions.order_by("-major", "-minor", "-patch", "-created_at")
