"""Reads for users, organizations and memberships."""

from __future__ import annotations

from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.utils import timezone

from accounts.models import MANAGER_ROLES, Invitation, Membership, Organization, Role, User


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
