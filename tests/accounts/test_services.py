"""Services for users, organizations, memberships and invitations, against PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.core import mail
from django.db import transaction
from django.utils import timezone

from accounts import services
from accounts.middleware import SESSION_KEY
from accounts.models import Invitation, Membership, Organization, Role, User
from marketplace.errors import ApplicationError
from moderation.models import AuditAction, AuditLogEntry

pytestmark = pytest.mark.django_db


def _invite(org, inviter, email="new@example.com", role=Role.MEMBER):
    return services.invitation_create(organization=org, invited_by=inviter, email=email, role=role)


def test_user_create_makes_a_personal_organization_owned_by_the_user():
    user = services.user_create(email="  Ada@Example.COM ", password="correct-horse-42", name="Ada")

    assert user.email == "ada@example.com"
    assert user.check_password("correct-horse-42")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organization.name == "Ada's organization"
    assert membership.organization.slug == "adas-organization"
    assert AuditLogEntry.objects.filter(
        action=AuditAction.ORG_CREATED, organization=membership.organization, actor=user
    ).exists()


def test_user_create_without_name_names_the_organization_after_the_email():
    user = services.user_create(email="grace@example.com", password="correct-horse-42")
    assert Organization.objects.get(memberships__user=user).name == "grace's organization"


def test_user_create_rejects_a_taken_email_whatever_the_case(make_user):
    make_user(email="taken@example.com")
    with pytest.raises(ApplicationError) as exc:
        services.user_create(email="TAKEN@example.com", password="correct-horse-42")
    assert exc.value.code == "email_taken"
    assert "email" in exc.value.fields
    assert User.objects.count() == 1


def test_user_create_rejects_a_weak_password_and_creates_nothing():
    with pytest.raises(ApplicationError) as exc:
        services.user_create(email="weak@example.com", password="123")
    assert exc.value.code == "weak_password"
    assert exc.value.fields["password"]
    assert not User.objects.exists() and not Organization.objects.exists()


def test_organization_create_derives_unique_slugs(make_user):
    user = make_user()
    first = services.organization_create(user=user, name="Acme Labs")
    second = services.organization_create(user=user, name="Acme  labs!")
    reserved = services.organization_create(user=user, name="Switch")

    assert (first.slug, second.slug) == ("acme-labs", "acme-labs-2")
    assert reserved.slug == "switch-2"
    assert Membership.objects.get(user=user, organization=second).role == Role.OWNER


def test_organization_create_with_a_taken_slug_is_a_conflict(make_user):
    user = make_user()
    services.organization_create(user=user, name="Acme", slug="acme")
    with pytest.raises(ApplicationError) as exc:
        services.organization_create(user=user, name="Other", slug="acme")
    assert (exc.value.code, exc.value.status) == ("slug_taken", 409)
    assert "slug" in exc.value.fields


def test_invitation_create_sends_the_email_after_commit(make_user, make_org, django_capture_on_commit_callbacks):
    owner = make_user()
    org = make_org(owner=owner, name="Acme")
    with django_capture_on_commit_callbacks(execute=True):
        invitation = _invite(org, owner, email="New@Example.com", role=Role.ADMIN)
        assert mail.outbox == []  # nothing leaves before the transaction commits

    assert invitation.email == "new@example.com"
    assert len(invitation.token) >= 32
    assert timedelta(days=6, hours=23) < invitation.expires_at - timezone.now() <= timedelta(days=7)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["new@example.com"]
    assert "Acme" in message.subject
    assert f"{settings.SITE_URL}/accounts/invitations/{invitation.token}/" in message.body
    assert AuditLogEntry.objects.filter(action=AuditAction.MEMBER_INVITED, organization=org, actor=owner).exists()


def test_invitation_email_is_not_sent_when_the_transaction_rolls_back(
    make_user, make_org, django_capture_on_commit_callbacks
):
    owner = make_user()
    org = make_org(owner=owner)
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            _invite(org, owner)
            raise RuntimeError("something later in the request failed")
    assert mail.outbox == []
    assert not Invitation.objects.exists()


def test_member_cannot_invite(make_user, make_org):
    owner, member = make_user(), make_user()
    org = make_org(owner=owner)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    with pytest.raises(ApplicationError) as exc:
        _invite(org, member)
    assert (exc.value.code, exc.value.status) == ("not_a_manager", 403)
    assert not Invitation.objects.exists()


def test_outsider_cannot_invite_and_learns_nothing(make_user, make_org):
    org = make_org(owner=make_user())
    with pytest.raises(ApplicationError) as exc:
        _invite(org, make_user())
    assert exc.value.status == 404


def test_admin_can_invite_members_but_not_owners(make_user, make_org):
    owner, admin = make_user(), make_user()
    org = make_org(owner=owner)
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)

    assert _invite(org, admin, email="a@example.com", role=Role.ADMIN).role == Role.ADMIN
    with pytest.raises(ApplicationError) as exc:
        _invite(org, admin, email="b@example.com", role=Role.OWNER)
    assert exc.value.code == "owner_required"


def test_invitation_create_refuses_members_and_pending_duplicates(make_user, make_org):
    owner = make_user(email="owner@example.com")
    org = make_org(owner=owner)
    with pytest.raises(ApplicationError) as exc:
        _invite(org, owner, email="OWNER@example.com")
    assert exc.value.code == "already_member"

    _invite(org, owner, email="x@example.com")
    with pytest.raises(ApplicationError) as exc:
        _invite(org, owner, email="x@example.com")
    assert exc.value.code == "already_invited"

    # Once the old one has expired, a fresh invitation may go out.
    Invitation.objects.filter(email="x@example.com").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _invite(org, owner, email="x@example.com").pk


def test_invitation_accept_joins_with_the_invited_role(make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    invitation = _invite(org, owner, email="joiner@example.com", role=Role.ADMIN)
    joiner = make_user(email="joiner@example.com")

    membership = services.invitation_accept(token=invitation.token, user=joiner)

    assert (membership.organization, membership.user, membership.role) == (org, joiner, Role.ADMIN)
    invitation.refresh_from_db()
    assert invitation.accepted_by == joiner and invitation.accepted_at is not None
    assert AuditLogEntry.objects.filter(action=AuditAction.MEMBER_JOINED, organization=org, actor=joiner).exists()


def test_invitation_cannot_be_used_twice(make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    invitation = _invite(org, owner, email="joiner@example.com")
    joiner = make_user(email="joiner@example.com")
    services.invitation_accept(token=invitation.token, user=joiner)

    with pytest.raises(ApplicationError) as exc:
        services.invitation_accept(token=invitation.token, user=joiner)
    assert exc.value.code == "invitation_used"
    assert Membership.objects.filter(organization=org).count() == 2


def test_expired_invitation_is_rejected(make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    invitation = _invite(org, owner, email="late@example.com")
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(minutes=1))

    with pytest.raises(ApplicationError) as exc:
        services.invitation_accept(token=invitation.token, user=make_user(email="late@example.com"))
    assert exc.value.code == "invitation_expired"
    assert not Membership.objects.filter(organization=org, user__email="late@example.com").exists()


def test_invitation_is_bound_to_its_email(make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    invitation = _invite(org, owner, email="right@example.com")

    with pytest.raises(ApplicationError) as exc:
        services.invitation_accept(token=invitation.token, user=make_user(email="wrong@example.com"))
    assert exc.value.code == "invitation_wrong_email"
    with pytest.raises(ApplicationError) as exc:
        services.invitation_accept(token="no-such-token", user=owner)
    assert exc.value.code == "invitation_not_found"


def test_last_owner_cannot_be_removed_or_demoted(make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    membership = Membership.objects.get(user=owner, organization=org)

    with pytest.raises(ApplicationError) as exc:
        services.membership_remove(membership=membership, actor=owner)
    assert exc.value.code == "last_owner"
    with pytest.raises(ApplicationError) as exc:
        services.membership_role_change(membership=membership, role=Role.ADMIN, actor=owner)
    assert exc.value.code == "last_owner"
    membership.refresh_from_db()
    assert membership.role == Role.OWNER


def test_owner_can_step_down_once_there_is_another_owner(make_user, make_org):
    first, second = make_user(), make_user()
    org = make_org(owner=first)
    other = Membership.objects.create(organization=org, user=second, role=Role.MEMBER)

    services.membership_role_change(membership=other, role=Role.OWNER, actor=first)
    mine = Membership.objects.get(user=first, organization=org)
    services.membership_remove(membership=mine, actor=first)

    assert list(Membership.objects.filter(organization=org).values_list("user", "role")) == [(second.pk, Role.OWNER)]
    assert AuditLogEntry.objects.filter(action=services.AUDIT_MEMBER_ROLE_CHANGED, organization=org).exists()
    assert AuditLogEntry.objects.filter(action=services.AUDIT_MEMBER_REMOVED, organization=org).exists()


def test_admin_cannot_touch_owners_and_members_cannot_manage(make_user, make_org):
    owner, admin, member = make_user(), make_user(), make_user()
    org = make_org(owner=owner)
    admin_m = Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    member_m = Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    owner_m = Membership.objects.get(user=owner, organization=org)

    with pytest.raises(ApplicationError) as exc:
        services.membership_role_change(membership=member_m, role=Role.OWNER, actor=admin)
    assert exc.value.code == "owner_required"
    with pytest.raises(ApplicationError) as exc:
        services.membership_remove(membership=owner_m, actor=admin)
    assert exc.value.code == "owner_required"
    with pytest.raises(ApplicationError) as exc:
        services.membership_remove(membership=admin_m, actor=member)
    assert exc.value.code == "not_a_manager"

    services.membership_role_change(membership=member_m, role=Role.ADMIN, actor=admin)
    services.membership_remove(membership=member_m, actor=admin)
    assert not Membership.objects.filter(pk=member_m.pk).exists()


def test_organization_switch_only_to_own_organizations(make_user, make_org):
    user = make_user()
    mine = make_org(owner=user)
    theirs = make_org(owner=make_user())
    session: dict = {}

    assert services.organization_switch(request_session=session, user=user, organization_id=mine.pk) == mine
    assert session[SESSION_KEY] == mine.pk
    for bad in (theirs.pk, "nope", 999_999):
        with pytest.raises(ApplicationError) as exc:
            services.organization_switch(request_session=session, user=user, organization_id=bad)
        assert exc.value.status == 404
    assert session[SESSION_KEY] == mine.pk
