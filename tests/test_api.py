"""The JSON API contract: listing, filters, cursors, search, detail, delete, stats, prices,
health; clear 400s and 404s. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.store.finetuned import MONTH_SECONDS, FineTuned, register
from gateway.store.search import pg_query
from tests.conftest import Upstream, make_settings, running

AUTH = {"Authorization": "Bearer key-for-api-tests-1234"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def ui(gateway: Gateway) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(gateway.ui_url) as session:
        yield session


async def call(
    gw: Gateway,
    content: str,
    *,
    model: str = "mistral-small-latest",
    headers: dict[str, str] | None = None,
) -> int:
    payload = {"model": model, "messages": [{"role": "user", "content": content}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.proxy_url}/v1/chat/completions", json=payload, headers={**AUTH, **(headers or {})}
        ) as resp,
    ):
        await resp.read()
        return resp.status


async def get(ui: aiohttp.ClientSession, path: str, **params: str) -> tuple[int, dict]:
    async with ui.get(path, params=params) as resp:
        return resp.status, await resp.json()


async def test_list_filters_and_cursor(gateway: Gateway, ui):
    for n in range(7):
        await call(
            gateway, f"question {n}", model="mistral-small-latest" if n % 2 else "codestral-latest"
        )
    await call(gateway, "rate limited", headers={"x-fake-status": "429"})
    await gateway.recorder.drained(timeout=10)

    status, page = await get(ui, "/api/exchanges", limit="3")
    assert status == 200 and len(page["items"]) == 3 and page["next"]
    seen = [item["id"] for item in page["items"]]
    while page["next"]:
        status, page = await get(ui, "/api/exchanges", limit="3", before=page["next"])
        seen += [item["id"] for item in page["items"]]
    assert len(seen) == len(set(seen)) == 8
    assert seen == sorted(seen, key=int, reverse=True)  # newest first

    item = page["items"][0]
    for key in (
        "id",
        "started_at",
        "method",
        "path",
        "status",
        "model",
        "endpoint",
        "streamed",
        "state",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
        "latency_ms",
        "ttfb_ms",
        "ttft_ms",
        "run_id",
        "error",
    ):
        assert key in item

    _, small = await get(ui, "/api/exchanges", model="mistral-small-latest")
    assert {i["model"] for i in small["items"]} == {"mistral-small-latest"}
    _, limited = await get(ui, "/api/exchanges", status="429")
    assert [i["status"] for i in limited["items"]] == [429]
    _, client_errors = await get(ui, "/api/exchanges", status="4xx")
    assert len(client_errors["items"]) == 1
    _, chats = await get(ui, "/api/exchanges", endpoint="chat", state="complete")
    assert len(chats["items"]) == 8
    _, future = await get(ui, "/api/exchanges", since="2999-01-01T00:00:00Z")
    assert future["items"] == []
    _, past = await get(ui, "/api/exchanges", until="2000-01-01T00:00:00Z")
    assert past["items"] == []
    _, window = await get(
        ui, "/api/exchanges", since="2000-01-01T00:00:00Z", until="2999-01-01T00:00:00+00:00"
    )
    assert len(window["items"]) == 8


async def test_full_text_search(gateway: Gateway, ui):
    await call(gateway, "the quick brown fox")
    await call(gateway, "a lazy dog sleeps")
    await call(gateway, 'quotes " and AND OR NOT * ( ) are literal')
    await call(gateway, "first line\nsecond line, about a Zebra-crossing")
    await gateway.recorder.drained(timeout=10)
    for words in ("second", "zebra", "CROSSING", "zebra-crossing second"):
        _, lines = await get(ui, "/api/exchanges", q=words)  # after an escaped newline too
        assert len(lines["items"]) == 1, words
    _, found = await get(ui, "/api/exchanges", q="brown fox")
    assert len(found["items"]) == 1
    _, none = await get(ui, "/api/exchanges", q="brown dog")  # words are ANDed
    assert none["items"] == []
    _, odd = await get(ui, "/api/exchanges", q='" AND OR NOT * (')
    assert odd["items"] == [] or len(odd["items"]) == 1  # no syntax error, whatever matched
    status, wordless = await get(ui, "/api/exchanges", q="* ( )")
    assert status == 200 and wordless["items"] == []  # no words: nothing matches
    detail = (await get(ui, f"/api/exchanges/{found['items'][0]['id']}"))[1]
    _, by_request_id = await get(ui, "/api/exchanges", q=detail["correlation_id"])
    assert [i["id"] for i in by_request_id["items"]] == [detail["id"]]


async def test_search_for_a_long_word(gateway: Gateway, ui):
    """An id or a base64 token: PostgreSQL's index holds it shortened (search.lexeme), found
    all the same, and not confused with another long word of the same head."""
    token = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    await call(gateway, f"station report {token} ends")
    await call(gateway, "station report QUJDREVGxxxxxxxxxxxxxxxxxxxxxx ends")
    await gateway.recorder.drained(timeout=10)
    _, found = await get(ui, "/api/exchanges", q=f"report {token.lower()}")
    assert len(found["items"]) == 1
    _, both = await get(ui, "/api/exchanges", q="station report")
    assert len(both["items"]) == 2
    if gateway.store.dialect == "postgres":  # a row stored before words were shortened
        old = int(found["items"][0]["id"]) + 1000
        await gateway.store.rows(
            "INSERT INTO exchange_search (exchange_id, doc) VALUES (?, ?::tsvector)",
            [old, f"'oldrow' '{token.lower()}'"],
        )
        hits = await gateway.store.rows(
            "SELECT exchange_id FROM exchange_search WHERE doc @@ ?::tsquery",
            [pg_query(f"oldrow {token}")],
        )
        assert [h["exchange_id"] for h in hits] == [old]


async def test_detail_delete_and_errors(gateway: Gateway, ui):
    await call(gateway, "details please")
    await gateway.recorder.drained(timeout=10)
    _, page = await get(ui, "/api/exchanges")
    exchange_id = page["items"][0]["id"]
    status, detail = await get(ui, f"/api/exchanges/{exchange_id}")
    assert status == 200
    for key in (
        "client_path",
        "request_model",
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
        "request_body_encoding",
        "response_body_encoding",
        "output_text",
        "finish_reason",
        "key_fingerprint",
        "truncated",
    ):
        assert key in detail
    assert detail["request_body"]["messages"][0]["content"] == "details please"
    assert ["Authorization", "[redacted]"] in detail["request_headers"]

    async with ui.delete(f"/api/exchanges/{exchange_id}") as resp:
        assert resp.status == 200
    assert (await get(ui, f"/api/exchanges/{exchange_id}"))[0] == 404
    async with ui.delete(f"/api/exchanges/{exchange_id}") as resp:
        assert resp.status == 404
    _, gone = await get(ui, "/api/exchanges", q="details")
    assert gone["items"] == []

    assert (await get(ui, "/api/exchanges/not-an-id"))[0] == 404
    for params, word in (
        ({"limit": "0"}, "limit"),
        ({"limit": "9999"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "\u0663"}, "limit"),  # an Arabic-Indic 3: int() takes it, ids do not
        ({"limit": " 5"}, "limit"),
        ({"run": "1_000"}, "run"),
        ({"status": "teapot"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"before": "xyz"}, "before"),
        ({"run": "abc"}, "run"),
    ):
        status, body = await get(ui, "/api/exchanges", **params)
        assert status == 400 and word in body["error"], (params, body)
    status, body = await get(ui, "/api/stats", until="nope")
    assert status == 400 and "until" in body["error"]


async def test_stats_prices_and_health(gateway: Gateway, ui):
    await call(gateway, "priced call")
    await call(gateway, "unpriced call", model="my-private-finetune")
    await call(gateway, "failed", headers={"x-fake-status": "500"})
    await gateway.recorder.drained(timeout=10)
    status, stats = await get(ui, "/api/stats")
    assert status == 200
    assert stats["totals"]["calls"] == 3 and stats["totals"]["errors"] == 1
    assert stats["totals"]["cost_usd"] > 0
    models = {row["model"]: row for row in stats["by_model"]}
    assert models["mistral-small-latest"]["calls"] == 2
    assert set(stats["totals"]) == {
        "calls",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "errors",
        "missing_calls",
        "unpriced_calls",
        "cost_by_category",
        "storage_usd",
    }
    assert stats["totals"]["missing_calls"] == 0
    costs = stats["totals"]["cost_by_category"]
    assert set(costs) == {"llm", "tool", "fine-tuning"}
    assert costs["llm"] == pytest.approx(stats["totals"]["cost_usd"])
    assert stats["totals"]["storage_usd"] == 0  # no fine-tuned model registered
    assert [(g["category"], g["cost_usd"]) for g in stats["by_category"]] == [
        ("llm", costs["llm"]),
        ("tool", 0.0),
        ("fine-tuning", 0.0),
    ]

    _, prices = await get(ui, "/api/prices")
    assert prices["models"]["mistral-small-latest"]["input_per_mtok"] > 0
    assert prices["as_of"] and prices["source"]
    assert prices["unpriced"] == [{"model": "my-private-finetune", "calls": 1}]

    status, health = await get(ui, "/healthz")
    assert status == 200 and health["status"] == "ok" and health["reasons"] == []
    for key in (
        "queue_depth",
        "spool_bytes",
        "dropped_records",
        "database",
        "quarantined",
        "missing_calls",
        "writer_lag_seconds",
    ):
        assert key in health


async def test_restart_keeps_data_and_new_prices_fill_old_costs(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'keep.db'}"
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        await call(gw, "remember me", model="my-private-finetune")
        await gw.recorder.drained(timeout=10)
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[models."my-private-finetune"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n'
    )
    async with running(make_settings(upstream.url, db, tmp_path, prices=str(prices))) as gw:
        await gw.costs_filled
        async with aiohttp.ClientSession(gw.ui_url) as ui:
            _, page = await get(ui, "/api/exchanges")
            _, prices_now = await get(ui, "/api/prices")
        (item,) = page["items"]
        assert item["cost_usd"] is not None and item["cost_usd"] > 0
        assert prices_now["unpriced"] == []


async def test_token_guards_everything_but_health(upstream: Upstream, tmp_path: Path):
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'tok.db'}", tmp_path, ui_token="s3cret-token"
    )
    async with running(settings) as gw, aiohttp.ClientSession(gw.ui_url) as ui:
        assert (await get(ui, "/healthz"))[0] == 200
        for path in ("/api/exchanges", "/api/stats"):
            async with ui.get(path) as resp:
                assert resp.status == 401, path
        async with ui.get("/", allow_redirects=False) as resp:  # a page: to the login form
            assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=")
        async with ui.get("/api/exchanges", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with ui.get(
            "/api/exchanges", headers={"Authorization": "Bearer s3cret-token"}
        ) as resp:
            assert resp.status == 200


async def test_stats_accrue_the_storage_of_fine_tuned_models(gateway: Gateway, ui):
    """A registered fine-tuned model costs its base model's storage_per_month_usd ($2 for
    open-mistral-7b) per mean calendar month (MONTH_SECONDS) it was registered within the
    range: fine-tuning cost in `by_category`, beside the calls' `cost_by_category`."""
    now = datetime.now(UTC)
    month = timedelta(seconds=MONTH_SECONDS)
    created = now - month / 2
    tuned = FineTuned("ft:open-mistral-7b:x", "open-mistral-7b", "job-1", None, 10, 4.0, 3, created)
    await register(gateway.store, tuned)
    unknown = FineTuned("ft:who:y", "no-such-base", "job-2", None, 10, 4.0, 3, created)
    await register(gateway.store, unknown)  # no storage price: no fee
    status, stats = await get(ui, "/api/stats")
    assert status == 200
    assert stats["totals"]["storage_usd"] == pytest.approx(1.0, abs=1e-4)
    assert stats["totals"]["cost_by_category"]["fine-tuning"] == 0  # the calls' cost only
    groups = {g["category"]: g for g in stats["by_category"]}
    assert groups["fine-tuning"]["cost_usd"] == pytest.approx(1.0, abs=1e-4)
    assert groups["fine-tuning"]["storage_usd"] == stats["totals"]["storage_usd"]
    since = (created + month / 4).isoformat()
    _, stats = await get(ui, "/api/stats", since=since)
    assert stats["totals"]["storage_usd"] == pytest.approx(0.5, abs=1e-4)
    _, stats = await get(ui, "/api/stats", until=(created - month).isoformat())
    assert stats["totals"]["storage_usd"] == 0  # before it was registered


async def test_ids_and_numbers_that_only_look_like_ids_are_400_or_404(gateway: Gateway, ui):
    """Unicode digits pass str.isdigit() but not int(), and 19 digits can pass 63 bits: both
    are an unknown id or a bad field, never a 500."""
    superscript, past_63_bits = "\u00b2", "9999999999999999999"
    for method, path in (
        ("GET", "/api/alert-rules/%C2%B2"),
        ("DELETE", "/api/alert-rules/%C2%B2"),
        ("GET", "/api/campaigns/%C2%B2"),
        ("DELETE", "/api/campaigns/%C2%B2"),
    ):
        async with ui.request(method, path) as resp:
            assert resp.status == 404, (method, path, await resp.text())
    async with ui.post("/api/datasets", json={"name": "odd ids"}) as resp:
        dataset_id = (await resp.json())["id"]
    for method, path, field in (
        ("POST", f"/api/datasets/{dataset_id}/items", "exchange_ids"),
        ("POST", f"/api/datasets/{dataset_id}/items", "run_ids"),
        ("DELETE", f"/api/datasets/{dataset_id}/items", "item_ids"),
        ("POST", "/api/quarantine/retry", "ids"),
    ):
        for value in (superscript, past_63_bits):
            async with ui.request(method, path, json={field: [value]}) as resp:
                body = await resp.json()
                assert resp.status == 400 and field in body["error"], (path, value, body)
    for value in (superscript, past_63_bits):
        body = {"exchange_ids": [value], "scorers": [{"type": "exact_match"}]}
        async with ui.post("/api/evaluations", json=body) as resp:
            assert resp.status == 400, (value, await resp.text())


async def test_a_nul_or_deep_nesting_in_a_body_is_400_or_404(gateway: Gateway, ui):
    """PostgreSQL stores no NUL in text: a body holding one is refused, on both databases,
    saying where it is."""
    for path, body, word in (
        ("/api/datasets", {"name": "a\x00b"}, "name"),
        ("/api/alert-rules", {"name": "\x00", "kind": "spend", "threshold": 1}, "name"),
        (
            "/api/budgets",
            {"name": "b", "scope": {"kind": "user", "value": "a\x00"}, "period": "day"},
            "scope.value",
        ),
        ("/api/campaigns", {"name": "c", "judge": "j\x00", "max_nb_events": 1}, "judge"),
        ("/api/datasets", {"name\x00": "x"}, "key"),
    ):
        async with ui.post(path, json=body) as resp:
            answer = await resp.json()
            assert resp.status == 400 and word in answer["error"], (path, answer)
            assert "NUL" in answer["error"], (path, answer)
    async with ui.get("/api/judges/a%00bcdef") as resp:
        assert resp.status == 404, await resp.text()
    # looked through without recursion: orjson parses deeper than Python's recursion limit
    deep = b'{"name": ' + b"[" * 1020 + b"1" + b"]" * 1020 + b"}"
    async with ui.post("/api/datasets", data=deep, headers=JSON) as resp:
        assert resp.status == 400 and "name" in (await resp.json())["error"]
    deep = b'{"exchange_ids": [' + b"[" * 1000 + b"1" + b"]" * 1000 + b"]}"
    async with ui.post("/api/experiments", data=deep, headers=JSON) as resp:
        assert resp.status == 400 and "a list is not an id" in (await resp.json())["error"]
