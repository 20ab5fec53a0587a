"""The dashboard's cost by category and month to date (gateway/store/spending.py): real
calls through the real gateway to the fake upstream, a registered fine-tuned model whose
storage fee accrues as fine-tuning cost, the month taken in --budget-timezone. On SQLite
and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.store.finetuned import MONTH_SECONDS, FineTuned, register
from tests.conftest import Upstream, make_settings, running

AUTH = {"Authorization": "Bearer key-for-spend-page-tests-1234"}
ZONE = "Pacific/Kiritimati"  # UTC+14: its month starts 14 hours before UTC's
STORAGE = 2.0  # open-mistral-7b's storage_per_month_usd in gateway/capture/prices.toml


@pytest.fixture
async def gw(upstream: Upstream, db_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(upstream.url, db_url, tmp_path, budget_timezone=ZONE)
    async with running(settings) as gw:
        yield gw


async def chat(gw: Gateway) -> None:
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 200


def exact(html: str) -> float:
    """The exact figure of the first cost in `html` (the `cost` macro's title)."""
    found = re.search(r'title="\$([0-9.]+)"', html)
    assert found, html
    return float(found[1])


async def test_dashboard_breaks_cost_down_by_category_with_month_to_date(gw: Gateway) -> None:
    for _ in range(2):
        await chat(gw)
    await gw.recorder.drained(timeout=20)
    now = datetime.now(UTC)
    tuned = FineTuned(
        "ft:open-mistral-7b:team",
        "open-mistral-7b",
        "job-9",
        None,
        1000,
        4.0,
        5,
        now - timedelta(days=100),
    )
    await register(gw.store, tuned)
    (row,) = await gw.store.rows("SELECT SUM(cost_usd) AS cost FROM exchanges")
    llm = float(row["cost"])
    assert llm > 0

    async with aiohttp.ClientSession(gw.ui_url) as http, http.get("/dashboard?range=30d") as resp:
        assert resp.status == 200
        html = await resp.text()
    table = html.split('id="cost-by-category"')[1].split("</table>")[0]
    rows = dict(re.findall(r'<tr data-category="([a-z-]+)">(.*?)</tr>', table))
    assert list(rows) == ["llm", "tool", "fine-tuning"]
    cells = {k: re.findall(r"<td[^>]*>(.*?)</td>", v) for k, v in rows.items()}
    assert exact(cells["llm"][2]) == pytest.approx(llm, abs=1e-8)
    assert "$0" in cells["tool"][2]
    storage_30d = STORAGE * 30 * 86400 / MONTH_SECONDS  # registered before the range began
    assert exact(cells["fine-tuning"][1]) == pytest.approx(storage_30d, abs=1e-4)
    assert exact(cells["fine-tuning"][2]) == pytest.approx(storage_30d, abs=1e-4)

    # the month to date, in Kiritimati's calendar, and its linear projection
    local = now.astimezone(ZoneInfo(ZONE))
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    elapsed = (now - start).total_seconds() / (end - start).total_seconds()
    storage_mtd = STORAGE * (now - start).total_seconds() / MONTH_SECONDS
    mtd = html.split('id="month-to-date"')[1].split("</div>")[0]
    assert exact(mtd) == pytest.approx(llm + storage_mtd, abs=1e-4)
    shown = re.search(r"([0-9.]+)% of the month", mtd)
    assert shown and float(shown[1]) == pytest.approx(elapsed * 100, abs=0.11)
    projected = html.split('id="projected-month"')[1].split("</div>")[0]
    if (now - start).total_seconds() >= 60:
        assert exact(projected) == pytest.approx((llm + storage_mtd) / elapsed, rel=1e-3)
    assert exact(cells["fine-tuning"][3]) == pytest.approx(storage_mtd, abs=1e-4)  # this month
    assert "data-chart=" in html.split("By category")[1].split("</figure>")[0]


async def test_most_expensive_runs_say_what_unnamed_runs_were_about(gw: Gateway) -> None:
    await chat(gw)  # one unnamed run, whose first user message is "hi"
    await gw.recorder.drained(timeout=20)
    async with aiohttp.ClientSession(gw.ui_url) as http, http.get("/dashboard") as resp:
        html = await resp.text()
    table = html.split("Most expensive runs")[1].split("</table>")[0]
    assert re.search(r'<a href="/runs/\d+">hi</a>', table), table
