"""The listing page's playground: the form built from the signature with the sample prefilled, and browser-session
calls through the same metered /v2 path (subscription, rate limit, ledger) with a CSRF token."""

from __future__ import annotations

import html
import json

import pytest
from django.test import Client, override_settings

from inference.models import InferenceError, UsageRecord
from inference.services import usage_flush
from tests.inference.api_support import (
    add_version,
    buyer_create,
    caches_clear,
    metering_keys_clear,
    publish_model,
    redis_client,
)
from tests.inference.onnx_factories import onnx_classifier_bytes

SAMPLE = {"input": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}


@pytest.fixture(autouse=True)
def _isolated():
    metering_keys_clear()
    caches_clear()
    yield
    metering_keys_clear()


@pytest.fixture
def iris(db, s3):
    version = publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="iris")
    version.sample_input = SAMPLE
    version.save(update_fields=["sample_input"])
    return version


def _page(client, slug: str = "iris") -> str:
    response = client.get(f"/s/{slug}/")
    assert response.status_code == 200
    return response.content.decode()


def _session_client(user) -> Client:
    """A browser: signed in, CSRF enforced like a real one, with the token cookie from the listing page."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _csrf_token(client: Client, slug: str = "iris") -> str:
    _page(client, slug)
    return client.cookies["csrftoken"].value


def _session_infer(client: Client, token: str | None, *, path: str = "/v2/models/iris/versions/1.0.0/infer", rows=None):
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": rows or SAMPLE["input"]}]}
    headers = {"X-CSRFToken": token} if token else {}
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


def _playground_data(page: str) -> list[dict]:
    script = page.split('<script id="playground-data" type="application/json">', 1)[1]
    return json.loads(script.split("</script>", 1)[0])


def _ledger() -> tuple[int, int]:
    usage_flush()
    return UsageRecord.objects.count(), InferenceError.objects.count()


def test_the_form_is_built_from_the_signature_with_the_sample_prefilled(client, iris):
    buyer = buyer_create(listing=iris.listing)
    client.force_login(buyer.user)
    page = _page(client)
    assert 'id="playground"' in page
    assert '<textarea id="playground-input-0" name="input"' in page
    assert 'data-datatype="FP32"' in page and 'data-rank="2"' in page
    assert "FP32 · shape [N, 4]" in page
    assert html.escape(json.dumps(SAMPLE["input"])) in page  # the sample, as the textarea's text
    assert 'action="/v2/models/iris/versions/1.0.0/infer"' in page
    run = page[page.index('<button class="button" type="submit"') :].split(">", 1)[0]
    assert "disabled" not in run
    # The curl and Python snippets carry the same request, with the key from the environment.
    assert "curl -sS http://testserver/v2/models/iris/versions/1.0.0/infer" in page
    assert "$MARKETPLACE_API_KEY" in page and "import requests" in page
    data = _playground_data(page)
    assert data[0]["inputs"][0] == {
        "name": "input",
        "datatype": "FP32",
        "shape": [-1, 4],
        "value": json.dumps(SAMPLE["input"]),
        "note": "",
    }
    assert [o["name"] for o in data[0]["outputs"]] == ["label", "probabilities"]


def test_a_subscriber_picks_among_the_published_versions(client, iris, s3):
    newer = add_version(s3=s3, listing=iris.listing, onnx_bytes=onnx_classifier_bytes(), version="1.1.0")
    add_version(s3=s3, listing=iris.listing, onnx_bytes=onnx_classifier_bytes(), version="2.0.0", status="withdrawn")
    buyer = buyer_create(listing=iris.listing)
    client.force_login(buyer.user)
    page = _page(client)
    picker = page.split('<select id="playground-version"', 1)[1].split("</select>", 1)[0]
    assert '<option value="1.1.0">1.1.0</option>' in picker
    assert '<option value="1.0.0" selected>1.0.0 (stable)</option>' in picker  # the stable channel by default
    assert "2.0.0" not in picker
    data = _playground_data(page)
    by_version = {v["version"]: v for v in data}
    # 1.1.0 has no sample: zeros of the signature's shape, dynamic dimensions as 1.
    assert by_version["1.1.0"]["inputs"][0]["value"] == "[[0, 0, 0, 0]]"
    assert by_version["1.1.0"]["infer_path"] == f"/v2/models/iris/versions/{newer.version}/infer"


def test_anonymous_visitors_are_asked_to_sign_in_and_pay_no_query(client, iris, django_assert_num_queries):
    # listing (+organization, current version, plans) + tags + versions: the playground adds nothing.
    with django_assert_num_queries(3):
        page = _page(client)
    assert "Sign in to try it" in page
    assert "/accounts/login/?next=/s/iris/%23playground" in page
    assert html.escape(json.dumps(SAMPLE["input"])) in page  # the form is still shown, as a preview
    run = page[page.index('<button class="button" type="submit"') :].split(">", 1)[0]
    assert "disabled" in run


def test_an_unsubscribed_organization_is_pointed_to_the_plans(client, iris):
    buyer = buyer_create(listing=iris.listing, subscribe=False)
    client.force_login(buyer.user)
    page = _page(client)
    assert f"{buyer.organization.name} has no active subscription to this listing" in page
    assert '<a href="#plans">Subscribe to a plan</a>' in page


def test_a_session_call_is_metered_like_a_key_call(iris):
    buyer = buyer_create(listing=iris.listing, quota=10)
    browser = _session_client(buyer.user)
    response = _session_infer(browser, _csrf_token(browser))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["parameters"]["usage"]["units"] == 2
    assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]
    assert _ledger() == (1, 0)
    record = UsageRecord.objects.get()
    assert record.request_id == response["X-Request-Id"]
    assert (record.organization_id, record.subscription_id, record.api_key_id) == (
        buyer.organization.pk,
        buyer.subscription.pk,
        None,
    )
    assert record.units == 2


def test_a_session_call_without_the_csrf_token_is_refused(iris):
    buyer = buyer_create(listing=iris.listing)
    browser = _session_client(buyer.user)
    _csrf_token(browser)
    response = _session_infer(browser, None)
    assert response.status_code == 403
    assert response.json()["code"] == "csrf_failed"
    assert _ledger() == (0, 0)


def test_a_session_call_for_an_unsubscribed_organization_is_forbidden(iris):
    buyer = buyer_create(listing=iris.listing, subscribe=False)
    browser = _session_client(buyer.user)
    response = _session_infer(browser, _csrf_token(browser))
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "subscription_required"
    assert body["fields"]["subscribe_url"] == ["http://testserver/s/iris/"]
    assert _ledger() == (0, 1)
    assert InferenceError.objects.get().organization_id == buyer.organization.pk


def test_a_bad_input_is_a_400_naming_it_and_never_charged(iris):
    buyer = buyer_create(listing=iris.listing)
    browser = _session_client(buyer.user)
    body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    response = browser.post(
        "/v2/models/iris/infer",
        data=json.dumps(body),
        content_type="application/json",
        headers={"X-CSRFToken": _csrf_token(browser)},
    )
    assert response.status_code == 400
    error = response.json()
    assert error["error"].startswith("Input 'input':") and "input" in error["fields"]
    assert _ledger() == (0, 1)


@override_settings(INFERENCE_DEFAULT_RATE_PER_SECOND=1)
def test_session_calls_are_rate_limited_per_user(iris):
    buyer = buyer_create(listing=iris.listing)
    browser = _session_client(buyer.user)
    token = _csrf_token(browser)
    assert _session_infer(browser, token).status_code == 200
    limited = _session_infer(browser, token)
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited" and int(limited["Retry-After"]) >= 1
    assert redis_client().exists(f"inf:rate:session:{buyer.user.pk}")
    # The organization's API key has its own budget.
    keyed = Client().post(
        "/v2/models/iris/infer",
        data=json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        content_type="application/json",
        headers=buyer.headers,
    )
    assert keyed.status_code == 200
    assert _ledger() == (2, 1)


def test_a_bearer_key_wins_over_the_session(iris):
    buyer = buyer_create(listing=iris.listing)
    browser = _session_client(buyer.user)
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    # No CSRF token needed: a key call is not a browser-session call.
    response = browser.post(
        "/v2/models/iris/infer", data=json.dumps(body), content_type="application/json", headers=buyer.headers
    )
    assert response.status_code == 200
    assert _ledger() == (1, 0)
    assert UsageRecord.objects.get().api_key_id == buyer.api_key.pk


def test_anonymous_calls_still_need_a_key(iris):
    response = _session_infer(Client(), None)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
