from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def organizations(request: HttpRequest) -> dict[str, Any]:
    """The org switcher needs the user's organizations on every page; fetched lazily."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"current_organization": None}

    def _list() -> list:
        from accounts.selectors import organization_list_for_user

        return list(organization_list_for_user(user=user))

    return {"current_organization": getattr(request, "organization", None), "user_organizations": _list}
