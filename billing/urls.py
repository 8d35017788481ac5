from django.urls import URLPattern, URLResolver, include, path

from billing import views
from inference import pages as inference_pages

app_name = "billing"
urlpatterns: list[URLPattern | URLResolver] = [
    path("", views.subscriptions, name="subscriptions"),
    path("usage/", inference_pages.usage, name="usage"),
    path("listings/<slug:slug>/subscribe/", views.subscribe, name="subscribe"),
    path("subscriptions/<int:subscription_id>/cancel/", views.subscription_cancel, name="subscription-cancel"),
    path("listings/<slug:slug>/plans/", views.plan_create, name="plan-create"),
    path("plans/<int:plan_id>/deactivate/", views.plan_deactivate, name="plan-deactivate"),
    # Checkout, lifecycle, webhooks (helper "checkout").
    path("plans/<int:plan_id>/price/", views.plan_price_change, name="plan-price-change"),
    path("subscriptions/<int:subscription_id>/resume/", views.subscription_resume, name="subscription-resume"),
    path(
        "subscriptions/<int:subscription_id>/change-plan/",
        views.subscription_change_plan,
        name="subscription-change-plan",
    ),
    path(
        "subscriptions/<int:subscription_id>/accept-terms/",
        views.subscription_accept_terms,
        name="subscription-accept-terms",
    ),
    path("checkout/success/", views.checkout_success, name="checkout-success"),
    path("checkout/cancel/", views.checkout_cancel, name="checkout-cancel"),
    path("checkout/<str:session_id>/", views.checkout_local, name="checkout-local"),
    path("checkout/<str:session_id>/status/", views.checkout_status, name="checkout-status"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
    path("stripe/webhook", views.stripe_webhook),
    path("stripe/connect-webhook/", views.stripe_connect_webhook, name="stripe-connect-webhook"),
    path("stripe/connect-webhook", views.stripe_connect_webhook),
]

# Publisher payouts (helper "ledger").
from billing import payout_views  # noqa: E402

urlpatterns += [
    path("payouts/", payout_views.payouts, name="payouts"),
    path("payouts/onboarding/", payout_views.payouts_onboarding, name="payouts-onboarding"),
    path("payouts/onboarding/refresh/", payout_views.payouts_onboarding_refresh, name="payouts-onboarding-refresh"),
]

# Dashboards and spend caps (helper "caps").
urlpatterns += [path("", include("billing.dashboard_urls"))]
