"""Reads for users, organizations and memberships."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import MANAGER_ROLES, Membership, Organization, User


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
