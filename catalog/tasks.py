"""Celery tasks of the catalog. Thin: they take ids and call a service."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from catalog import services
from marketplace.integrations.s3 import StorageUnavailable

# The sandbox has its own timeout; these limits only catch a worker stuck around it (download included).
_SOFT_LIMIT_S = settings.VALIDATION_TIMEOUT_S * 2 + 300


@shared_task(
    name="catalog.version_validate",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StorageUnavailable,),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=5,
    expires=3600,
    soft_time_limit=_SOFT_LIMIT_S,
    time_limit=_SOFT_LIMIT_S + 60,
)
def version_validate(version_id: int) -> None:
    """Validate an uploaded artifact; a storage outage retries with backoff while the version stays validating."""
    try:
        services.version_validate(version_id=version_id)
    except SoftTimeLimitExceeded:
        services.version_validation_fail(
            version_id=version_id, reason="Validation took too long and was stopped. Make the model smaller or faster."
        )
