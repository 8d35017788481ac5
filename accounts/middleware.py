"""Attach the organization the signed-in user is acting for (the org switcher) to each request."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

SESSION_KEY = "current_organization_id"


class CurrentOrganizationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.organization = None  # type: ignore[attr-defined]
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            from accounts.selectors import organization_current

            request.organization = organization_current(  # type: ignore[attr-defined]
                user=user, organization_id=request.session.get(SESSION_KEY)
            )
        return self.get_response(request)
