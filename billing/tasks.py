"""Billing tasks: periodic upkeep of subscription periods."""

from __future__ import annotations

from celery import shared_task

from billing.services import subscription_periods_renew


@shared_task(name="billing.subscription_periods_renew")
def subscription_periods_renew_task() -> int:
    """Roll free subscriptions into their next monthly period. Schedule it (e.g. hourly) with celery beat."""
    return subscription_periods_renew()
