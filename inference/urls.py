"""/v2: the Open Inference Protocol (KServe V2). ``GET /v2`` itself is routed in marketplace/urls.py."""

from django.urls import path

from inference import views

app_name = "inference"
urlpatterns = [
    path("", views.server_metadata, name="server-metadata"),
    path("health/live", views.health_live, name="health-live"),
    path("health/ready", views.health_ready, name="health-ready"),
    path("models/<slug:listing>", views.model_metadata, name="model-metadata"),
    path("models/<slug:listing>/ready", views.model_ready, name="model-ready"),
    path("models/<slug:listing>/infer", views.model_infer, name="model-infer"),
    path("models/<slug:listing>/versions/<str:version>", views.model_metadata, name="version-metadata"),
    path("models/<slug:listing>/versions/<str:version>/ready", views.model_ready, name="version-ready"),
    path("models/<slug:listing>/versions/<str:version>/infer", views.model_infer, name="version-infer"),
]
