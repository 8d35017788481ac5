"""Types the stubs cannot infer on their own."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from django.http import HttpRequest
from rest_framework.request import Request

if TYPE_CHECKING:
    from accounts.models import User


def request_user(request: HttpRequest | Request) -> User:
    """The signed-in user of a request, typed as ``User``.

    Only for views that already require authentication (``login_required``, ``IsAuthenticated``), where
    ``request.user`` is never ``AnonymousUser``; the stubs type it as either, so this narrows it in one place.
    """
    return cast("User", request.user)
