"""Moderation REST API: staff only, except filing a report, which any signed-in user may do.

Each view parses input with its InputSerializer, calls one service or selector, and answers with
its OutputSerializer; services raise ApplicationError, which the exception handler turns into the
standard ``{"error": {...}}`` body (400 invalid input, 403, 404, 409 wrong state or duplicate).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.pagination import paginated_response
from moderation import selectors, services
from moderation.models import AuditAction, ReportReason, ReportStatus

TAG = "moderation"


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    # The error body has a key named "fields"; DRF's metaclass moves declared fields off the class, so the
    # name does not clash with Serializer.fields at runtime.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()), required=False
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    descriptions = {
        400: "Invalid input; `fields` says which field and why.",
        403: "Not signed in, or not marketplace staff.",
        404: "No such object.",
        409: "The object is not in a state that allows this (or the report is a duplicate).",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=descriptions[code]) for code in codes}


# --- output shapes --------------------------------------------------------------------------------


class OrganizationRefSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()


class ListingOutputSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    is_featured = serializers.BooleanField()
    featured_at = serializers.DateTimeField(allow_null=True)
    organization = OrganizationRefSerializer()


class VersionOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    version = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    listing = ListingOutputSerializer()
    submitted_at = serializers.DateTimeField(allow_null=True)
    submitted_by = serializers.SerializerMethodField()
    reviewed_at = serializers.DateTimeField(allow_null=True)
    published_at = serializers.DateTimeField(allow_null=True)
    artifact_size = serializers.IntegerField()
    artifact_sha256 = serializers.CharField()
    signature = serializers.JSONField(allow_null=True)
    metrics = serializers.JSONField()
    validation_report = serializers.JSONField()

    def get_submitted_by(self, obj: Any) -> str | None:
        return obj.created_by.email if obj.created_by_id else None


class ReportOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    listing = serializers.CharField(source="listing.slug")
    reason = serializers.CharField()
    details = serializers.CharField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    resolution_note = serializers.CharField()


class StaffReportOutputSerializer(ReportOutputSerializer):
    reporter = serializers.SerializerMethodField()
    resolved_by = serializers.SerializerMethodField()

    def get_reporter(self, obj: Any) -> str | None:
        return obj.reporter.email if obj.reporter_id else None

    def get_resolved_by(self, obj: Any) -> str | None:
        return obj.resolved_by.email if obj.resolved_by_id else None


class AuditEntryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    action = serializers.CharField()
    # The references may name rows deleted since (no database constraint); those read as null.
    actor = serializers.CharField(source="actor.email", allow_null=True)
    organization = serializers.CharField(source="organization.slug", allow_null=True)
    listing = serializers.CharField(source="listing.slug", allow_null=True)
    version = serializers.CharField(source="version.version", allow_null=True)
    reason = serializers.CharField()
    data = serializers.JSONField()  # type: ignore[assignment]  # moved off the class like "fields" above


# --- staff: versions ------------------------------------------------------------------------------


class ReviewQueueApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        tags=[TAG],
        summary="Versions waiting for review, oldest first, with their validation reports",
        responses={200: VersionOutputSerializer(many=True), **_errors(403)},
    )
    def get(self, request: Request) -> Response:
        return paginated_response(
            request=request, view=self, queryset=selectors.review_queue(), serializer_class=VersionOutputSerializer
        )


class VersionApproveApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        note = serializers.CharField(required=False, allow_blank=True, max_length=services.REASON_MAX_LENGTH)

        class Meta:
            ref_name = "ModerationVersionApproveInput"

    @extend_schema(
        tags=[TAG],
        summary="Approve a version in review; it is published at once",
        request=InputSerializer,
        responses={200: VersionOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, version_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = selectors.version_get_for_review(version_id=version_id)
        version = services.version_approve(version=version, actor=request.user, **serializer.validated_data)
        return Response(VersionOutputSerializer(version).data)


class VersionRejectApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=services.REASON_MAX_LENGTH)

        class Meta:
            ref_name = "ModerationVersionRejectInput"

    @extend_schema(
        tags=[TAG],
        summary="Reject a version in review, with the reason the publisher reads",
        request=InputSerializer,
        responses={200: VersionOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, version_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = selectors.version_get_for_review(version_id=version_id)
        version = services.version_reject(version=version, actor=request.user, **serializer.validated_data)
        return Response(VersionOutputSerializer(version).data)


class VersionTakeDownApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=services.REASON_MAX_LENGTH)

        class Meta:
            ref_name = "ModerationVersionWithdrawInput"

    @extend_schema(
        tags=[TAG],
        summary="Withdraw (take down) a version for good, with the reason the publisher reads",
        request=InputSerializer,
        responses={200: VersionOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, version_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = selectors.version_get_for_review(version_id=version_id)
        version = services.version_take_down(version=version, actor=request.user, **serializer.validated_data)
        return Response(VersionOutputSerializer(version).data)


# --- staff: listings ------------------------------------------------------------------------------


class ListingSuspendApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=services.REASON_MAX_LENGTH)

        class Meta:
            ref_name = "ModerationListingSuspendInput"

    @extend_schema(
        tags=[TAG],
        summary="Suspend a listing: hidden from the catalog until reinstated",
        request=InputSerializer,
        responses={200: ListingOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, slug: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        listing = selectors.listing_get_for_moderation(slug=slug)
        listing = services.listing_suspend(listing=listing, actor=request.user, **serializer.validated_data)
        return Response(ListingOutputSerializer(listing).data)


class ListingReinstateApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        note = serializers.CharField(required=False, allow_blank=True, max_length=services.REASON_MAX_LENGTH)

        class Meta:
            ref_name = "ModerationListingReinstateInput"

    @extend_schema(
        tags=[TAG],
        summary="Reinstate a suspended listing (published again if it has a published version, else draft)",
        request=InputSerializer,
        responses={200: ListingOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, slug: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        listing = selectors.listing_get_for_moderation(slug=slug)
        listing = services.listing_reinstate(listing=listing, actor=request.user, **serializer.validated_data)
        return Response(ListingOutputSerializer(listing).data)


class ListingFeatureApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        featured = serializers.BooleanField()

        class Meta:
            ref_name = "ModerationListingFeatureInput"

    @extend_schema(
        tags=[TAG],
        summary="Feature a published listing on the home page, or stop featuring it",
        request=InputSerializer,
        responses={200: ListingOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, slug: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        listing = selectors.listing_get_for_moderation(slug=slug)
        listing = services.listing_feature(listing=listing, actor=request.user, **serializer.validated_data)
        return Response(ListingOutputSerializer(listing).data)


# --- reports --------------------------------------------------------------------------------------


class ListingReportCreateApi(APIView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        reason = serializers.ChoiceField(choices=ReportReason.choices)
        details = serializers.CharField(required=False, allow_blank=True, max_length=services.REPORT_DETAILS_MAX_LENGTH)

        class Meta:
            ref_name = "ListingReportCreateInput"

    @extend_schema(
        tags=[TAG],
        summary="Report a listing to the moderators (one open report per user and listing)",
        request=InputSerializer,
        responses={201: ReportOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, slug: str) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        listing = selectors.listing_get_reportable(slug=slug)
        report = services.report_create(listing=listing, reporter=request.user, **serializer.validated_data)
        return Response(ReportOutputSerializer(report).data, status=status.HTTP_201_CREATED)


class ReportListApi(APIView):
    permission_classes = [IsAdminUser]

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=[*ReportStatus.values, "all"], required=False, default="open")

        class Meta:
            ref_name = "ModerationReportFilter"

    @extend_schema(
        tags=[TAG],
        summary="Reports, open ones by default (oldest first)",
        parameters=[
            OpenApiParameter("status", str, enum=[*ReportStatus.values, "all"], description="Default: open"),
        ],
        responses={200: StaffReportOutputSerializer(many=True), **_errors(400, 403)},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        wanted = filters.validated_data["status"]
        queryset = selectors.report_queue(status=None if wanted == "all" else wanted)
        return paginated_response(
            request=request, view=self, queryset=queryset, serializer_class=StaffReportOutputSerializer
        )


class ReportResolveApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(serializers.Serializer):
        action = serializers.ChoiceField(choices=["resolve", "dismiss"])
        note = serializers.CharField(required=False, allow_blank=True, max_length=services.REASON_MAX_LENGTH)
        suspend_listing = serializers.BooleanField(required=False, default=False)

        class Meta:
            ref_name = "ModerationReportResolveInput"

    @extend_schema(
        tags=[TAG],
        summary="Resolve or dismiss an open report, optionally suspending the listing (the note is the reason)",
        request=InputSerializer,
        responses={200: StaffReportOutputSerializer, **_errors(400, 403, 404, 409)},
    )
    def post(self, request: Request, report_id: int) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        report = selectors.report_get(report_id=report_id)
        report = services.report_resolve(report=report, actor=request.user, **serializer.validated_data)
        return Response(StaffReportOutputSerializer(report).data)


# --- audit log ------------------------------------------------------------------------------------


class AuditLogApi(APIView):
    permission_classes = [IsAdminUser]

    class FilterSerializer(serializers.Serializer):
        action = serializers.ChoiceField(choices=AuditAction.choices, required=False)
        listing = serializers.CharField(required=False, help_text="Listing slug")
        actor = serializers.CharField(required=False, help_text="Actor email (contains)")

        class Meta:
            ref_name = "ModerationAuditFilter"

    @extend_schema(
        tags=[TAG],
        summary="The audit log, newest first",
        parameters=[
            OpenApiParameter("action", str, enum=AuditAction.values),
            OpenApiParameter("listing", str, description="Listing slug"),
            OpenApiParameter("actor", str, description="Actor email (contains)"),
        ],
        responses={200: AuditEntryOutputSerializer(many=True), **_errors(400, 403)},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        queryset = selectors.audit_log_list(
            action=data.get("action"), listing_slug=data.get("listing", ""), actor_email=data.get("actor", "")
        )
        return paginated_response(
            request=request, view=self, queryset=queryset, serializer_class=AuditEntryOutputSerializer
        )
