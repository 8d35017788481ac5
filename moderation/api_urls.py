"""Moderation routes under /api/v1/."""

from django.urls import path

from moderation import api

urlpatterns = [
    path("moderation/queue", api.ReviewQueueApi.as_view(), name="api-moderation-queue"),
    path("moderation/versions/<int:version_id>/approve", api.VersionApproveApi.as_view(), name="api-version-approve"),
    path("moderation/versions/<int:version_id>/reject", api.VersionRejectApi.as_view(), name="api-version-reject"),
    path(
        "moderation/versions/<int:version_id>/withdraw", api.VersionTakeDownApi.as_view(), name="api-version-withdraw"
    ),
    path("moderation/listings/<slug:slug>/suspend", api.ListingSuspendApi.as_view(), name="api-listing-suspend"),
    path("moderation/listings/<slug:slug>/reinstate", api.ListingReinstateApi.as_view(), name="api-listing-reinstate"),
    path("moderation/listings/<slug:slug>/feature", api.ListingFeatureApi.as_view(), name="api-listing-feature"),
    path("moderation/reports", api.ReportListApi.as_view(), name="api-moderation-reports"),
    path("moderation/reports/<int:report_id>/resolve", api.ReportResolveApi.as_view(), name="api-report-resolve"),
    path("moderation/audit", api.AuditLogApi.as_view(), name="api-moderation-audit"),
    path("listings/<slug:slug>/reports", api.ListingReportCreateApi.as_view(), name="api-listing-report-create"),
]
