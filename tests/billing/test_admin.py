"""The Django admin shows keys without any secret, and license acceptances read-only."""

from __future__ import annotations

import pytest

from accounts import services as account_services
from billing import services
from billing.models import LicenseAcceptance

pytestmark = pytest.mark.django_db


def test_admin_pages_render_without_secrets_and_acceptances_are_read_only(client, staff_user, plan, buyer_team):
    owner, _admin, _member, org = buyer_team
    api_key, raw_key = account_services.api_key_create(organization=org, user=owner, name="ci")
    subscription = services.subscription_create(organization=org, user=owner, plan=plan, accept_license=True)
    acceptance = LicenseAcceptance.objects.get()
    client.force_login(staff_user)

    for url in (
        "/admin/accounts/apikey/",
        f"/admin/accounts/apikey/{api_key.pk}/change/",
        "/admin/billing/plan/",
        f"/admin/billing/plan/{plan.pk}/change/",
        "/admin/billing/subscription/",
        f"/admin/billing/subscription/{subscription.pk}/change/",
        "/admin/billing/licenseacceptance/",
        f"/admin/billing/licenseacceptance/{acceptance.pk}/change/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert raw_key.split("_", 2)[2] not in body and api_key.secret_hash not in body, url

    assert client.get("/admin/accounts/apikey/add/").status_code == 403
    assert client.get("/admin/billing/licenseacceptance/add/").status_code == 403
    response = client.post(f"/admin/billing/licenseacceptance/{acceptance.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403 and LicenseAcceptance.objects.count() == 1
