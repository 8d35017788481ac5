"""``Authorization: Bearer smk_…`` for the REST API: organization keys with the ``management`` scope.

A key acts for its organization through the user who created it (who must still be a member; the
services check their role as for a signed-in user) and never with staff powers. Keys are accepted
only on views that opt in with ``api_key_access`` and that way say which organization they act on:

- ``api_key_access = "url"``: the URL's ``api_key_organization_kwarg`` (default ``slug``) names the
  organization; a key of another organization gets 404, as if the organization did not exist;
- ``api_key_access = "key"``: the view acts for the key's organization (``request.organization``).

Everywhere else a key is no credential: reads go on as anonymous (public data stays readable for
clients that send their key on every call) and writes are refused (403). So a key of one organization
cannot reach the creator's other organizations through endpoints not written with keys in mind.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request

from accounts.models import ApiKey, ApiKeyScope, Membership, User
from accounts.selectors import api_key_authenticate, api_key_touch

BEARER = b"bearer"
KEY_PREFIX = b"smk_"


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != BEARER or not parts[1].startswith(KEY_PREFIX):
            return None  # not ours: let the other authentication classes decide
        try:
            raw_key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.") from None
        view = (request.parser_context or {}).get("view")
        access = getattr(view, "api_key_access", None)
        if access not in ("url", "key"):
            if request.method in SAFE_METHODS:
                return None  # public reads work for clients that send their key everywhere: as anonymous
            raise exceptions.PermissionDenied("API keys cannot be used on this endpoint; sign in instead.")
        api_key = api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        if ApiKeyScope.MANAGEMENT not in api_key.scopes:
            raise exceptions.PermissionDenied("This API key lacks the management scope.")
        organization = api_key.organization
        if access == "url":
            kwarg = getattr(view, "api_key_organization_kwarg", "slug")
            if (request.parser_context or {}).get("kwargs", {}).get(kwarg) != organization.slug:
                raise exceptions.NotFound("No such organization.")

        user = _key_user(api_key=api_key)
        request._request.organization = organization  # type: ignore[attr-defined]
        api_key_touch(api_key_id=api_key.pk)
        return user, api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class ApiKeyAccessMixin:
    """For API views that accept management keys. Unauthenticated calls get 401 with
    ``WWW-Authenticate: Bearer`` (elsewhere DRF answers 403, as its first authenticator is the session)."""

    api_key_access = "url"
    api_key_organization_kwarg = "slug"

    def get_authenticate_header(self, request: Request) -> str:
        return ApiKeyAuthentication.keyword


def _key_user(*, api_key: ApiKey) -> User:
    """A fresh copy of the key's creator, without staff powers; refused if they left the organization."""
    user = User.objects.filter(pk=api_key.created_by_id, is_active=True).first() if api_key.created_by_id else None
    if user is None or not Membership.objects.filter(user=user, organization_id=api_key.organization_id).exists():
        raise exceptions.AuthenticationFailed("This API key's creator is no longer a member; create a new key.")
    user.is_staff = user.is_superuser = False
    return user


def request_api_key(request: Any) -> ApiKey | None:
    """The ApiKey a DRF request authenticated with, if any."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiKey) else None


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the Bearer key in the OpenAPI schema, on the views that accept it."""

    target_class = ApiKeyAuthentication
    name = "apiKey"

    def get_security_requirement(self, auto_schema: Any) -> dict[str, list] | list[dict[str, list]]:
        # An empty list adds no requirement, the same as the None drf-spectacular also accepts.
        return {self.name: []} if getattr(auto_schema.view, "api_key_access", None) in ("url", "key") else []

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "smk_<public id>_<secret>",
            "description": "An organization API key with the management scope.",
        }
