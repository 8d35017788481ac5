"""Billing dashboards and spend-cap forms, included by billing/urls.py (names in the "billing" namespace)."""

from django.urls import path

from billing import dashboard_views as views

urlpatterns = [
    path("publisher/", views.publisher_dashboard, name="publisher-dashboard"),
    path("admin/", views.admin_dashboard, name="admin-dashboard"),
    path("admin/platform-fee/", views.platform_fee_update, name="platform-fee"),
    path("spend-caps/", views.spend_cap_save, name="spend-cap-save"),
    path("spend-caps/remove/", views.spend_cap_remove, name="spend-cap-remove"),
]
