from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from marketplace import views

urlpatterns = [
    path("", include("catalog.urls")),
    path("publish/", include("catalog.publish_urls")),
    path("accounts/", include("accounts.urls")),
    path("moderation/", include("moderation.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("marketplace.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("v2/", include("inference.urls")),
    path("healthz", views.healthz, name="healthz"),
]

handler404 = "marketplace.views.not_found"
handler500 = "marketplace.views.server_error"
