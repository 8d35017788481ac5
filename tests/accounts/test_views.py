"""Server-rendered account pages through Django's test client: real sessions, CSRF-free client, locmem email."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.core import mail
from django.urls import reverse

from accounts import services
from accounts.middleware import SESSION_KEY
from accounts.models import Invitation, Membership, Organization, Role, User

pytestmark = pytest.mark.django_db

PASSWORD = "pass-Word-123"


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _logged_in_user(client) -> User | None:
    response = client.get(reverse("accounts:organizations"))
    user = response.wsgi_request.user
    return user if user.is_authenticated else None


# --- signup, login, logout ---------------------------------------------------------------------


def test_signup_creates_user_organization_and_owner_membership_and_logs_in(client):
    response = client.post(
        reverse("accounts:signup"),
        {"email": "Ada@Example.com", "name": "Ada", "password": "correct-horse-42", "next": "/publish/"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/publish/"
    user = User.objects.get(email="ada@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER and membership.organization.name == "Ada's organization"
    assert _logged_in_user(client) == user


def test_signup_ignores_an_offsite_next(client):
    response = client.post(
        reverse("accounts:signup"),
        {"email": "eve@example.com", "password": "correct-horse-42", "next": "https://evil.example/"},
    )
    assert response["Location"] == "/"


def test_signup_shows_errors_next_to_the_fields(client, make_user):
    make_user(email="taken@example.com")
    response = client.post(reverse("accounts:signup"), {"email": "taken@example.com", "password": "x"})

    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_email_error"' in html and "already exists" in html
    assert 'aria-invalid="true"' in html
    assert User.objects.count() == 1
    assert _logged_in_user(client) is None


def test_signup_page_has_labelled_fields(client):
    response = client.get(reverse("accounts:signup") + "?email=invited%40example.com")
    html = response.content.decode()
    for field in ("email", "name", "password"):
        assert f'<label for="id_{field}"' in html
    assert 'value="invited@example.com"' in html


def test_login_by_email_case_insensitively(client, make_user):
    user = make_user(email="bob@example.com")
    response = client.post(reverse("accounts:login"), {"username": "Bob@Example.com", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert _logged_in_user(client) == user


def test_login_with_a_wrong_password_says_so(client, make_user):
    make_user(email="bob@example.com")
    response = client.post(reverse("accounts:login"), {"username": "bob@example.com", "password": "nope"})
    assert response.status_code == 200
    assert "do not match an account" in response.content.decode()
    assert _logged_in_user(client) is None


def test_logout_is_a_post(client, make_user):
    client.force_login(make_user())
    assert client.get(reverse("accounts:logout")).status_code == 405
    response = client.post(reverse("accounts:logout"))
    assert response.status_code == 302
    assert _logged_in_user(client) is None


def test_password_reset_sends_an_email_whose_link_sets_a_new_password(client, make_user):
    user = make_user(email="forgetful@example.com")
    response = client.post(reverse("accounts:password_reset"), {"email": "forgetful@example.com"})
    assert response.status_code == 302 and response["Location"] == reverse("accounts:password_reset_done")

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["forgetful@example.com"]
    link = re.search(r"https?://\S+/accounts/reset/\S+/", message.body).group(0)
    assert link.startswith(settings.SITE_URL)

    # Django swaps the token for a session marker and redirects to the set-password form.
    response = client.get(_path_of(link), follow=True)
    assert response.status_code == 200 and response.context["validlink"]
    form_url = response.redirect_chain[-1][0]
    response = client.post(form_url, {"new_password1": "brand-New-pass-77", "new_password2": "brand-New-pass-77"})
    assert response["Location"] == reverse("accounts:password_reset_complete")

    user.refresh_from_db()
    assert user.check_password("brand-New-pass-77")
    # The link is single-use.
    response = client.get(_path_of(link), follow=True)
    assert not response.context["validlink"]


def test_password_reset_for_an_unknown_email_sends_nothing_and_reveals_nothing(client):
    response = client.post(reverse("accounts:password_reset"), {"email": "nobody@example.com"})
    assert response.status_code == 302
    assert mail.outbox == []


# --- organizations -----------------------------------------------------------------------------


def test_organization_pages_need_login(client, make_org):
    org = make_org()
    for url in (reverse("accounts:organizations"), reverse("accounts:organization_detail", args=[org.slug])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("accounts:login") + "?next=")


def test_organization_list_shows_my_organizations_with_role_and_creates_one(client, make_user, make_org):
    user = make_user()
    make_org(owner=user, name="Owned Org")
    make_org(owner=user, name="Joined Org", role=Role.MEMBER)
    make_org(owner=make_user(), name="Foreign Org")
    client.force_login(user)

    html = client.get(reverse("accounts:organizations")).content.decode()
    assert "Owned Org" in html and "Joined Org" in html and "Foreign Org" not in html
    assert "Owner" in html and "Member" in html

    response = client.post(reverse("accounts:organizations"), {"name": "Brand New Lab", "slug": ""})
    org = Organization.objects.get(name="Brand New Lab")
    assert response["Location"] == reverse("accounts:organization_detail", args=[org.slug])
    assert Membership.objects.get(user=user, organization=org).role == Role.OWNER
    assert client.session[SESSION_KEY] == org.pk


def test_organization_create_form_shows_a_taken_slug_on_its_field(client, make_user, make_org):
    user = make_user()
    make_org(owner=make_user(), name="Acme")
    taken = Organization.objects.get(name="Acme").slug
    client.force_login(user)
    response = client.post(reverse("accounts:organizations"), {"name": "Mine", "slug": taken})
    assert response.status_code == 400
    assert 'id="id_slug_error"' in response.content.decode()


def test_another_organizations_page_is_404(client, make_user, make_org):
    user = make_user()
    make_org(owner=user)
    foreign = make_org(owner=make_user(), name="Secret Lab")
    client.force_login(user)

    response = client.get(reverse("accounts:organization_detail", args=[foreign.slug]))
    assert response.status_code == 404
    assert "Secret Lab" not in response.content.decode()
    assert client.get(reverse("accounts:organization_detail", args=["does-not-exist"])).status_code == 404
    response = client.post(reverse("accounts:organization_invite", args=[foreign.slug]), {"email": "x@example.com"})
    assert response.status_code == 404


def test_organization_detail_lists_members_and_pending_invitations_for_managers(client, make_user, make_org):
    owner = make_user(email="owner@example.com")
    org = make_org(owner=owner)
    Membership.objects.create(organization=org, user=make_user(email="member@example.com"), role=Role.MEMBER)
    services.invitation_create(organization=org, invited_by=owner, email="pending@example.com", role=Role.ADMIN)
    client.force_login(owner)

    html = client.get(reverse("accounts:organization_detail", args=[org.slug])).content.decode()
    assert "owner@example.com" in html and "member@example.com" in html
    assert "pending@example.com" in html
    assert "Send invitation" in html


def test_member_sees_no_invite_form_and_cannot_invite(client, make_user, make_org):
    owner, member = make_user(), make_user()
    org = make_org(owner=owner)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    services.invitation_create(organization=org, invited_by=owner, email="pending@example.com", role=Role.MEMBER)
    client.force_login(member)

    html = client.get(reverse("accounts:organization_detail", args=[org.slug])).content.decode()
    assert "Send invitation" not in html and "pending@example.com" not in html

    response = client.post(
        reverse("accounts:organization_invite", args=[org.slug]), {"email": "friend@example.com", "role": "member"}
    )
    assert response.status_code == 302
    assert not Invitation.objects.filter(email="friend@example.com").exists()
    assert mail.outbox == []


def test_invite_accept_flow_for_a_new_person(client, make_user, make_org, django_capture_on_commit_callbacks):
    owner = make_user()
    org = make_org(owner=owner, name="Acme")
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("accounts:organization_invite", args=[org.slug]), {"email": "newbie@example.com", "role": "admin"}
        )
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    accept_path = _path_of(re.search(r"https?://\S+/accounts/invitations/\S+/", mail.outbox[0].body).group(0))
    client.logout()

    # Not logged in and no account yet: off to sign up, with the way back and the email filled in.
    response = client.get(accept_path)
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("accounts:signup")
    query = parse_qs(location.query)
    assert query["next"] == [accept_path] and query["email"] == ["newbie@example.com"]

    response = client.post(
        reverse("accounts:signup"),
        {"email": "newbie@example.com", "password": "correct-horse-42", "next": accept_path},
    )
    assert response["Location"] == accept_path
    assert "Accept and join" in client.get(accept_path).content.decode()

    response = client.post(accept_path)
    assert response["Location"] == reverse("accounts:organization_detail", args=[org.slug])
    newbie = User.objects.get(email="newbie@example.com")
    assert Membership.objects.get(user=newbie, organization=org).role == Role.ADMIN
    assert client.session[SESSION_KEY] == org.pk

    # A second use of the link is refused.
    response = client.post(accept_path)
    assert response.status_code == 409
    assert "already been used" in response.content.decode()


def test_invite_link_sends_a_known_person_to_login(client, make_user, make_org):
    owner = make_user()
    make_user(email="known@example.com")
    org = make_org(owner=owner)
    invitation = services.invitation_create(
        organization=org, invited_by=owner, email="known@example.com", role="member"
    )
    response = client.get(reverse("accounts:invitation_accept", args=[invitation.token]))
    assert urlsplit(response["Location"]).path == reverse("accounts:login")


def test_expired_invitation_is_rejected_in_the_browser(client, make_user, make_org):
    from datetime import timedelta

    from django.utils import timezone

    owner = make_user()
    org = make_org(owner=owner)
    invitation = services.invitation_create(organization=org, invited_by=owner, email="late@example.com", role="member")
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(days=1))
    late = make_user(email="late@example.com")
    client.force_login(late)

    url = reverse("accounts:invitation_accept", args=[invitation.token])
    assert "expired" in client.get(url).content.decode()
    response = client.post(url)
    assert response.status_code == 410
    assert not Membership.objects.filter(user=late, organization=org).exists()
    assert client.get(reverse("accounts:invitation_accept", args=["bogus-token"])).status_code == 404


def test_last_owner_cannot_be_removed_through_the_page(client, make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    membership = Membership.objects.get(user=owner, organization=org)
    client.force_login(owner)

    response = client.post(reverse("accounts:membership_remove", args=[org.slug, membership.pk]), follow=True)
    assert "at least one owner" in response.content.decode()
    assert Membership.objects.filter(pk=membership.pk).exists()


def test_owner_changes_a_role_and_removes_a_member(client, make_user, make_org):
    owner, member = make_user(), make_user()
    org = make_org(owner=owner)
    membership = Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    client.force_login(owner)

    client.post(reverse("accounts:membership_role_change", args=[org.slug, membership.pk]), {"role": "admin"})
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN
    client.post(reverse("accounts:membership_remove", args=[org.slug, membership.pk]))
    assert not Membership.objects.filter(pk=membership.pk).exists()


def test_org_switcher_changes_request_organization(client, make_user, make_org):
    user = make_user()
    first = make_org(owner=user, name="Alpha")
    second = make_org(owner=user, name="Beta", role=Role.MEMBER)
    client.force_login(user)
    assert client.get(reverse("accounts:organizations")).wsgi_request.organization == first

    back_to = reverse("accounts:organization_detail", args=[second.slug])
    response = client.post(
        reverse("accounts:organization_switch"),
        {"organization": second.pk},
        HTTP_REFERER=f"http://testserver{back_to}",
    )
    assert response.status_code == 302 and response["Location"] == f"http://testserver{back_to}"
    assert client.get(reverse("accounts:organizations")).wsgi_request.organization == second


def test_org_switcher_refuses_other_organizations_and_foreign_referers(client, make_user, make_org):
    user = make_user()
    mine = make_org(owner=user)
    foreign = make_org(owner=make_user())
    client.force_login(user)

    assert client.post(reverse("accounts:organization_switch"), {"organization": foreign.pk}).status_code == 404
    assert client.get(reverse("accounts:organizations")).wsgi_request.organization == mine

    response = client.post(
        reverse("accounts:organization_switch"), {"organization": mine.pk}, HTTP_REFERER="https://evil.example/x"
    )
    assert response["Location"] == "/"


def test_admin_pages_for_users_organizations_and_invitations(client, staff_user, make_user, make_org):
    owner = make_user(email="owner@example.com")
    org = make_org(owner=owner)
    invitation = services.invitation_create(organization=org, invited_by=owner, email="inv@example.com", role="member")
    client.force_login(staff_user)

    for url in (
        "/admin/accounts/user/",
        f"/admin/accounts/user/{owner.pk}/change/",
        "/admin/accounts/organization/",
        f"/admin/accounts/organization/{org.pk}/change/",
        "/admin/accounts/invitation/",
        f"/admin/accounts/invitation/{invitation.pk}/change/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
    assert invitation.token not in client.get(f"/admin/accounts/invitation/{invitation.pk}/change/").content.decode()

    response = client.post(
        "/admin/accounts/user/add/",
        {
            "email": "made-by-admin@example.com",
            "name": "Made",
            "usable_password": "true",
            "password1": "correct-horse-42",
            "password2": "correct-horse-42",
        },
    )
    assert response.status_code == 302
    assert User.objects.get(email="made-by-admin@example.com").check_password("correct-horse-42")


def test_organization_pages_do_not_query_per_row(client, make_user, make_org):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    owner = make_user(email="owner@example.com")
    org = make_org(owner=owner)
    client.force_login(owner)
    pages = [
        reverse("accounts:organizations"),
        reverse("accounts:organization_detail", args=[org.slug]),
        reverse("accounts:api_keys", args=[org.slug]),
    ]

    def queries_per_page() -> list[int]:
        counts = []
        for url in pages:
            with CaptureQueriesContext(connection) as captured:
                assert client.get(url).status_code == 200
            counts.append(len(captured))
        return counts

    def add_rows(index: int) -> None:
        Membership.objects.create(organization=org, user=make_user(email=f"m{index}@example.com"), role=Role.MEMBER)
        services.invitation_create(organization=org, invited_by=owner, email=f"i{index}@example.com", role=Role.MEMBER)
        services.api_key_create(organization=org, user=owner, name=f"key {index}")
        make_org(owner=owner)  # another row on "my organizations"

    add_rows(0)
    few = queries_per_page()
    for index in range(1, 4):
        add_rows(index)
    assert queries_per_page() == few
