from django.urls import path

from catalog.api.browse import ListingDetailApi, ListingListApi

urlpatterns = [
    path("listings", ListingListApi.as_view(), name="api-listing-list"),
    path("listings/<slug:slug>", ListingDetailApi.as_view(), name="api-listing-detail"),
]

# --- publishing (catalog/api/publish.py) ---
from catalog.api import publish as publish_api  # noqa: E402

urlpatterns += [
    path("publisher/listings", publish_api.PublisherListingListCreateApi.as_view(), name="api-publisher-listings"),
    path(
        "publisher/listings/<slug:slug>",
        publish_api.PublisherListingDetailApi.as_view(),
        name="api-publisher-listing-detail",
    ),
    path(
        "publisher/listings/<slug:slug>/versions",
        publish_api.PublisherVersionCreateApi.as_view(),
        name="api-publisher-listing-versions",
    ),
    path("versions/<int:version_id>", publish_api.VersionDetailApi.as_view(), name="api-version-detail"),
    path("versions/<int:version_id>/upload", publish_api.VersionUploadApi.as_view(), name="api-version-upload"),
    path("versions/<int:version_id>/complete", publish_api.VersionCompleteApi.as_view(), name="api-version-complete"),
    path("versions/<int:version_id>/submit", publish_api.VersionSubmitApi.as_view(), name="api-version-submit"),
    path("versions/<int:version_id>/withdraw", publish_api.VersionWithdrawApi.as_view(), name="api-version-withdraw"),
    path(
        "versions/<int:version_id>/deprecate", publish_api.VersionDeprecateApi.as_view(), name="api-version-deprecate"
    ),
]

# --- import from the Hugging Face Hub (catalog/api/hub_import.py) ---
from catalog.api import hub_import as hub_import_api  # noqa: E402

urlpatterns += [
    path(
        "publisher/listings/<slug:slug>/versions/import",
        hub_import_api.PublisherVersionImportApi.as_view(),
        name="api-publisher-listing-versions-import",
    ),
]
