"""Writing to the append-only audit log. Every service that changes state calls this inside its transaction."""

from __future__ import annotations

from typing import Any

from moderation.models import AuditLogEntry


def audit_log_write(
    *,
    action: str,
    actor: Any = None,
    organization: Any = None,
    listing: Any = None,
    version: Any = None,
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditLogEntry:
    if version is not None and listing is None:
        listing = version.listing
    if listing is not None and organization is None:
        organization = listing.organization
    actor = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditLogEntry.objects.create(
        action=action,
        actor=actor,
        organization=organization,
        listing=listing,
        version=version,
        reason=reason,
        data=data or {},
    )
