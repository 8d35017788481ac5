"""A subscribed buyer tries a model in the listing page's playground in a real browser: the sample is prefilled, Run
goes through the metered /v2 path with the session, the outputs come back as tables with the usage and request id,
a bad input is named in the error, and the usage page then shows the call."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from inference.models import UsageRecord
from inference.services import usage_flush
from tests.inference.api_support import buyer_create, caches_clear, metering_keys_clear, publish_model
from tests.inference.onnx_factories import onnx_classifier_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _sign_in(page: Page, email: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("pass-Word-123")
    page.get_by_role("button", name="Log in").click()


def test_a_buyer_runs_the_playground_and_sees_the_call_in_usage(new_page, s3, screenshot):
    metering_keys_clear()
    caches_clear()
    version = publish_model(s3=s3, onnx_bytes=onnx_classifier_bytes(), slug="iris-play")
    version.sample_input = {"input": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
    version.save(update_fields=["sample_input"])
    buyer = buyer_create(listing=version.listing)

    page = new_page()
    page.goto("/s/iris-play/")
    playground = page.locator("#playground")
    expect(playground.get_by_role("link", name="Sign in to try it")).to_be_visible()
    expect(playground.get_by_role("button", name="Run")).to_be_disabled()

    _sign_in(page, buyer.user.email)
    page.goto("/s/iris-play/")
    field = playground.get_by_label("input")
    expect(field).to_have_value("[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]")
    playground.get_by_role("button", name="Run").click()
    result = page.locator("#playground-result")
    expect(result.locator("table caption", has_text="probabilities")).to_be_visible()
    expect(result.locator("table caption", has_text="label")).to_be_visible()
    expect(result.locator("dt", has_text="Units").locator("xpath=following-sibling::dd")).to_have_text("2")
    request_id = result.locator("dt", has_text="Request id").locator("xpath=following-sibling::dd").inner_text()
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    # The snippets now carry the request that ran.
    expect(page.locator("#playground-curl")).to_contain_text('"data":[[5.1,3.5,1.4,0.2],[6.7,3,5.2,2.3]]')
    screenshot(page, "playground-01-outputs")

    usage_flush()
    record = UsageRecord.objects.get()
    assert (record.request_id, record.organization_id, record.api_key_id, record.units) == (
        request_id,
        buyer.organization.pk,
        None,
        2,
    )

    # A wrong row length: the API's 400 names the input, and the field is marked invalid.
    field.fill("[[1, 2, 3]]")
    playground.get_by_role("button", name="Run").click()
    expect(result.get_by_role("alert")).to_contain_text("Input 'input':")
    expect(field).to_have_attribute("aria-invalid", "true")
    # Not JSON: caught before anything is sent.
    field.fill("[[1, 2,")
    playground.get_by_role("button", name="Run").click()
    expect(result.get_by_role("alert")).to_contain_text("Input 'input': not valid JSON")
    screenshot(page, "playground-02-error")

    usage_flush()  # the failed call waits in the error buffer like the usage does
    page.goto("/billing/usage/")
    expect(page.locator("#totals-title + dl")).to_contain_text("Calls1")
    expect(page.get_by_role("img")).to_have_attribute("aria-label", re.compile(r"1 successful and 1 failed"))
    screenshot(page, "usage-01-page")
    # The browser logs the 400 response itself; nothing else may have failed.
    assert [e for e in page.js_errors if "status of 400" not in e] == []
