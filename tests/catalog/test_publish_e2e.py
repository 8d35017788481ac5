"""The upload page in a real browser: SHA-256 in JS, upload straight to SeaweedFS, live validation page.

Headless Chromium (Debian's `chromium`) through Playwright, against Django's live server, the test
SeaweedFS and a real Celery worker.
"""

from __future__ import annotations

import shutil

import pytest
from django.conf import settings as django_settings

from catalog import services
from catalog.models import Version, VersionStatus
from tests.inference.onnx_factories import onnx_classifier_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _static_from_finders(route) -> None:
    """Serve /static/ from the source tree (as runserver does); the live server only knows STATIC_ROOT."""
    from urllib.parse import urlparse

    from django.contrib.staticfiles import finders

    found = finders.find(urlparse(route.request.url).path.split("/static/", 1)[1])
    if found:
        route.fulfill(path=found)
    else:
        route.fulfill(status=404)


@pytest.fixture
def browser_page(live_server, publisher, client, monkeypatch):
    # Playwright's sync API keeps an event loop running in this thread; the ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    user, _ = publisher
    client.force_login(user)
    session_cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context()
        context.add_cookies(
            [{"name": django_settings.SESSION_COOKIE_NAME, "value": session_cookie, "url": live_server.url}]
        )
        page = context.new_page()
        page.route("**/static/**", _static_from_finders)
        page.on("console", lambda message: print("browser console:", message.type, message.text))
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _listing(publisher):
    user, org = publisher
    return services.listing_create(
        organization=org,
        user=user,
        name="Iris",
        summary="Iris species.",
        domain="science",
        task="classification",
        tags=[],
        license="mit",
    )


def _upload_in_browser(page, live_server, listing, path, number: str) -> Version:
    page.goto(f"{live_server.url}/publish/listings/{listing.slug}/versions/new/")
    page.fill("#id_version", number)
    page.fill("#id_sample_input", '{"input": [[5.1, 3.5, 1.4, 0.2]]}')
    page.set_input_files("#id_artifact", str(path))
    page.click("form[data-version-upload] button[type=submit]")
    page.wait_for_function(
        """() => {
            const error = document.querySelector("[data-upload-error]");
            return location.pathname.startsWith("/publish/versions/") || (error !== null && !error.hidden);
        }"""
    )
    assert "/publish/versions/" in page.url, page.inner_text("[data-upload-error]")
    version = Version.objects.get(listing=listing, version=number)
    # The page polls the API and reloads once the worker is done.
    page.wait_for_selector("text=Submit for review")
    version.refresh_from_db()
    return version


def test_browser_upload_with_presigned_post(browser_page, live_server, publisher, s3, celery_worker, tmp_path):
    listing = _listing(publisher)
    path = tmp_path / "iris.onnx"
    path.write_bytes(onnx_classifier_bytes())

    version = _upload_in_browser(browser_page, live_server, listing, path, "1.0.0")
    assert version.status == VersionStatus.READY and version.upload_mode == "post"
    assert "Signature" in browser_page.content() and "<code>input</code>" in browser_page.content()

    browser_page.click("text=Submit for review")
    browser_page.wait_for_selector("text=submitted for review")
    version.refresh_from_db()
    assert version.status == VersionStatus.IN_REVIEW


def test_browser_upload_in_parts_reads_etags(
    browser_page, live_server, publisher, s3, celery_worker, tmp_path, settings
):
    settings.UPLOAD_MULTIPART_THRESHOLD = 256
    settings.UPLOAD_PART_SIZE = 5 * 1024 * 1024
    listing = _listing(publisher)
    data = onnx_classifier_bytes()
    path = tmp_path / "iris.onnx"
    path.write_bytes(data)

    version = _upload_in_browser(browser_page, live_server, listing, path, "1.0.0")
    assert version.upload_mode == "multipart" and version.status == VersionStatus.READY
