"""Forms check the shape of input; billing.services enforces the rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

from billing import pricing
from billing.models import PlanKind


class SubscribeForm(forms.Form):
    plan = forms.IntegerField(min_value=1)
    accept_license = forms.BooleanField(required=False)
    # The SHA-256 of the terms shown on the page: the service refuses if they changed meanwhile.
    terms_sha256 = forms.CharField(required=False, max_length=64)
    pinned_version = forms.CharField(required=False, max_length=40)


PRICE_FIELD_KWARGS: dict[str, Any] = {"required": False, "min_value": Decimal(0), "max_digits": 12, "decimal_places": 2}


class PlanCreateForm(forms.Form):
    """Prices are typed in the currency (49.00); the service takes minor units (4900)."""

    name = forms.CharField(label="Plan name", max_length=80, initial="Free")
    kind = forms.ChoiceField(label="Kind", choices=PlanKind.choices, initial=PlanKind.FREE, required=False)
    monthly_quota_units = forms.IntegerField(
        label="Monthly units (quota, or included units)",
        required=False,
        min_value=1,
        help_text="Units are rows along the batch dimension. Free: the monthly quota; flat: the units the "
        "monthly price includes. Leave empty for unlimited; metered plans leave it empty.",
    )
    monthly_price = forms.DecimalField(label="Monthly price (flat plans)", **PRICE_FIELD_KWARGS)
    price_per_1000_units = forms.DecimalField(
        label="Price per 1,000 units",
        help_text="Flat: for units beyond the included ones (empty: calls stop there). Metered: every unit.",
        **PRICE_FIELD_KWARGS,
    )
    currency = forms.ChoiceField(
        label="Currency", choices=[(c, c.upper()) for c in pricing.PLAN_CURRENCIES], initial="usd", required=False
    )
    trial_days = forms.IntegerField(label="Free trial (days)", required=False, min_value=0, max_value=90)

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        currency = data.get("currency") or "usd"
        return {
            "name": data["name"],
            "kind": data.get("kind") or PlanKind.FREE,
            "monthly_quota_units": data.get("monthly_quota_units"),
            "monthly_price_cents": pricing.major_to_minor(data.get("monthly_price") or 0, currency),
            "price_per_1000_units_cents": pricing.major_to_minor(data.get("price_per_1000_units") or 0, currency),
            "currency": currency,
            "trial_days": data.get("trial_days") or 0,
        }


class PlanPriceChangeForm(forms.Form):
    monthly_price = forms.DecimalField(label="Monthly price", **PRICE_FIELD_KWARGS)
    price_per_1000_units = forms.DecimalField(label="Price per 1,000 units", **PRICE_FIELD_KWARGS)


class PlanChangeForm(forms.Form):
    plan = forms.IntegerField(min_value=1)


class TermsAcceptForm(forms.Form):
    accept_license = forms.BooleanField(required=False)
    terms_sha256 = forms.CharField(required=False, max_length=64)


class TestCardForm(forms.Form):
    card_number = forms.CharField(
        label="Card number",
        max_length=30,
        widget=forms.TextInput(attrs={"autocomplete": "cc-number", "inputmode": "numeric"}),
    )
    expiry = forms.CharField(
        label="Expiry (MM/YY)", max_length=7, required=False, widget=forms.TextInput(attrs={"autocomplete": "cc-exp"})
    )
    cvc = forms.CharField(
        label="CVC", max_length=4, required=False, widget=forms.TextInput(attrs={"autocomplete": "cc-csc"})
    )
