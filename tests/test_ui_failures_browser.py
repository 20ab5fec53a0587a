"""Failures in a real browser (Debian's Chromium through Playwright): a failed call's page
opens on its error (the upstream's message, type and code) above everything else, and the
runs list shows each run's status with its activity, its failed calls and an "errors only"
filter, and a title for unnamed runs. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui_server import ThreadedGateway, chat

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(tmp_path_factory.mktemp("ui-failures")) as server:
        chat(server, "Which tide tables do you know?", suffix="/r/healthy-agent")
        with contextlib.suppress(Exception):  # the SDK raises on a 429; the gateway records it
            chat(server, "this one is rate limited", headers={"x-fake-status": "429"})
        chat(server, "Plan a walk along the coast")  # an unnamed run of its own
        server.drained()
        yield server


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, errors


def newest_id(gw: ThreadedGateway, where: str) -> int:
    rows = gw.call(
        gw.gateway.store.rows(f"SELECT id FROM exchanges WHERE {where} ORDER BY id DESC LIMIT 1")
    )
    return int(rows[0]["id"])


def test_a_failed_call_opens_on_its_error(gw: ThreadedGateway, page: Any):
    failed = newest_id(gw, "status = 429")
    page.goto(f"{gw.ui_url}/exchanges/{failed}")
    banner = page.locator(".error-banner[role=alert]")
    banner.wait_for()
    text = banner.inner_text()
    assert "HTTP 429" in text and "Rate limit exceeded" in text
    assert "rate_limited" in text and "1300" in text
    cards = page.locator("section.cards").bounding_box()
    box = banner.bounding_box()
    assert box is not None and cards is not None and box["y"] < cards["y"]  # first, on top
    assert box["y"] + box["height"] <= 900  # seen without scrolling
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "exchange-error-banner.png"))

    fine = newest_id(gw, "status = 200")
    page.goto(f"{gw.ui_url}/exchanges/{fine}")
    page.locator("section.cards").wait_for()
    assert page.locator(".error-banner").count() == 0


def test_runs_list_shows_errors_activity_and_titles(gw: ThreadedGateway, page: Any):
    page.goto(gw.ui_url + "/runs")
    table = page.locator("table.runs")
    table.wait_for()
    headers = table.locator("thead").inner_text()
    assert "Errors" in headers and "Last activity" in headers
    healthy = table.locator("tbody tr", has_text="healthy-agent")
    assert re.search(r"in progress|idle|ended ok", healthy.inner_text())
    titled = table.locator("tbody tr", has_text="Plan a walk along the coast")
    assert titled.count() == 1 and "unnamed" not in titled.inner_text()
    failing = table.locator("tbody tr", has_text="this one is rate limited")
    assert failing.locator("a.error-count").inner_text() == "1"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "runs-errors.png"), full_page=True)

    page.check("#r-errors")
    page.wait_for_url(re.compile(r"errors=1"))
    page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr').length === 1")
    assert "this one is rate limited" in page.locator("table.runs tbody tr").inner_text()
    failing_link = page.locator("a.error-count")
    failing_link.click()
    page.wait_for_url(re.compile(r"errors=1"))
    page.locator("#rows tr").first.wait_for()
    assert page.locator("#rows tr").count() == 1
    assert page.is_checked("#f-errors")
