from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("", views.subscriptions, name="subscriptions"),
    path("listings/<slug:slug>/subscribe/", views.subscribe, name="subscribe"),
    path("subscriptions/<int:subscription_id>/cancel/", views.subscription_cancel, name="subscription-cancel"),
    path("listings/<slug:slug>/plans/", views.plan_create, name="plan-create"),
    path("plans/<int:plan_id>/deactivate/", views.plan_deactivate, name="plan-deactivate"),
]
