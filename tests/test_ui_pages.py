"""Every UI page over real captured traffic (the real `mistralai` SDK through the gateway), on
SQLite and PostgreSQL: filters and search, keyset paging, the live endpoint, htmx fragments
with `Vary: HX-Request`, escaping of hostile content, helpful 400s and 404s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

import aiohttp
import pytest
from mistralai.client import Mistral

from gateway.app import Gateway
from gateway.store.exchanges import ExchangeFilter, Store
from tests.clients import tool_loop
from tests.ui_server import HOSTILE, KEY

HTMX = {"HX-Request": "true"}


def sdk_traffic(gw: Gateway) -> None:
    with Mistral(api_key=KEY, server_url=gw.proxy_url) as client:
        client.chat.complete(
            model="mistral-small-latest",
            messages=[{"role": "user", "content": "Write a haiku about rain"}],
        )
        for _ in client.chat.stream(
            model="codestral-latest",
            messages=[{"role": "user", "content": "Explain recursion briefly"}],
        ):
            pass
        client.chat.complete(
            model="my-private-finetune", messages=[{"role": "user", "content": "unpriced question"}]
        )
        client.chat.complete(
            model="mistral-small-latest", messages=[{"role": "user", "content": HOSTILE}]
        )
        with contextlib.suppress(Exception):  # the SDK raises; the gateway recorded it
            client.chat.complete(
                model="mistral-small-latest",
                messages=[{"role": "user", "content": "limited"}],
                http_headers={"x-fake-status": "429"},
            )
    tool_loop(gw, "Lyon", server_url=gw.proxy_url + "/r/weather-agent")


async def fetch(
    gw: Gateway, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.get(path, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text(), resp.headers


def rows(html: str) -> int:
    return html.count('class="rowlink"')


async def test_every_page_over_real_traffic(gateway: Gateway):
    await asyncio.to_thread(sdk_traffic, gateway)
    await gateway.recorder.drained(timeout=20)
    await list_and_exchange_pages(gateway)
    await runs_dashboard_and_prices(gateway)


async def list_and_exchange_pages(gateway: Gateway) -> None:
    store = gateway.store
    exchanges = await store.rows("SELECT id, run_id FROM exchanges ORDER BY id")
    assert len(exchanges) == 7

    status, page, headers = await fetch(gateway, "/")
    assert status == 200 and page.startswith("<!doctype html>") and rows(page) == 7
    assert (
        headers["Vary"] == "HX-Request"
        and "script-src 'self'" in headers["Content-Security-Policy"]
    )
    assert "Write a haiku about rain" in page and "weather-agent" in page
    assert "&lt;script&gt;window.__pwned" in page and "<script>window" not in page
    assert 'hx-get="/exchanges' not in page.split('id="rows"')[1].split("</tbody>")[0]

    status, fragment, headers = await fetch(gateway, "/?q=haiku&model=", HTMX)
    assert status == 200 and "<html" not in fragment and rows(fragment) == 1
    assert headers["HX-Push-Url"] == "/?q=haiku" and headers["Vary"] == "HX-Request"
    for query, count in (
        ("model=codestral-latest", 1),
        ("status=4xx", 1),
        ("status=429", 1),
        ("status=2xx", 6),
        ("endpoint=chat", 7),
        ("range=1h", 7),
        ("q=recursion", 1),
        ("q=haiku+rain", 1),
        ("q=haiku+nothing", 0),
        (f"run={exchanges[-1]['run_id']}", 2),
        ("since=2099-01-01T00:00", 0),
        ("until=2000-01-01T00:00", 0),
    ):
        status, html, _ = await fetch(gateway, f"/?{query}", HTMX)
        assert status == 200 and rows(html) == count, query
        if count == 0:
            assert "Nothing matches" in html and "Clear the filters" in html
    for query, message in (
        ("status=abc", "status must be"),
        ("run=abc", "run must be"),
        ("range=1y", "range must be"),
        ("since=yesterday", "since must"),
    ):
        status, html, _ = await fetch(gateway, f"/?{query}")
        assert status == 400 and message in html and "<!doctype html>" in html, query

    middle = exchanges[3]["id"]
    _, older, _ = await fetch(gateway, f"/?before={middle}")
    assert rows(older) == 3 and "Newest" in older and "That is the oldest" in older
    newest = exchanges[-1]["id"]
    status, _, _ = await fetch(gateway, f"/exchanges/live?after={newest}", HTMX)
    assert status == 204
    status, live, _ = await fetch(gateway, f"/exchanges/live?after={middle}&q=", HTMX)
    assert status == 200 and rows(live) == 3 and 'hx-swap-oob="true"' in live
    assert f"after={newest}" in live
    status, whole, _ = await fetch(gateway, "/exchanges/live?after=0&into=results", HTMX)
    assert status == 200 and rows(whole) == 7 and "<table" in whole

    for row in exchanges:
        status, html, _ = await fetch(gateway, f"/exchanges/{row['id']}")
        assert status == 200 and "Raw" in html and "Delete this exchange" in html
    hostile_id = (  # bodies are compressed: found by the list's preview of its prompt
        await store.rows("SELECT id FROM exchanges WHERE preview LIKE ?", ["%__pwned%"])
    )[0]["id"]
    _, detail, _ = await fetch(gateway, f"/exchanges/{hostile_id}")
    assert "&lt;img src=x onerror=" in detail and "<img src=x" not in detail
    assert '&lt;div hx-get="/exchanges/live"' in detail.replace("&#34;", '"')
    # the text and raw-body fragments a "show all" button loads: escaped text, nothing else
    status, text, _ = await fetch(gateway, f"/exchanges/{hostile_id}/text?part=0-0", HTMX)
    assert status == 200 and "&lt;script&gt;window.__pwned" in text and "<script>" not in text
    status, raw, _ = await fetch(gateway, f"/exchanges/{hostile_id}/raw/request", HTMX)
    assert status == 200 and "&lt;img src=x" in raw and "<img" not in raw
    for path in ("text?part=9-9", "text?part=x", "raw/other"):
        assert (await fetch(gateway, f"/exchanges/{hostile_id}/{path}", HTMX))[0] == 404, path
    assert (await fetch(gateway, "/exchanges/12345/text?part=0-0", HTMX))[0] == 404
    second = exchanges[-1]["id"]
    _, step, _ = await fetch(gateway, f"/exchanges/{second}")
    assert "Previous step" in step and f"/runs/{exchanges[-1]['run_id']}" in step
    assert "get_weather" in step and "sunny in Lyon" in step
    for missing in ("/exchanges/12345", "/exchanges/abc", "/runs/12345", "/nowhere"):
        status, html, headers = await fetch(gateway, missing)
        assert (
            status == 404 and "<!doctype html>" in html and "Content-Security-Policy" in headers
        ), missing


async def runs_dashboard_and_prices(gateway: Gateway) -> None:
    run_id = (await gateway.store.rows("SELECT id FROM runs WHERE name = 'weather-agent'"))[0]["id"]
    async with (
        aiohttp.ClientSession(gateway.ui_url) as http,
        http.post(
            f"/api/runs/{run_id}/evaluations", json={"metric_name": "success", "metric_value": 1}
        ) as resp,
    ):
        assert resp.status == 201

    status, html, _ = await fetch(gateway, "/runs")
    assert status == 200 and rows(html) == 6 and "weather-agent" in html
    assert "success=1" in html
    _, html, _ = await fetch(gateway, "/runs?name=weather-agent", HTMX)
    assert rows(html) == 1 and "<html" not in html
    status, html, _ = await fetch(gateway, "/runs?status=bogus")
    assert status == 400 and "status must be one of" in html

    status, html, _ = await fetch(gateway, f"/runs/{run_id}")
    assert status == 200 and html.count('class="wf-bar') == 2 and 'class="wf-tool"' in html
    assert "get_weather" in html and "sunny in Lyon" in html and "success" in html
    assert re.search(r"Memory: 5 items \(kept 3, added 2\)", html)

    for query in (
        "",
        "?range=24h",
        "?range=30d",
        "?range=all",
        "?since=2020-01-01",
        "?since=2020-01-01&until=2099-01-01",
    ):
        status, html, _ = await fetch(gateway, f"/dashboard{query}")
        assert status == 200 and "data-chart=" in html, query
        assert "mistral-small-latest" in html and "weather-agent" in html
    _, fragment, _ = await fetch(gateway, "/dashboard?range=24h", HTMX)
    assert "<html" not in fragment and "Most expensive runs" in fragment
    for query in ("?range=2y", "?since=nonsense", "?since=2030-01-01&until=2029-01-01"):
        status, html, _ = await fetch(gateway, f"/dashboard{query}")
        assert status == 400 and 'role="alert"' in html, query
    _, empty, _ = await fetch(gateway, "/dashboard?since=2020-01-01&until=2020-01-02")
    assert "No calls in this range" in empty

    status, html, _ = await fetch(gateway, "/prices")
    assert status == 200 and "mistral-large-latest" in html
    unpriced = html.split("Models without a price")[1].split("Price table in use")[0]
    assert "my-private-finetune" in unpriced and ">1<" in unpriced


async def test_empty_database_says_what_to_do(gateway: Gateway):
    _, html, _ = await fetch(gateway, "/")
    assert "No calls recorded yet" in html and gateway.proxy_url in html
    assert 'id="live"' in html  # the first call replaces this page by itself
    _, html, _ = await fetch(gateway, "/runs")
    assert "No runs yet" in html
    _, html, _ = await fetch(gateway, "/dashboard")
    assert "No calls in this range" in html


@pytest.mark.postgres
async def test_postgres_search_asks_the_gin_index_when_the_walk_runs_long(pg_url: str):
    store = Store(pg_url)
    await store.open()
    try:  # a walk that outlasts its time limit: the GIN query answers instead
        assert await store._postgres_search(
            "SELECT 42 AS exchange_id", "SELECT pg_sleep(2)", []
        ) == [42]
        assert await store._postgres_search(
            "SELECT 42 AS exchange_id", "SELECT 7 AS exchange_id", []
        ) == [7]
    finally:
        await store.close()


async def test_bidi_controls_shown_in_text_but_sent_back_unchanged(gateway: Gateway):
    """A prompt holding a right-to-left override is shown with the control as `[U+202E]`
    (it would show the prompt reversed); form values keep it, so a filter comes back as it
    went out."""
    override = "\u202e"
    prompt = f"pay the {override}eciovni{override} now"

    def call() -> None:
        with Mistral(api_key=KEY, server_url=gateway.proxy_url) as client:
            client.chat.complete(
                model="mistral-small-latest", messages=[{"role": "user", "content": prompt}]
            )

    await asyncio.to_thread(call)
    await gateway.recorder.drained(timeout=20)
    for path in ("/", "/runs"):
        status, page, _ = await fetch(gateway, path)
        assert status == 200 and "pay the [U+202E]eciovni[U+202E] now" in page
        assert override not in page
    status, page, _ = await fetch(gateway, "/?q=%E2%80%AEeciovni")
    assert status == 200 and f'value="{override}eciovni"' in page
    status, page, _ = await fetch(gateway, "/runs?name=%E2%80%AEx&user=%E2%80%AEy")
    assert f'value="{override}x"' in page and f'value="{override}y"' in page


async def test_odd_query_values_never_break_a_page(gateway: Gateway):
    """Times at the edges of what a datetime holds (a 400 page saying so), cursors past 63
    bits or in Unicode digits (ignored, as any bad cursor), a part in Unicode digits (404):
    never a 500."""
    async with (
        aiohttp.ClientSession(gateway.ui_url) as http,
        http.post("/api/datasets", json={"name": "odd queries"}) as resp,
    ):
        dataset_id = (await resp.json())["id"]
    for path, expected in (
        ("/dashboard?until=0001-01-01T00:00:00Z", 400),
        ("/dashboard?since=0001-01-01T00:00:00%2B23:59", 400),
        ("/dashboard?until=9999-12-31T23:59:59-23:59", 400),
        ("/dashboard?since=1990-01-01", 200),
        (f"/datasets/{dataset_id}?after=9999999999999999999", 200),
        (f"/datasets/{dataset_id}?after=%C2%B2", 200),
    ):
        status, html, _ = await fetch(gateway, path)
        assert status == expected, (path, html[-500:])
    status, html, _ = await fetch(gateway, "/dashboard?until=0001-01-01T00:00:00Z")
    assert "must be dates" in html
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gateway.proxy_url}/v1/chat/completions",
            json=payload,
            headers={"Authorization": "Bearer key-for-odd-queries-1234"},
        ) as resp,
    ):
        assert resp.status == 200
    await gateway.recorder.drained(timeout=10)
    exchange_id = (await gateway.store.list_exchanges(ExchangeFilter(), 1, None))[0][0].id
    for part in ("%C2%B2-0", "0-%C2%B2"):
        status, _, _ = await fetch(gateway, f"/exchanges/{exchange_id}/text?part={part}")
        assert status == 404, part


async def test_huge_texts_and_tool_arguments_are_cut_on_the_run_page_too(gateway: Gateway):
    """A 1 MB prompt and 1 MB of tool-call arguments in a step: the run page shows their
    first 4,000 characters and says so, as the call's page does (it printed them whole,
    twice with the memory: 19 MB of HTML and 18 s in a browser for an 8 MB answer); the
    call's page cuts the arguments, and an offered tool's 1 MB description and schema."""
    big = "word " * 200_000
    arguments = '{"blob": "' + "A" * 1_000_000 + '"}'
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    schema = {"type": "object", "properties": {f"p{n}": {"type": "string"} for n in range(50_000)}}
    tool = {"type": "function", "function": {"name": "f", "description": big, "parameters": schema}}
    messages = [
        {"role": "user", "content": big},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "name": "f", "content": "done"},
    ]

    def send() -> None:
        with Mistral(api_key=KEY, server_url=gateway.proxy_url + "/r/huge-run") as client:
            client.chat.complete(model="mistral-small-latest", messages=messages, tools=[tool])

    await asyncio.to_thread(send)
    await gateway.recorder.drained(timeout=20)
    (run,) = json.loads((await fetch(gateway, "/api/runs?name=huge-run"))[1])["items"]
    (exchange,) = json.loads((await fetch(gateway, f"/api/exchanges?run={run['id']}"))[1])["items"]
    for path in (f"/runs/{run['id']}", f"/exchanges/{exchange['id']}"):
        status, page, _ = await fetch(gateway, path)
        assert status == 200 and len(page) < 100_000, (path, len(page))
        assert "A" * 3_000 in page and "A" * 5_000 not in page
    status, page, _ = await fetch(gateway, f"/runs/{run['id']}")
    assert "The first 4,000 of 1,000,000 characters: the call's page has them all." in page
    assert "The first 4,000 of 1,000,016 characters: the raw body has them all." in page
