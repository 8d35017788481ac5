"""The full-text document of a listing (PostgreSQL), rebuilt whenever a listing or its tags change."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.postgres.aggregates import StringAgg
from django.contrib.postgres.search import SearchVector
from django.db import connection
from django.db.models import OuterRef, Subquery, TextField
from django.db.models.expressions import CombinedExpression

from catalog.models import Listing


def listing_search_vector() -> CombinedExpression:
    """The document as an expression over a listing row: name A, tags and summary B, model card C.

    Tags are gathered by a correlated subquery, so one UPDATE can rebuild any number of listings;
    SearchVector coalesces NULLs (no tags, no card) to ''.
    """
    tag_names = Subquery(
        Listing.tags.through.objects.filter(listing_id=OuterRef("pk"))
        .order_by()
        .values("listing_id")
        .annotate(names=StringAgg("tag__name", delimiter=" "))
        .values("names"),  # type: ignore[misc]  # the annotation above
        output_field=TextField(),
    )
    return (
        SearchVector("name", weight="A", config="english")
        + SearchVector(tag_names, weight="B", config="english")
        + SearchVector("summary", weight="B", config="english")
        + SearchVector("model_card", weight="C", config="english")
    )


def listing_search_document_update(*, listing_ids: Iterable[int]) -> None:
    """Rebuild the document of these listings in one UPDATE. A no-op on SQLite."""
    ids = list(listing_ids)
    if not ids or connection.vendor != "postgresql":
        return
    Listing.objects.filter(pk__in=ids).update(search_vector=listing_search_vector())
