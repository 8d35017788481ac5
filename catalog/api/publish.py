"""Publisher REST API: listings, versions, direct-to-storage uploads, validation status, review.

Each view parses input with its InputSerializer, calls one service and renders the result. Anything
outside the caller's organizations is a 404, so other tenants' drafts never leak.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Organization, User
from accounts.selectors import organization_list_for_user
from catalog import services
from catalog.models import Domain, LicenseTemplate, Listing, Task, Version, VersionStatus
from catalog.publish_selectors import (
    listing_get_for_member,
    listing_list_for_organization,
    organization_list_managed,
    version_get_for_manager,
    version_get_for_member,
    version_list_for_listing,
)
from marketplace.errors import ApplicationError, Conflict
from marketplace.typing import request_user

TAGS = ["publishing"]


# --- output ----------------------------------------------------------------------------------


class PublisherVersionOutputSerializer(serializers.ModelSerializer):
    listing: serializers.SlugRelatedField[Listing] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    status_display = serializers.CharField(source="get_status_display", read_only=True)
    report = serializers.JSONField(source="validation_report", read_only=True)
    signature = serializers.JSONField(read_only=True)
    sample_input = serializers.JSONField(read_only=True)
    page_url = serializers.SerializerMethodField()

    class Meta:
        model = Version
        fields = [
            "id",
            "listing",
            "version",
            "changelog",
            "status",
            "status_display",
            "status_reason",
            "artifact_size",
            "artifact_sha256",
            "upload_mode",
            "upload_completed_at",
            "source",
            "sample_input",
            "signature",
            "report",
            "validation_started_at",
            "validated_at",
            "submitted_at",
            "published_at",
            "created_at",
            "page_url",
        ]
        read_only_fields = fields

    def get_page_url(self, obj: Version) -> str:
        return reverse("publish:version-detail", kwargs={"version_id": obj.pk})


class PublisherListingOutputSerializer(serializers.ModelSerializer):
    organization: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    tags = serializers.SerializerMethodField()
    current_version = serializers.SerializerMethodField()

    class Meta:
        model = Listing
        fields = [
            "id",
            "slug",
            "name",
            "summary",
            "model_card",
            "domain",
            "task",
            "tags",
            "license",
            "license_text",
            "status",
            "status_reason",
            "organization",
            "current_version",
            "published_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_tags(self, obj: Listing) -> list[str]:
        return sorted(tag.name for tag in obj.tags.all())

    def get_current_version(self, obj: Listing) -> str | None:
        return obj.current_version.version if obj.current_version is not None else None


class PublisherVersionSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    version = serializers.CharField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()


class PublisherListingDetailOutputSerializer(PublisherListingOutputSerializer):
    versions = serializers.SerializerMethodField()

    class Meta(PublisherListingOutputSerializer.Meta):
        fields = [*PublisherListingOutputSerializer.Meta.fields, "versions"]
        read_only_fields = fields

    @extend_schema_field(PublisherVersionSummarySerializer(many=True))
    def get_versions(self, obj: Listing) -> list[dict[str, Any]]:
        return [
            {"id": v.pk, "version": v.version, "status": v.status, "created_at": v.created_at}
            for v in version_list_for_listing(listing=obj)
        ]


class UploadPartSerializer(serializers.Serializer):
    part_number = serializers.IntegerField()
    url = serializers.URLField()


class UploadInstructionsSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=["post", "multipart"])
    url = serializers.URLField(required=False, help_text="mode=post: the form's action URL.")
    # The serializer metaclass moves declared fields off the class, so this does not shadow Serializer.fields.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.CharField(), required=False, help_text="mode=post: form fields to send before the file."
    )
    upload_id = serializers.CharField(required=False, help_text="mode=multipart: the S3 upload id.")
    part_size = serializers.IntegerField(
        required=False, help_text="mode=multipart: bytes per part (the last is smaller)."
    )
    parts = UploadPartSerializer(many=True, required=False, help_text="mode=multipart: a presigned PUT URL per part.")


VersionCreatedSerializer = inline_serializer(
    name="PublisherVersionCreated",
    fields={"version": PublisherVersionOutputSerializer(), "upload": UploadInstructionsSerializer()},
)


def _version_data(version: Version) -> dict[str, Any]:
    return PublisherVersionOutputSerializer(version).data


# --- listings --------------------------------------------------------------------------------


def _organization_for_request(request: Request, slug: str | None) -> Organization:
    """The organization a new listing goes to: the one named, the switcher's, or the only one managed."""
    if slug:
        org = organization_list_for_user(user=request_user(request)).filter(slug=slug).first()
        if org is None:
            raise ApplicationError(
                "Unknown organization.",
                code="invalid",
                fields={"organization": ["You are not a member of an organization with this slug."]},
            )
        return org
    managed = list(organization_list_managed(user=request_user(request)))
    current = getattr(request._request, "organization", None)
    if current is not None and current in managed:
        return current
    if len(managed) == 1:
        return managed[0]
    message = (
        "You do not manage any organization yet; create one first."
        if not managed
        else "You manage several organizations; name one: " + ", ".join(org.slug for org in managed) + "."
    )
    raise ApplicationError(message, code="invalid", fields={"organization": [message]})


class PublisherListingListCreateApi(APIView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        organization = serializers.SlugField(
            required=False, help_text="Slug of the organization; optional when you manage only one."
        )
        name = serializers.CharField(max_length=120)
        slug = serializers.SlugField(max_length=80, required=False, help_text="Generated from the name if absent.")
        summary = serializers.CharField(max_length=280)
        model_card = serializers.CharField(required=False, allow_blank=True, default="", help_text="Markdown.")
        domain = serializers.ChoiceField(choices=Domain.choices)
        task = serializers.ChoiceField(choices=Task.choices)
        tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False, default=list)
        license = serializers.ChoiceField(choices=LicenseTemplate.choices)
        license_text = serializers.CharField(required=False, allow_blank=True, default="")

        class Meta:
            ref_name = "PublisherListingCreateInput"

    @extend_schema(
        tags=TAGS,
        operation_id="publisher_listings_list",
        summary="Listings of the organizations you belong to",
        responses={200: PublisherListingOutputSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        listings: list[Listing] = []
        for org in organization_list_for_user(user=request_user(request)):
            listings.extend(listing_list_for_organization(organization=org))
        return Response({"results": PublisherListingOutputSerializer(listings, many=True).data})

    @extend_schema(
        tags=TAGS,
        operation_id="publisher_listings_create",
        summary="Create a listing (draft until a version is published)",
        request=InputSerializer,
        responses={201: PublisherListingDetailOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        organization = _organization_for_request(request, data.pop("organization", None))
        listing = services.listing_create(organization=organization, user=request_user(request), **data)
        return Response(PublisherListingDetailOutputSerializer(listing).data, status=status.HTTP_201_CREATED)


class PublisherListingDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120, required=False)
        summary = serializers.CharField(max_length=280, required=False)
        model_card = serializers.CharField(required=False, allow_blank=True)
        domain = serializers.ChoiceField(choices=Domain.choices, required=False)
        task = serializers.ChoiceField(choices=Task.choices, required=False)
        tags = serializers.ListField(child=serializers.CharField(max_length=40), required=False)
        license = serializers.ChoiceField(choices=LicenseTemplate.choices, required=False)
        license_text = serializers.CharField(required=False, allow_blank=True)

        class Meta:
            ref_name = "PublisherListingUpdateInput"

    @extend_schema(
        tags=TAGS, operation_id="publisher_listings_retrieve", responses={200: PublisherListingDetailOutputSerializer}
    )
    def get(self, request: Request, slug: str) -> Response:
        listing = listing_get_for_member(user=request_user(request), slug=slug)
        return Response(PublisherListingDetailOutputSerializer(listing).data)

    @extend_schema(
        tags=TAGS,
        operation_id="publisher_listings_update",
        summary="Change a listing's card, facets or license (owners and admins)",
        request=InputSerializer,
        responses={200: PublisherListingDetailOutputSerializer},
    )
    def patch(self, request: Request, slug: str) -> Response:
        listing = listing_get_for_member(user=request_user(request), slug=slug)
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        listing = services.listing_update(listing=listing, user=request_user(request), **serializer.validated_data)
        return Response(PublisherListingDetailOutputSerializer(listing).data)


# --- versions --------------------------------------------------------------------------------


class PublisherVersionCreateApi(APIView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        version = serializers.CharField(max_length=40, help_text="Semantic version: major.minor.patch[-pre].")
        changelog = serializers.CharField(required=False, allow_blank=True, default="")
        artifact_size = serializers.IntegerField(min_value=1, help_text="Exact size of the ONNX file in bytes.")
        artifact_sha256 = serializers.RegexField(
            r"^[0-9a-fA-F]{64}$",
            error_messages={"invalid": "Give the SHA-256 of the file as 64 hexadecimal characters."},
        )
        sample_input = serializers.JSONField(
            required=False, allow_null=True, help_text="Optional {input name: nested list} for the smoke test."
        )

        class Meta:
            ref_name = "PublisherVersionCreateInput"

    @extend_schema(
        tags=TAGS,
        operation_id="publisher_versions_list",
        responses={200: PublisherVersionOutputSerializer(many=True)},
    )
    def get(self, request: Request, slug: str) -> Response:
        listing = listing_get_for_member(user=request_user(request), slug=slug)
        versions = version_list_for_listing(listing=listing).select_related("listing")
        return Response({"results": PublisherVersionOutputSerializer(versions, many=True).data})

    @extend_schema(
        tags=TAGS,
        operation_id="publisher_versions_create",
        summary="Declare a new version and get where to upload its ONNX file",
        description="Returns the version and upload instructions: mode `post` (send a multipart/form-data POST "
        "to `url` with `fields` and then the file as `file`) or mode `multipart` (PUT each part's bytes to "
        "its URL, keep each response's ETag header, then call complete with the parts).",
        request=InputSerializer,
        responses={201: VersionCreatedSerializer},
    )
    def post(self, request: Request, slug: str) -> Response:
        listing = listing_get_for_member(user=request_user(request), slug=slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version, upload = services.version_create(
            listing=listing, user=request_user(request), **serializer.validated_data
        )
        return Response({"version": _version_data(version), "upload": upload}, status=status.HTTP_201_CREATED)


class VersionDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        operation_id="versions_retrieve",
        summary="A version's status and its validation report (live while validating)",
        responses={200: PublisherVersionOutputSerializer},
    )
    def get(self, request: Request, version_id: int) -> Response:
        version = version_get_for_member(user=request_user(request), version_id=version_id)
        return Response(_version_data(version))


class VersionUploadApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        operation_id="versions_upload_instructions",
        summary="Fresh upload URLs for a version still uploading (the first ones expire)",
        responses={200: UploadInstructionsSerializer},
    )
    def get(self, request: Request, version_id: int) -> Response:
        version = version_get_for_manager(user=request_user(request), version_id=version_id)
        if version.status != VersionStatus.UPLOADING:
            raise Conflict(f"Version {version.version} is not uploading any more.", code="invalid_state")
        return Response(services.version_upload_instructions(version=version))


class VersionCompleteApi(APIView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        class PartSerializer(serializers.Serializer):
            part_number = serializers.IntegerField(min_value=1, max_value=10000)
            etag = serializers.CharField(max_length=200)

            class Meta:
                ref_name = "PublisherUploadedPart"

        parts = PartSerializer(many=True, required=False, help_text="mode=multipart only: each part and its ETag.")

        class Meta:
            ref_name = "PublisherVersionCompleteInput"

    @extend_schema(
        tags=TAGS,
        operation_id="versions_complete",
        summary="Tell the platform the upload finished; validation starts in a worker",
        request=InputSerializer,
        responses={200: PublisherVersionOutputSerializer},
    )
    def post(self, request: Request, version_id: int) -> Response:
        version = version_get_for_member(user=request_user(request), version_id=version_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        parts = serializer.validated_data.get("parts")
        version = services.version_upload_complete(version=version, user=request_user(request), parts=parts)
        return Response(_version_data(version))


# POST on a version of one of the caller's organizations: one lifecycle service, the version back.
# Subclasses name the service in ``act`` and, where it takes input, an ``InputSerializer``. (A comment,
# not a docstring: drf-spectacular would publish a docstring as every subclass's description.)
class _VersionActionApi(APIView):
    permission_classes = [IsAuthenticated]
    InputSerializer: type[serializers.Serializer] | None = None

    def act(self, *, version: Version, user: User, **data: Any) -> Version:
        raise NotImplementedError

    def post(self, request: Request, version_id: int) -> Response:
        user = request_user(request)
        version = version_get_for_member(user=user, version_id=version_id)
        data: dict[str, Any] = {}
        if self.InputSerializer is not None:
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
        return Response(_version_data(self.act(version=version, user=user, **data)))


@extend_schema_view(
    post=extend_schema(
        tags=TAGS,
        operation_id="versions_submit",
        summary="Submit a validated version for review",
        request=None,
        responses={200: PublisherVersionOutputSerializer},
    )
)
class VersionSubmitApi(_VersionActionApi):
    def act(self, *, version: Version, user: User, **data: Any) -> Version:
        return services.version_submit(version=version, user=user)


class _WithdrawInputSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)

    class Meta:
        ref_name = "PublisherVersionWithdrawInput"


@extend_schema_view(
    post=extend_schema(
        tags=TAGS,
        operation_id="versions_withdraw",
        summary="Withdraw a version for good (buyers on the stable channel move to the next one)",
        request=_WithdrawInputSerializer,
        responses={200: PublisherVersionOutputSerializer},
    )
)
class VersionWithdrawApi(_VersionActionApi):
    InputSerializer = _WithdrawInputSerializer

    def act(self, *, version: Version, user: User, **data: Any) -> Version:
        return services.version_withdraw(version=version, actor=user, **data)


@extend_schema_view(
    post=extend_schema(
        tags=TAGS,
        operation_id="versions_deprecate",
        summary="Deprecate a published version (pinned buyers keep it)",
        request=None,
        responses={200: PublisherVersionOutputSerializer},
    )
)
class VersionDeprecateApi(_VersionActionApi):
    def act(self, *, version: Version, user: User, **data: Any) -> Version:
        return services.version_deprecate(version=version, user=user)
