"""The publisher's whole journey in a real browser, through the UI only.

Sign up, create a listing, upload an ONNX file straight to SeaweedFS with the progress bar, watch the
worker's validation arrive on the version page, submit for review; a moderator approves it in another
browser context and the listing shows up in the catalog. And a pickle renamed model.onnx ends Invalid
with the reason on the page. Live server, real Celery worker, real SeaweedFS, headless Chromium.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import Page, Route, expect

from marketplace.celery import app as celery_app
from tests.inference.onnx_factories import onnx_classifier_bytes, pickle_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "Sunflower-Lattice-42"
COMPLETE_URL = re.compile(r"/api/v1/versions/\d+/complete$")
VERSION_PAGE = re.compile(r"/publish/versions/(\d+)/$")


# The worker runs in a thread of this process, so a task can wait on an Event the test sets.
_occupied = threading.Event()
_vacate = threading.Event()


@celery_app.task(name="tests.e2e.worker_occupy")
def worker_occupy() -> None:
    _occupied.set()
    _vacate.wait(timeout=60)


@contextmanager
def worker_occupied() -> Iterator[None]:
    """Keep the real (solo, prefetch 1) worker busy until the block ends, so new tasks wait in Redis.

    Validating a small model takes well under a second, often less than the browser needs to open
    the version page; this makes sure the test sees that page in its live state first.
    """
    _occupied.clear()
    _vacate.clear()
    worker_occupy.delay()
    try:
        assert _occupied.wait(timeout=10), "the worker did not start the task that keeps it busy"
        yield
    finally:
        _vacate.set()


def _sign_up(page: Page, screenshot: Any, *, email: str) -> None:
    # Publish while logged out: the login page, then its link to sign up, keeping ?next=/publish/.
    page.goto("/publish/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/publish/$"))
    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Your name").fill("Ada Publisher")
    page.get_by_label("Password").fill(PASSWORD)
    screenshot(page, "publish-01-signup")
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/publish/$"))
    expect(page.get_by_role("status")).to_contain_text("Welcome, Ada Publisher")


def _listing_create(page: Page, screenshot: Any, *, name: str) -> None:
    page.get_by_role("link", name="New listing").click()
    expect(page.get_by_role("heading", name="New listing")).to_be_visible()
    page.get_by_label("Name:", exact=True).fill(name)
    page.get_by_label("Summary").fill("Tells iris species apart from four flower measurements.")
    page.get_by_label("Domain").select_option("science")
    page.get_by_label("Task").select_option("classification")
    page.get_by_label("Tags").fill("botany, tabular")
    page.get_by_label("License:", exact=True).select_option("mit")
    page.get_by_label("Model card").fill(
        "## Intended use\n\nTeaching and demos.\n\n## Training data\n\nFisher's iris data set, 150 flowers.\n"
    )
    screenshot(page, "publish-02-listing-form")
    page.get_by_role("button", name="Create listing").click()
    expect(page).to_have_url(re.compile(r"/publish/listings/[\w-]+/versions/new/$"))
    expect(page.get_by_role("status")).to_contain_text(f"“{name}” is created")


def _upload(page: Page, path: Any, *, version: str) -> None:
    # The upload form; the page's other form imports from the Hugging Face Hub and has the same labels.
    form = page.locator("form[data-version-upload]")
    expect(form.get_by_label("Version")).to_have_value(version)  # suggested for a first version
    form.get_by_label("Changelog").fill("First release.")
    form.get_by_label("ONNX file").set_input_files(str(path))
    form.get_by_role("button", name="Upload and validate").click()


def test_publish_flow_from_signup_to_catalog(
    new_page, screenshot, live_server, s3, celery_worker, staff_user, tmp_path
) -> None:
    page = new_page()
    name = "Iris species classifier"
    _sign_up(page, screenshot, email="ada@example.com")
    _listing_create(page, screenshot, name=name)

    # Hold the "complete" call so the finished progress bar can be seen before the page moves on.
    held: list[Route] = []
    released = False

    def complete_hold(route: Route) -> None:
        if released:
            route.continue_()
        else:
            held.append(route)

    page.route(COMPLETE_URL, complete_hold)
    model = tmp_path / "iris.onnx"
    model.write_bytes(onnx_classifier_bytes())
    with worker_occupied():
        _upload(page, model, version="1.0.0")
        progress = page.get_by_role("progressbar", name="Upload progress")
        expect(progress).to_be_visible()
        expect(progress).to_have_attribute("aria-valuenow", "100")
        expect(page.locator("[data-progress-bar]")).to_have_attribute("style", re.compile(r"width: 100(\.0)?%"))
        expect(page.locator("[data-upload-status]")).to_have_text("Upload finished; starting validation…")
        expect(page.get_by_role("button", name="Upload and validate")).to_be_disabled()
        screenshot(page, "publish-03-upload-progress")
        assert len(held) == 1, "the upload page did not call complete exactly once"
        released = True
        held.pop().continue_()

        # The version page, live: validation is queued, nothing has run yet.
        expect(page).to_have_url(VERSION_PAGE)
        status_badge = page.locator("[data-status-badge]")
        expect(status_badge).to_have_text("Validating")
        expect(page.locator("[data-live-note]")).to_be_visible()
        expect(page.locator("[data-steps] li")).to_have_count(0)
        screenshot(page, "publish-04-validating")
        version_id = VERSION_PAGE.search(page.url).group(1)

    # The worker takes the task; the page polls and redraws by itself until the verdict is in.
    steps = page.locator("[data-steps] li")
    expect(status_badge).to_have_text("Ready for review", timeout=30_000)
    expect(steps).to_have_count(10)
    for n in range(10):
        expect(steps.nth(n).locator(".badge")).to_have_text("✓ passed")
    expect(steps.filter(has_text="Loads in ONNX Runtime")).to_have_count(1)
    expect(page.get_by_role("status").filter(has_text="All checks passed")).to_be_visible()
    signature = page.get_by_role("region", name="Signature")
    expect(signature.get_by_role("table").filter(has_text="Inputs").locator("code").first).to_have_text("input")
    expect(signature.get_by_role("table").filter(has_text="Outputs")).to_contain_text("probabilities")
    expect(page.get_by_role("region", name="Measured by the platform")).to_contain_text("Latency p50, batch 1")
    assert page.js_errors == []
    screenshot(page, "publish-05-ready")

    page.get_by_role("button", name="Submit for review").click()
    expect(page.get_by_role("status").filter(has_text="Version 1.0.0 is submitted for review.")).to_be_visible()
    expect(page.locator(".publish-head .badge")).to_have_text("In review")
    screenshot(page, "publish-06-in-review")

    # Not in the catalog before a moderator approves it.
    page.goto("/search/?q=iris")
    expect(page.get_by_role("heading", name="0 specialists")).to_be_visible()

    # A moderator, in a browser context of their own, logs in through the form and approves.
    admin = new_page()
    admin.goto("/moderation/")
    expect(admin).to_have_url(re.compile(r"/accounts/login/\?next=/moderation/$"))
    admin.get_by_label("Email").fill(staff_user.email)
    admin.get_by_label("Password").fill("pass-Word-123")
    admin.get_by_role("button", name="Log in").click()
    expect(admin).to_have_url(re.compile(r"/moderation/$"))
    card = admin.locator(f"#version-{version_id}")
    expect(card.get_by_role("heading", name=f"{name} 1.0.0")).to_be_visible()
    expect(card).to_contain_text("Loads in ONNX Runtime")
    # The decision form stays inside its card (a long SHA-256 in the report once pushed it out).
    card_box, note_box = card.bounding_box(), card.get_by_label("Note (optional").bounding_box()
    assert note_box["x"] + note_box["width"] <= card_box["x"] + card_box["width"]
    # Reject is styled as the dangerous action, not like Approve (the CSS cascade once made both blue).
    expect(card.get_by_role("button", name="Reject")).to_have_css("background-color", "rgb(201, 42, 42)")
    screenshot(admin, "publish-07-moderation-queue")
    card.get_by_role("button", name="Approve and publish").click()
    expect(admin.get_by_role("status")).to_contain_text("1.0.0")
    expect(admin.locator(f"#version-{version_id}")).to_have_count(0)

    # Published: the publisher sees it in the catalog, found by search, with its public page.
    page.goto("/")
    page.get_by_role("main").get_by_label("Search specialists").fill("iris")
    page.get_by_role("main").get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="1 specialist", exact=True)).to_be_visible()
    page.get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    expect(page.get_by_role("region", name="Model card")).to_contain_text("Fisher's iris data set")
    expect(page.get_by_role("region", name="Signature")).to_contain_text("probabilities")
    expect(page.get_by_role("region", name="Versions")).to_contain_text("Published")
    screenshot(page, "publish-08-catalog-listing")


def test_hostile_upload_ends_invalid_with_the_reason(
    new_page, screenshot, live_server, s3, celery_worker, publisher, tmp_path
) -> None:
    user, _ = publisher
    page = new_page()
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill("pass-Word-123")
    page.get_by_role("button", name="Log in").click()
    page.goto("/publish/")
    _listing_create(page, lambda *_: None, name="Totally safe model")

    evil = tmp_path / "model.onnx"
    evil.write_bytes(pickle_bytes())
    _upload(page, evil, version="1.0.0")
    expect(page).to_have_url(VERSION_PAGE)
    expect(page.locator("[data-status-badge], .publish-head .badge").first).to_have_text("Invalid", timeout=30_000)
    alert = page.get_by_role("alert").filter(has_text="This file failed validation.")
    expect(alert).to_contain_text("The file is a Python pickle, not an ONNX model.")
    expect(page.locator("[data-steps] li .badge-bad")).to_have_count(1)
    expect(page.get_by_role("button", name="Submit for review")).to_have_count(0)
    expect(page.get_by_role("region", name="Signature")).to_have_count(0)
    screenshot(page, "publish-09-invalid")
