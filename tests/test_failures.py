"""Failures and missing prices that show (issue 15, items 1-3): every failed call carries its
error (the upstream's own message, type and code), runs count their failed and unpriced
calls, filters say what is wrong instead of answering 500, and `reprice` recomputes costs
with every total summed from them. End to end through the real gateway and the fake
upstream, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tortoise.migrations.api import migrate

from gateway.app import Gateway
from gateway.capture import failure
from gateway.errors import UserError
from gateway.store.exchanges import Store
from gateway.store.query import exchange_filter, run_filter
from gateway.store.rollups import exact_percentile
from gateway.store.runs import RunStore
from gateway.store.urls import tortoise_config
from tests.conftest import CLI, ROOT, Upstream, free_port, make_settings, running, wait_until
from tests.test_rollups import assert_rollups_true

AUTH = {"Authorization": "Bearer key-for-failure-tests-1234"}
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options")


async def call(
    gw: Gateway,
    content: str,
    *,
    model: str = "mistral-small-latest",
    headers: dict[str, str] | None = None,
    run: str | None = None,
) -> int:
    payload = {"model": model, "messages": [{"role": "user", "content": content}]}
    sent = {**AUTH, **(headers or {})}
    if run:
        sent["X-AgentOps-Run"] = run
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=sent) as resp,
    ):
        await resp.read()
        return resp.status


async def cli(*args: str) -> tuple[int, str]:
    """The installed command, in its own process (its stdout and stderr together)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def api(gw: Gateway, path: str, **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(gw.ui_url) as ui, ui.get(path, params=params) as resp:
        return resp.status, await resp.json()


async def exchanges(gw: Gateway, **params: str) -> list[dict]:
    status, page = await api(gw, "/api/exchanges", **params)
    assert status == 200, page
    return page["items"]


# -- the failure of one call, from what the upstream said ------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            429,
            {"object": "error", "message": "Rate limit exceeded", "type": "rate_limited",
             "code": "1300"},
            ("HTTP 429: Rate limit exceeded", "rate_limited", "1300"),
        ),
        (500, {"detail": "Internal Server Error"}, ("HTTP 500: Internal Server Error",
                                                    "http_error", None)),
        (
            422,
            {"object": "error", "type": "invalid_request_error", "code": None,
             "message": {"detail": [{"loc": ["body", "max_tokens"], "msg": "too big"}]}},
            ("HTTP 422: max_tokens: too big", "invalid_request_error", None),
        ),
        (
            401,
            {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}},
            ("HTTP 401: Invalid API key", "invalid_api_key", None),
        ),
        (
            400,
            {"error": {"message": "bad model", "type": "invalid_request_error", "code": 7}},
            ("HTTP 400: bad model", "invalid_request_error", "7"),
        ),
        (503, None, ("HTTP 503: upstream down", "http_error", None)),
    ],
)  # fmt: skip
def test_the_upstreams_own_message_type_and_code(status: int, body: Any, expected: tuple):
    found = failure.of_call(status, None, "complete", body, b"upstream down", False)
    assert found is not None and (found.message, found.type, found.code) == expected


def test_successes_are_not_failures_and_gateway_errors_win():
    assert failure.of_call(200, None, "complete", {"id": "x"}, b"{}", False) is None
    cut = failure.of_call(None, "upstream broke off", "upstream_error", None, b"", False)
    assert cut == failure.Failure("upstream broke off", "upstream_error")
    unparsed = failure.of_call(200, None, "complete", None, b"<html>", True)
    assert unparsed is not None and unparsed.type == "unparsable_response"


# -- end to end -----------------------------------------------------------------------------


async def test_failed_calls_carry_their_error_and_runs_count_them(gateway: Gateway):
    assert await call(gateway, "fine", run="mixed") == 200
    assert await call(gateway, "boom", run="mixed", headers={"x-fake-status": "500"}) == 500
    assert await call(gateway, "slow down", run="mixed", headers={"x-fake-status": "429"}) == 429
    assert await call(gateway, "not json", run="mixed", headers={"x-fake-raw": "<html>"}) == 200
    assert await call(gateway, "fine again", run="mixed") == 200
    assert await call(gateway, "no price", run="mixed", model="my-private-finetune") == 200
    await gateway.recorder.drained(timeout=10)

    items = {item["preview"]: item for item in await exchanges(gateway)}
    assert {k: items["boom"][k] for k in ("status", "state", "error", "error_type")} == {
        "status": 500,
        "state": "complete",  # state says how the call ended: it did, with a 500
        "error": "HTTP 500: Internal Server Error",
        "error_type": "http_error",
    }
    limited = items["slow down"]
    assert (limited["error"], limited["error_type"], limited["error_code"]) == (
        "HTTP 429: Rate limit exceeded",
        "rate_limited",
        "1300",
    )
    assert items["not json"]["error_type"] == "unparsable_response"
    assert "not the JSON" in items["not json"]["error"]
    assert items["fine"]["error"] is items["fine"]["error_type"] is None
    status, detail = await api(gateway, f"/api/exchanges/{items['boom']['id']}")
    assert status == 200 and detail["error_type"] == "http_error" and "error_code" in detail

    failed = await exchanges(gateway, errors="1")
    assert {item["preview"] for item in failed} == {"boom", "slow down", "not json"}

    status, page = await api(gateway, "/api/runs", name="mixed")
    (run,) = page["items"]
    assert run["status"] == "running" and run["activity"] == "active"
    assert run["error_count"] == 3 and run["exchange_count"] == 6
    # no price (my-private-finetune), or nothing to price (the answer that is not JSON)
    assert run["unpriced_calls"] == 2 and run["total_cost_usd"] > 0
    status, page = await api(gateway, "/api/runs", errors="1")
    assert [r["id"] for r in page["items"]] == [run["id"]]
    status, detail = await api(gateway, f"/api/runs/{run['id']}")
    assert detail["error_count"] == 3 and detail["unpriced_calls"] == 2

    status, stats = await api(gateway, "/api/stats")
    assert stats["totals"]["unpriced_calls"] == 2
    by_model = {row["model"]: row for row in stats["by_model"]}
    assert by_model["my-private-finetune"]["unpriced_calls"] == 1
    assert by_model["my-private-finetune"]["cost_usd"] == 0.0
    assert by_model["mistral-small-latest"]["unpriced_calls"] == 1


async def test_a_transport_failure_is_an_error(db_url: str, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running(make_settings(dead, db_url, tmp_path)) as gw:
        assert await call(gw, "anyone there?") == 502
        await gw.recorder.drained(timeout=10)
        (item,) = await exchanges(gw, errors="1")
        assert item["state"] == "upstream_error" and item["error"]
        assert item["error_type"] == "upstream_error"


async def test_a_run_whose_last_call_failed_ends_in_error(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path, run_idle=0.3)) as gw:
        await call(gw, "first", run="ends-badly")
        await call(gw, "broken", run="ends-badly", headers={"x-fake-raw": "oops"})

        async def ended() -> bool:
            _, page = await api(gw, "/api/runs", name="ends-badly")
            return bool(page["items"]) and page["items"][0]["ended_at"] is not None

        await wait_until(ended)
        _, page = await api(gw, "/api/runs", name="ends-badly")
        (run,) = page["items"]
        assert (run["status"], run["activity"], run["error_count"]) == ("error", "idle", 1)


# -- bad input is a 400 that says what is wrong, never a 500 -----------------------------------

TOO_BIG = "99999999999999999999999"


async def test_bad_filter_values_are_400_with_the_security_headers(gateway: Gateway):
    async with aiohttp.ClientSession(gateway.ui_url) as ui:
        for path, key, value, says in [
            ("/api/exchanges", "run", TOO_BIG, "run must be between"),
            ("/api/exchanges", "model", "a\x00b", "model must not contain a NUL"),
            ("/api/exchanges", "state", "\x00", "state must not contain a NUL"),
            ("/api/exchanges", "endpoint", "x\x00", "endpoint must not contain a NUL"),
            ("/api/exchanges", "errors", "maybe", "errors must be 1 or 0"),
            ("/api/runs", "name", "n\x00", "name must not contain a NUL"),
            ("/api/runs", "agent_id", "\x00", "agent_id must not contain a NUL"),
            ("/api/runs", "user", "\x00u", "user must not contain a NUL"),
        ]:
            async with ui.get(path, params={key: value}) as resp:
                body = await resp.json()
                assert resp.status == 400 and says in body["error"], (path, key, body)
                assert all(h in resp.headers for h in SECURITY_HEADERS)
        for path, key, value in [
            ("/", "run", TOO_BIG),
            ("/", "model", "\x00"),
            ("/runs", "user", "\x00"),
        ]:
            async with ui.get(path, params={key: value}) as resp:
                text = await resp.text()
                assert resp.status == 400, (path, key)
                assert "must" in text and all(h in resp.headers for h in SECURITY_HEADERS)
        # an unknown id in a filter finds nothing; a page for one is not found
        async with ui.get("/api/exchanges", params={"run": "12345"}) as resp:
            assert resp.status == 200 and (await resp.json())["items"] == []
        for path in (
            "/exchanges/12345",
            f"/exchanges/{TOO_BIG}",
            "/runs/12345",
            f"/runs/{TOO_BIG}",
        ):
            async with ui.get(path) as resp:
                assert resp.status == 404, path
                assert all(h in resp.headers for h in SECURITY_HEADERS)
        for path in (
            "/api/exchanges/12345",
            f"/api/runs/{TOO_BIG}",
            "/api/exchanges/9999999999999999999",  # 19 digits, past 63 bits
            "/exchanges/9999999999999999999",
        ):
            async with ui.get(path) as resp:
                assert resp.status == 404, path
        for path, query in [
            ("/api/exchanges", {"before": "9999999999999999999"}),
            ("/api/runs", {"before": "9999999999999999999"}),
            ("/api/diff", {"a": "9999999999999999999", "b": "1"}),
            ("/api/diff", {"a": "\u00b2", "b": "1"}),
            ("/compare", {"a": "9999999999999999999", "b": "1"}),
            # the pages read a cursor as the API does (a bad one was the first page), and
            # every list refuses a range that ends before it starts (stats and runs gave none)
            ("/", {"before": "abc"}),
            ("/runs", {"before": "9999999999999999999"}),
            ("/api/stats", {"since": "2026-02-01", "until": "2026-01-01"}),
            ("/api/runs", {"since": "2026-02-01", "until": "2026-01-01"}),
        ]:
            async with ui.get(path, params=query) as resp:
                assert resp.status == 400, (path, query)
                assert all(h in resp.headers for h in SECURITY_HEADERS)
                if "before" in query:
                    assert "before must be a cursor" in await resp.text(), (path, query)


FILTER_KEYS = ("q", "model", "state", "endpoint", "run", "status", "errors", "since")
RUN_KEYS = ("name", "agent_id", "user", "tag", "status", "errors", "since")
VALUES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["\x00", "1", "0", "4xx", "running", TOO_BIG, "2026-01-01T00:00:00Z"]),
)


async def _filters_never_break(db_url: str, exchange_query: dict, run_query: dict) -> None:
    store = Store(db_url)
    await store.open(migrate_schema=False)
    try:
        try:
            f = exchange_filter(exchange_query)
        except UserError:
            pass
        else:
            await store.list_exchanges(f, 5, None)
        try:
            rf = run_filter(run_query)
        except UserError:
            pass
        else:
            await RunStore(store).list_runs(rf, 5, None)
    finally:
        await store.close()


@settings(
    max_examples=30,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    exchange_query=st.dictionaries(st.sampled_from(FILTER_KEYS), VALUES, max_size=4),
    run_query=st.dictionaries(st.sampled_from(RUN_KEYS), VALUES, max_size=4),
)
def test_any_filter_value_is_a_user_error_or_a_query_the_database_takes(
    db_url: str, exchange_query: dict, run_query: dict
):
    """What the API, the pages and the CLI read from a query string either is refused with
    a message (400, exit 2) or runs on both databases: never a database error (a 500)."""
    asyncio.run(_filters_never_break(db_url, exchange_query, run_query))


# -- re-pricing -------------------------------------------------------------------------------

PRICES = '[models."my-private-finetune"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 2000.0\n'
CHEAPER = '[models."my-private-finetune"]\ninput_per_mtok = 500.0\noutput_per_mtok = 1000.0\n'


async def _totals(gw: Gateway, run: str) -> tuple[dict, dict, dict]:
    _, page = await api(gw, "/api/runs", name=run)
    _, stats = await api(gw, "/api/stats")
    by_model = {row["model"]: row for row in stats["by_model"]}
    return page["items"][0], stats["totals"], by_model["my-private-finetune"]


async def test_prices_added_later_and_reprice_update_every_total(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await call(gw, "priced", run="pricey")
        await call(gw, "one", run="pricey", model="my-private-finetune")
        await call(gw, "two", run="pricey", model="my-private-finetune")
        await gw.recorder.drained(timeout=10)
        run, totals, model = await _totals(gw, "pricey")
        assert run["unpriced_calls"] == totals["unpriced_calls"] == model["unpriced_calls"] == 2
        known = run["total_cost_usd"]
        assert known > 0 and model["cost_usd"] == 0.0

    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    db = make_settings(upstream.url, db_url, tmp_path).db  # the same database, migrated once
    async with running(make_settings(upstream.url, db, tmp_path, prices=str(prices))) as gw:
        await gw.costs_filled  # priced at start: the run's total follows
        run, totals, model = await _totals(gw, "pricey")
        costs = [i["cost_usd"] for i in await exchanges(gw, model="my-private-finetune")]
        assert all(c is not None and c > 0 for c in costs)
        assert run["unpriced_calls"] == totals["unpriced_calls"] == model["unpriced_calls"] == 0
        assert run["total_cost_usd"] == pytest.approx(known + sum(costs))
        assert model["cost_usd"] == pytest.approx(sum(costs))

    prices.write_text(CHEAPER)
    flags = ["--db", db, "--prices", str(prices), "--model", "my-private-finetune"]
    code, out = await cli("reprice", *flags, "--dry-run")
    assert code == 0 and "would reprice 2 of 2 calls" in out, out
    code, out = await cli("reprice", *flags, "--since", "1d")
    assert code == 0 and "repriced 2 of 2 calls" in out, out
    code, out = await cli("reprice", "--db", db, "--prices", str(prices))
    assert code == 0 and "repriced 0 of 3 calls" in out, out

    async with running(make_settings(upstream.url, db, tmp_path, prices=str(prices))) as gw:
        run, totals, model = await _totals(gw, "pricey")
        halved = [i["cost_usd"] for i in await exchanges(gw, model="my-private-finetune")]
        assert halved == pytest.approx([c / 2 for c in costs])
        assert run["total_cost_usd"] == pytest.approx(known + sum(halved))
        assert model["cost_usd"] == pytest.approx(sum(halved))
        assert totals["cost_usd"] == pytest.approx(known + sum(halved))
        await assert_rollups_true(gw.store)  # every rollup row equals a recount
        (recounted,) = await gw.store.rows(
            "SELECT r.total_cost_usd AS kept, (SELECT SUM(cost_usd) FROM exchanges e "
            "WHERE e.run_id = r.id) AS summed FROM runs r WHERE r.name = 'pricey'"
        )
        assert recounted["kept"] == pytest.approx(recounted["summed"])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--since", "yesterday-ish"], "--since: not a time"),
        (["--since", "inf"], "--since: not a time"),
        (["--model", ""], "--model: not a model name"),
        (["--bogus"], "No such option"),
    ],
)
async def test_reprice_refuses_bad_options(tmp_path: Path, args: list[str], says: str):
    code, out = await cli("reprice", "--db", f"sqlite://{tmp_path}/x.db", *args)
    assert code == 2 and says in out, out


# -- exact where it matters -----------------------------------------------------------------


async def _chat(gw: Gateway, messages: list[dict], headers: dict[str, str]) -> dict:
    payload = {"model": "mistral-small-latest", "messages": messages, "tools": TOOLS}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.proxy_url}/v1/chat/completions", json=payload, headers={**AUTH, **headers}
        ) as resp,
    ):
        assert resp.status == 200
        return (await resp.json())["choices"][0]["message"]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


async def test_a_reused_tool_call_id_pairs_each_ask_with_its_own_result(gateway: Gateway):
    """Providers reuse short ids: the n-th result of an id answers its n-th ask, and no
    tool call takes a negative time or points back to an earlier call."""
    headers = {"X-AgentOps-Run": "reuse", "x-fake-tool-call-id": "abc123XYZ"}
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris?"}]
    for city in ("Paris", "Lyon"):
        asked = await _chat(gateway, messages, headers)
        assert asked["tool_calls"][0]["id"] == "abc123XYZ"
        messages += [
            {"role": "assistant", "content": "", "tool_calls": asked["tool_calls"]},
            {"role": "tool", "tool_call_id": "abc123XYZ", "name": "get_weather",
             "content": f"sunny in {city}"},
        ]  # fmt: skip
        if city == "Paris":
            messages.append({"role": "user", "content": "And in Lyon?"})
    await _chat(gateway, messages, headers)
    await gateway.recorder.drained(timeout=10)

    _, page = await api(gateway, "/api/runs", name="reuse")
    _, run = await api(gateway, f"/api/runs/{page['items'][0]['id']}")
    steps = [e["id"] for e in sorted(run["exchanges"], key=lambda e: int(e["id"]))]
    calls = sorted(run["tool_calls"], key=lambda t: t["step"])
    assert [t["call_id"] for t in calls] == ["abc123XYZ", "abc123XYZ"]
    assert [t["return_value"] for t in calls] == ["sunny in Paris", "sunny in Lyon"]
    assert [t["exchange_id"] for t in calls] == steps[:2]
    assert [t["result_exchange_id"] for t in calls] == steps[1:]
    assert all(t["latency_ms"] is not None and t["latency_ms"] >= 0 for t in calls)


def test_exact_percentiles_interpolate_between_ranks():
    assert exact_percentile([], 0.5) is None
    assert exact_percentile([1.1], 0.5) == exact_percentile([1.1], 0.95) == 1.1
    assert exact_percentile([10.0, 20.0], 0.5) == 15.0
    assert exact_percentile([float(v) for v in range(1, 101)], 0.95) == pytest.approx(95.05)


async def test_small_groups_get_exact_percentiles_labelled_so(gateway: Gateway):
    for n in range(3):
        await call(gateway, f"quick {n}", model="codestral-latest")
    await gateway.recorder.drained(timeout=10)
    found = await gateway.store.rows(
        "SELECT latency_ms FROM exchanges WHERE model = 'codestral-latest' ORDER BY latency_ms"
    )
    latencies = [row["latency_ms"] for row in found]
    rollups = gateway.store.rollups
    hour = await rollups.first_hour()
    assert hour is not None
    groups = await rollups.by_value("model", hour, hour + 2)
    (group,) = [g for g in groups if g["value"] == "codestral-latest"]
    assert group["percentiles"] == "exact"
    assert group["p50_ms"] == pytest.approx(latencies[1])  # the middle one, not a bucket's
    assert group["p95_ms"] == pytest.approx(latencies[1] + 0.9 * (latencies[2] - latencies[1]))
    async with aiohttp.ClientSession(gateway.ui_url) as ui, ui.get("/dashboard") as resp:
        html = await resp.text()
    assert 'data-percentiles="exact"' in html and "p50 and p95 are exact" in html


async def test_an_unhandled_error_is_a_500_with_the_security_headers():
    """A bug is still answered with the headers (the 500 page used to lack them)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from webui import security_headers

    async def broken(request: web.Request) -> web.Response:
        raise KeyError("server_side")

    app = web.Application(middlewares=[security_headers])
    app.router.add_get("/api/broken", broken)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/broken")
        assert resp.status == 500 and "server_side" not in await resp.text()
        assert all(h in resp.headers for h in SECURITY_HEADERS)


async def test_migration_counts_the_failed_and_unpriced_calls_of_existing_runs(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await call(gw, "fine", run="old")
        await call(gw, "boom", run="old", headers={"x-fake-status": "500"})
        await call(gw, "free?", run="old", model="my-private-finetune")
        await gw.recorder.drained(timeout=10)
    url = Store(db_url).url
    await migrate(config=tortoise_config(url), target="models.0010_body_deltas")
    store = Store(db_url)
    await store.open(migrate_schema=False)  # as 0010 left them: no error for the 500
    try:
        await store.conn.execute_query("UPDATE exchanges SET error = NULL")
    finally:
        await store.close()
    store = Store(db_url)
    await store.open()  # 0011 again: counts and errors from the rows
    try:
        (run,) = await store.rows("SELECT error_count, unpriced_calls FROM runs")
        assert (run["error_count"], run["unpriced_calls"]) == (1, 1)
        failed = await store.rows("SELECT error, error_type FROM exchanges WHERE status >= 400")
        assert failed == [{"error": "HTTP 500", "error_type": "http_error"}]
    finally:
        await store.close()
