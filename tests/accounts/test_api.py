"""The accounts REST API: shapes, permissions and the JSON error contract."""

from __future__ import annotations

import pytest
from django.core import mail
from rest_framework.test import APIClient

from accounts import services
from accounts.models import Invitation, Membership, Organization, Role

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    return APIClient()


def test_me_requires_authentication_and_answers_json(api):
    response = api.get("/api/v1/me")
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"] == "not_authenticated"


def test_me_returns_the_user_with_organizations_and_roles(api, make_user, make_org):
    user = make_user(email="me@example.com", name="Me")
    owned = make_org(owner=user, name="Alpha")
    joined = make_org(owner=user, name="Beta", role=Role.MEMBER)
    make_org(owner=make_user(), name="Gamma")
    api.force_authenticate(user)

    body = api.get("/api/v1/me").json()

    assert (body["id"], body["email"], body["name"], body["is_staff"]) == (user.pk, "me@example.com", "Me", False)
    assert body["current_organization"] is None  # force_authenticate skips the session middleware
    assert [(o["slug"], o["role"]) for o in body["organizations"]] == [(owned.slug, "owner"), (joined.slug, "member")]


def test_me_reports_the_organization_chosen_in_the_switcher(api, make_user, make_org):
    user = make_user()
    make_org(owner=user, name="Alpha")
    beta = make_org(owner=user, name="Beta")
    api.force_login(user)
    api.post("/accounts/organizations/switch/", {"organization": beta.pk})
    assert api.get("/api/v1/me").json()["current_organization"] == beta.slug


def test_organization_list_is_paginated_and_only_mine(api, make_user, make_org):
    user = make_user()
    make_org(owner=user, name="Alpha")
    make_org(owner=make_user(), name="Foreign")
    api.force_authenticate(user)

    body = api.get("/api/v1/organizations").json()
    assert body["count"] == 1
    assert [(o["name"], o["role"]) for o in body["results"]] == [("Alpha", "owner")]


def test_organization_create(api, make_user):
    user = make_user()
    api.force_authenticate(user)

    response = api.post("/api/v1/organizations", {"name": "Deep Lab"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert (body["name"], body["slug"], body["role"]) == ("Deep Lab", "deep-lab", "owner")
    assert Membership.objects.get(user=user, organization_id=body["id"]).role == Role.OWNER


def test_organization_create_with_empty_name_is_a_field_error(api, make_user):
    api.force_authenticate(make_user())
    response = api.post("/api/v1/organizations", {"name": ""}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"]
    assert error["fields"]["name"] and isinstance(error["fields"]["name"][0], str)
    assert not Organization.objects.exists()


def test_organization_create_with_a_taken_slug_is_a_conflict(api, make_user, make_org):
    make_org(owner=make_user(), name="Acme")
    taken = Organization.objects.get().slug
    api.force_authenticate(make_user())
    response = api.post("/api/v1/organizations", {"name": "Mine", "slug": taken}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "slug_taken"
    assert "slug" in response.json()["error"]["fields"]


def test_members_of_my_organization(api, make_user, make_org):
    owner = make_user(email="owner@example.com")
    org = make_org(owner=owner)
    Membership.objects.create(organization=org, user=make_user(email="zed@example.com"), role=Role.MEMBER)
    Membership.objects.create(organization=org, user=make_user(email="amy@example.com"), role=Role.ADMIN)
    api.force_authenticate(owner)

    body = api.get(f"/api/v1/organizations/{org.slug}/members").json()

    assert body["count"] == 3
    assert [(m["email"], m["role"]) for m in body["results"]] == [
        ("owner@example.com", "owner"),
        ("amy@example.com", "admin"),
        ("zed@example.com", "member"),
    ]


def test_members_of_another_organization_are_404(api, make_user, make_org):
    foreign = make_org(owner=make_user())
    api.force_authenticate(make_user())
    for url in (f"/api/v1/organizations/{foreign.slug}/members", "/api/v1/organizations/nope/members"):
        response = api.get(url)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_invitation_create_sends_the_email(api, make_user, make_org, django_capture_on_commit_callbacks):
    owner = make_user()
    org = make_org(owner=owner)
    api.force_authenticate(owner)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            f"/api/v1/organizations/{org.slug}/invitations",
            {"email": "friend@example.com", "role": "admin"},
            format="json",
        )

    assert response.status_code == 201
    body = response.json()
    assert (body["email"], body["role"], body["organization"]) == ("friend@example.com", "admin", org.slug)
    assert "token" not in body  # the link is for the invitee's inbox only
    invitation = Invitation.objects.get(pk=body["id"])
    assert len(mail.outbox) == 1 and invitation.token in mail.outbox[0].body


def test_member_cannot_invite_through_the_api(api, make_user, make_org):
    owner, member = make_user(), make_user()
    org = make_org(owner=owner)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    api.force_authenticate(member)

    response = api.post(f"/api/v1/organizations/{org.slug}/invitations", {"email": "x@example.com"}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_manager"
    assert not Invitation.objects.exists()


def test_invitation_input_errors_name_the_fields(api, make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    api.force_authenticate(owner)

    response = api.post(
        f"/api/v1/organizations/{org.slug}/invitations", {"email": "not-an-email", "role": "king"}, format="json"
    )

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"email", "role"}


def test_invitation_to_an_existing_member_is_a_conflict(api, make_user, make_org):
    owner = make_user(email="owner@example.com")
    org = make_org(owner=owner)
    api.force_authenticate(owner)
    services.invitation_create(organization=org, invited_by=owner, email="once@example.com", role="member")

    for email, code in (("owner@example.com", "already_member"), ("once@example.com", "already_invited")):
        response = api.post(f"/api/v1/organizations/{org.slug}/invitations", {"email": email}, format="json")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == code


def test_schema_documents_the_accounts_endpoints(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    paths = response.json()["paths"]
    for path in (
        "/api/v1/me",
        "/api/v1/organizations",
        "/api/v1/organizations/{slug}/members",
        "/api/v1/organizations/{slug}/invitations",
    ):
        assert path in paths
