"""Template tags of the inference pages: the listing page's playground."""

from __future__ import annotations

from typing import Any

from django import template

from inference.playground import PlaygroundVersion, playground_version

register = template.Library()


@register.simple_tag(takes_context=True)
def playground_state(context: template.Context) -> dict[str, Any]:
    """``{% playground_state as pg %}`` on the listing page (it reads ``listing``, ``version`` and ``billing``).

    ``pg.status``: ``unavailable`` (nothing callable), ``anonymous``, ``no_organization``, ``not_subscribed`` or
    ``ready``. Only ``ready`` costs a query (the servable versions with their signatures and samples); the
    others show the current version's form, already loaded with the listing.
    """
    from billing.models import ENTITLED_STATUSES
    from catalog.models import SERVABLE_STATUSES, ListingStatus, Version

    request = context.get("request")
    listing = context["listing"]
    current = context.get("version")
    billing = context.get("billing") or {}
    absolute = request.build_absolute_uri if request is not None else None
    state: dict[str, Any] = {"status": "unavailable", "selected": None, "versions": [], "data": []}
    if (
        listing.status != ListingStatus.PUBLISHED
        or current is None
        or current.status not in SERVABLE_STATUSES
        or not (current.signature or {}).get("inputs")
    ):
        return state
    user = getattr(request, "user", None)
    subscription = billing.get("subscription")
    if user is None or not user.is_authenticated:
        state["status"] = "anonymous"
    elif billing.get("organization") is None:
        state["status"] = "no_organization"
    elif subscription is None or subscription.status not in ENTITLED_STATUSES:
        state["status"] = "not_subscribed"
    else:
        state["status"] = "ready"
    state["organization"] = billing.get("organization")
    if state["status"] != "ready":
        selected = playground_version(listing_slug=listing.slug, version=current, absolute=absolute)
        state.update(selected=selected, versions=[selected], data=[selected.as_data()])
        return state
    rows = (
        Version.objects.filter(listing_id=listing.pk, status__in=SERVABLE_STATUSES, signature__isnull=False)
        .only("id", "version", "status", "signature", "sample_input")
        .order_by("-major", "-minor", "-patch", "-created_at")
    )
    versions: list[PlaygroundVersion] = []
    selected_version = None
    preferred = (subscription.pinned_version_id if subscription is not None else None) or current.pk
    for row in rows:
        built = playground_version(listing_slug=listing.slug, version=row, absolute=absolute)
        if not built.fields:
            continue
        versions.append(built)
        if row.pk == preferred or (selected_version is None and row.pk == current.pk):
            selected_version = built
    state.update(
        selected=selected_version or (versions[0] if versions else None),
        versions=versions,
        data=[v.as_data() for v in versions],
    )
    if state["selected"] is None:
        state["status"] = "unavailable"
    return state
