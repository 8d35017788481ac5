from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from inference import views as inference_views
from inference.metrics import metrics_view
from marketplace import views

urlpatterns = [
    # The inference API first: Django tries patterns in order, and /v2 is the hot path (resolving it after every
    # other app's patterns cost 10 µs a call more).
    # KServe V2 server metadata lives at /v2 exactly (clients do not follow a redirect to /v2/).
    path("v2", inference_views.server_metadata, name="v2-server-metadata"),
    path("v2/", include("inference.urls")),
    path("", include("catalog.urls")),
    path("publish/", include("catalog.publish_urls")),
    path("accounts/", include("accounts.urls")),
    path("moderation/", include("moderation.urls")),
    path("billing/", include("billing.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("marketplace.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
]

handler404 = "marketplace.views.not_found"
handler500 = "marketplace.views.server_error"
