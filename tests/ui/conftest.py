"""A real browser for the /ui tests: Playwright driving Debian's chromium (`apt-get install -y chromium`).

No browser is downloaded: Playwright launches /usr/bin/chromium (RATCHET_TEST_CHROMIUM elsewhere). Each
test's page is screenshotted into test-artifacts/ui/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("RATCHET_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"


@pytest.fixture(scope="module")
def browser():
    """Module-scoped on purpose: Playwright's sync API keeps an event loop running in this thread while it is
    open, so a session-wide browser would break every later test that calls asyncio.run()."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: apt-get install -y chromium (or set RATCHET_TEST_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context (its own sessionStorage) and page; errors in the page's scripts fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"the page's scripts raised: {errors}"


@pytest.fixture
def artifact(page):
    """artifact("name"): a full-page screenshot of the page now, as test-artifacts/ui/name.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return lambda name: page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
