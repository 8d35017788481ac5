"""Publisher REST API: a new version imported from a Hugging Face Hub model repository."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.api.publish import TAGS, PublisherVersionOutputSerializer
from catalog.hub_import import version_import_from_hub
from catalog.publish_selectors import listing_get_for_member
from marketplace.typing import request_user


class PublisherVersionImportApi(APIView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        version = serializers.CharField(max_length=40, help_text="Semantic version: major.minor.patch[-pre].")
        changelog = serializers.CharField(required=False, allow_blank=True, default="")
        repo_id = serializers.CharField(max_length=200, help_text="Model repository on the Hub, e.g. acme/iris.")
        filename = serializers.CharField(
            max_length=500, required=False, default="model.onnx", help_text="Path of the .onnx file in the repository."
        )
        revision = serializers.CharField(
            max_length=200,
            required=False,
            allow_blank=True,
            allow_null=True,
            default=None,
            help_text="Branch, tag or commit; main if absent.",
        )
        sample_input = serializers.JSONField(
            required=False, allow_null=True, help_text="Optional {input name: nested list} for the smoke test."
        )

        class Meta:
            ref_name = "PublisherVersionImportInput"

    @extend_schema(
        tags=TAGS,
        operation_id="publisher_versions_import",
        summary="Create a version from an ONNX file in a Hugging Face Hub model repository",
        description="A worker fetches the file, stores it and validates it like an upload; poll the version "
        "(status uploading → validating → ready or invalid). `source` records the repository, file and the "
        "commit the revision resolved to.",
        request=InputSerializer,
        responses={202: PublisherVersionOutputSerializer},
    )
    def post(self, request: Request, slug: str) -> Response:
        listing = listing_get_for_member(user=request_user(request), slug=slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = version_import_from_hub(listing=listing, user=request_user(request), **serializer.validated_data)
        return Response(PublisherVersionOutputSerializer(version).data, status=status.HTTP_202_ACCEPTED)
