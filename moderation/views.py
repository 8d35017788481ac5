"""Moderator pages (staff only) and the page where any signed-in user reports a listing.

Each POST view validates a small form, calls one service and redirects back with a message;
services raise ApplicationError for bad input or a wrong state, which becomes an error message.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.forms import form_add_application_error
from catalog.models import ListingStatus, VersionStatus
from catalog.states import version_can_move
from marketplace.errors import ApplicationError, or_404
from moderation import selectors, services
from moderation.emails import listing_page_url
from moderation.models import AuditAction, ReportReason, ReportStatus

AUDIT_PAGE_SIZE = 50
LISTINGS_PAGE_SIZE = 30
REPORTS_PAGE_SIZE = 30

T = TypeVar("T")

STEP_BADGES = {"passed": "badge-ok", "failed": "badge-bad", "skipped": "badge-warn"}


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Anonymous visitors go to the login page; signed-in non-staff get a 404 (the area does not exist for them)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapper


# --- forms ----------------------------------------------------------------------------------------


class RejectForm(forms.Form):
    reason = forms.CharField(
        max_length=services.REASON_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="The publisher reads this in the rejection email.",
    )


class TakeDownForm(RejectForm):
    pass


class ApproveForm(forms.Form):
    note = forms.CharField(max_length=services.REASON_MAX_LENGTH, required=False)


class SuspendForm(forms.Form):
    reason = forms.CharField(max_length=services.REASON_MAX_LENGTH, widget=forms.Textarea(attrs={"rows": 2}))


class ReinstateForm(forms.Form):
    note = forms.CharField(max_length=services.REASON_MAX_LENGTH, required=False)


class FeatureForm(forms.Form):
    featured = forms.TypedChoiceField(choices=[("1", "Feature"), ("0", "Unfeature")], coerce=lambda v: v == "1")


class ResolveForm(forms.Form):
    action = forms.ChoiceField(choices=[("resolve", "Resolve"), ("dismiss", "Dismiss")])
    note = forms.CharField(
        max_length=services.REASON_MAX_LENGTH, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    suspend_listing = forms.BooleanField(required=False)


class ReportForm(forms.Form):
    reason = forms.ChoiceField(choices=ReportReason.choices, label="What is wrong?")
    details = forms.CharField(
        max_length=services.REPORT_DETAILS_MAX_LENGTH,
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="What you saw, and where. Moderators read every report.",
    )


# --- helpers --------------------------------------------------------------------------------------


def _back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = fallback
    return redirect(target)


def _form_errors(form: forms.Form) -> str:
    parts = []
    for field, errors in form.errors.items():
        label = (form.fields[field].label or field.replace("_", " ").capitalize()) if field in form.fields else ""
        text = " ".join(str(error) for error in errors)
        parts.append(f"{label}: {text}" if label else text)
    return " ".join(parts)


def _error_message(exc: ApplicationError) -> str:
    details = [message for messages_ in exc.fields.values() for message in messages_ if message != exc.message]
    return " ".join([exc.message, *details])


def _run(
    request: HttpRequest,
    *,
    form: forms.Form,
    action: Callable[[dict[str, Any]], str],
    fallback: str,
) -> HttpResponseRedirect:
    """Validate the form, call the service through ``action`` (which returns the success message)."""
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return _back(request, fallback)
    try:
        messages.success(request, action(form.cleaned_data))
    except ApplicationError as exc:
        messages.error(request, _error_message(exc))
    return _back(request, fallback)


def _report_steps(version: Any) -> list[dict[str, Any]]:
    """The validation steps with a badge class, tolerant of reports from older validators."""
    steps = (version.validation_report or {}).get("steps") or []
    rows = []
    for step in steps:
        if not isinstance(step, dict):
            continue
        status = str(step.get("status", ""))
        rows.append(
            {
                "label": step.get("label") or step.get("key") or "Step",
                "status": status or "unknown",
                "badge": STEP_BADGES.get(status, ""),
                "detail": step.get("detail", ""),
                "duration_ms": step.get("duration_ms"),
            }
        )
    return rows


def _decorate(version: Any) -> Any:
    version.report_steps = _report_steps(version)
    version.listing_url = listing_page_url(listing=version.listing)
    return version


def _page(request: HttpRequest, qs: Any, per_page: int) -> Any:
    return Paginator(qs, per_page).get_page(request.GET.get("page"))


# --- pages ----------------------------------------------------------------------------------------


@require_GET
@staff_required
def dashboard(request: HttpRequest) -> HttpResponse:
    queue = [_decorate(version) for version in selectors.review_queue()[:50]]
    return render(
        request,
        "moderation/dashboard.html",
        {
            "counts": selectors.moderation_counts(),
            "queue": queue,
            "reports": selectors.report_queue(status=ReportStatus.OPEN)[:5],
            "recent": selectors.audit_log_list()[:10],
        },
    )


@require_GET
@staff_required
def version_detail(request: HttpRequest, version_id: int) -> HttpResponse:
    version = _decorate(or_404(selectors.version_get_for_review, version_id=version_id))
    return render(
        request,
        "moderation/version_detail.html",
        {
            "version": version,
            "listing": version.listing,
            "history": selectors.audit_log_list(listing=version.listing_id)[:20],
            "can_take_down": version_can_move(version=version, to=VersionStatus.WITHDRAWN),
        },
    )


@require_POST
@staff_required
def version_approve(request: HttpRequest, version_id: int) -> HttpResponse:
    version = or_404(selectors.version_get_for_review, version_id=version_id)

    def act(data: dict[str, Any]) -> str:
        done = services.version_approve(version=version, actor=request.user, note=data["note"])
        return f"Approved and published {done.listing.name} {done.version}."

    return _run(request, form=ApproveForm(request.POST), action=act, fallback=reverse("moderation:dashboard"))


@require_POST
@staff_required
def version_reject(request: HttpRequest, version_id: int) -> HttpResponse:
    version = or_404(selectors.version_get_for_review, version_id=version_id)

    def act(data: dict[str, Any]) -> str:
        done = services.version_reject(version=version, actor=request.user, reason=data["reason"])
        return f"Rejected {done.listing.name} {done.version}; the publisher has been told why."

    fallback = reverse("moderation:version-detail", args=[version.pk])
    return _run(request, form=RejectForm(request.POST), action=act, fallback=fallback)


@require_POST
@staff_required
def version_take_down(request: HttpRequest, version_id: int) -> HttpResponse:
    version = or_404(selectors.version_get_for_review, version_id=version_id)

    def act(data: dict[str, Any]) -> str:
        done = services.version_take_down(version=version, actor=request.user, reason=data["reason"])
        return f"Withdrew {done.listing.name} {done.version}; the publisher has been told why."

    fallback = reverse("moderation:version-detail", args=[version.pk])
    return _run(request, form=TakeDownForm(request.POST), action=act, fallback=fallback)


@require_GET
@staff_required
def listing_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")
    status = request.GET.get("status", "")
    if status not in ListingStatus.values:
        status = ""
    page = _page(request, selectors.listing_list_for_moderation(query=query, status=status or None), LISTINGS_PAGE_SIZE)
    for listing in page.object_list:
        listing.page_url = listing_page_url(listing=listing)
    return render(
        request,
        "moderation/listings.html",
        {"page": page, "query": query, "status": status, "statuses": ListingStatus.choices},
    )


@require_POST
@staff_required
def listing_suspend(request: HttpRequest, slug: str) -> HttpResponse:
    listing = or_404(selectors.listing_get_for_moderation, slug=slug)

    def act(data: dict[str, Any]) -> str:
        done = services.listing_suspend(listing=listing, actor=request.user, reason=data["reason"])
        return f"Suspended {done.name}; it is hidden from the catalog."

    return _run(request, form=SuspendForm(request.POST), action=act, fallback=reverse("moderation:listings"))


@require_POST
@staff_required
def listing_reinstate(request: HttpRequest, slug: str) -> HttpResponse:
    listing = or_404(selectors.listing_get_for_moderation, slug=slug)

    def act(data: dict[str, Any]) -> str:
        done = services.listing_reinstate(listing=listing, actor=request.user, note=data["note"])
        return f"Reinstated {done.name} as {done.get_status_display().lower()}."

    return _run(request, form=ReinstateForm(request.POST), action=act, fallback=reverse("moderation:listings"))


@require_POST
@staff_required
def listing_feature(request: HttpRequest, slug: str) -> HttpResponse:
    listing = or_404(selectors.listing_get_for_moderation, slug=slug)

    def act(data: dict[str, Any]) -> str:
        done = services.listing_feature(listing=listing, actor=request.user, featured=data["featured"])
        return f"{done.name} is {'featured' if done.is_featured else 'no longer featured'}."

    return _run(request, form=FeatureForm(request.POST), action=act, fallback=reverse("moderation:listings"))


@require_GET
@staff_required
def report_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", ReportStatus.OPEN)
    if status not in ReportStatus.values and status != "all":
        status = ReportStatus.OPEN
    page = _page(request, selectors.report_queue(status=None if status == "all" else status), REPORTS_PAGE_SIZE)
    for report in page.object_list:
        report.listing_url = listing_page_url(listing=report.listing)
    return render(
        request,
        "moderation/reports.html",
        {"page": page, "status": status, "statuses": [*ReportStatus.choices, ("all", "All")]},
    )


@require_POST
@staff_required
def report_resolve(request: HttpRequest, report_id: int) -> HttpResponse:
    report = or_404(selectors.report_get, report_id=report_id)

    def act(data: dict[str, Any]) -> str:
        done = services.report_resolve(
            report=report,
            actor=request.user,
            note=data["note"],
            action=data["action"],
            suspend_listing=data["suspend_listing"],
        )
        message = f"Report on {done.listing.name} {done.get_status_display().lower()}."
        if data["suspend_listing"]:
            message += " The listing is suspended."
        return message

    return _run(request, form=ResolveForm(request.POST), action=act, fallback=reverse("moderation:reports"))


@require_GET
@staff_required
def audit_log(request: HttpRequest) -> HttpResponse:
    action = request.GET.get("action", "")
    if action not in AuditAction.values:
        action = ""
    listing_slug = request.GET.get("listing", "")
    actor_email = request.GET.get("actor", "")
    qs = selectors.audit_log_list(action=action or None, listing_slug=listing_slug, actor_email=actor_email)
    return render(
        request,
        "moderation/audit.html",
        {
            "page": _page(request, qs, AUDIT_PAGE_SIZE),
            "action": action,
            "listing_slug": listing_slug,
            "actor_email": actor_email,
            "actions": AuditAction.choices,
        },
    )


# --- reporting a listing (any signed-in user) -----------------------------------------------------


@require_http_methods(["GET", "POST"])
@login_required
def report_listing(request: HttpRequest, slug: str) -> HttpResponse:
    listing = or_404(selectors.listing_get_reportable, slug=slug)
    listing_url = listing_page_url(listing=listing)
    status = 200
    form = ReportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.report_create(listing=listing, reporter=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            status = exc.status
            form_add_application_error(form, exc)
        else:
            messages.success(request, "Thank you: your report has been sent to the moderators.")
            return redirect(listing_url)
    elif request.method == "POST":
        status = 400
    return render(
        request,
        "moderation/report_listing.html",
        {"listing": listing, "listing_url": listing_url, "form": form},
        status=status,
    )
