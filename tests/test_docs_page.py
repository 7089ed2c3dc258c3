"""GET /docs in a real browser: headless Chromium (Debian's), driven by Playwright.

The page must work offline: every request it makes goes to the app itself. Any request for
another host is recorded, answered with an error, and fails the test. .ci/run installs
Chromium; without it the test is skipped, or fails in CI (CHATSITE_TEST_REQUIRE_SERVICES=1).
"""

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.servers import need_service

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where a screenshot of the page is kept, to look at (CHATSITE_TEST_SCREENSHOT_DIR).
SCREENSHOTS = os.environ.get("CHATSITE_TEST_SCREENSHOT_DIR")


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: the page, not the database, is under test."""
    return f"sqlite:///{tmp_path / 'chatsite.db'}"


@pytest.fixture
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        need_service(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live):
    """A page whose every request for a host other than the app's is refused and recorded."""
    page = browser.new_page()
    page.foreign = []
    app_host = urlsplit(live.url).netloc

    def route(route):
        url = urlsplit(route.request.url)
        if url.scheme in ("data", "blob") or url.netloc == app_host:
            route.continue_()
        else:
            page.foreign.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    page.on("websocket", lambda socket: page.foreign.append(socket.url))
    yield page
    page.close()


def test_docs_page_lists_every_endpoint_offline(page, live):
    page.goto(f"{live.url}/docs")
    page.wait_for_selector(".opblock", timeout=15000)
    spec = json.loads(page.evaluate("() => JSON.stringify(window.ui.specSelectors.specJson())"))
    shown = {
        (block.get_attribute("class").split("opblock-")[-1].split()[0], summary)
        for block in page.query_selector_all(".opblock")
        for summary in [block.query_selector(".opblock-summary-path").get_attribute("data-path")]
    }
    described = {(method, path) for path, methods in spec["paths"].items() for method in methods}
    assert described and shown == described
    chat_endpoints = {
        *("/list-chats", "/rename-chat", "/delete-chat", "/delete-account"),
        *("/search-chats", "/export", "/import-chats", "/resume"),
    }
    assert {("post", path) for path in chat_endpoints} <= shown
    assert page.locator(".info .title").inner_text().startswith("chatsite")
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "docs.png"), full_page=False)
    assert page.foreign == []


def test_try_it_out_on_settings(page, live, token_for):
    # No deep link: its expansion, landing after the page is drawn, raced the click below.
    page.goto(f"{live.url}/docs")
    operation = page.locator("#operations-api-post_settings")
    operation.wait_for(timeout=15000)
    if "is-open" not in (operation.get_attribute("class") or ""):
        operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    body = operation.locator("textarea.body-param__text")
    body.fill(json.dumps({"token": token_for()}))
    operation.locator(".execute").click()
    status = operation.locator(".live-responses-table tbody td.response-col_status").first
    status.wait_for(timeout=15000)
    status.scroll_into_view_if_needed()
    assert status.inner_text().strip() == "200"
    answer = operation.locator(".live-responses-table .microlight, .live-responses-table pre")
    assert re.search(r'"chat_files"', answer.first.inner_text())
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "docs-try-it-out.png"), full_page=False)
    assert page.foreign == []
