"""REST API for the signed-in user, their organizations, members and invitations.

Each view validates input with its InputSerializer, makes one service or selector call and renders
with its OutputSerializer. Errors become ``{"error": {...}}`` in marketplace.errors.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.authentication import ApiKeyAccessMixin
from accounts.models import ApiKey, ApiKeyScope, Organization, Role, User
from marketplace.errors import ApplicationError, NotFound
from marketplace.pagination import paginated_response
from marketplace.typing import request_user

TAGS = ["accounts"]


def _organization_for_member(*, user: User, slug: str) -> Organization:
    organization = selectors.organization_get_for_member(user=user, slug=slug)
    if organization is None:
        # Same answer for "does not exist" and "not yours".
        raise NotFound("No such organization.")
    return organization


@extend_schema_serializer(component_name="MemberOrganization")
class MembershipOrganizationOutput(serializers.Serializer):
    """An organization as seen by one of its members (built from their Membership)."""

    id = serializers.IntegerField(source="organization.id")
    name = serializers.CharField(source="organization.name")
    slug = serializers.CharField(source="organization.slug")
    role = serializers.ChoiceField(choices=Role.choices)
    created_at = serializers.DateTimeField(source="organization.created_at")


class MeApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema_serializer(component_name="Me")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        email = serializers.EmailField()
        name = serializers.CharField()
        display_name = serializers.CharField()
        is_staff = serializers.BooleanField()
        current_organization = serializers.SerializerMethodField()
        organizations = serializers.SerializerMethodField()

        def get_current_organization(self, user: User) -> str | None:
            """Slug of the organization chosen in the switcher."""
            organization = self.context.get("current_organization")
            return organization.slug if organization is not None else None

        @extend_schema_field(MembershipOrganizationOutput(many=True))
        def get_organizations(self, user: User) -> list[dict[str, Any]]:
            memberships = selectors.organization_list_with_roles(user=user)
            return MembershipOrganizationOutput(memberships, many=True).data  # type: ignore[return-value]

    @extend_schema(tags=TAGS, summary="The signed-in user and their organizations", responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        context = {"current_organization": getattr(request, "organization", None)}
        return Response(self.OutputSerializer(request.user, context=context).data)


class OrganizationListApi(APIView):
    permission_classes = [IsAuthenticated]
    pagination_class = LimitOffsetPagination

    @extend_schema_serializer(component_name="OrganizationCreateInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120)
        slug = serializers.SlugField(max_length=60, required=False, allow_blank=True)

    @extend_schema(
        tags=TAGS,
        summary="Organizations I belong to, with my role",
        responses={200: MembershipOrganizationOutput(many=True)},
    )
    def get(self, request: Request) -> Response:
        memberships = selectors.organization_list_with_roles(user=request_user(request))
        return paginated_response(
            request=request, view=self, queryset=memberships, serializer_class=MembershipOrganizationOutput
        )

    @extend_schema(
        tags=TAGS,
        summary="Create an organization; I become its owner",
        request=InputSerializer,
        responses={201: MembershipOrganizationOutput},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = services.organization_create(
            user=request_user(request),
            name=serializer.validated_data["name"],
            slug=serializer.validated_data.get("slug") or None,
        )
        membership = selectors.membership_get(user=request_user(request), organization=organization)
        return Response(MembershipOrganizationOutput(membership).data, status=status.HTTP_201_CREATED)


class OrganizationMemberListApi(APIView):
    permission_classes = [IsAuthenticated]
    pagination_class = LimitOffsetPagination

    @extend_schema_serializer(component_name="OrganizationMember")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField(help_text="Membership id.")
        user_id = serializers.IntegerField()
        email = serializers.EmailField(source="user.email")
        name = serializers.CharField(source="user.name")
        role = serializers.ChoiceField(choices=Role.choices)
        joined_at = serializers.DateTimeField(source="created_at")

    @extend_schema(
        tags=TAGS, summary="Members of an organization I belong to", responses={200: OutputSerializer(many=True)}
    )
    def get(self, request: Request, slug: str) -> Response:
        organization = _organization_for_member(user=request_user(request), slug=slug)
        members = selectors.membership_list(organization=organization)
        return paginated_response(request=request, view=self, queryset=members, serializer_class=self.OutputSerializer)


class OrganizationInvitationCreateApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema_serializer(component_name="InvitationCreateInput")
    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField()
        role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    @extend_schema_serializer(component_name="Invitation")
    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        organization = serializers.CharField(source="organization.slug")
        email = serializers.EmailField()
        role = serializers.ChoiceField(choices=Role.choices)
        invited_by = serializers.EmailField(source="invited_by.email", allow_null=True)
        created_at = serializers.DateTimeField()
        expires_at = serializers.DateTimeField()

    @extend_schema(
        tags=TAGS,
        summary="Invite someone by email (owners and admins)",
        description="The invitee gets an email with a single-use link that expires after 7 days.",
        request=InputSerializer,
        responses={201: OutputSerializer},
    )
    def post(self, request: Request, slug: str) -> Response:
        organization = _organization_for_member(user=request_user(request), slug=slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        invitation = services.invitation_create(
            organization=organization,
            invited_by=request_user(request),
            email=serializer.validated_data["email"],
            role=serializer.validated_data["role"],
        )
        return Response(self.OutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


# --- API keys ----------------------------------------------------------------------------------


@extend_schema_serializer(component_name="ApiKey")
class ApiKeyOutput(serializers.Serializer):
    public_id = serializers.CharField()
    prefix = serializers.CharField(help_text="smk_<public_id>: the visible part of the key.")
    name = serializers.CharField()
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKeyScope.choices))
    listings = serializers.SerializerMethodField(help_text="Slugs the key is restricted to; empty: all subscribed.")
    rate_limit_per_second = serializers.IntegerField(allow_null=True, help_text="Empty: the platform default.")
    status = serializers.SerializerMethodField()
    created_by = serializers.EmailField(source="created_by.email", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_listings(self, api_key: ApiKey) -> list[str]:
        return [listing.slug for listing in api_key.listings.all()]

    def get_status(self, api_key: ApiKey) -> str:
        """active, revoked or expired"""
        return selectors.api_key_status(api_key=api_key)


class ApiKeyListCreateApi(ApiKeyAccessMixin, APIView):
    """Accepts a management key of the same organization (``Authorization: Bearer smk_…``)."""

    permission_classes = [IsAuthenticated]
    pagination_class = LimitOffsetPagination

    @extend_schema_serializer(component_name="ApiKeyCreateInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=80)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ApiKeyScope.choices),
            default=lambda: [ApiKeyScope.INFERENCE],
            help_text="inference (call /v2) and/or management (this API).",
        )
        listings = serializers.ListField(
            child=serializers.SlugField(), default=list, help_text="Restrict the key to these listings (slugs)."
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
        rate_limit_per_second = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)

    @extend_schema_serializer(component_name="ApiKeyCreated")
    class CreatedSerializer(ApiKeyOutput):
        key = serializers.CharField(help_text="The raw key. Shown only in this response: store it now.")

    @extend_schema(tags=TAGS, summary="An organization's API keys (members)", responses={200: ApiKeyOutput(many=True)})
    def get(self, request: Request, slug: str) -> Response:
        organization = _organization_for_member(user=request_user(request), slug=slug)
        keys = selectors.api_key_list_for_organization(organization=organization)
        return paginated_response(request=request, view=self, queryset=keys, serializer_class=ApiKeyOutput)

    @extend_schema(
        tags=TAGS,
        summary="Create an API key (owners and admins)",
        description="The response is the only time the raw key is shown; only its SHA-256 is stored.",
        request=InputSerializer,
        responses={201: CreatedSerializer},
    )
    def post(self, request: Request, slug: str) -> Response:
        organization = _organization_for_member(user=request_user(request), slug=slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        listing_ids = _listing_ids_for_slugs(data["listings"])
        api_key, raw_key = services.api_key_create(
            organization=organization,
            user=request_user(request),
            name=data["name"],
            scopes=data["scopes"],
            listing_ids=listing_ids,
            expires_at=data["expires_at"],
            rate_limit_per_second=data["rate_limit_per_second"],
        )
        api_key.key = raw_key  # type: ignore[attr-defined]
        response = Response(self.CreatedSerializer(api_key).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class ApiKeyRevokeApi(ApiKeyAccessMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        summary="Revoke an API key (owners and admins)",
        description="Every server stops accepting the key within a second.",
        request=None,
        responses={200: ApiKeyOutput},
    )
    def post(self, request: Request, slug: str, public_id: str) -> Response:
        user = request_user(request)
        organization = _organization_for_member(user=user, slug=slug)
        api_key = selectors.api_key_get_for_member(user=user, organization=organization, public_id=public_id)
        if api_key is None:
            raise NotFound("No such API key.")
        api_key = services.api_key_revoke(api_key=api_key, user=user)
        return Response(ApiKeyOutput(api_key).data)


def _listing_ids_for_slugs(slugs: list[str]) -> list[int]:
    from catalog.models import Listing, ListingStatus

    if not slugs:
        return []
    found = dict(Listing.objects.filter(slug__in=slugs, status=ListingStatus.PUBLISHED).values_list("slug", "id"))
    missing = [slug for slug in slugs if slug not in found]
    if missing:
        raise ApplicationError(
            "Some listings do not exist or are not public.",
            code="invalid",
            fields={"listings": [f"No public listing “{slug}”." for slug in missing]},
        )
    return [found[slug] for slug in slugs]
