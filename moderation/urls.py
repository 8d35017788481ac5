"""Moderator pages under /moderation/ (staff only), and /moderation/report/<slug>/ for any signed-in user."""

from django.urls import path

from moderation import views

app_name = "moderation"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("versions/<int:version_id>/", views.version_detail, name="version-detail"),
    path("versions/<int:version_id>/approve/", views.version_approve, name="version-approve"),
    path("versions/<int:version_id>/reject/", views.version_reject, name="version-reject"),
    path("versions/<int:version_id>/withdraw/", views.version_take_down, name="version-take-down"),
    path("listings/", views.listing_list, name="listings"),
    path("listings/<slug:slug>/suspend/", views.listing_suspend, name="listing-suspend"),
    path("listings/<slug:slug>/reinstate/", views.listing_reinstate, name="listing-reinstate"),
    path("listings/<slug:slug>/feature/", views.listing_feature, name="listing-feature"),
    path("reports/", views.report_list, name="reports"),
    path("reports/<int:report_id>/resolve/", views.report_resolve, name="report-resolve"),
    path("audit/", views.audit_log, name="audit"),
    path("report/<slug:slug>/", views.report_listing, name="report-listing"),
]
