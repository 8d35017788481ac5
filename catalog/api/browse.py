"""Read-only catalog API for buyers: search with facets, and one listing with its signature and numbers."""

from __future__ import annotations

from typing import Any

from django.http import QueryDict
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from catalog import selectors
from catalog.models import Domain, LicenseTemplate, Listing, Task

# ---- input ---------------------------------------------------------------------------------------


class ListingFilterSerializer(serializers.Serializer):
    q = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    domain = serializers.ListField(child=serializers.ChoiceField(choices=Domain.choices), required=False, default=list)
    task = serializers.ListField(child=serializers.ChoiceField(choices=Task.choices), required=False, default=list)
    license = serializers.ListField(
        child=serializers.ChoiceField(choices=LicenseTemplate.choices), required=False, default=list
    )
    tag = serializers.CharField(required=False, allow_blank=True, max_length=40, default="")
    sort = serializers.ChoiceField(choices=[value for value, _ in selectors.SORT_OPTIONS], default="relevance")


def _filter_data(params: QueryDict) -> dict[str, Any]:
    """Multi-valued filters may repeat (``domain=a&domain=b``) or be comma-separated (``domain=a,b``)."""
    data: dict[str, Any] = {key: params.get(key) for key in ("q", "tag", "sort") if key in params}
    for key in selectors.FACETS:
        values = [v.strip() for raw in params.getlist(key) for v in raw.split(",") if v.strip()]
        if values:
            data[key] = values
    return data


# ---- output --------------------------------------------------------------------------------------


class OrganizationBriefSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.CharField()


class ListingSummarySerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    summary = serializers.CharField()
    organization = OrganizationBriefSerializer()
    domain = serializers.CharField()
    task = serializers.CharField()
    license = serializers.CharField()
    is_featured = serializers.BooleanField()
    published_at = serializers.DateTimeField(allow_null=True)
    p50_ms_b1 = serializers.FloatField(allow_null=True, help_text="Verified median latency at batch 1 (ms).")
    url = serializers.SerializerMethodField()

    def get_url(self, listing: Listing) -> str:
        return reverse("api-listing-detail", kwargs={"slug": listing.slug}, request=self.context.get("request"))


class FacetValueSerializer(serializers.Serializer):
    value = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field named like Field.label
    count = serializers.IntegerField()


class FacetsSerializer(serializers.Serializer):
    domain = FacetValueSerializer(many=True)
    task = FacetValueSerializer(many=True)
    license = FacetValueSerializer(many=True)


class ListingPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ListingSummarySerializer(many=True)
    facets = FacetsSerializer()


class TensorSerializer(serializers.Serializer):
    name = serializers.CharField()
    datatype = serializers.CharField(help_text="Open Inference Protocol datatype, e.g. FP32.")
    shape = serializers.ListField(child=serializers.JSONField(), help_text="Dimensions; -1 marks a dynamic one.")


class SignatureSerializer(serializers.Serializer):
    inputs = TensorSerializer(many=True)
    outputs = TensorSerializer(many=True)


class CurrentVersionSerializer(serializers.Serializer):
    version = serializers.CharField()
    published_at = serializers.DateTimeField(allow_null=True)
    signature = SignatureSerializer(allow_null=True)
    metrics = inline_serializer(
        "VerifiedMetrics",
        {
            "cold_load_ms": serializers.FloatField(required=False),
            "p50_ms_b1": serializers.FloatField(required=False),
            "p95_ms_b1": serializers.FloatField(required=False),
            "p50_ms_b8": serializers.FloatField(required=False),
            "p95_ms_b8": serializers.FloatField(required=False),
            "batchable": serializers.BooleanField(required=False),
            "provider": serializers.CharField(required=False),
        },
    )
    model = inline_serializer(
        "VerifiedModelInfo",
        {
            "ir_version": serializers.IntegerField(required=False),
            "opsets": serializers.JSONField(required=False),
            "producer_name": serializers.CharField(required=False),
            "node_count": serializers.IntegerField(required=False),
            "parameter_bytes": serializers.IntegerField(required=False),
        },
    )


class VersionBriefSerializer(serializers.Serializer):
    version = serializers.CharField()
    status = serializers.CharField()
    changelog = serializers.CharField()
    published_at = serializers.DateTimeField(allow_null=True)


class ListingDetailSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    summary = serializers.CharField()
    status = serializers.CharField()
    organization = OrganizationBriefSerializer()
    domain = serializers.CharField()
    task = serializers.CharField()
    license = serializers.CharField()
    license_text = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    model_card = serializers.CharField(help_text="Markdown.")
    is_featured = serializers.BooleanField()
    published_at = serializers.DateTimeField(allow_null=True)
    current_version = CurrentVersionSerializer(allow_null=True)
    versions = VersionBriefSerializer(many=True)


def _current_version_data(listing: Listing) -> dict[str, Any] | None:
    version = listing.current_version
    if version is None:
        return None
    report = version.validation_report or {}
    return {
        "version": version.version,
        "published_at": version.published_at,
        "signature": version.signature,
        "metrics": report.get("metrics") or {},
        "model": report.get("model") or {},
    }


# ---- views ---------------------------------------------------------------------------------------


class ListingPagination(LimitOffsetPagination):
    """Takes the total from the facet query instead of running its own COUNT(*)."""

    default_limit = 20
    max_limit = 100

    def __init__(self, *, total: int) -> None:
        self.total = total

    def get_count(self, queryset: Any) -> int:
        return self.total


@extend_schema(tags=["catalog"])
class ListingListApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="listings_list",
        summary="Search published specialists",
        description="Full-text search (words or their beginnings) over public listings, with facet counts for "
        "domain, task and license. Each facet is counted with the other facets' filters applied.",
        parameters=[
            OpenApiParameter("q", str, description='Search words; websearch syntax ("phrase", -exclude, or).'),
            OpenApiParameter("domain", str, many=True, enum=Domain.values, explode=True),
            OpenApiParameter("task", str, many=True, enum=Task.values, explode=True),
            OpenApiParameter("license", str, many=True, enum=LicenseTemplate.values, explode=True),
            OpenApiParameter("tag", str),
            OpenApiParameter("sort", str, enum=[v for v, _ in selectors.SORT_OPTIONS], default="relevance"),
            OpenApiParameter("limit", int, description="Page size (at most 100)."),
            OpenApiParameter("offset", int),
        ],
        responses=ListingPageSerializer,
    )
    def get(self, request: Request) -> Response:
        filter_serializer = ListingFilterSerializer(data=_filter_data(request.query_params))
        filter_serializer.is_valid(raise_exception=True)
        data = filter_serializer.validated_data
        filters = {
            "query": data["q"],
            "domain": data["domain"],
            "task": data["task"],
            "license": data["license"],
            "tag": data["tag"] or None,
        }
        facets, total = selectors.listing_facets_and_count(**filters)
        paginator = ListingPagination(total=total)
        page = paginator.paginate_queryset(selectors.listing_search(**filters, sort=data["sort"]), request, view=self)
        results = ListingSummarySerializer(page, many=True, context={"request": request}).data
        return Response(
            {
                "count": paginator.count,
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
                "results": results,
                "facets": {
                    name: [{"value": v, "label": label, "count": n} for v, label, n in values]
                    for name, values in facets.items()
                },
            }
        )


@extend_schema(tags=["catalog"])
class ListingDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="listings_retrieve",
        summary="One published specialist",
        description="The listing with its current (stable) version's signature and verified metrics, and its "
        "versions. Drafts and suspended listings are 404 except to members of the publishing organization.",
        responses=ListingDetailSerializer,
    )
    def get(self, request: Request, slug: str) -> Response:
        listing = selectors.listing_get_public(slug=slug, user=request.user)
        versions = selectors.version_list_for_listing(listing=listing, user=request.user)
        data = {
            "slug": listing.slug,
            "name": listing.name,
            "summary": listing.summary,
            "status": listing.status,
            "organization": listing.organization,
            "domain": listing.domain,
            "task": listing.task,
            "license": listing.license,
            "license_text": listing.license_text,
            "tags": [tag.name for tag in listing.tags.all()],
            "model_card": listing.model_card,
            "is_featured": listing.is_featured,
            "published_at": listing.published_at,
            "current_version": _current_version_data(listing),
            "versions": list(versions),
        }
        return Response(ListingDetailSerializer(data).data)
