from django.urls import path

from accounts import api

urlpatterns = [
    path("me", api.MeApi.as_view(), name="api-me"),
    path("organizations", api.OrganizationListApi.as_view(), name="api-organizations"),
    path(
        "organizations/<slug:slug>/members",
        api.OrganizationMemberListApi.as_view(),
        name="api-organization-members",
    ),
    path(
        "organizations/<slug:slug>/invitations",
        api.OrganizationInvitationCreateApi.as_view(),
        name="api-organization-invitations",
    ),
    path(
        "organizations/<slug:slug>/api-keys",
        api.ApiKeyListCreateApi.as_view(),
        name="api-organization-api-keys",
    ),
    path(
        "organizations/<slug:slug>/api-keys/<str:public_id>/revoke",
        api.ApiKeyRevokeApi.as_view(),
        name="api-organization-api-key-revoke",
    ),
]
