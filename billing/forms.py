"""Forms check the shape of input; billing.services enforces the rules."""

from __future__ import annotations

from django import forms


class SubscribeForm(forms.Form):
    plan = forms.IntegerField(min_value=1)
    accept_license = forms.BooleanField(required=False)
    # The SHA-256 of the terms shown on the page: the service refuses if they changed meanwhile.
    terms_sha256 = forms.CharField(required=False, max_length=64)
    pinned_version = forms.CharField(required=False, max_length=40)


class PlanCreateForm(forms.Form):
    name = forms.CharField(label="Plan name", max_length=80, initial="Free")
    monthly_quota_units = forms.IntegerField(
        label="Monthly quota (units)",
        required=False,
        min_value=1,
        help_text="Units are rows along the batch dimension. Leave empty for unlimited.",
    )
