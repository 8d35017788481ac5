from django.urls import path

from catalog import publish_views as views

app_name = "publish"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("listings/new/", views.listing_create, name="listing-create"),
    path("listings/<slug:slug>/", views.listing_manage, name="listing-manage"),
    path("listings/<slug:slug>/versions/new/", views.version_create, name="version-create"),
    path("listings/<slug:slug>/versions/import/", views.version_import, name="version-import"),
    path("versions/<int:version_id>/", views.version_detail, name="version-detail"),
    path("versions/<int:version_id>/submit/", views.version_submit, name="version-submit"),
    path("versions/<int:version_id>/deprecate/", views.version_deprecate, name="version-deprecate"),
    path("versions/<int:version_id>/withdraw/", views.version_withdraw, name="version-withdraw"),
]
