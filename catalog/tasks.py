"""Celery tasks of the catalog. Thin: they take ids and call a service."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from catalog import services
from marketplace.integrations.huggingface import HubUnavailable
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


# --- import from the Hugging Face Hub (catalog/hub_import.py) ---
_HUB_RETRIES = 3


@shared_task(
    name="catalog.version_hub_import",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    expires=3600,
    soft_time_limit=settings.HUB_IMPORT_TIMEOUT_S,
    time_limit=settings.HUB_IMPORT_TIMEOUT_S + 60,
)
def version_hub_import(self, version_id: int) -> None:
    """Fetch a version's file from the Hub into object storage, then validate it like an upload.

    An unreachable Hub or storage is retried a few times with backoff; after that, or on any other
    failure, the version ends invalid with the reason.
    """
    from catalog import hub_import

    try:
        hub_import.version_hub_import_run(version_id=version_id)
    except (HubUnavailable, StorageUnavailable) as exc:
        if self.request.retries < _HUB_RETRIES:
            raise self.retry(exc=exc, countdown=30 * 2**self.request.retries) from exc
        hub_import.version_hub_import_fail(
            version_id=version_id, reason=f"{exc} (gave up after {_HUB_RETRIES} retries)"
        )
    except SoftTimeLimitExceeded:
        hub_import.version_hub_import_fail(
            version_id=version_id, reason="The import took too long and was stopped; try a smaller file."
        )
