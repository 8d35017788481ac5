"""Server-rendered pages for signing up, logging in, organizations, members and invitations.

Views stay thin: parse the form, call one service, show the result or the error next to its field.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.forms import (
    ApiKeyCreateForm,
    EmailAuthenticationForm,
    InvitationCreateForm,
    MembershipRoleForm,
    OrganizationCreateForm,
    OrganizationSwitchForm,
    SignupForm,
    form_add_application_error,
)
from accounts.models import ApiKey, Membership, Organization, Role, User
from marketplace.errors import ApplicationError
from marketplace.typing import request_user

HOME_URL = "/"


def _safe_redirect_target(request: HttpRequest, url: str | None, fallback: str = HOME_URL) -> str:
    if url and url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return url
    return fallback


# --- signup, login, logout, password reset -----------------------------------------------------


def signup(request: HttpRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if request.user.is_authenticated:
        return redirect(_safe_redirect_target(request, next_url))

    if request.method == "POST":
        form = SignupForm(request.POST)
        if form.is_valid():
            try:
                user = services.user_create(**form.cleaned_data)
            except ApplicationError as exc:
                form_add_application_error(form, exc)
            else:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                messages.success(request, f"Welcome, {user.display_name}! Your organization is ready.")
                return redirect(_safe_redirect_target(request, next_url))
    else:
        form = SignupForm(initial={"email": request.GET.get("email", "")})
    status = 400 if form.errors else 200
    return render(request, "accounts/signup.html", {"form": form, "next": next_url}, status=status)


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = EmailAuthenticationForm
    redirect_authenticated_user = True
    # settings.LOGIN_REDIRECT_URL names a catalog page; "/" is the home page whoever serves it.
    next_page = HOME_URL


class LogoutView(auth_views.LogoutView):
    next_page = HOME_URL


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "registration/password_reset_form.html"
    email_template_name = "registration/password_reset_email.txt"
    subject_template_name = "registration/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_done")

    @property
    def extra_email_context(self) -> dict[str, Any]:  # type: ignore[override]
        # Links are built from SITE_URL, never from the request's Host header.
        return {"site_url": settings.SITE_URL.rstrip("/")}


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "registration/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "registration/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "registration/password_reset_complete.html"


# --- organizations -----------------------------------------------------------------------------


@login_required
def organization_list(request: HttpRequest) -> HttpResponse:
    user = request_user(request)
    if request.method == "POST":
        form = OrganizationCreateForm(request.POST)
        if form.is_valid():
            try:
                organization = services.organization_create(
                    user=user, name=form.cleaned_data["name"], slug=form.cleaned_data["slug"] or None
                )
            except ApplicationError as exc:
                form_add_application_error(form, exc)
            else:
                # A new organization is almost always the one the user wants to act for next.
                services.organization_switch(
                    request_session=request.session, user=user, organization_id=organization.pk
                )
                messages.success(request, f"{organization.name} is ready. Invite your team below.")
                return redirect("accounts:organization_detail", slug=organization.slug)
    else:
        form = OrganizationCreateForm()
    context = {"memberships": selectors.organization_list_with_roles(user=user), "form": form}
    return render(request, "accounts/organization_list.html", context, status=400 if form.errors else 200)


def _organization_for_member(request: HttpRequest, slug: str) -> Organization:
    organization = selectors.organization_get_for_member(user=request_user(request), slug=slug)
    if organization is None:
        # Same 404 whether it does not exist or belongs to someone else.
        raise Http404("No such organization.")
    return organization


def _organization_detail_render(
    request: HttpRequest, organization: Organization, *, invite_form: InvitationCreateForm | None = None
) -> HttpResponse:
    user = request_user(request)
    my_membership = selectors.membership_get(user=user, organization=organization)
    assert my_membership is not None  # callers checked membership
    can_manage = selectors.user_can_manage(user=user, organization=organization)
    is_owner = my_membership.role == Role.OWNER
    if can_manage and invite_form is None:
        invite_form = InvitationCreateForm(can_invite_owner=is_owner)
    members = list(selectors.membership_list(organization=organization))
    context = {
        "organization": organization,
        "my_membership": my_membership,
        "can_manage": can_manage,
        "is_owner": is_owner,
        "members": members,
        # The last owner cannot leave; hide the button rather than offer an action that must fail.
        "can_leave": my_membership.role != Role.OWNER or sum(m.role == Role.OWNER for m in members) > 1,
        "invitations": selectors.invitation_list_pending(organization=organization) if can_manage else [],
        "invite_form": invite_form if can_manage else None,
        # Admins may not hand out or take away the owner role.
        "role_choices": Role.choices if is_owner else [c for c in Role.choices if c[0] != Role.OWNER],
    }
    status = 400 if invite_form is not None and invite_form.errors else 200
    return render(request, "accounts/organization_detail.html", context, status=status)


@login_required
def organization_detail(request: HttpRequest, slug: str) -> HttpResponse:
    return _organization_detail_render(request, _organization_for_member(request, slug))


@login_required
@require_POST
def organization_invite(request: HttpRequest, slug: str) -> HttpResponse:
    organization = _organization_for_member(request, slug)
    user = request_user(request)
    membership = selectors.membership_get(user=user, organization=organization)
    is_owner = membership is not None and membership.role == Role.OWNER
    form = InvitationCreateForm(request.POST, can_invite_owner=is_owner)
    if form.is_valid():
        try:
            invitation = services.invitation_create(organization=organization, invited_by=user, **form.cleaned_data)
        except ApplicationError as exc:
            if not exc.fields:
                messages.error(request, exc.message)
                return redirect("accounts:organization_detail", slug=organization.slug)
            form_add_application_error(form, exc)
        else:
            messages.success(request, f"Invitation sent to {invitation.email}.")
            return redirect("accounts:organization_detail", slug=organization.slug)
    return _organization_detail_render(request, organization, invite_form=form)


def _membership_for_manager_action(request: HttpRequest, slug: str, membership_id: int) -> Membership:
    organization = _organization_for_member(request, slug)
    return get_object_or_404(
        Membership.objects.select_related("user", "organization"), pk=membership_id, organization=organization
    )


@login_required
@require_POST
def membership_role_change(request: HttpRequest, slug: str, membership_id: int) -> HttpResponse:
    membership = _membership_for_manager_action(request, slug, membership_id)
    form = MembershipRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid role.")
    else:
        try:
            services.membership_role_change(
                membership=membership, role=form.cleaned_data["role"], actor=request_user(request)
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"{membership.user.email} is now {membership.get_role_display().lower()}.")
    return redirect("accounts:organization_detail", slug=slug)


@login_required
@require_POST
def membership_remove(request: HttpRequest, slug: str, membership_id: int) -> HttpResponse:
    membership = _membership_for_manager_action(request, slug, membership_id)
    leaving = membership.user_id == request.user.pk
    try:
        services.membership_remove(membership=membership, actor=request_user(request))
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("accounts:organization_detail", slug=slug)
    if leaving:
        messages.success(request, f"You left {membership.organization.name}.")
        return redirect("accounts:organizations")
    messages.success(request, f"{membership.user.email} was removed.")
    return redirect("accounts:organization_detail", slug=slug)


@login_required
@require_POST
def organization_switch(request: HttpRequest) -> HttpResponse:
    form = OrganizationSwitchForm(request.POST)
    if not form.is_valid():
        raise Http404("No such organization.")
    try:
        organization = services.organization_switch(
            request_session=request.session,
            user=request_user(request),
            organization_id=form.cleaned_data["organization"],
        )
    except ApplicationError:
        raise Http404("No such organization.") from None
    messages.info(request, f"You are now acting for {organization.name}.")
    return HttpResponseRedirect(_safe_redirect_target(request, request.headers.get("Referer")))


# --- invitations -------------------------------------------------------------------------------


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    invitation = selectors.invitation_get_by_token(token=token)
    if invitation is None:
        raise Http404("No such invitation.")

    if not request.user.is_authenticated:
        # Send people to sign up (new address) or log in (known address), then back here.
        here = request.get_full_path()
        if User.objects.filter(email__iexact=invitation.email).exists():
            return redirect(f"{reverse('accounts:login')}?{urlencode({'next': here})}")
        return redirect(f"{reverse('accounts:signup')}?{urlencode({'next': here, 'email': invitation.email})}")

    error: ApplicationError | None = None
    if request.method == "POST":
        try:
            membership = services.invitation_accept(token=token, user=request_user(request))
        except ApplicationError as exc:
            error = exc
        else:
            services.organization_switch(
                request_session=request.session,
                user=request_user(request),
                organization_id=membership.organization_id,
            )
            messages.success(request, f"Welcome to {membership.organization.name}!")
            return redirect("accounts:organization_detail", slug=membership.organization.slug)

    context = {
        "invitation": invitation,
        "error": error,
        "is_expired": invitation.expires_at <= timezone.now(),
        "is_used": invitation.accepted_at is not None,
        "wrong_email": invitation.email.lower() != request_user(request).email.lower(),
    }
    return render(request, "accounts/invitation_accept.html", context, status=error.status if error else 200)


# --- API keys ----------------------------------------------------------------------------------


def _api_keys_render(
    request: HttpRequest, organization: Organization, *, form: ApiKeyCreateForm | None = None
) -> HttpResponse:
    from billing.selectors import listing_choices_subscribed

    user = request_user(request)
    can_manage = selectors.user_can_manage(user=user, organization=organization)
    if can_manage and form is None:
        form = ApiKeyCreateForm(listing_choices=listing_choices_subscribed(organization=organization))
    keys = list(selectors.api_key_list_for_organization(organization=organization))
    for api_key in keys:
        api_key.status = selectors.api_key_status(api_key=api_key)  # type: ignore[attr-defined]
    context = {"organization": organization, "can_manage": can_manage, "keys": keys, "form": form}
    return render(request, "accounts/api_keys.html", context, status=400 if form is not None and form.errors else 200)


@login_required
@never_cache
def api_key_list(request: HttpRequest, slug: str) -> HttpResponse:
    organization = _organization_for_member(request, slug)
    if request.method != "POST":
        return _api_keys_render(request, organization)

    from billing.selectors import listing_choices_subscribed

    subscribed = listing_choices_subscribed(organization=organization)
    form = ApiKeyCreateForm(request.POST, listing_choices=subscribed)
    if form.is_valid():
        try:
            data = form.cleaned_data
            api_key, raw_key = services.api_key_create(
                organization=organization,
                user=request_user(request),
                name=data["name"],
                scopes=data["scopes"],
                listing_ids=data["listings"],
                expires_at=data["expires_at"],
                rate_limit_per_second=data["rate_limit_per_second"],
            )
        except ApplicationError as exc:
            if exc.status == 403:
                messages.error(request, exc.message)
                return redirect("accounts:api_keys", slug=organization.slug)
            form_add_application_error(form, exc)
        else:
            # The raw key is in this response only: never in the session, a redirect or a log.
            context = {
                "organization": organization,
                "api_key": api_key,
                "raw_key": raw_key,
                "curl": _curl_example(api_key=api_key, raw_key=raw_key, subscribed=subscribed),
            }
            return render(request, "accounts/api_key_created.html", context, status=201)
    return _api_keys_render(request, organization, form=form)


def _api_key_for_member(request: HttpRequest, slug: str, public_id: str) -> ApiKey:
    organization = _organization_for_member(request, slug)
    api_key = selectors.api_key_get_for_member(
        user=request_user(request), organization=organization, public_id=public_id
    )
    if api_key is None:
        raise Http404("No such API key.")
    return api_key


@login_required
def api_key_revoke(request: HttpRequest, slug: str, public_id: str) -> HttpResponse:
    """GET: confirm; POST: revoke."""
    api_key = _api_key_for_member(request, slug, public_id)
    if request.method == "POST":
        try:
            services.api_key_revoke(api_key=api_key, user=request_user(request))
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"The key “{api_key.name}” ({api_key.prefix}…) is revoked.")
        return redirect("accounts:api_keys", slug=slug)
    return render(request, "accounts/api_key_revoke.html", {"organization": api_key.organization, "api_key": api_key})


def _curl_example(*, api_key: ApiKey, raw_key: str, subscribed: list[tuple[int, str]]) -> str:
    """A ready-to-run call of one listing the key may use (its own, else one of ``subscribed``: the
    organization's ``(listing id, name)`` choices), with the publisher's sample input if any."""
    import json
    import shlex

    from catalog.models import Listing

    listing_ids = [listing.pk for listing in api_key.listings.all()] or [listing_id for listing_id, _name in subscribed]
    listing = (
        Listing.objects.select_related("current_version").filter(pk=listing_ids[0]).first() if listing_ids else None
    )
    base = settings.SITE_URL.rstrip("/")
    slug = listing.slug if listing is not None else "LISTING"
    body = infer_request_example(version=listing.current_version if listing is not None else None)
    return (
        f"curl -sS {shlex.quote(f'{base}/v2/models/{slug}/infer')} \\\n"
        f"  -H {shlex.quote(f'Authorization: Bearer {raw_key}')} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(json.dumps(body, separators=(',', ':')))}"
    )


def infer_request_example(*, version: Any) -> dict[str, Any]:
    """An Open Inference Protocol (KServe v2) JSON request for a version: its sample input when the
    publisher gave one, otherwise one row of zeros shaped by the signature."""
    import numpy as np

    signature = (getattr(version, "signature", None) or {}) if version is not None else {}
    sample = (getattr(version, "sample_input", None) or {}) if version is not None else {}
    inputs = []
    for tensor in signature.get("inputs") or []:
        name, datatype = tensor.get("name"), tensor.get("datatype", "FP32")
        if name in sample:
            array = np.asarray(sample[name])
            shape, data = list(array.shape), array.reshape(-1).tolist()
        else:
            shape = [1 if d is None or d < 0 else d for d in tensor.get("shape") or [1]]
            data = [0] * int(np.prod(shape))
        inputs.append({"name": name, "shape": shape, "datatype": datatype, "data": data})
    if not inputs:
        inputs = [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]
    return {"inputs": inputs}
