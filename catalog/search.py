"""The full-text document of a listing (PostgreSQL), rebuilt whenever a listing or its tags change."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.postgres.aggregates import StringAgg
from django.contrib.postgres.search import SearchVector
from django.db import connection
from django.db.models import OuterRef, Subquery, TextField

from catalog.models import Listing


def listing_search_document_update(*, listing_ids: Iterable[int]) -> None:
    """Weights: name A, tags and summary B, model card C. A no-op on SQLite.

    One UPDATE for any number of listings (tags gathered by a correlated subquery); SearchVector
    coalesces NULLs (no tags, no card) to ''.
    """
    ids = list(listing_ids)
    if not ids or connection.vendor != "postgresql":
        return
    tag_names = Subquery(
        Listing.tags.through.objects.filter(listing_id=OuterRef("pk"))
        .order_by()
        .values("listing_id")
        .annotate(names=StringAgg("tag__name", delimiter=" "))
        .values("names"),
        output_field=TextField(),
    )
    Listing.objects.filter(pk__in=ids).update(
        search_vector=SearchVector("name", weight="A", config="english")
        + SearchVector(tag_names, weight="B", config="english")
        + SearchVector("summary", weight="B", config="english")
        + SearchVector("model_card", weight="C", config="english")
    )
