"""The read-only catalog API: GET /api/v1/listings and /api/v1/listings/{slug}."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import path
from drf_spectacular.generators import SchemaGenerator

from catalog.api.browse import ListingDetailApi, ListingListApi
from catalog.models import ListingStatus, VersionStatus
from tests.catalog.factories import ListingFactory, PublishedListingFactory, VersionFactory

pytestmark = pytest.mark.django_db


def test_route_names():
    from django.urls import reverse

    assert reverse("api-listing-list") == "/api/v1/listings"
    assert reverse("api-listing-detail", kwargs={"slug": "x"}) == "/api/v1/listings/x"


def test_list_returns_public_listings_with_facets(client):
    PublishedListingFactory(slug="diabetes", name="Diabetes risk", domain="healthcare", current_version__p50_ms_b1=2.0)
    PublishedListingFactory(slug="retino", name="Diabetic retinopathy", domain="vision", task="detection")
    PublishedListingFactory(slug="invoice", name="Invoice parser", domain="finance")
    ListingFactory(slug="draft", name="Diabetes draft", domain="healthcare")

    response = client.get("/api/v1/listings", {"q": "diab", "sort": "name"})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [r["slug"] for r in body["results"]] == ["diabetes", "retino"]
    first = body["results"][0]
    assert first["organization"]["name"].startswith("Publisher")
    assert first["p50_ms_b1"] == 2.0 and first["domain"] == "healthcare"
    assert first["url"] == "http://testserver/api/v1/listings/diabetes"
    assert body["facets"]["domain"] == [
        {"value": "healthcare", "label": "Healthcare", "count": 1},
        {"value": "vision", "label": "Vision", "count": 1},
    ]
    assert {f["value"]: f["count"] for f in body["facets"]["task"]} == {"classification": 1, "detection": 1}


def test_list_filters_repeat_or_comma_separate_and_combine(client):
    PublishedListingFactory(slug="a", domain="healthcare", task="classification", license="mit")
    PublishedListingFactory(slug="b", domain="finance", task="classification", license="mit")
    PublishedListingFactory(slug="c", domain="legal", task="classification", license="mit")
    PublishedListingFactory(slug="d", domain="finance", task="regression", license="mit")

    repeated = client.get("/api/v1/listings?domain=healthcare&domain=finance&task=classification&sort=name").json()
    commas = client.get("/api/v1/listings?domain=healthcare,finance&task=classification&sort=name").json()

    assert {r["slug"] for r in repeated["results"]} == {"a", "b"}
    assert repeated["results"] == commas["results"]
    # The domain facet is counted without the domain filter, with the task filter.
    assert {f["value"]: f["count"] for f in repeated["facets"]["domain"]} == {"healthcare": 1, "finance": 1, "legal": 1}


def test_list_paginates_with_limit_and_offset(client):
    for i in range(5):
        PublishedListingFactory(slug=f"m{i}", name=f"Model {i}")

    body = client.get("/api/v1/listings", {"sort": "name", "limit": 2, "offset": 2}).json()

    assert body["count"] == 5
    assert [r["slug"] for r in body["results"]] == ["m2", "m3"]
    assert "offset=4" in body["next"] and "limit=2" in body["previous"]


def test_list_rejects_unknown_filter_values_with_the_error_shape(client):
    response = client.get("/api/v1/listings", {"domain": "astrology", "sort": "random"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert set(error["fields"]) == {"domain", "sort"}


def test_detail_includes_signature_metrics_and_public_versions(client):
    listing = PublishedListingFactory(slug="sepsis", name="Sepsis alert", tags=["icu"], model_card="# Card")
    VersionFactory(listing=listing, version="0.9.0", status=VersionStatus.DEPRECATED, changelog="Beta.")
    VersionFactory(listing=listing, version="2.0.0", status=VersionStatus.IN_REVIEW)

    response = client.get("/api/v1/listings/sepsis")

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "Sepsis alert" and body["tags"] == ["icu"] and body["model_card"] == "# Card"
    current = body["current_version"]
    assert current["version"] == "1.0.0"
    assert current["signature"]["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert current["metrics"]["p50_ms_b1"] == 0.42 and current["metrics"]["provider"] == "CPUExecutionProvider"
    assert current["model"]["opsets"] == {"": 17, "ai.onnx.ml": 3}
    assert [v["version"] for v in body["versions"]] == ["1.0.0", "0.9.0"]
    assert body["versions"][1] == {"version": "0.9.0", "status": "deprecated", "changelog": "Beta.",
                                   "published_at": body["versions"][1]["published_at"]}  # fmt: skip


def test_detail_of_draft_or_suspended_is_404_except_to_members(client, make_user, make_org):
    owner = make_user()
    org = make_org(owner=owner)
    ListingFactory(slug="wip", organization=org)
    PublishedListingFactory(slug="held", organization=org, status=ListingStatus.SUSPENDED)

    for slug in ("wip", "held", "missing"):
        response = client.get(f"/api/v1/listings/{slug}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    client.force_login(owner)
    body = client.get("/api/v1/listings/wip").json()
    assert body["status"] == "draft" and body["current_version"] is None
    assert client.get("/api/v1/listings/held").status_code == 200


def test_api_uses_a_constant_number_of_queries(client, django_assert_max_num_queries):
    def seed(start: int, count: int) -> None:
        for i in range(start, start + count):
            listing = PublishedListingFactory(slug=f"l{i}", name=f"Model {i}", tags=["a", "b", "c"])
            VersionFactory(listing=listing, version="0.9.0", status=VersionStatus.DEPRECATED)

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx.captured_queries)

    seed(0, 3)
    few_list, few_detail = count("/api/v1/listings?q=model"), count("/api/v1/listings/l0")
    assert few_list <= 2 and few_detail <= 3
    seed(3, 27)
    with django_assert_max_num_queries(few_list):
        client.get("/api/v1/listings?q=model")
    with django_assert_max_num_queries(few_detail):
        client.get("/api/v1/listings/l0")


def test_openapi_schema_describes_the_browse_endpoints():
    generator = SchemaGenerator(
        patterns=[
            path("api/v1/listings", ListingListApi.as_view(), name="api-listing-list"),
            path("api/v1/listings/<slug:slug>", ListingDetailApi.as_view(), name="api-listing-detail"),
        ]
    )
    schema = generator.get_schema(request=None, public=True)

    list_op = schema["paths"]["/api/v1/listings"]["get"]
    assert list_op["operationId"] == "listings_list"
    assert {p["name"] for p in list_op["parameters"]} >= {"q", "domain", "task", "license", "sort", "limit", "offset"}
    assert "facets" in schema["components"]["schemas"]["ListingPage"]["properties"]
    detail = schema["components"]["schemas"]["ListingDetail"]["properties"]
    assert "current_version" in detail and "versions" in detail
