"""The full-text document of a listing (PostgreSQL), rebuilt whenever a listing or its tags change."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.postgres.search import SearchVector
from django.db import connection
from django.db.models import Value
from django.db.models.functions import Coalesce

from catalog.models import Listing, Tag


def listing_search_document_update(*, listing_ids: Iterable[int]) -> None:
    """Weights: name A, tags and summary B, model card C. A no-op on SQLite."""
    ids = list(listing_ids)
    if not ids or connection.vendor != "postgresql":
        return
    for listing_id in ids:
        tags = " ".join(Tag.objects.filter(listings__id=listing_id).values_list("name", flat=True))
        Listing.objects.filter(pk=listing_id).update(
            search_vector=SearchVector("name", weight="A", config="english")
            + SearchVector(Value(tags), weight="B", config="english")
            + SearchVector("summary", weight="B", config="english")
            + SearchVector(Coalesce("model_card", Value("")), weight="C", config="english")
        )
