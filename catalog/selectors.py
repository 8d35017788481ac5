"""Reads for the buyer-facing catalog: search, facets, the home page and the listing page.

Every function returns querysets shaped for its page (``select_related``/``prefetch_related``/``only``)
so a page costs the same number of queries however many listings, versions or tags exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from django.db import connection
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    FloatField,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    TextChoices,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Lower
from django.http import Http404

from accounts.models import Membership, Organization
from catalog.models import SERVABLE_STATUSES, Domain, LicenseTemplate, Listing, ListingStatus, Tag, Task, Version

SortOption = Literal["relevance", "newest", "name"]
SORT_OPTIONS: tuple[tuple[str, str], ...] = (("relevance", "Best match"), ("newest", "Newest"), ("name", "Name A–Z"))
FACETS: dict[str, type[TextChoices]] = {"domain": Domain, "task": Task, "license": LicenseTemplate}

SEARCH_CONFIG = "english"
# Words of a query, for the prefix fallback; anything else (tsquery operators, punctuation) is dropped.
_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
# websearch syntax a user may type on purpose ("exact phrase", -exclude, a or b): then the prefix
# fallback stays off so it cannot widen a deliberate query.
_WEBSEARCH_OPERATORS_RE = re.compile(r'"|(^|\s)-\w|\sor\s', re.IGNORECASE)


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def _public() -> QuerySet[Listing]:
    return Listing.objects.filter(status=ListingStatus.PUBLISHED)


# A correlated subquery rather than a join: PostgreSQL evaluates it only for the rows that survive
# ORDER BY ... LIMIT, instead of joining every matching listing to its version before ranking.
_p50_of_current_version = (
    Version.objects.filter(pk=OuterRef("current_version_id"))
    .order_by()
    .values(p50=Cast(KeyTextTransform("p50_ms_b1", KeyTransform("metrics", "validation_report")), FloatField()))[:1]
)


def _for_cards(qs: QuerySet[Listing]) -> QuerySet[Listing]:
    """What a result card shows: the publisher, badges and p50 at batch 1 of the current version.

    The p50 is read straight out of the current version's report in the same query instead of loading
    the whole JSON report (and the model card) for each card.
    """
    return (
        qs.select_related("organization")
        .only(
            "id",
            "name",
            "slug",
            "summary",
            "domain",
            "task",
            "license",
            "status",
            "is_featured",
            "published_at",
            "created_at",
            "organization__id",
            "organization__name",
            "organization__slug",
        )  # fmt: skip
        .annotate(p50_ms_b1=Subquery(_p50_of_current_version))
    )


def _prefix_tsquery(query: str) -> str | None:
    """``diab clin`` → ``diab:* & clin:*`` (a raw tsquery built only from word characters)."""
    if _WEBSEARCH_OPERATORS_RE.search(query):
        return None
    words = [w.lower() for w in _WORD_RE.findall(query)][:8]
    if not words:
        return None
    return " & ".join(f"{w}:*" for w in words)


def _apply_text_search(qs: QuerySet[Listing], query: str, *, rank: bool) -> QuerySet[Listing]:
    query = query.strip()
    if not query:
        return qs
    if _is_postgres():
        from django.contrib.postgres.search import SearchQuery, SearchRank

        search_query = SearchQuery(query, search_type="websearch", config=SEARCH_CONFIG)
        prefix = _prefix_tsquery(query)
        if prefix:
            # Typing "diab" finds "diabetes": the whole words OR the same words as prefixes, so the
            # GIN index on search_vector answers both; whole-word hits still rank higher.
            search_query = search_query | SearchQuery(prefix, search_type="raw", config=SEARCH_CONFIG)
        qs = qs.filter(search_vector=search_query)
        if rank:
            qs = qs.annotate(rank=SearchRank(F("search_vector"), search_query))
        return qs

    # SQLite (the embedded default) has no tsvector: every word must appear in the name, summary or a tag.
    words = _WORD_RE.findall(query)[:8] or [query]
    for word in words:
        tag_hit = Tag.objects.filter(listings=OuterRef("pk"), name__icontains=word)
        qs = qs.filter(Q(name__icontains=word) | Q(summary__icontains=word) | Exists(tag_hit))
    if rank:
        first = words[0]
        qs = qs.annotate(
            rank=Case(
                When(name__icontains=query, then=Value(3)),
                When(name__icontains=first, then=Value(2)),
                When(summary__icontains=first, then=Value(1)),
                default=Value(0),
                output_field=IntegerField(),
            )
        )
    return qs


def _clean_values(values: Iterable[str] | None, choices: type[TextChoices]) -> list[str]:
    allowed = set(choices.values)
    return [v for v in (values or []) if v in allowed]


def _filter(
    qs: QuerySet[Listing],
    *,
    query: str = "",
    domain: list[str] | None = None,
    task: list[str] | None = None,
    license: list[str] | None = None,
    tag: str | None = None,
    organization: Organization | None = None,
    rank: bool = False,
) -> QuerySet[Listing]:
    qs = _apply_text_search(qs, query, rank=rank)
    selected = {"domain": domain, "task": task, "license": license}
    for name, values in selected.items():
        if values:
            qs = qs.filter(**{f"{name}__in": values})
    if tag:
        qs = qs.filter(Exists(Tag.objects.filter(listings=OuterRef("pk"), name=tag)))
    if organization is not None:
        qs = qs.filter(organization=organization)
    return qs


def listing_search(
    *,
    query: str = "",
    domain: list[str] | None = None,
    task: list[str] | None = None,
    license: list[str] | None = None,
    tag: str | None = None,
    sort: SortOption | str = "relevance",
    organization: Organization | None = None,
) -> QuerySet[Listing]:
    """Public listings that match, shaped for result cards (organization loaded, ``p50_ms_b1`` annotated).

    ``relevance`` without a query falls back to newest first.
    """
    has_query = bool(query.strip())
    qs = _filter(
        _for_cards(_public()),
        query=query,
        domain=domain,
        task=task,
        license=license,
        tag=tag,
        organization=organization,
        rank=has_query and sort == "relevance",
    )
    if sort == "name":
        return qs.order_by(Lower("name"), "id")
    if sort == "relevance" and has_query:
        return qs.order_by("-rank", "-published_at", "-id")  # type: ignore[misc]  # annotated above
    return qs.order_by("-published_at", "-id")


FacetCounts = dict[str, list[tuple[str, str, int]]]


def listing_facets_and_count(
    *,
    query: str = "",
    domain: list[str] | None = None,
    task: list[str] | None = None,
    license: list[str] | None = None,
    tag: str | None = None,
    organization: Organization | None = None,
    **_: Any,
) -> tuple[FacetCounts, int]:
    """Facet counts (see ``listing_facets``) and the number of results of the same search, in one query.

    Standard faceting: each facet is counted with the query and the *other* facets' filters applied,
    so ticking a domain does not hide the other domains. One aggregate counts the listings that match
    the text and tag per (domain, task, license) combination (at most 10 × 7 × 6 rows); every facet
    and the total are sums over those rows, which is exact because each listing has exactly one value
    of each. So the match set is scanned once, not once per facet.
    """
    selected = {"domain": set(domain or []), "task": set(task or []), "license": set(license or [])}
    qs = _filter(_public(), query=query, tag=tag, organization=organization)
    cube = qs.order_by().values_list("domain", "task", "license").annotate(n=Count("*"))

    counts: dict[str, dict[str, int]] = {name: {} for name in FACETS}
    total = 0
    for d, t, lic, n in cube:
        passes = {
            "domain": not selected["domain"] or d in selected["domain"],
            "task": not selected["task"] or t in selected["task"],
            "license": not selected["license"] or lic in selected["license"],
        }
        for name, value in (("domain", d), ("task", t), ("license", lic)):
            if all(ok for other, ok in passes.items() if other != name):
                counts[name][value] = counts[name].get(value, 0) + n
        if all(passes.values()):
            total += n

    facets: FacetCounts = {
        name: [
            (value, label, counts[name].get(value, 0))
            for value, label in choices.choices
            if counts[name].get(value) or value in selected[name]
        ]
        for name, choices in FACETS.items()
    }
    return facets, total


def listing_facets(**filters: Any) -> FacetCounts:
    """Counts per value of domain, task and license: ``{"domain": [(value, label, count), ...], ...}``.

    Each facet is counted with the query and the other facets' filters applied. Values with no hits
    are left out unless they are selected. Takes the filters of ``listing_facets_and_count`` (which
    ignores extras such as ``sort``, so callers can pass what they give ``listing_search``).
    """
    facets, _total = listing_facets_and_count(**filters)
    return facets


def listing_featured(limit: int = 6) -> QuerySet[Listing]:
    return _for_cards(_public().filter(is_featured=True)).order_by(
        F("featured_at").desc(nulls_last=True), "-published_at", "-id"
    )[:limit]


def listing_newest(limit: int = 9) -> QuerySet[Listing]:
    return _for_cards(_public()).order_by("-published_at", "-id")[:limit]


def listing_domain_counts() -> list[tuple[str, str, int]]:
    """``(value, label, count)`` of public listings per domain, for the home page shortcuts."""
    counts = dict(_public().order_by().values_list("domain").annotate(n=Count("*")).values_list("domain", "n"))
    return [(value, label, counts.get(value, 0)) for value, label in Domain.choices]


def listing_viewer_is_member(*, listing: Listing, user: Any) -> bool:
    """Whether ``user`` belongs to the listing's organization. Cached on the listing for the request."""
    if user is None or not user.is_authenticated:
        return False
    cache: dict[int, bool] = listing.__dict__.setdefault("_viewer_member_cache", {})
    if user.pk not in cache:
        cache[user.pk] = Membership.objects.filter(organization_id=listing.organization_id, user=user).exists()
    return cache[user.pk]


def listing_viewer_sees_all(*, listing: Listing, user: Any) -> bool:
    """Members of the owning organization and staff see drafts, suspended listings and every version."""
    if user is None or not user.is_authenticated:
        return False
    return bool(user.is_staff) or listing_viewer_is_member(listing=listing, user=user)


def listing_get_public(*, slug: str, user: Any = None) -> Listing:
    """The listing for its page or the API: public ones for everyone, drafts and suspended ones only for
    members of the owning organization and staff. Anyone else gets ``Http404`` (not 403: nothing leaks).
    """
    from billing.selectors import plans_active_annotation

    listing = (
        Listing.objects.select_related("organization", "current_version")
        .prefetch_related("tags")
        .defer("search_vector")
        .annotate(**plans_active_annotation())  # the plans, read in the same query
        .filter(slug=slug)
        .first()
    )
    if listing is None:
        raise Http404("No such listing.")
    if listing.status != ListingStatus.PUBLISHED and not listing_viewer_sees_all(listing=listing, user=user):
        raise Http404("No such listing.")
    # A stable version that is no longer public (withdrawn) must not be shown to outsiders.
    version = listing.current_version
    if (
        version is not None
        and version.status not in SERVABLE_STATUSES
        and not listing_viewer_sees_all(listing=listing, user=user)
    ):
        listing.current_version = None
    return listing


def version_list_for_listing(*, listing: Listing, user: Any = None) -> QuerySet[Version]:
    """Versions newest first: published and deprecated ones for the public; every version for members."""
    qs = Version.objects.filter(listing=listing).only(
        "id", "listing_id", "version", "major", "minor", "patch", "prerelease", "changelog", "status",
        "published_at", "created_at",
    )  # fmt: skip
    if not listing_viewer_sees_all(listing=listing, user=user):
        qs = qs.filter(status__in=SERVABLE_STATUSES)
    return qs.order_by("-major", "-minor", "-patch", "-created_at")


def listing_suggestions(*, query: str, limit: int = 5) -> QuerySet[Listing] | list[Listing]:
    """Public listings whose name is close to a query that found nothing (PostgreSQL trigram similarity)."""
    query = query.strip()
    if not query or not _is_postgres():
        return []
    from django.contrib.postgres.search import TrigramWordSimilarity

    # name %> query: word similarity above pg_trgm.word_similarity_threshold (0.6), answered by the
    # trigram index on the name (migration 0003).
    return (
        _public()
        .filter(name__trigram_word_similar=query)
        .annotate(similarity=TrigramWordSimilarity(query, "name"))
        .only("id", "name", "slug")
        .order_by("-similarity", "id")[:limit]
    )
