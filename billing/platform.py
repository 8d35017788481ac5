"""The platform's own billing settings, changed by staff: the fee kept from publishers' revenue."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction

from accounts.models import User
from billing.models import PlatformSettings
from marketplace.errors import ApplicationError, Forbidden
from moderation.audit import audit_log_write
from moderation.models import AuditAction

FEE_MIN = Decimal(0)
FEE_MAX = Decimal(100)


@transaction.atomic
def platform_fee_set(*, user: User, platform_fee_percent: Decimal | str) -> PlatformSettings:
    """Set the platform fee (staff only), in percent with up to two decimals. Applies to invoices made from
    now on; invoices already made keep the split they were made with."""
    if not (getattr(user, "is_authenticated", False) and user.is_staff):
        raise Forbidden("Only platform staff may change the platform fee.")
    try:
        percent = Decimal(str(platform_fee_percent))
    except InvalidOperation:
        percent = Decimal("NaN")
    if not percent.is_finite() or not FEE_MIN <= percent <= FEE_MAX or percent != percent.quantize(Decimal("0.01")):
        raise ApplicationError(
            "The fee is out of range.",
            code="invalid",
            fields={"platform_fee_percent": ["A percentage from 0 to 100, with at most two decimals."]},
        )
    row, _created = PlatformSettings.objects.select_for_update().get_or_create(
        pk=1, defaults={"platform_fee_percent": Decimal(settings.PLATFORM_FEE_PERCENT)}
    )
    previous = row.platform_fee_percent
    row.platform_fee_percent = percent
    row.updated_by = user
    row.save()
    audit_log_write(
        action=AuditAction.PLATFORM_FEE_CHANGED,
        actor=user,
        data={"platform_fee_percent": str(percent), "previous": str(previous)},
    )
    return row
