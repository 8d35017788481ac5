"""Spend caps under /api/v1/, included by billing/api_urls.py."""

from django.urls import path

from billing import dashboard_api

urlpatterns = [
    path("organizations/<slug:slug>/spend-caps", dashboard_api.SpendCapsApi.as_view(), name="api-spend-caps"),
]
