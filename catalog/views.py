"""Buyer-facing pages: home, search with facets, and the listing page. Thin: reads come from selectors."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.db.models import TextChoices
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.views.decorators.http import require_safe

from billing.selectors import listing_plans_panel
from catalog import selectors
from catalog.models import Domain, LicenseTemplate, Listing, Task, Version
from catalog.templatetags.catalog_tags import ms, opsets

SEARCH_PAGE_SIZE = 20
QUERY_MAX_LENGTH = 200

# What each license template means to a buyer, and where its full text lives.
LICENSES: dict[str, dict[str, str]] = {
    LicenseTemplate.APACHE_2: {
        "summary": "Permissive: use, modify and redistribute, including commercially; keep the notices; "
        "includes a patent grant.",
        "url": "https://www.apache.org/licenses/LICENSE-2.0",
    },
    LicenseTemplate.MIT: {
        "summary": "Permissive: use, copy, modify and redistribute, including commercially; keep the copyright notice.",
        "url": "https://opensource.org/license/mit",
    },
    LicenseTemplate.CC_BY_4: {
        "summary": "Use and adapt for any purpose, including commercially, as long as you credit the publisher.",
        "url": "https://creativecommons.org/licenses/by/4.0/",
    },
    LicenseTemplate.COMMERCIAL: {
        "summary": "Commercial use under the publisher's terms for subscribers; no redistribution of the model.",
        "url": "",
    },
    LicenseTemplate.RESEARCH: {
        "summary": "Research and evaluation only; no production or commercial use.",
        "url": "",
    },
    LicenseTemplate.CUSTOM: {"summary": "The publisher's own terms, shown in full below.", "url": ""},
}


def _choice_values(params: QueryDict, key: str, choices: type[TextChoices]) -> list[str]:
    """Repeated (``?domain=a&domain=b``) or comma-separated values; unknown values are dropped."""
    allowed = set(choices.values)
    seen: list[str] = []
    for raw in params.getlist(key):
        for value in raw.split(","):
            value = value.strip()
            if value in allowed and value not in seen:
                seen.append(value)
    return seen


def search_params(params: QueryDict) -> dict[str, Any]:
    """The filters of a search page request, cleaned; the same keys ``listing_search`` takes."""
    sort = params.get("sort", "relevance")
    if sort not in dict(selectors.SORT_OPTIONS):
        sort = "relevance"
    return {
        "query": params.get("q", "").strip()[:QUERY_MAX_LENGTH],
        "domain": _choice_values(params, "domain", Domain),
        "task": _choice_values(params, "task", Task),
        "license": _choice_values(params, "license", LicenseTemplate),
        "tag": params.get("tag", "").strip()[:40] or None,
        "sort": sort,
    }


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "catalog/home.html",
        {
            "featured": list(selectors.listing_featured(limit=6)),
            "newest": list(selectors.listing_newest(limit=9)),
            "domains": [d for d in selectors.listing_domain_counts() if d[2]],
        },
    )


@require_safe
def search(request: HttpRequest) -> HttpResponse:
    filters = search_params(request.GET)
    facets, total = selectors.listing_facets_and_count(**filters)
    paginator = Paginator(selectors.listing_search(**filters), SEARCH_PAGE_SIZE)
    paginator.count = total  # already counted with the facets; saves a COUNT(*) over the matches
    page = paginator.get_page(request.GET.get("page"))
    suggestions = list(selectors.listing_suggestions(query=filters["query"])) if paginator.count == 0 else []
    active_filters = [
        (name, value, label)
        for name in selectors.FACETS
        for value, label, _count in facets[name]
        if value in filters[name]
    ]
    return render(
        request,
        "catalog/search.html",
        {
            "filters": filters,
            "page": page,
            "results": list(page.object_list),
            "facets": [
                ("domain", "Domain", facets["domain"], filters["domain"]),
                ("task", "Task", facets["task"], filters["task"]),
                ("license", "License", facets["license"], filters["license"]),
            ],
            "active_filters": active_filters,
            "sort_options": selectors.SORT_OPTIONS,
            "suggestions": suggestions,
            "has_filters": bool(filters["domain"] or filters["task"] or filters["license"] or filters["tag"]),
        },
    )


# Names buyers recognise for the ONNX Runtime execution providers the platform measures on.
PROVIDERS = {
    "CPUExecutionProvider": "CPU",
    "CUDAExecutionProvider": "GPU (CUDA)",
    "TensorrtExecutionProvider": "GPU (TensorRT)",
}


def _verified_latency(version: Version | None) -> list[tuple[int, str, str]]:
    """``(batch, p50, p95)`` rows of the platform's latency measurements of the current version."""
    metrics = version.metrics if version is not None else {}
    rows = []
    for batch in (1, 8):
        p50, p95 = metrics.get(f"p50_ms_b{batch}"), metrics.get(f"p95_ms_b{batch}")
        if p50 is not None or p95 is not None:
            rows.append((batch, ms(p50), ms(p95)))
    return rows


def _verified_facts(version: Version | None) -> list[tuple[str, str]]:
    """The platform's other measurements of the current version, as label/value rows."""
    if version is None:
        return []
    report = version.validation_report or {}
    metrics = report.get("metrics") or {}
    model = report.get("model") or {}
    rows: list[tuple[str, str]] = []
    if "cold_load_ms" in metrics:
        rows.append(("Cold load", ms(metrics["cold_load_ms"])))
    if "batchable" in metrics:
        rows.append(("Batches", "Yes" if metrics["batchable"] else "No"))
    if metrics.get("provider"):
        rows.append(("Measured on", PROVIDERS.get(str(metrics["provider"]), str(metrics["provider"]))))
    if model.get("parameter_bytes") is not None:
        rows.append(("Model size", filesizeformat(model["parameter_bytes"])))
    elif version.artifact_size:
        rows.append(("Model size", filesizeformat(version.artifact_size)))
    if model.get("opsets"):
        rows.append(("Opsets", opsets(model["opsets"])))
    if model.get("ir_version") is not None:
        rows.append(("ONNX IR version", str(model["ir_version"])))
    if isinstance(model.get("node_count"), int):
        rows.append(("Graph nodes", f"{model['node_count']:,}"))
    if model.get("producer_name"):
        rows.append(("Exported by", str(model["producer_name"])))
    return rows


def _signature(version: Version | None) -> dict[str, list[dict[str, Any]]]:
    signature = (version.signature if version is not None else None) or {}
    return {
        "inputs": [t for t in signature.get("inputs") or [] if isinstance(t, dict)],
        "outputs": [t for t in signature.get("outputs") or [] if isinstance(t, dict)],
    }


@require_safe
def listing_detail(request: HttpRequest, slug: str) -> HttpResponse:
    listing: Listing = selectors.listing_get_public(slug=slug, user=request.user)
    is_member = selectors.listing_viewer_is_member(listing=listing, user=request.user)
    version = listing.current_version
    return render(
        request,
        "catalog/listing_detail.html",
        {
            "listing": listing,
            "version": version,
            "tags": list(listing.tags.all()),
            "versions": list(selectors.version_list_for_listing(listing=listing, user=request.user)),
            "signature": _signature(version),
            "verified": _verified_facts(version),
            "latency": _verified_latency(version),
            "license_info": LICENSES.get(listing.license, LICENSES[LicenseTemplate.CUSTOM]),
            "is_member": is_member,
            "billing": listing_plans_panel(
                listing=listing, user=request.user, organization=getattr(request, "organization", None)
            ),
        },
    )
