"""Pagination for APIViews that list something (DRF pagination outside generic views)."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


def paginated_response(*, request: Request, view: APIView, queryset: Any, serializer_class: type) -> Response:
    """One page of ``queryset`` (``?limit=&offset=``) serialised, with count and next/previous links."""
    paginator = getattr(view, "pagination_class", None) or LimitOffsetPagination
    pager = paginator()
    page: list[Any] | None = pager.paginate_queryset(queryset, request, view=view)
    return pager.get_paginated_response(serializer_class(page, many=True).data)
