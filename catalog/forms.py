"""Forms of the publisher pages. They only parse and render; the services own every rule."""

from __future__ import annotations

from typing import Any

from django import forms

from catalog.models import Domain, LicenseTemplate, Listing, Task


class ListingForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="What buyers see first, e.g. “Clinical note de-identifier”.")
    summary = forms.CharField(max_length=280, help_text="One sentence on what the model does and for whom.")
    domain = forms.ChoiceField(choices=Domain.choices)
    task = forms.ChoiceField(choices=Task.choices)
    tags = forms.CharField(required=False, help_text="Comma separated, e.g. “ner, clinical, english”.")
    license = forms.ChoiceField(choices=LicenseTemplate.choices)
    license_text = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 5}), help_text="Required for custom terms."
    )
    model_card = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 12}),
        help_text="Markdown: intended use, training data, evaluation, limitations.",
    )

    def cleaned_for_service(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        data["tags"] = [tag.strip() for tag in (data.get("tags") or "").split(",") if tag.strip()]
        return data

    @classmethod
    def initial_from(cls, listing: Listing) -> dict[str, Any]:
        return {
            "name": listing.name,
            "summary": listing.summary,
            "domain": listing.domain,
            "task": listing.task,
            "tags": ", ".join(sorted(tag.name for tag in listing.tags.all())),
            "license": listing.license,
            "license_text": listing.license_text,
            "model_card": listing.model_card,
        }


class ListingCreateForm(ListingForm):
    slug = forms.SlugField(
        max_length=80,
        required=False,
        # Help texts are not escaped when rendered, so no angle brackets here.
        help_text="The end of the listing's address, as in /s/iris-classifier/; made from the name if left empty. "
        "It cannot change later.",
    )
    field_order = ["name", "slug", "summary", "domain", "task", "tags", "license", "license_text", "model_card"]


class VersionForm(forms.Form):
    """Rendered on the new-version page; upload.js posts it to the API, which checks it again."""

    version = forms.CharField(max_length=40, help_text="Semantic version: major.minor.patch, e.g. 1.0.0 or 1.1.0-rc.1.")
    changelog = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}))
    sample_input = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text='Optional JSON for the smoke test, e.g. {"input": [[5.1, 3.5, 1.4, 0.2]]}. '
        "Without it the platform generates an input from the signature.",
    )
    artifact = forms.FileField(
        label="ONNX file",
        help_text="A single self-contained .onnx file. It goes straight to object storage, not through this site.",
        widget=forms.ClearableFileInput(attrs={"accept": ".onnx"}),
    )


class HubImportForm(forms.Form):
    """The new-version page's second way in: a file from a Hugging Face Hub model repository."""

    version = forms.CharField(max_length=40, help_text="Semantic version: major.minor.patch, e.g. 1.0.0 or 1.1.0-rc.1.")
    repo_id = forms.CharField(
        label="Repository", max_length=200, help_text="The model repository on the Hub, e.g. acme/iris-classifier."
    )
    filename = forms.CharField(
        max_length=500, initial="model.onnx", help_text="Path of the .onnx file in the repository."
    )
    revision = forms.CharField(max_length=200, required=False, help_text="Branch, tag or commit; main if left empty.")
    changelog = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    sample_input = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="Optional JSON for the smoke test.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix", "hub")  # the upload form on the same page uses the plain names
        super().__init__(*args, **kwargs)
