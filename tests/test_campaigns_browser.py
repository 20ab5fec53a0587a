"""Campaigns in a real browser (Chromium through Playwright): start a batch campaign from the
Campaigns page, see its progress, and the dashboard's score-over-time chart drawn by the
vendored Chart.js (nothing leaves 127.0.0.1, no console errors: the `page` fixture)."""

from __future__ import annotations

from typing import Any

from tests.test_ui_browser import gw, page, shot  # noqa: F401  (fixtures)
from tests.ui_server import ThreadedGateway


def test_start_a_campaign_and_see_scores_over_time(gw: ThreadedGateway, page: Any):  # noqa: F811
    page.goto(gw.ui_url + "/campaigns")
    page.get_by_label("Name", exact=True).fill("valid JSON, last week")
    page.get_by_label("since").fill("7d")
    page.get_by_label("Sample size").fill("3")
    page.get_by_role("button", name="Start campaign").click()
    page.get_by_role("cell", name="valid JSON, last week").wait_for()
    for _ in range(100):  # the batch runs in the background: reload until it is done
        if page.locator("td", has_text="done").count():
            break
        page.wait_for_timeout(100)
        page.reload()
    row = page.locator("tr", has_text="valid JSON, last week")
    assert row.locator("td.num").nth(1).inner_text() == "3"  # scored
    shot(page, "campaigns")
    page.goto(gw.ui_url + "/dashboard")
    page.get_by_text("Scores over time").first.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('canvas')]"
        ".every(c => window.Chart && Chart.getChart(c))"
    )
    kind = page.evaluate(
        """() => Chart.getChart(document.querySelector(
            'canvas[aria-label^="Mean evaluation score"]')).config.type"""
    )
    assert kind == "line"
    assert page.get_by_text("json_valid", exact=False).count()
