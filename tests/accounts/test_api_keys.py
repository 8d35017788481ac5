"""API keys: created by owners and admins, shown once, stored hashed, authenticated fast, revoked within a
second; the key pages, the REST API and management keys on the REST API."""

from __future__ import annotations

import hashlib
import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import selectors, services
from accounts.models import ApiKey, Membership, Role
from catalog.models import ListingStatus
from marketplace.errors import ApplicationError, Forbidden, NotFound
from moderation.models import AuditAction, AuditLogEntry
from tests.catalog.factories import ListingFactory, PublishedListingFactory

pytestmark = pytest.mark.django_db

RAW_KEY_RE = re.compile(r"^smk_[a-z0-9]{12}_[A-Za-z0-9_-]{32,}$")


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    # Each test starts with an empty per-process cache, as a new process would.
    selectors.api_key_cache_forget()
    yield
    selectors.api_key_cache_forget()


@pytest.fixture
def team(make_user, make_org):
    """``(owner, admin, member, org)`` of a buyer organization."""
    owner = make_user(email="owner@buyer.example")
    admin = make_user(email="admin@buyer.example")
    member = make_user(email="member@buyer.example")
    org = make_org(owner=owner, name="Contoso")
    Membership.objects.create(organization=org, user=admin, role=Role.ADMIN)
    Membership.objects.create(organization=org, user=member, role=Role.MEMBER)
    return owner, admin, member, org


def _create(org, user, **kwargs):
    return services.api_key_create(organization=org, user=user, name=kwargs.pop("name", "ci"), **kwargs)


# --- creating ----------------------------------------------------------------------------------


def test_create_returns_the_raw_key_once_and_stores_only_its_sha256(team):
    owner, _admin, _member, org = team
    api_key, raw_key = _create(org, owner, name="pipeline")

    assert RAW_KEY_RE.match(raw_key)
    assert raw_key.startswith(f"{api_key.prefix}_") and api_key.prefix == f"smk_{api_key.public_id}"
    row = ApiKey.objects.values().get(pk=api_key.pk)
    assert row["secret_hash"] == hashlib.sha256(raw_key.encode()).hexdigest()
    secret = raw_key.split("_", 2)[2]
    # Neither the key nor its secret is anywhere in the row or the audit log.
    assert not any(secret in str(value) for value in row.values())
    audit = AuditLogEntry.objects.get(action=AuditAction.API_KEY_CREATED)
    assert secret not in str(audit.data) and audit.data["prefix"] == api_key.prefix and audit.actor == owner
    assert (row["scopes"], row["created_by_id"], row["rate_limit_per_second"]) == (["inference"], owner.pk, None)
    # Every key is different.
    assert _create(org, owner)[1] != raw_key


def test_admins_create_keys_members_cannot_and_outsiders_do_not_see_the_organization(team, make_user):
    _owner, admin, member, org = team
    assert _create(org, admin)[0].created_by == admin
    with pytest.raises(Forbidden) as exc:
        _create(org, member)
    assert exc.value.code == "not_a_manager"
    with pytest.raises(NotFound):
        _create(org, make_user())
    assert ApiKey.objects.count() == 1


def test_scopes_names_expiry_and_rate_limit_are_validated(team):
    owner, _admin, _member, org = team
    for kwargs, field in [
        ({"scopes": ["admin"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"name": "  "}, "name"),
        ({"expires_at": timezone.now() - timedelta(minutes=1)}, "expires_at"),
        ({"rate_limit_per_second": 0}, "rate_limit_per_second"),
    ]:
        with pytest.raises(ApplicationError) as exc:
            _create(org, owner, **kwargs)
        assert exc.value.status == 400 and field in exc.value.fields, kwargs
    api_key, _raw = _create(org, owner, scopes=["management", "inference", "inference"], rate_limit_per_second=7)
    assert api_key.scopes == ["inference", "management"] and api_key.rate_limit_per_second == 7


def test_listing_restriction_is_stored_and_only_public_listings_qualify(team):
    owner, _admin, _member, org = team
    sepsis, triage = PublishedListingFactory(slug="sepsis"), PublishedListingFactory(slug="triage")
    draft = ListingFactory(slug="draft", status=ListingStatus.DRAFT)

    api_key, raw_key = _create(org, owner, listing_ids=[sepsis.pk, triage.pk])
    assert set(api_key.listings.values_list("slug", flat=True)) == {"sepsis", "triage"}
    assert selectors.api_key_authenticate(raw_key=raw_key).allowed_listing_ids == frozenset({sepsis.pk, triage.pk})

    with pytest.raises(ApplicationError) as exc:
        _create(org, owner, listing_ids=[sepsis.pk, draft.pk])
    assert "listing_ids" in exc.value.fields


# --- authenticating ----------------------------------------------------------------------------


def test_authenticate_accepts_the_key_and_resolves_listings_and_rate_limit(team, settings):
    owner, _admin, _member, org = team
    api_key, raw_key = _create(org, owner)
    found = selectors.api_key_authenticate(raw_key=raw_key)
    assert found is not None and found.pk == api_key.pk and found.organization_id == org.pk
    assert found.scopes == ["inference"]
    assert found.allowed_listing_ids is None  # every subscribed listing
    assert found.rate_limit == settings.INFERENCE_DEFAULT_RATE_PER_SECOND


def test_authenticate_is_one_query_then_cached(team, django_assert_num_queries):
    owner, _admin, _member, org = team
    _api_key, raw_key = _create(org, owner, listing_ids=[PublishedListingFactory().pk])
    with django_assert_num_queries(1):
        assert selectors.api_key_authenticate(raw_key=raw_key) is not None
    with django_assert_num_queries(0):
        for _ in range(100):
            assert selectors.api_key_authenticate(raw_key=raw_key) is not None


@pytest.mark.parametrize(
    "raw_key",
    [
        "",
        "smk_",
        "Bearer smk_abcdefghijkl_" + "a" * 43,
        "sk_live_abcdefghijkl_" + "a" * 43,
        "smk_ABCDEFGHIJKL_" + "a" * 43,  # upper-case public id
        "smk_abcdefghijk_" + "a" * 43,  # 11-character public id
        "smk_abcdefghijkl_" + "a" * 31,  # secret too short
        "smk_abcdefghijkl_" + "a" * 42 + "!",
        "smk_abcdefghijkl_" + "a" * 43 + "\n",
    ],
)
def test_authenticate_rejects_malformed_keys_without_a_query(raw_key, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert selectors.api_key_authenticate(raw_key=raw_key) is None


def test_authenticate_rejects_unknown_ids_and_wrong_secrets(team):
    owner, _admin, _member, org = team
    _api_key, raw_key = _create(org, owner)
    prefix, secret = raw_key[:17], raw_key[17:]
    wrong = prefix + ("b" if secret[0] != "b" else "c") + secret[1:]
    assert selectors.api_key_authenticate(raw_key=wrong) is None
    assert selectors.api_key_authenticate(raw_key="smk_zzzzzzzzzzzz_" + secret) is None
    # The right key still works after the wrong attempts (they are cached as the row, not as a verdict).
    assert selectors.api_key_authenticate(raw_key=raw_key) is not None


def test_expired_keys_are_refused_at_their_expiry_even_while_cached(team):
    owner, _admin, _member, org = team
    _api_key, raw_key = _create(org, owner, expires_at=timezone.now() + timedelta(milliseconds=400))
    assert selectors.api_key_authenticate(raw_key=raw_key) is not None
    time.sleep(0.5)  # within the cache's second: the cached row is used, its expiry checked now
    assert selectors.api_key_authenticate(raw_key=raw_key) is None


def test_revoke_takes_effect_at_once_here(team, django_capture_on_commit_callbacks):
    owner, admin, _member, org = team
    api_key, raw_key = _create(org, owner)
    assert selectors.api_key_authenticate(raw_key=raw_key) is not None
    with django_capture_on_commit_callbacks(execute=True):
        revoked = services.api_key_revoke(api_key=api_key, user=admin)
    assert revoked.revoked_at is not None
    assert selectors.api_key_authenticate(raw_key=raw_key) is None
    entry = AuditLogEntry.objects.get(action=AuditAction.API_KEY_REVOKED)
    assert (entry.actor, entry.organization, entry.data["prefix"]) == (admin, org, api_key.prefix)
    # Revoking twice changes nothing.
    assert services.api_key_revoke(api_key=api_key, user=admin).revoked_at == revoked.revoked_at
    assert AuditLogEntry.objects.filter(action=AuditAction.API_KEY_REVOKED).count() == 1


def test_revoke_by_another_process_takes_effect_within_a_second(team):
    owner, _admin, _member, org = team
    api_key, raw_key = _create(org, owner)
    assert selectors.api_key_authenticate(raw_key=raw_key) is not None
    # Another process revokes: this process's cache does not hear of it...
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    assert selectors.api_key_authenticate(raw_key=raw_key) is not None
    # ...but trusts its copy for at most a second.
    time.sleep(1.1)
    assert selectors.api_key_authenticate(raw_key=raw_key) is None


def test_members_cannot_revoke(team):
    owner, _admin, member, org = team
    api_key, _raw = _create(org, owner)
    with pytest.raises(Forbidden):
        services.api_key_revoke(api_key=api_key, user=member)
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


def test_touch_writes_last_used_at_at_most_once_a_minute(team, django_assert_num_queries):
    owner, _admin, _member, org = team
    api_key, _raw = _create(org, owner)
    selectors.api_key_touch(api_key_id=api_key.pk)
    api_key.refresh_from_db()
    first = api_key.last_used_at
    assert first is not None
    with django_assert_num_queries(0):
        for _ in range(50):
            selectors.api_key_touch(api_key_id=api_key.pk)
    api_key.refresh_from_db()
    assert api_key.last_used_at == first


# --- pages -------------------------------------------------------------------------------------


def _keys_url(org) -> str:
    return f"/accounts/organizations/{org.slug}/keys/"


def test_key_page_creates_a_key_and_shows_it_once_with_a_curl_example(client, team):
    owner, _admin, _member, org = team
    listing = PublishedListingFactory(slug="sepsis")
    client.force_login(owner)
    response = client.post(
        _keys_url(org),
        {"name": "claims pipeline", "scopes": ["inference"], "rate_limit_per_second": "5"},
    )
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    body = response.content.decode()
    raw_key = re.search(r'<code id="raw-key" class="raw-key">([^<]+)</code>', body).group(1)
    assert RAW_KEY_RE.match(raw_key) and "only time the key is shown" in body
    assert f"Authorization: Bearer {raw_key}" in body and "/v2/models/" in body and "Copy key" in body
    api_key = ApiKey.objects.get()
    assert (api_key.name, api_key.rate_limit_per_second) == ("claims pipeline", 5)

    # The list afterwards shows the prefix, never the secret.
    page = client.get(_keys_url(org)).content.decode()
    assert "claims pipeline" in page and f"{api_key.prefix}_…" in page and raw_key not in page
    assert raw_key.split("_", 2)[2] not in page
    assert "Never" in page and "Active" in page
    assert listing.name not in page  # no restriction shown as "All subscribed"


def test_key_page_curl_calls_the_keys_listing_else_a_subscribed_one(client, team):
    from tests.billing.caps_support import paid_plan_make, subscription_make

    owner, _admin, _member, org = team
    alpha = PublishedListingFactory(slug="alpha-model", name="Alpha")
    beta = PublishedListingFactory(slug="beta-model", name="Beta")
    for listing in (alpha, beta):
        subscription_make(organization=org, plan=paid_plan_make(listing=listing))
    client.force_login(owner)

    unrestricted = client.post(_keys_url(org), {"name": "any", "scopes": ["inference"]})
    assert unrestricted.status_code == 201
    assert "/v2/models/alpha-model/infer" in unrestricted.content.decode()  # the first subscribed, by name

    restricted = client.post(_keys_url(org), {"name": "beta only", "scopes": ["inference"], "listings": [beta.pk]})
    assert restricted.status_code == 201
    assert "/v2/models/beta-model/infer" in restricted.content.decode()


def test_key_page_shows_errors_next_to_fields(client, team):
    owner, _admin, _member, org = team
    client.force_login(owner)
    response = client.post(_keys_url(org), {"name": "", "scopes": []})
    assert response.status_code == 400
    assert ApiKey.objects.count() == 0


def test_members_see_keys_but_no_form_and_cannot_create(client, team):
    owner, _admin, member, org = team
    _create(org, owner, name="prod")
    client.force_login(member)
    page = client.get(_keys_url(org)).content.decode()
    assert "prod" in page and "Create key" not in page and "Revoke" not in page
    client.post(_keys_url(org), {"name": "sneaky", "scopes": ["inference"]})
    assert ApiKey.objects.count() == 1


def test_key_pages_are_404_for_outsiders(client, team, make_user):
    owner, _admin, _member, org = team
    api_key, _raw = _create(org, owner)
    client.force_login(make_user())
    assert client.get(_keys_url(org)).status_code == 404
    assert client.post(f"{_keys_url(org)}{api_key.public_id}/revoke/").status_code == 404
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


def test_revoke_asks_for_confirmation_then_revokes(client, team):
    owner, _admin, _member, org = team
    api_key, raw_key = _create(org, owner, name="old")
    client.force_login(owner)
    url = f"{_keys_url(org)}{api_key.public_id}/revoke/"
    confirm = client.get(url)
    assert confirm.status_code == 200 and "Revoke “old”?" in confirm.content.decode()
    api_key.refresh_from_db()
    assert api_key.revoked_at is None

    response = client.post(url)
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert selectors.api_key_authenticate(raw_key=raw_key) is None
    assert "Revoked" in client.get(_keys_url(org)).content.decode()


# --- REST API ----------------------------------------------------------------------------------


@pytest.fixture
def api():
    return APIClient()


def test_api_creates_lists_and_revokes_keys(api, team):
    owner, _admin, _member, org = team
    listing = PublishedListingFactory(slug="sepsis")
    api.force_authenticate(owner)
    url = f"/api/v1/organizations/{org.slug}/api-keys"

    response = api.post(
        url, {"name": "ci", "scopes": ["inference", "management"], "listings": ["sepsis"]}, format="json"
    )
    assert response.status_code == 201, response.json()
    created = response.json()
    assert RAW_KEY_RE.match(created["key"]) and created["prefix"] == created["key"][:16]
    assert created["listings"] == ["sepsis"] and created["status"] == "active"
    assert created["scopes"] == ["inference", "management"] and created["created_by"] == owner.email
    assert ApiKey.objects.get().listings.get() == listing

    listed = api.get(url).json()
    assert listed["count"] == 1 and "key" not in listed["results"][0]
    assert listed["results"][0]["public_id"] == created["public_id"]

    revoked = api.post(f"{url}/{created['public_id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert api.post(f"{url}/nope/revoke").json()["error"]["code"] == "not_found"


def test_api_errors_are_json_with_fields(api, team, make_user):
    owner, _admin, member, org = team
    url = f"/api/v1/organizations/{org.slug}/api-keys"
    api.force_authenticate(owner)
    response = api.post(url, {"name": "x", "scopes": ["root"], "listings": ["missing"]}, format="json")
    assert response.status_code == 400 and "scopes" in response.json()["error"]["fields"]
    response = api.post(url, {"name": "x", "listings": ["missing"]}, format="json")
    assert response.status_code == 400 and "listings" in response.json()["error"]["fields"]

    api.force_authenticate(member)
    response = api.post(url, {"name": "x"}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "not_a_manager"
    api.force_authenticate(make_user())
    assert api.get(url).status_code == 404


def test_management_keys_work_on_their_own_organization_only(api, team, make_org):
    owner, _admin, _member, org = team
    other = make_org(owner=owner, name="Other")  # the creator belongs here too
    _key, management = _create(org, owner, scopes=["management"])
    _key, inference = _create(org, owner, scopes=["inference"])

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {management}")
    response = api.get(f"/api/v1/organizations/{org.slug}/api-keys")
    assert response.status_code == 200 and response.json()["count"] == 2
    created = api.post(f"/api/v1/organizations/{org.slug}/api-keys", {"name": "from ci"}, format="json")
    assert created.status_code == 201 and created.json()["created_by"] == owner.email
    # Not the creator's other organization.
    response = api.get(f"/api/v1/organizations/{other.slug}/api-keys")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    # Not endpoints that were not written for keys: writes are refused, public reads are anonymous.
    response = api.post("/api/v1/organizations", {"name": "Via key"}, format="json")
    assert response.status_code == 403
    assert api.get("/api/v1/listings").status_code == 200

    api.credentials(HTTP_AUTHORIZATION=f"Bearer {inference}")
    response = api.get(f"/api/v1/organizations/{org.slug}/api-keys")
    assert response.status_code == 403 and "management scope" in response.json()["error"]["message"]


def test_bad_or_revoked_bearer_keys_get_401(api, team):
    owner, _admin, _member, org = team
    api_key, raw_key = _create(org, owner, scopes=["management"])
    url = f"/api/v1/organizations/{org.slug}/api-keys"
    api.credentials(HTTP_AUTHORIZATION="Bearer smk_abcdefghijkl_" + "x" * 43)
    response = api.get(url)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "authentication_failed"

    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    selectors.api_key_cache_forget()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert api.get(url).status_code == 401


def test_a_key_whose_creator_left_stops_working(api, team):
    owner, admin, _member, org = team
    _key, raw_key = _create(org, admin, scopes=["management"])
    Membership.objects.filter(user=admin, organization=org).delete()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert api.get(f"/api/v1/organizations/{org.slug}/api-keys").status_code == 401


def test_management_key_records_last_use(api, team):
    owner, _admin, _member, org = team
    api_key, raw_key = _create(org, owner, scopes=["management"])
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert api.get(f"/api/v1/organizations/{org.slug}/api-keys").status_code == 200
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
