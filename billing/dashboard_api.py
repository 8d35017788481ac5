"""Spend caps under /api/v1/organizations/{slug}/spend-caps: members read them with this month's spend,
owners and admins set or remove them. Management API keys of the organization are accepted."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiKeyAccessMixin
from accounts.models import ApiKey, Organization
from accounts.selectors import organization_get_for_member
from billing import spend_caps
from marketplace.errors import ApplicationError, NotFound
from marketplace.typing import request_user

TAGS = ["billing"]


@extend_schema_serializer(component_name="SpendCap")
class SpendCapOutput(serializers.Serializer):
    api_key = serializers.SerializerMethodField(help_text="The key's public id; null: the whole organization.")
    api_key_name = serializers.SerializerMethodField()
    monthly_limit_cents = serializers.IntegerField(allow_null=True, help_text="Null: no cap.")
    currency = serializers.SerializerMethodField()
    spent = serializers.DecimalField(max_digits=20, decimal_places=6, help_text="This month's spend (UTC month).")
    percent = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(source="level", help_text="ok, warn (past the notice threshold) or reached.")
    resets_on = serializers.DateField()

    def get_api_key(self, cap: spend_caps.CapStatus) -> str | None:
        return cap.api_key.public_id if cap.api_key is not None else None

    def get_api_key_name(self, cap: spend_caps.CapStatus) -> str | None:
        return cap.api_key.name if cap.api_key is not None else None

    def get_currency(self, cap: spend_caps.CapStatus) -> str:
        return spend_caps.SPEND_CAP_CURRENCY


def _organization(request: Request, slug: str) -> Organization:
    organization = organization_get_for_member(user=request_user(request), slug=slug)
    if organization is None:
        raise NotFound("No such organization.")
    return organization


def _statuses(organization: Organization) -> Any:
    return SpendCapOutput(spend_caps.spend_cap_statuses(organization=organization), many=True).data


class SpendCapsApi(ApiKeyAccessMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema_serializer(component_name="SpendCapInput")
    class InputSerializer(serializers.Serializer):
        api_key = serializers.CharField(
            required=False, allow_null=True, default=None, help_text="A key's public id; omit for the organization."
        )
        monthly_limit_cents = serializers.IntegerField(
            allow_null=True, help_text="The cap in cents; null removes the cap."
        )

    @extend_schema(
        tags=TAGS,
        summary="Spend caps and this month's spend (members)",
        description="The organization's cap first (monthly_limit_cents null when there is none), then each "
        "capped API key. Spend resets on the first of each month (UTC).",
        responses={200: SpendCapOutput(many=True)},
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(_statuses(_organization(request, slug)))

    @extend_schema(
        tags=TAGS,
        summary="Set, change or remove a spend cap (owners and admins)",
        description="At the notice threshold (SPEND_CAP_NOTICE_PERCENT, 80%) owners and admins get one email a "
        "month; at 100% /v2 calls answer 402 spend_cap_reached until the cap is raised or the month ends.",
        request=InputSerializer,
        responses={200: SpendCapOutput(many=True)},
    )
    def put(self, request: Request, slug: str) -> Response:
        organization = _organization(request, slug)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        api_key = None
        if data["api_key"]:
            api_key = ApiKey.objects.filter(organization=organization, public_id=data["api_key"]).first()
            if api_key is None:
                raise ApplicationError(
                    "No such API key in this organization.", code="invalid", fields={"api_key": ["Unknown key."]}
                )
        user = request_user(request)
        if data["monthly_limit_cents"] is None:
            spend_caps.spend_cap_remove(organization=organization, user=user, api_key=api_key)
        else:
            spend_caps.spend_cap_set(
                organization=organization, user=user, monthly_limit_cents=data["monthly_limit_cents"], api_key=api_key
            )
        return Response(_statuses(organization))
