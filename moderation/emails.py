"""Plain-text notifications to publishers about moderation decisions.

Services call these from ``transaction.on_commit`` with ids, so each one reloads what it needs and
sends nothing if the row has gone in the meantime.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse

from accounts.models import MANAGER_ROLES, Membership
from catalog.models import Listing, Version

logger = logging.getLogger(__name__)


def organization_manager_emails(*, organization_id: int) -> list[str]:
    """Owners and admins of an organization: the people who act on moderation decisions."""
    return sorted(
        set(
            Membership.objects.filter(
                organization_id=organization_id, role__in=MANAGER_ROLES, user__is_active=True
            ).values_list("user__email", flat=True)
        )
    )


def absolute_url(path: str) -> str:
    return settings.SITE_URL.rstrip("/") + path


def listing_page_url(*, listing: Listing) -> str:
    """The public page of a listing (the catalog owns the route; fall back to its usual shape)."""
    for name in ("catalog:listing-detail", "catalog:listing"):
        try:
            return reverse(name, kwargs={"slug": listing.slug})
        except NoReverseMatch:
            continue
    return f"/listings/{listing.slug}/"


def _send(*, template: str, subject: str, organization_id: int, context: dict[str, Any]) -> int:
    recipients = organization_manager_emails(organization_id=organization_id)
    if not recipients:
        logger.info("No owner or admin to notify for organization %s (%s)", organization_id, template)
        return 0
    body = render_to_string(template, {"site_url": settings.SITE_URL.rstrip("/"), **context})
    # One message per recipient, so nobody sees the others' addresses.
    sent = 0
    for recipient in recipients:
        sent += send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [recipient], fail_silently=False)
    return sent


def _version(version_id: int) -> Version | None:
    return (
        Version.objects.select_related("listing", "listing__organization", "reviewed_by").filter(pk=version_id).first()
    )


def _listing(listing_id: int) -> Listing | None:
    return Listing.objects.select_related("organization").filter(pk=listing_id).first()


def version_approved_send(*, version_id: int) -> int:
    version = _version(version_id)
    if version is None:
        return 0
    listing = version.listing
    # On a suspended listing the version is published but stays hidden until the listing is reinstated.
    live = listing.is_public
    subject = f"Your version {version.version} of {listing.name} is " + ("live" if live else "approved")
    return _send(
        template="emails/version_approved.txt",
        subject=subject,
        organization_id=listing.organization_id,
        context={
            "version": version,
            "listing": listing,
            "live": live,
            "listing_url": absolute_url(listing_page_url(listing=listing)),
        },
    )


def version_rejected_send(*, version_id: int) -> int:
    version = _version(version_id)
    if version is None:
        return 0
    listing = version.listing
    return _send(
        template="emails/version_rejected.txt",
        subject=f"Your version {version.version} of {listing.name} was not approved",
        organization_id=listing.organization_id,
        context={"version": version, "listing": listing, "reason": version.status_reason},
    )


def version_taken_down_send(*, version_id: int) -> int:
    version = _version(version_id)
    if version is None:
        return 0
    listing = version.listing
    return _send(
        template="emails/version_taken_down.txt",
        subject=f"Version {version.version} of {listing.name} has been withdrawn by the moderators",
        organization_id=listing.organization_id,
        context={"version": version, "listing": listing, "reason": version.status_reason},
    )


def listing_suspended_send(*, listing_id: int) -> int:
    listing = _listing(listing_id)
    if listing is None:
        return 0
    return _send(
        template="emails/listing_suspended.txt",
        subject=f"{listing.name} has been suspended from the marketplace",
        organization_id=listing.organization_id,
        context={"listing": listing, "reason": listing.status_reason},
    )


def listing_reinstated_send(*, listing_id: int) -> int:
    listing = _listing(listing_id)
    if listing is None:
        return 0
    return _send(
        template="emails/listing_reinstated.txt",
        subject=f"{listing.name} has been reinstated",
        organization_id=listing.organization_id,
        context={
            "listing": listing,
            "is_public": listing.is_public,
            "listing_url": absolute_url(listing_page_url(listing=listing)),
        },
    )
