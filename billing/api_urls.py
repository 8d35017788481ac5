"""Plans and subscriptions under /api/v1/."""

from django.urls import path

from billing import api

urlpatterns = [
    path("listings/<slug:slug>/plans", api.ListingPlanListApi.as_view(), name="api-listing-plans"),
    path("plans/<int:plan_id>/deactivate", api.PlanDeactivateApi.as_view(), name="api-plan-deactivate"),
    path("subscriptions", api.SubscriptionListCreateApi.as_view(), name="api-subscriptions"),
    path(
        "subscriptions/<int:subscription_id>/cancel",
        api.SubscriptionCancelApi.as_view(),
        name="api-subscription-cancel",
    ),
]
