"""REST API for plans and subscriptions. Each view: validate with its InputSerializer, one service or
selector call, render with an OutputSerializer. Management API keys are accepted for the subscriptions
of the key's organization (``Authorization: Bearer smk_…``)."""

from __future__ import annotations

from typing import Any, TypeVar

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiKeyAccessMixin, request_api_key
from accounts.models import Organization
from accounts.selectors import organization_get_for_member
from billing import checkout, pricing, selectors, services
from billing.models import (
    CheckoutSession,
    CheckoutStatus,
    LicenseAcceptance,
    Plan,
    PlanKind,
    Subscription,
    SubscriptionStatus,
)
from billing.templatetags.billing_tags import plan_price, plan_quota
from billing.views import _checkout_urls, client_ip
from catalog.publish_selectors import listing_get_for_manager
from catalog.selectors import listing_get_public
from marketplace.errors import ApplicationError, NotFound
from marketplace.typing import request_user

TAGS = ["billing"]


# --- output ------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="Plan")
class PlanOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=PlanKind.choices)
    monthly_quota_units = serializers.IntegerField(allow_null=True, help_text="Units per month; null: unlimited.")
    currency = serializers.CharField()
    monthly_price_cents = serializers.IntegerField()
    price_per_1000_units_cents = serializers.IntegerField()
    trial_days = serializers.IntegerField()
    version = serializers.IntegerField(help_text="A new price makes a new version of the plan.")
    is_active = serializers.BooleanField()
    price = serializers.SerializerMethodField(help_text='For people, e.g. "Free".')
    quota = serializers.SerializerMethodField(help_text='For people, e.g. "10,000 units / month".')
    summary = serializers.SerializerMethodField(
        help_text='For people, e.g. "$49 / month · 100,000 units included · then $0.50 per 1,000".'
    )

    def get_price(self, plan: Plan) -> str:
        return plan_price(plan)

    def get_summary(self, plan: Plan) -> str:
        return pricing.plan_price_summary(plan)

    def get_quota(self, plan: Plan) -> str:
        return plan_quota(plan)


@extend_schema_serializer(component_name="LicenseTerms")
class LicenseTermsOutput(serializers.Serializer):
    license = serializers.CharField()
    version = serializers.CharField()
    sha256 = serializers.CharField(help_text="Send it back as terms_sha256 to accept exactly these terms.")
    text = serializers.CharField()


@extend_schema_serializer(component_name="LicenseAcceptance")
class LicenseAcceptanceOutput(serializers.Serializer):
    license = serializers.CharField()
    terms_version = serializers.CharField()
    terms_sha256 = serializers.CharField()
    accepted_by = serializers.SerializerMethodField()
    ip_address = serializers.IPAddressField(allow_null=True)
    accepted_at = serializers.DateTimeField()

    def get_accepted_by(self, acceptance: LicenseAcceptance) -> str | None:
        return acceptance.user.email if acceptance.user is not None else None


@extend_schema_serializer(component_name="Subscription")
class SubscriptionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    organization = serializers.CharField(source="organization.slug")
    listing = serializers.CharField(source="listing.slug")
    plan = PlanOutput()
    status = serializers.ChoiceField(choices=SubscriptionStatus.choices)
    pinned_version = serializers.CharField(source="pinned_version.version", allow_null=True, default=None)
    current_period_start = serializers.DateTimeField()
    current_period_end = serializers.DateTimeField()
    cancel_at_period_end = serializers.BooleanField()
    canceled_at = serializers.DateTimeField(allow_null=True)
    scheduled_plan = PlanOutput(allow_null=True, help_text="The plan the next period starts on (a downgrade).")
    trial_end = serializers.DateTimeField(allow_null=True)
    past_due_since = serializers.DateTimeField(allow_null=True)
    entitled = serializers.SerializerMethodField(help_text="Whether the organization may call the listing now.")
    terms_outdated = serializers.SerializerMethodField(
        help_text="The listing's license terms changed: accept them before the next period (accept-terms)."
    )
    created_at = serializers.DateTimeField()
    license_acceptances = LicenseAcceptanceOutput(many=True)

    def get_entitled(self, subscription: Subscription) -> bool:
        return selectors.subscription_is_entitled(subscription=subscription)

    def get_terms_outdated(self, subscription: Subscription) -> bool:
        if subscription.status == SubscriptionStatus.CANCELED:
            return False
        return services.subscription_terms_outdated(subscription=subscription)


def _organization_for_request(request: Request, slug: str | None) -> Organization:
    """The organization a call acts for: a key's own; else ``organization=<slug>`` (a member's); else the
    one chosen in the switcher."""
    api_key = request_api_key(request)
    if api_key is not None:
        if slug and slug != api_key.organization.slug:
            raise NotFound("No such organization.")
        return api_key.organization
    if slug:
        organization = organization_get_for_member(user=request_user(request), slug=slug)
        if organization is None:
            raise NotFound("No such organization.")
        return organization
    organization = getattr(request, "organization", None)
    if organization is None:
        raise ApplicationError(
            "Say which organization: pass organization=<slug>.",
            code="invalid",
            fields={"organization": ["Required: you have no current organization."]},
        )
    return organization


_Owned = TypeVar("_Owned", Subscription, CheckoutSession)


def _of_key_organization(request: Request, obj: _Owned | None, *, missing: str) -> _Owned:
    """``obj`` (found for the signed-in member) unless it is missing or, for a key, another organization's."""
    api_key = request_api_key(request)
    if obj is None or (api_key is not None and obj.organization_id != api_key.organization_id):
        raise NotFound(missing)
    return obj


def _subscription_for_request(request: Request, subscription_id: int) -> Subscription:
    """A subscription of one of the user's organizations (of the key's, for a key); 404 otherwise."""
    subscription = selectors.subscription_get_for_member(user=request_user(request), subscription_id=subscription_id)
    return _of_key_organization(request, subscription, missing="No such subscription.")


def _plan_for_manager(request: Request, plan_id: int) -> Plan:
    """The plan, 404 unless it exists and the user manages its listing."""
    plan = selectors.plan_get(plan_id=plan_id)
    if plan is None:
        raise NotFound("No such plan.")
    listing_get_for_manager(user=request_user(request), slug=plan.listing.slug)
    return plan


# --- plans -------------------------------------------------------------------------------------


class ListingPlanListApi(APIView):
    pagination_class = None

    def get_permissions(self) -> list[Any]:
        return [AllowAny()] if self.request.method == "GET" else [IsAuthenticated()]

    @extend_schema_serializer(component_name="PlanCreateInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=80)
        kind = serializers.ChoiceField(choices=PlanKind.choices, default=PlanKind.FREE)
        monthly_quota_units = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            min_value=1,
            help_text="Free: the monthly cap; flat: units included; null: unlimited. Metered: null.",
        )
        monthly_price_cents = serializers.IntegerField(required=False, default=0, min_value=0)
        price_per_1000_units_cents = serializers.IntegerField(
            required=False, default=0, min_value=0, help_text="Flat: beyond the included units; metered: every unit."
        )
        currency = serializers.ChoiceField(choices=list(pricing.PLAN_CURRENCIES), default="usd")
        trial_days = serializers.IntegerField(required=False, default=0, min_value=0)

    @extend_schema_serializer(component_name="ListingPlans")
    class OutputSerializer(serializers.Serializer):
        listing = serializers.CharField()
        license = LicenseTermsOutput()
        plans = PlanOutput(many=True)

    @extend_schema(
        tags=TAGS,
        summary="A listing's active plans and the license terms subscribers accept",
        responses={200: OutputSerializer},
    )
    def get(self, request: Request, slug: str) -> Response:
        listing = listing_get_public(slug=slug, user=request.user)
        data = {
            "listing": listing.slug,
            "license": selectors.license_terms_for_listing(listing=listing),
            "plans": list(selectors.plan_list_active(listing=listing)),
        }
        return Response(self.OutputSerializer(data).data)

    @extend_schema(
        tags=TAGS,
        summary="Offer a plan on my listing (owners and admins of the publisher)",
        description="Free (a monthly quota), flat (a monthly price in minor units with included units and an "
        "overage price per 1,000) or metered (a price per 1,000 units); currency; optional trial days.",
        request=InputSerializer,
        responses={201: PlanOutput},
    )
    def post(self, request: Request, slug: str) -> Response:
        listing = listing_get_for_manager(user=request_user(request), slug=slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        plan = services.plan_create(listing=listing, user=request_user(request), **serializer.validated_data)
        return Response(PlanOutput(plan).data, status=status.HTTP_201_CREATED)


class PlanDeactivateApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        summary="Stop offering a plan (subscribers keep it)",
        request=None,
        responses={200: PlanOutput},
    )
    def post(self, request: Request, plan_id: int) -> Response:
        plan = _plan_for_manager(request, plan_id)
        plan = services.plan_deactivate(plan=plan, user=request_user(request))
        return Response(PlanOutput(plan).data)


# --- subscriptions -----------------------------------------------------------------------------

ORGANIZATION_PARAM = OpenApiParameter(
    "organization", str, description="Organization slug; default: the key's, or the one chosen in the switcher."
)


class SubscriptionListCreateApi(ApiKeyAccessMixin, APIView):
    api_key_access = "key"
    permission_classes = [IsAuthenticated]
    pagination_class = LimitOffsetPagination

    @extend_schema_serializer(component_name="SubscriptionCreateInput")
    class InputSerializer(serializers.Serializer):
        listing = serializers.SlugField()
        plan = serializers.IntegerField(min_value=1)
        accept_license = serializers.BooleanField(help_text="Must be true: you accept the listing's license terms.")
        terms_sha256 = serializers.CharField(
            required=False, allow_blank=True, max_length=64, help_text="The sha256 of the terms you read (optional)."
        )
        pinned_version = serializers.CharField(
            required=False, allow_null=True, allow_blank=True, max_length=40, help_text="Empty: the stable channel."
        )
        organization = serializers.SlugField(required=False)

    @extend_schema(
        tags=TAGS,
        summary="My organization's subscriptions",
        parameters=[ORGANIZATION_PARAM],
        responses={200: SubscriptionOutput(many=True)},
    )
    def get(self, request: Request) -> Response:
        organization = _organization_for_request(request, request.query_params.get("organization"))
        subscriptions = selectors.subscription_list_for_organization(organization=organization).select_related(
            "organization"
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(subscriptions, request, view=self)
        return paginator.get_paginated_response(SubscriptionOutput(page, many=True).data)

    @extend_schema(
        tags=TAGS,
        summary="Subscribe my organization to a plan, accepting the listing's license (owners and admins)",
        description="Records the exact license terms accepted (text, sha256, version), who, when and from where. "
        "409 already_subscribed when the organization already has a live subscription to the listing.",
        request=InputSerializer,
        responses={201: SubscriptionOutput},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        organization = _organization_for_request(request, data.get("organization"))
        listing = listing_get_public(slug=data["listing"], user=request.user)
        plan = selectors.plan_get(plan_id=data["plan"])
        if plan is None or plan.listing_id != listing.pk:
            raise ApplicationError(
                "No such plan on this listing.", code="invalid", fields={"plan": ["Choose one of the listing's plans."]}
            )
        subscription = services.subscription_create(
            organization=organization,
            user=request_user(request),
            plan=plan,
            accept_license=data["accept_license"],
            ip_address=client_ip(request._request),
            pinned_version=data.get("pinned_version") or None,
            terms_sha256=data.get("terms_sha256") or None,
        )
        return Response(SubscriptionOutput(subscription).data, status=status.HTTP_201_CREATED)


class SubscriptionCancelApi(ApiKeyAccessMixin, APIView):
    api_key_access = "key"
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        summary="Cancel a subscription (owners and admins): paid plans at the period's end, free plans at once",
        request=None,
        responses={200: SubscriptionOutput},
    )
    def post(self, request: Request, subscription_id: int) -> Response:
        subscription = _subscription_for_request(request, subscription_id)
        subscription = services.subscription_cancel(subscription=subscription, user=request_user(request))
        return Response(SubscriptionOutput(subscription).data)


class PlanPriceChangeApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema_serializer(component_name="PlanPriceChangeInput")
    class InputSerializer(serializers.Serializer):
        monthly_price_cents = serializers.IntegerField(required=False, min_value=0)
        price_per_1000_units_cents = serializers.IntegerField(required=False, min_value=0)
        trial_days = serializers.IntegerField(required=False, min_value=0)

    @extend_schema(
        tags=TAGS,
        summary="Change a plan's price: a new version (owners and admins of the publisher)",
        description="The new version takes new subscribers; current subscribers move to it when their period ends.",
        request=InputSerializer,
        responses={201: PlanOutput},
    )
    def post(self, request: Request, plan_id: int) -> Response:
        plan = _plan_for_manager(request, plan_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        new = services.plan_price_change(plan=plan, user=request_user(request), **serializer.validated_data)
        return Response(PlanOutput(new).data, status=status.HTTP_201_CREATED)


# --- checkout and lifecycle ----------------------------------------------------------------------


@extend_schema_serializer(component_name="Checkout")
class CheckoutOutput(serializers.Serializer):
    id = serializers.IntegerField()
    session_id = serializers.CharField()
    backend = serializers.CharField(help_text="free, local or stripe")
    status = serializers.ChoiceField(choices=CheckoutStatus.choices)
    url = serializers.SerializerMethodField(help_text="Send the buyer here (complete: where to go next).")
    plan = serializers.IntegerField(source="plan_id")
    subscription = serializers.IntegerField(source="subscription_id", allow_null=True)

    def get_url(self, session: CheckoutSession) -> str:
        request = self.context.get("request")
        if request is not None and session.url.startswith("/"):
            return request.build_absolute_uri(session.url)
        return session.url


class CheckoutApi(ApiKeyAccessMixin, APIView):
    api_key_access = "key"
    permission_classes = [IsAuthenticated]

    @extend_schema_serializer(component_name="CheckoutInput")
    class InputSerializer(serializers.Serializer):
        plan = serializers.IntegerField(min_value=1)
        accept_license = serializers.BooleanField(help_text="Must be true: you accept the listing's license terms.")
        terms_sha256 = serializers.CharField(required=False, allow_blank=True, max_length=64)
        pinned_version = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=40)
        organization = serializers.SlugField(required=False)
        success_url = serializers.URLField(
            required=False, max_length=500, help_text="May contain {CHECKOUT_SESSION_ID}; default: our success page."
        )
        cancel_url = serializers.URLField(required=False, max_length=500)

    @extend_schema(
        tags=TAGS,
        summary="Start subscribing to a plan (owners and admins): returns the checkout url",
        description="Free plans subscribe at once (status complete). Paid plans return an open checkout: send "
        "the buyer to its url; the subscription starts when the payment is confirmed (with Stripe, by its "
        "webhook). 409 already_subscribed when the organization has a paid subscription to the listing.",
        request=InputSerializer,
        responses={201: CheckoutOutput},
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        organization = _organization_for_request(request, data.get("organization"))
        plan = selectors.plan_get(plan_id=data["plan"])
        if plan is None or not plan.listing.is_public:
            raise ApplicationError("No such plan.", code="invalid", fields={"plan": ["Choose a plan of a listing."]})
        default_success, default_cancel = _checkout_urls(request._request)
        session = checkout.checkout_start(
            organization=organization,
            user=request_user(request),
            plan=plan,
            accept_license=data["accept_license"],
            ip_address=client_ip(request._request),
            success_url=data.get("success_url") or default_success,
            cancel_url=data.get("cancel_url") or default_cancel,
            terms_sha256=data.get("terms_sha256") or None,
            pinned_version=data.get("pinned_version") or None,
        )
        return Response(CheckoutOutput(session, context={"request": request}).data, status=status.HTTP_201_CREATED)


class CheckoutDetailApi(ApiKeyAccessMixin, APIView):
    api_key_access = "key"
    permission_classes = [IsAuthenticated]

    @extend_schema(tags=TAGS, summary="A checkout's status (poll it after paying)", responses={200: CheckoutOutput})
    def get(self, request: Request, session_id: str) -> Response:
        session = _of_key_organization(
            request,
            checkout.checkout_get_for_member(user=request_user(request), session_id=session_id),
            missing="No such checkout.",
        )
        return Response(CheckoutOutput(session, context={"request": request}).data)


class _SubscriptionActionApi(ApiKeyAccessMixin, APIView):
    api_key_access = "key"
    permission_classes = [IsAuthenticated]

    def subscription(self, request: Request, subscription_id: int) -> Subscription:
        return _subscription_for_request(request, subscription_id)

    def answer(self, subscription: Subscription) -> Response:
        fresh = selectors.subscription_list_for_organization(organization=subscription.organization).get(
            pk=subscription.pk
        )
        return Response(SubscriptionOutput(fresh).data)


class SubscriptionChangePlanApi(_SubscriptionActionApi):
    @extend_schema_serializer(component_name="SubscriptionChangePlanInput")
    class InputSerializer(serializers.Serializer):
        plan = serializers.IntegerField(min_value=1)

    @extend_schema(
        tags=TAGS,
        summary="Change a subscription's plan (owners and admins)",
        description="An upgrade applies at once, prorated; a downgrade at the period's end (scheduled_plan). "
        "The current plan again drops a scheduled change. From a free plan to a paid one: 409 "
        "checkout_required (POST /api/v1/checkout).",
        request=InputSerializer,
        responses={200: SubscriptionOutput},
    )
    def post(self, request: Request, subscription_id: int) -> Response:
        subscription = self.subscription(request, subscription_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        plan = selectors.plan_get(plan_id=serializer.validated_data["plan"])
        if plan is None or plan.listing_id != subscription.listing_id:
            raise ApplicationError(
                "No such plan on this listing.", code="invalid", fields={"plan": ["Choose one of the listing's plans."]}
            )
        services.subscription_plan_change(subscription=subscription, user=request_user(request), plan=plan)
        return self.answer(subscription)


class SubscriptionResumeApi(_SubscriptionActionApi):
    @extend_schema(
        tags=TAGS, summary="Undo a cancel at the period's end", request=None, responses={200: SubscriptionOutput}
    )
    def post(self, request: Request, subscription_id: int) -> Response:
        subscription = self.subscription(request, subscription_id)
        services.subscription_resume(subscription=subscription, user=request_user(request))
        return self.answer(subscription)


class SubscriptionAcceptTermsApi(_SubscriptionActionApi):
    @extend_schema_serializer(component_name="SubscriptionAcceptTermsInput")
    class InputSerializer(serializers.Serializer):
        accept_license = serializers.BooleanField()
        terms_sha256 = serializers.CharField(required=False, allow_blank=True, max_length=64)

    @extend_schema(
        tags=TAGS,
        summary="Accept the listing's new license terms for a subscription (owners and admins)",
        description="Recorded like the first acceptance (text hash, version, user, organization, time, IP). A "
        "renewal waiting for the new terms goes ahead.",
        request=InputSerializer,
        responses={200: SubscriptionOutput},
    )
    def post(self, request: Request, subscription_id: int) -> Response:
        subscription = self.subscription(request, subscription_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.subscription_terms_accept(
            subscription=subscription,
            user=request_user(request),
            accept_license=serializer.validated_data["accept_license"],
            terms_sha256=serializer.validated_data.get("terms_sha256") or None,
            ip_address=client_ip(request._request),
        )
        return self.answer(subscription)
