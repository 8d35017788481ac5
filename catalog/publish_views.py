"""Publisher pages under /publish/: dashboard, listing forms, new version upload, live version page.

Thin: reads come from catalog.publish_selectors, writes from catalog.services. Pages of listings and
versions the user does not manage are 404s, whoever owns them.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from accounts.forms import form_add_application_error
from accounts.selectors import user_can_manage
from billing.forms import PlanCreateForm
from billing.selectors import plan_list_for_listing
from catalog import services
from catalog.forms import HubImportForm, ListingCreateForm, ListingForm, VersionForm
from catalog.hub_import import version_import_from_hub
from catalog.models import Listing, Version, VersionStatus
from catalog.publish_selectors import (
    listing_get_for_manager,
    listing_list_for_organization,
    version_get_for_manager,
    version_list_for_listing,
)
from catalog.templatetags.catalog_tags import ms
from marketplace.errors import ApplicationError, or_404
from marketplace.typing import request_user

# How the validation report's metrics read on the version page, in this order; unknown keys follow.
METRIC_LABELS = {
    "p50_ms_b1": "Latency p50, batch 1",
    "p95_ms_b1": "Latency p95, batch 1",
    "p50_ms_b8": "Latency p50, batch 8",
    "p95_ms_b8": "Latency p95, batch 8",
    "cold_load_ms": "Cold load",
    "provider": "Measured on",
    "batchable": "Batches",
}


def _listing_or_404(request: HttpRequest, slug: str) -> Listing:
    return or_404(listing_get_for_manager, user=request_user(request), slug=slug)


def _version_or_404(request: HttpRequest, version_id: int) -> Version:
    return or_404(version_get_for_manager, user=request_user(request), version_id=version_id)


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    organization = getattr(request, "organization", None)
    can_manage = organization is not None and user_can_manage(user=request_user(request), organization=organization)
    listings = (
        list(listing_list_for_organization(organization=organization))
        if organization is not None and can_manage
        else []
    )
    return render(
        request,
        "publish/dashboard.html",
        {"organization": organization, "can_manage": can_manage, "listings": listings},
    )


@login_required
@require_http_methods(["GET", "POST"])
def listing_create(request: HttpRequest) -> HttpResponse:
    organization = getattr(request, "organization", None)
    if organization is None or not user_can_manage(user=request_user(request), organization=organization):
        raise Http404("Only owners and admins of an organization can create listings.")
    form = ListingCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            listing = services.listing_create(
                organization=organization, user=request_user(request), **form.cleaned_for_service()
            )
        except ApplicationError as exc:
            form_add_application_error(form, exc)
        else:
            messages.success(request, f"“{listing.name}” is created. Upload its first version next.")
            return redirect("publish:version-create", slug=listing.slug)
    return render(request, "publish/listing_form.html", {"form": form, "organization": organization})


@login_required
@require_http_methods(["GET", "POST"])
def listing_manage(request: HttpRequest, slug: str) -> HttpResponse:
    listing = _listing_or_404(request, slug)
    form = ListingForm(request.POST or None, initial=ListingForm.initial_from(listing))
    if request.method == "POST" and form.is_valid():
        try:
            services.listing_update(listing=listing, user=request_user(request), **form.cleaned_for_service())
        except ApplicationError as exc:
            form_add_application_error(form, exc)
        else:
            messages.success(request, "Listing saved.")
            return redirect("publish:listing-manage", slug=listing.slug)
    versions = version_list_for_listing(listing=listing)
    context = {
        "listing": listing,
        "form": form,
        "versions": versions,
        "plans": plan_list_for_listing(listing=listing),
        "plan_form": PlanCreateForm(),
    }
    return render(request, "publish/listing_manage.html", context)


@login_required
def version_create(request: HttpRequest, slug: str) -> HttpResponse:
    listing = _listing_or_404(request, slug)
    return _version_create_page(request, listing)


def _version_create_page(request: HttpRequest, listing: Listing, hub_form: HubImportForm | None = None) -> HttpResponse:
    latest = version_list_for_listing(listing=listing).exclude(status=VersionStatus.WITHDRAWN).first()
    suggestion = f"{latest.major}.{latest.minor + 1}.0" if latest else "1.0.0"
    form = VersionForm(initial={"version": suggestion})
    return render(
        request,
        "publish/version_create.html",
        {
            "listing": listing,
            "form": form,
            "hub_form": hub_form or HubImportForm(initial={"version": suggestion}),
            "max_bytes": settings.ARTIFACT_MAX_BYTES,
            "create_url": reverse("api-publisher-listing-versions", kwargs={"slug": listing.slug}),
            "complete_url_template": reverse("api-version-complete", kwargs={"version_id": 0}).replace("/0/", "/{id}/"),
            "upload_url_template": reverse("api-version-upload", kwargs={"version_id": 0}).replace("/0/", "/{id}/"),
            "version_page_template": reverse("publish:version-detail", kwargs={"version_id": 0}).replace(
                "/0/", "/{id}/"
            ),
        },
    )


@login_required
@require_POST
def version_import(request: HttpRequest, slug: str) -> HttpResponse:
    """The new-version page's Hub form: record the version; a worker imports and validates the file."""
    listing = _listing_or_404(request, slug)
    hub_form = HubImportForm(request.POST)
    if hub_form.is_valid():
        try:
            version = version_import_from_hub(listing=listing, user=request_user(request), **hub_form.cleaned_data)
        except ApplicationError as exc:
            form_add_application_error(hub_form, exc)
        else:
            messages.success(request, f"Version {version.version} is being imported from the Hugging Face Hub.")
            return redirect("publish:version-detail", version_id=version.pk)
    return _version_create_page(request, listing, hub_form)


@login_required
def version_detail(request: HttpRequest, version_id: int) -> HttpResponse:
    version = _version_or_404(request, version_id)
    report = version.validation_report or {}
    return render(
        request,
        "publish/version_detail.html",
        {
            "version": version,
            "listing": version.listing,
            "report": report,
            "steps": report.get("steps") or [],
            "metric_rows": _metric_rows(report.get("metrics") or {}),
            "model": report.get("model") or {},
            "signature": version.signature or {},
            "is_live": version.status in (VersionStatus.UPLOADING, VersionStatus.VALIDATING),
            "can_submit": version.status in (VersionStatus.READY, VersionStatus.REJECTED),
            "can_deprecate": version.status == VersionStatus.PUBLISHED,
            "can_withdraw": version.status != VersionStatus.WITHDRAWN,
            "api_url": reverse("api-version-detail", kwargs={"version_id": version.pk}),
        },
    )


def _metric_rows(metrics: dict) -> list[dict]:
    keys = [key for key in METRIC_LABELS if key in metrics] + sorted(set(metrics) - set(METRIC_LABELS))
    rows = []
    for key in keys:
        value = metrics[key]
        if key.endswith("_ms") or key.startswith(("p50_ms", "p95_ms")):
            shown = ms(value)
        elif isinstance(value, bool):
            shown = "yes" if value else "no"
        else:
            shown = "—" if value is None else str(value)
        rows.append({"label": METRIC_LABELS.get(key, key.replace("_", " ")), "value": shown})
    return rows


def _version_action(request: HttpRequest, version_id: int, action: str) -> HttpResponse:
    version = _version_or_404(request, version_id)
    try:
        if action == "submit":
            services.version_submit(version=version, user=request_user(request))
            messages.success(request, f"Version {version.version} is submitted for review.")
        elif action == "deprecate":
            services.version_deprecate(version=version, user=request_user(request))
            messages.success(request, f"Version {version.version} is deprecated.")
        else:
            services.version_withdraw(
                version=version, actor=request_user(request), reason=request.POST.get("reason", "")
            )
            messages.success(request, f"Version {version.version} is withdrawn.")
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("publish:version-detail", version_id=version.pk)


@login_required
@require_POST
def version_submit(request: HttpRequest, version_id: int) -> HttpResponse:
    return _version_action(request, version_id, "submit")


@login_required
@require_POST
def version_deprecate(request: HttpRequest, version_id: int) -> HttpResponse:
    return _version_action(request, version_id, "deprecate")


@login_required
@require_POST
def version_withdraw(request: HttpRequest, version_id: int) -> HttpResponse:
    return _version_action(request, version_id, "withdraw")
