"""Plans and subscriptions under /api/v1/."""

from django.urls import URLPattern, URLResolver, include, path

from billing import api

urlpatterns: list[URLPattern | URLResolver] = [
    path("listings/<slug:slug>/plans", api.ListingPlanListApi.as_view(), name="api-listing-plans"),
    path("plans/<int:plan_id>/deactivate", api.PlanDeactivateApi.as_view(), name="api-plan-deactivate"),
    path("subscriptions", api.SubscriptionListCreateApi.as_view(), name="api-subscriptions"),
    path(
        "subscriptions/<int:subscription_id>/cancel",
        api.SubscriptionCancelApi.as_view(),
        name="api-subscription-cancel",
    ),
    # Checkout and lifecycle (helper "checkout").
    path("plans/<int:plan_id>/price", api.PlanPriceChangeApi.as_view(), name="api-plan-price"),
    path("checkout", api.CheckoutApi.as_view(), name="api-checkout"),
    path("checkout/<str:session_id>", api.CheckoutDetailApi.as_view(), name="api-checkout-detail"),
    path(
        "subscriptions/<int:subscription_id>/change-plan",
        api.SubscriptionChangePlanApi.as_view(),
        name="api-subscription-change-plan",
    ),
    path(
        "subscriptions/<int:subscription_id>/resume",
        api.SubscriptionResumeApi.as_view(),
        name="api-subscription-resume",
    ),
    path(
        "subscriptions/<int:subscription_id>/accept-terms",
        api.SubscriptionAcceptTermsApi.as_view(),
        name="api-subscription-accept-terms",
    ),
]

# Spend caps (helper "caps").
urlpatterns += [path("", include("billing.dashboard_api_urls"))]
