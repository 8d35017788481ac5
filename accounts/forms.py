"""Forms check the shape of input; the services enforce the rules and their errors land back on fields."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib.auth.forms import AdminUserCreationForm, AuthenticationForm, UserChangeForm

from accounts.models import ApiKeyScope, Role, User
from marketplace.errors import ApplicationError


def form_add_application_error(form: forms.Form, error: ApplicationError) -> None:
    """Show a service's error next to the fields it names, or at the top of the form."""
    placed = False
    for field, messages in error.fields.items():
        target = field if field in form.fields else None
        for message in messages:
            form.add_error(target, message)
        placed = True
    if not placed:
        form.add_error(None, error.message)


class SignupForm(forms.Form):
    email = forms.EmailField(
        label="Email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    name = forms.CharField(
        label="Your name",
        max_length=150,
        required=False,
        help_text="Shown to your teammates. Optional.",
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        help_text="At least 8 characters; not too common and not too close to your email.",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )


class EmailAuthenticationForm(AuthenticationForm):
    """Django's login form, labelled and typed for the email address the user logs in with."""

    username = forms.EmailField(
        label="Email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That email and password do not match an account. Passwords are case-sensitive.",
    }

    def clean_username(self) -> str:
        # Emails are stored lower-cased; people type them any way.
        return self.cleaned_data["username"].strip().lower()


class OrganizationCreateForm(forms.Form):
    name = forms.CharField(label="Organization name", max_length=120)
    slug = forms.SlugField(
        label="Address",
        max_length=60,
        required=False,
        help_text="Used in links, e.g. acme-labs. Leave empty to derive it from the name.",
    )


class InvitationCreateForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.MEMBER)

    def __init__(self, *args: Any, can_invite_owner: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not can_invite_owner:
            role = cast(forms.ChoiceField, self.fields["role"])
            role.choices = [c for c in Role.choices if c[0] != Role.OWNER]


class MembershipRoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class OrganizationSwitchForm(forms.Form):
    organization = forms.IntegerField(min_value=1)


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(label="Name", max_length=80, help_text="What uses this key, e.g. “claims pipeline (prod)”.")
    scopes = forms.MultipleChoiceField(
        label="Scopes",
        choices=[
            (ApiKeyScope.INFERENCE, "Inference: call specialists through /v2"),
            (ApiKeyScope.MANAGEMENT, "Management: manage keys and subscriptions through /api/v1"),
        ],
        initial=[ApiKeyScope.INFERENCE],
        widget=forms.CheckboxSelectMultiple,
    )
    listings = forms.TypedMultipleChoiceField(
        label="Restrict to listings",
        coerce=int,
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 5}),
        help_text="Leave empty to allow every listing your organization subscribes to.",
    )
    expires_at = forms.DateTimeField(
        label="Expires",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional. Leave empty for a key that does not expire.",
    )
    rate_limit_per_second = forms.IntegerField(
        label="Rate limit (requests per second)",
        required=False,
        min_value=1,
        max_value=100_000,
        help_text="Optional. Leave empty for the platform default.",
    )

    def __init__(self, *args: Any, listing_choices: list[tuple[int, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        listings = cast(forms.TypedMultipleChoiceField, self.fields["listings"])
        listings.choices = listing_choices or []
        if not listing_choices:
            listings.widget = forms.MultipleHiddenInput()


# --- admin -------------------------------------------------------------------------------------


class UserAdminCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "name")


class UserAdminChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"
