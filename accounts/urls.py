from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("password-reset/", views.PasswordResetView.as_view(), name="password_reset"),
    path("password-reset/sent/", views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("reset/<uidb64>/<token>/", views.PasswordResetConfirmView.as_view(), name="password_reset_confirm"),
    path("reset/done/", views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("organizations/", views.organization_list, name="organizations"),
    path("organizations/switch/", views.organization_switch, name="organization_switch"),
    path("organizations/<slug:slug>/", views.organization_detail, name="organization_detail"),
    path("organizations/<slug:slug>/invitations/", views.organization_invite, name="organization_invite"),
    path(
        "organizations/<slug:slug>/members/<int:membership_id>/role/",
        views.membership_role_change,
        name="membership_role_change",
    ),
    path(
        "organizations/<slug:slug>/members/<int:membership_id>/remove/",
        views.membership_remove,
        name="membership_remove",
    ),
    path("organizations/<slug:slug>/keys/", views.api_key_list, name="api_keys"),
    path("organizations/<slug:slug>/keys/<str:public_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("invitations/<str:token>/", views.invitation_accept, name="invitation_accept"),
]
