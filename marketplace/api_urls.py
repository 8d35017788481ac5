"""Everything under /api/v1/; each app contributes its own routes."""

from django.urls import include, path

urlpatterns = [
    path("", include("accounts.api_urls")),
    path("", include("catalog.api_urls")),
    path("", include("moderation.api_urls")),
    path("", include("billing.api_urls")),
]
