"""Browser fixtures: headless Chromium (Debian's ``chromium`` package) driven by Playwright's sync API.

- ``browser`` (module): one Chromium for the tests of a module.
- ``new_page()`` (function): a page in a fresh browser context (its own cookies), based at the live
  server, so ``page.goto("/publish/")`` works; call it again for a second user.
- ``page`` (function): the first such page.
- ``screenshot`` (function): ``screenshot(page, name)`` saves a full-page PNG in test-artifacts/
  (gitignored), for people to look at.

When a test fails, every page it opened is saved as ``test-artifacts/<test>-failed-<n>.png``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Keep each phase's report on the item, so fixtures can tell in teardown whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    """``screenshot(page, "publish-01-signup")`` saves test-artifacts/publish-01-signup.png (full page)."""
    return _screenshot


def _console_error_keep(errors: list[str], message: Any) -> None:
    # Chromium asks for /favicon.ico on its own; that 404 is no error of the page.
    if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
        errors.append(f"{message.text} ({message.location.get('url')})")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    # Playwright's sync API runs an event loop in this thread, so Django would refuse the (still
    # synchronous) ORM calls of tests and fixtures without this; it lives exactly as long as the loop.
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()


@pytest.fixture
def new_page(browser: Any, live_server: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """Make pages, each in a fresh context (no cookies), with the live server as base URL."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    contexts: list[Any] = []
    pages: list[Any] = []

    def make() -> Any:
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: _console_error_keep(errors, m))
        page.js_errors = errors  # checked by tests that care; printed on failure
        pages.append(page)
        return page

    yield make

    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        slug = re.sub(r"[^\w.-]+", "_", request.node.name)
        for n, page in enumerate(pages, start=1):
            if not page.is_closed():
                try:
                    _screenshot(page, f"{slug}-failed-{n}")
                except Exception as exc:  # a crashed page must not hide the real failure
                    print(f"screenshot of page {n} failed: {exc}")
            if page.js_errors:
                print(f"page {n} ({page.url}) browser errors:", *page.js_errors, sep="\n  ")
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[[], Any]) -> Any:
    return new_page()
