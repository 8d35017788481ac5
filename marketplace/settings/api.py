"""Django REST framework and the OpenAPI schema."""

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
        # Last, so anonymous calls keep answering 403 where views do not opt in to keys.
        "accounts.authentication.ApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "marketplace.errors.api_exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Specialist Marketplace API",
    "DESCRIPTION": "Publish, validate, moderate and browse ONNX specialists. "
    'Every error is JSON: {"error": {"code": ..., "message": ..., "fields": {...}}}.',
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # One schema enum per status machine, whichever serializer exposes it.
    "ENUM_NAME_OVERRIDES": {
        "ListingStatusEnum": "catalog.models.ListingStatus",
        "VersionStatusEnum": "catalog.models.VersionStatus",
    },
}
