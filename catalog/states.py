"""The version status machine: which moves are allowed, in one place.

uploading → validating → invalid | ready → in_review → approved | rejected → published → deprecated | withdrawn
"""

from __future__ import annotations

from catalog.models import Version, VersionStatus
from marketplace.errors import Conflict

S = VersionStatus

TRANSITIONS: dict[str, set[str]] = {
    S.UPLOADING: {S.VALIDATING, S.INVALID, S.WITHDRAWN},
    S.VALIDATING: {S.READY, S.INVALID},
    S.INVALID: {S.WITHDRAWN},
    S.READY: {S.IN_REVIEW, S.WITHDRAWN},
    S.IN_REVIEW: {S.APPROVED, S.REJECTED, S.WITHDRAWN},
    S.APPROVED: {S.PUBLISHED, S.WITHDRAWN},
    S.REJECTED: {S.IN_REVIEW, S.WITHDRAWN},  # a publisher may resubmit after fixing the card or notes
    S.PUBLISHED: {S.DEPRECATED, S.WITHDRAWN},
    S.DEPRECATED: {S.PUBLISHED, S.WITHDRAWN},
    S.WITHDRAWN: set(),
}


def version_can_move(*, version: Version, to: str) -> bool:
    return to in TRANSITIONS.get(version.status, set())


def version_move(*, version: Version, to: str) -> None:
    """Set the new status or raise a 409 that says what is allowed. The caller saves and audits."""
    if not version_can_move(version=version, to=to):
        allowed = ", ".join(sorted(TRANSITIONS.get(version.status, set()))) or "nothing"
        raise Conflict(
            f"Version {version.version} is {version.get_status_display().lower()}; "
            f"it cannot become {VersionStatus(to).label.lower()} (allowed next: {allowed}).",
            code="invalid_state",
        )
    version.status = to
