"""Budgets (gateway/store/budgets.py, gateway/proxy/budgets.py, gateway/api/budgets.py):
through the real gateway, the fake upstream and the real mistralai SDK, on SQLite and
PostgreSQL; periods and validation as units."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import MistralError

from gateway.app import Gateway
from gateway.capture.exchange import Exchange, new_id
from gateway.proxy.budgets import Crossing, _dollars, body_string, usage_of
from gateway.settings import ConfigError, Settings
from gateway.store.budgets import (
    BudgetError,
    load_file,
    parse_budget,
    period_end,
    period_start,
    timezone,
)
from tests.conftest import CLI, ROOT, Upstream, free_port, make_settings, running, wait_until

KEY = "budget-test-key-000011112222"
SMALL = "mistral-small-latest"
LARGE = "mistral-large-latest"


async def api(gw: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.request(method, path, json=body) as resp,
    ):
        return resp.status, await resp.json()


def complete(base: str, model: str = SMALL) -> Any:
    with Mistral(api_key=KEY, server_url=base) as client:
        return client.chat.complete(model=model, messages=[{"role": "user", "content": "hi"}])


async def spent(gw: Gateway, name: str) -> float:
    await gw.recorder.drained(timeout=20)
    status, listing = await api(gw, "GET", "/api/budgets")
    assert status == 200
    return next(b for b in listing["items"] if b["name"] == name)["spent_usd"]


# -- end to end ---------------------------------------------------------------------------


async def test_a_hard_budget_refuses_before_the_upstream_and_records_the_refusal(
    gateway: Gateway, upstream: Upstream
) -> None:
    status, made = await api(
        gateway,
        "POST",
        "/api/budgets",
        {
            "name": "small cap",
            "scope": {"kind": "model", "value": SMALL},
            "period": "day",
            "limit_usd": 1e-7,
            "hard": True,
        },
    )
    assert status == 201 and made["spent_usd"] == 0 and made["hard"] is True and made["id"]
    base = f"{gateway.proxy_url}/r/capped-run"
    await asyncio.to_thread(complete, base)  # under the limit: goes through, costs more
    await gateway.recorder.drained(timeout=20)
    (stored,) = await gateway.store.rows("SELECT cost_usd FROM exchanges")
    # counted once: the local estimate is dropped once the database holds the call
    assert stored["cost_usd"] > 1e-7
    assert await spent(gateway, "small cap") == pytest.approx(stored["cost_usd"])
    seen = len(upstream.requests)

    with pytest.raises(MistralError) as refused:
        await asyncio.to_thread(complete, base)
    error = refused.value
    assert error.status_code == 429
    assert error.headers["X-AgentOps-Budget"] == "small cap"
    body = error.raw_response.json()
    assert body["object"] == "error" and body["type"] == "budget_exceeded"
    assert body["param"] is None and body["code"] == "429" and "small cap" in body["message"]
    assert len(upstream.requests) == seen  # the upstream never saw it

    await asyncio.to_thread(complete, base, LARGE)  # out of the budget's scope: passes
    assert len(upstream.requests) == seen + 1

    await gateway.recorder.drained(timeout=20)
    rows = await gateway.store.rows(
        "SELECT status, error_type, run_id FROM exchanges WHERE status = 429"
    )
    assert [(r["status"], r["error_type"]) for r in rows] == [(429, "budget_exceeded")]
    run = await gateway.store.rows(
        "SELECT name, error_count FROM runs WHERE id = ?", [rows[0]["run_id"]]
    )
    assert run == [{"name": "capped-run", "error_count": 1}]

    status, listing = await api(gateway, "GET", "/api/budgets")
    (item,) = listing["items"]
    assert item["state"] == "exceeded" and item["crossed"] == [0.8, 1.0]

    status, _ = await api(gateway, "DELETE", f"/api/budgets/{made['id']}")
    assert status == 200
    await asyncio.to_thread(complete, base)  # no budget, no refusal
    assert len(upstream.requests) == seen + 2


async def test_a_raised_limit_opens_the_scope_at_once(gateway: Gateway, upstream: Upstream) -> None:
    """PATCH /api/budgets/{id} changes a budget's limit (or hardness) in place: a used-up hard
    budget refuses, a raised limit lets the next call through, its spend and period kept.
    Name, scope and period cannot change; an unknown id is a 404."""
    status, made = await api(
        gateway,
        "POST",
        "/api/budgets",
        {"name": "cap", "scope": {"kind": "gateway"}, "period": "day", "limit_usd": 1e-7},
    )
    status, changed = await api(gateway, "PATCH", f"/api/budgets/{made['id']}", {"hard": True})
    assert status == 200 and changed["hard"] is True and changed["limit_usd"] == 1e-7
    await asyncio.to_thread(complete, gateway.proxy_url)  # under the limit: passes
    assert await spent(gateway, "cap") > 1e-7
    with pytest.raises(MistralError) as refused:
        await asyncio.to_thread(complete, gateway.proxy_url)
    assert refused.value.status_code == 429

    status, raised = await api(gateway, "PATCH", f"/api/budgets/{made['id']}", {"limit_usd": 1000})
    assert status == 200 and raised["limit_usd"] == 1000 and raised["state"] == "ok"
    assert raised["spent_usd"] > 1e-7 and raised["period_start"] == made["period_start"]
    seen = len(upstream.requests)
    await asyncio.to_thread(complete, gateway.proxy_url)  # no refresh to wait for
    assert len(upstream.requests) == seen + 1

    for body, word in [
        ({"name": "other"}, "'name' cannot change"),
        ({"period": "week"}, "'period' cannot change"),
        ({"limit_usd": -1}, "limit_usd must be a positive number"),
        ({"hard": "yes"}, "hard must be true or false"),
        ({}, "limit_usd and/or hard"),
        ([1], "must be a JSON object"),
    ]:
        status, error = await api(gateway, "PATCH", f"/api/budgets/{made['id']}", body)
        assert status == 400 and word in error["error"], (body, error)
    status, _ = await api(gateway, "PATCH", "/api/budgets/123456789", {"hard": False})
    assert status == 404


async def test_spend_follows_each_scope(gateway: Gateway) -> None:
    """The spend query (one scan for all budgets) on SQLite and PostgreSQL, per scope kind."""
    scopes = {
        "all": {"kind": "gateway"},
        "ann": {"kind": "user", "value": "ann"},
        "bob": {"kind": "user", "value": "bob"},
        "run": {"kind": "run", "value": "nightly"},
        "agent": {"kind": "agent", "value": "planner"},
        "large": {"kind": "model", "value": LARGE},
        "mistral": {"kind": "provider", "value": "mistral"},
        "other-key": {"kind": "key", "value": "sha256:000000000000...nope"},
    }
    for name, scope in scopes.items():
        status, _ = await api(
            gateway,
            "POST",
            "/api/budgets",
            {"name": name, "scope": scope, "period": "month", "limit_usd": 100},
        )
        assert status == 201
    headers = {"X-AgentOps-User": "ann", "X-AgentOps-Agent": "planner"}
    with Mistral(api_key=KEY, server_url=f"{gateway.proxy_url}/r/nightly") as client:
        await asyncio.to_thread(
            client.chat.complete,
            model=SMALL,
            messages=[{"role": "user", "content": "hello"}],
            http_headers=headers,
        )
    await asyncio.to_thread(complete, gateway.proxy_url, LARGE)
    await gateway.recorder.drained(timeout=20)
    costs = await gateway.store.rows("SELECT model, cost_usd FROM exchanges ORDER BY id")
    small, large = (row["cost_usd"] for row in costs)
    _, listing = await api(gateway, "GET", "/api/budgets")
    got = {item["name"]: item["spent_usd"] for item in listing["items"]}
    want = {
        "all": small + large,
        "ann": small,
        "bob": 0,
        "run": small,
        "agent": small,
        "large": large,
        "mistral": small + large,
        "other-key": 0,
    }
    assert got == pytest.approx(want)
    # a minute on, the calls are summed once into the settled totals, then only newer ones
    for later in (45, 50, 200):
        standings = await gateway.guard.refresh(datetime.now(UTC) + timedelta(seconds=later))
        assert {s.budget.name: s.spent_usd for s in standings} == pytest.approx(want), later


async def test_a_soft_budget_warns_at_80_and_100_percent_and_refuses_nothing(
    sqlite_gateway: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw = sqlite_gateway
    crossings: list[Crossing] = []
    gw.guard.on_crossing.append(crossings.append)
    status, _ = await api(
        gw,
        "POST",
        "/api/budgets",
        {"name": "soft", "scope": {"kind": "gateway"}, "period": "week", "limit_usd": 1e-7},
    )
    assert status == 201
    with caplog.at_level(logging.WARNING, logger="agentops.budgets"):
        await asyncio.to_thread(complete, gw.proxy_url)
        await wait_until(lambda: _true(len(crossings) == 2))
        await asyncio.to_thread(complete, gw.proxy_url)  # soft: still answered
        await spent(gw, "soft")
    assert [c.threshold for c in crossings] == [0.8, 1.0]  # once each per period
    assert all(c.budget.name == "soft" for c in crossings)
    warnings = [r.getMessage() for r in caplog.records if r.name == "agentops.budgets"]
    assert len(warnings) == 2 and "80% reached" in warnings[0] and "100%" in warnings[1]
    assert len(upstream.requests) == 2
    _, listing = await api(gw, "GET", "/api/budgets")
    assert listing["items"][0]["state"] == "exceeded"

    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.get("/metrics") as resp,
    ):
        text = await resp.text()
    assert (
        'agentops_budget_limit_usd{budget="soft",hard="false",period="week",scope="gateway"} 1e-07'
        in text
    )
    assert 'agentops_budget_spend_usd{budget="soft"' in text


async def _true(value: bool) -> bool:
    return value


async def test_the_api_names_what_is_wrong(sqlite_gateway: Gateway) -> None:
    gw = sqlite_gateway
    good = {"name": "b", "scope": {"kind": "user", "value": "ann"}, "period": "day", "limit_usd": 5}
    for change, word in [
        ({"name": ""}, "name"),
        ({"scope": {"kind": "team", "value": "x"}}, "scope.kind"),
        ({"scope": {"kind": "user"}}, "scope.value"),
        # a key scope names a fingerprint as exchanges show it; anything else never matches
        ({"scope": {"kind": "key", "value": "sk-...1234"}}, "fingerprint"),
        ({"scope": None}, "scope"),
        ({"period": "year"}, "period"),
        ({"limit_usd": 0}, "limit_usd"),
        ({"limit_usd": "5"}, "limit_usd"),
        ({"hard": "yes"}, "hard"),
        ({"color": "red"}, "color"),
    ]:
        status, answer = await api(gw, "POST", "/api/budgets", {**good, **change})
        assert status == 400 and word in answer["error"], (change, answer)
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.post(
            "/api/budgets", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as resp,
    ):
        assert resp.status == 400
    assert (await api(gw, "POST", "/api/budgets", good))[0] == 201
    status, answer = await api(gw, "POST", "/api/budgets", good)
    assert status == 400 and "exists" in answer["error"]
    assert (await api(gw, "DELETE", "/api/budgets/12345"))[0] == 404
    assert (await api(gw, "DELETE", "/api/budgets/nope"))[0] == 404
    # the same name sent at once: one is added, the others are told the name is taken
    racing = await asyncio.gather(
        *(api(gw, "POST", "/api/budgets", {**good, "name": "raced"}) for _ in range(6))
    )
    assert sorted(status for status, _ in racing) == [201] + [400] * 5, racing


async def test_a_budget_file_is_loaded_at_start(upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(
        '[[budget]]\nname = "team"\nperiod = "month"\nlimit_usd = 50\nhard = true\n'
        'scope = { kind = "key", value = "sha256:5aab9fe75a4b...1234" }\n\n'
        '[budgets.everything]\nperiod = "day"\nlimit_usd = 10\nscope = { kind = "gateway" }\n'
    )
    settings = make_settings(
        upstream.url,
        f"sqlite://{tmp_path / 'gw.db'}",
        tmp_path,
        budgets=str(path),
        budget_timezone="Europe/Paris",
    )
    async with running(settings) as gw:
        _, listing = await api(gw, "GET", "/api/budgets")
        items = {item["name"]: item for item in listing["items"]}
        assert items["team"]["scope"] == {"kind": "key", "value": "sha256:5aab9fe75a4b...1234"}
        assert items["team"]["hard"] is True and items["everything"]["hard"] is False
        assert items["everything"]["period_start"].endswith(("+00:00",))
    async with running(settings) as gw:  # loaded again: replaced by name, not doubled
        _, listing = await api(gw, "GET", "/api/budgets")
        assert sorted(item["name"] for item in listing["items"]) == ["everything", "team"]


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("[[budget]]\nname = 'x'\n", "scope"),
        (
            "[[budget]]\nname = 'x'\nperiod = 'day'\nlimit_usd = -1\nscope = {kind='gateway'}",
            "limit_usd",
        ),
        ("[other]\n", "other"),
        ("not toml [", "not TOML"),
    ],
)
def test_a_bad_budget_file_says_what_is_wrong(tmp_path: Path, text: str, word: str) -> None:
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(BudgetError, match=word):
        load_file(str(path))
    with pytest.raises(BudgetError, match="cannot read"):
        load_file(str(tmp_path / "missing.toml"))


def test_an_unknown_budget_timezone_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="budget-timezone"):
        Settings.build({"budget_timezone": "Mars/Olympus"}, {})


# -- units ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "period", "now", "start", "end"),
    [
        # Paris is UTC+1 in winter: the local day began at 23:00 UTC the day before
        (
            "Europe/Paris",
            "day",
            "2026-01-15T23:30:00+00:00",
            "2026-01-15T23:00:00+00:00",
            "2026-01-16T23:00:00+00:00",
        ),
        (
            "Europe/Paris",
            "day",
            "2026-01-15T22:59:59+00:00",
            "2026-01-14T23:00:00+00:00",
            "2026-01-15T23:00:00+00:00",
        ),
        # the day clocks go forward (29 March 2026) is 23 hours long
        (
            "Europe/Paris",
            "day",
            "2026-03-29T12:00:00+00:00",
            "2026-03-28T23:00:00+00:00",
            "2026-03-29T22:00:00+00:00",
        ),
        # weeks start on Monday; Sunday 2026-03-01 23:30 UTC is Monday 00:30 in Paris
        (
            "Europe/Paris",
            "week",
            "2026-03-01T23:30:00+00:00",
            "2026-03-01T23:00:00+00:00",
            "2026-03-08T23:00:00+00:00",
        ),
        (
            "Europe/Paris",
            "week",
            "2026-03-01T22:30:00+00:00",
            "2026-02-22T23:00:00+00:00",
            "2026-03-01T23:00:00+00:00",
        ),
        # a month across the DST change: starts at UTC+1, ends at UTC+2
        (
            "Europe/Paris",
            "month",
            "2026-03-31T21:59:00+00:00",
            "2026-02-28T23:00:00+00:00",
            "2026-03-31T22:00:00+00:00",
        ),
        (
            "Europe/Paris",
            "month",
            "2026-03-31T22:00:00+00:00",
            "2026-03-31T22:00:00+00:00",
            "2026-04-30T22:00:00+00:00",
        ),
        # half-hour offsets, and zones west of UTC
        (
            "Asia/Kolkata",
            "day",
            "2026-06-10T18:29:00+00:00",
            "2026-06-09T18:30:00+00:00",
            "2026-06-10T18:30:00+00:00",
        ),
        (
            "America/New_York",
            "month",
            "2026-01-01T04:59:00+00:00",
            "2025-12-01T05:00:00+00:00",
            "2026-01-01T05:00:00+00:00",
        ),
        (
            "UTC",
            "month",
            "2026-02-28T12:00:00+00:00",
            "2026-02-01T00:00:00+00:00",
            "2026-03-01T00:00:00+00:00",
        ),
    ],
)
def test_periods_follow_the_calendar_of_the_budget_timezone(
    zone: str, period: str, now: str, start: str, end: str
) -> None:
    at = datetime.fromisoformat(now)
    assert period_start(period, at, timezone(zone)) == datetime.fromisoformat(start)
    assert period_end(period, at, timezone(zone)) == datetime.fromisoformat(end)
    assert period_start(period, at, timezone(zone)).tzinfo == UTC


def test_parse_budget_keeps_what_it_is_given() -> None:
    budget = parse_budget(
        {
            "name": " n ",
            "scope": {"kind": "model", "value": SMALL},
            "period": "week",
            "limit_usd": 3,
        }
    )
    assert (budget.name, budget.scope.value, budget.limit_usd, budget.hard) == (
        "n",
        SMALL,
        3.0,
        False,
    )


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b'{"model": "mistral-small-latest", "messages": []}', "mistral-small-latest"),
        (b'{"tools": [{"model": {"type": "string"}}], "model":"m2"}', "m2"),
        (b'{"messages": [{"content": "say \\"model\\": \\"x\\""}], "model": "m3"}', "m3"),
        (b'{"messages": []}', None),
        (b"", None),
    ],
)
def test_body_string_finds_the_model_without_parsing(body: bytes, found: str | None) -> None:
    assert body_string(body, b'"model"') == found


def test_the_check_costs_nothing_while_no_hard_budget_is_used_up() -> None:
    from gateway.proxy.budgets import BudgetGuard

    guard = BudgetGuard.__new__(BudgetGuard)
    guard.blocked = ()
    exchange = Exchange(
        new_id(), 0.0, "POST", "/v1/chat/completions", "/v1/chat/completions", "", [], b""
    )
    assert guard.refusing(exchange, b"{}") is None


async def test_the_budgets_page_lists_adds_and_deletes(sqlite_gateway: Gateway) -> None:
    gw = sqlite_gateway
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
    async with aiohttp.ClientSession(gw.ui_url, cookie_jar=jar) as http:
        async with http.get("/budgets") as resp:
            assert resp.status == 200
            html = await resp.text()
        assert "No budgets yet" in html and 'href="/budgets"' in html
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)[1]  # type: ignore[index]
        form = {
            "name": "<b>team</b>",
            "kind": "user",
            "value": "ann",
            "period": "month",
            "limit_usd": "25",
            "hard": "on",
            "csrf_token": token,
        }
        async with http.post("/budgets", data={**form, "limit_usd": "-1"}) as resp:
            assert resp.status == 400 and "limit_usd" in await resp.text()
        async with http.post("/budgets", data=form) as resp:  # follows the 303
            html = await resp.text()
        assert resp.status == 200 and "&lt;b&gt;team&lt;/b&gt;" in html and "<b>team" not in html
        assert "<meter" in html and "$25.00" in html
        (budget,) = (await api(gw, "GET", "/api/budgets"))[1]["items"]
        assert budget["hard"] is True and budget["scope"] == {"kind": "user", "value": "ann"}
        assert f'action="/budgets/{budget["id"]}/delete"' in html
        assert 'aria-label="Delete budget &lt;b&gt;team&lt;/b&gt;"' in html
        async with http.post(f"/budgets/{budget['id']}/delete", data={"csrf_token": token}) as resp:
            assert resp.status == 200 and "No budgets yet" in await resp.text()


@pytest.mark.parametrize(
    ("tail", "usage"),
    [
        (b'{"id": "a", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}', (3, 4)),
        (
            b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6, '
            b'"prompt_tokens_details": {"cached_tokens": 1}}}\n\ndata: [DONE]\n\n',
            (5, 6),
        ),
        (b'{"id": "a"}', None),
        (b'{"usage": {"prompt_tokens": 3', None),
    ],
)
def test_the_local_estimate_reads_usage_alone(tail: bytes, usage: tuple[int, int] | None) -> None:
    found = usage_of(tail)
    got = None if found is None else (found["prompt_tokens"], found["completion_tokens"])
    assert got == usage


def test_a_finished_call_counts_at_once_against_hard_budgets() -> None:
    """Between refreshes the proxy adds its own calls' cost, so a hard budget shuts at once."""
    from gateway.capture.pricing import PriceTable
    from gateway.proxy.budgets import BudgetGuard, Standing

    guard = BudgetGuard(None, timezone("UTC"), PriceTable.load(None))  # type: ignore[arg-type]
    cap = parse_budget(
        {
            "name": "cap",
            "scope": {"kind": "user", "value": "ann"},
            "period": "day",
            "limit_usd": 1e-6,
            "hard": True,
        }
    )
    now = datetime.now(UTC)
    guard.standings = [Standing(cap, now, now)]
    guard._settle()
    assert guard.blocked == ()
    exchange = Exchange(
        new_id(),
        0.0,
        "POST",
        "/v1/chat/completions",
        "/v1/chat/completions",
        "",
        [],
        b'{"model": "mistral-small-latest"}',
        hints={"user": "ann"},
    )
    exchange.status = 200
    exchange.response_chunks = [b'{"usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}']
    guard._count(exchange)
    assert guard.standings[0].local_usd == pytest.approx((1000 * 0.15 + 1000 * 0.6) / 1e6)
    assert guard.blocked == (cap,)
    assert guard.refusing(exchange, exchange.request_body) == cap
    bob = Exchange(
        new_id(),
        0.0,
        "POST",
        "/v1/chat/completions",
        "/v1/chat/completions",
        "",
        [],
        b"{}",
        hints={"user": "bob"},
    )
    assert guard.refusing(bob, b"{}") is None


@pytest.mark.slow
@pytest.mark.postgres
async def test_every_worker_enforces_from_the_shared_totals(
    upstream: Upstream, pg_url: str, tmp_path: Path
) -> None:
    """`serve --workers 2`: a budget from the file, spend from one worker's call, and then
    both workers refuse (each reads the shared database totals)."""
    path = tmp_path / "budgets.toml"
    path.write_text(
        '[[budget]]\nname = "all"\nperiod = "day"\nlimit_usd = 1e-7\nhard = true\n'
        'scope = { kind = "gateway" }\n'
    )
    port, ui_port = free_port(), free_port()
    log = (tmp_path / "gateway.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        *("--upstream", upstream.url, "--db", pg_url, "--port", str(port), "--workers", "2"),
        *("--ui-port", str(ui_port), "--spool-dir", str(tmp_path / "spool")),
        *("--budgets", str(path), "--budget-timezone", "Asia/Kolkata"),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    proxy = f"http://127.0.0.1:{port}"

    async def workers_up() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{ui_port}/healthz") as resp,
            ):
                workers = (await resp.json()).get("workers", [])
        except aiohttp.ClientError:
            return False
        return len(workers) == 2 and all(w["state"] == "up" for w in workers)

    async def statuses() -> list[int]:
        async def one() -> int:
            async with (
                aiohttp.ClientSession() as http,  # a connection each: both workers take some
                http.post(
                    f"{proxy}/v1/chat/completions",
                    json={"model": SMALL, "messages": [{"role": "user", "content": "x"}]},
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as resp,
            ):
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(8))))

    try:
        await wait_until(workers_up, timeout=60)
        assert await statuses() != [429] * 8  # nothing spent yet: answered

        async def all_refused() -> bool:
            return await statuses() == [429] * 8

        await wait_until(all_refused, timeout=20)
        seen = len(upstream.requests)
        assert await statuses() == [429] * 8 and len(upstream.requests) == seen
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(3.21e-05, "0.000032"), (12.5, "12.5"), (0.0, "0"), (500, "500"), (1e-9, "0.000000001")],
)
def test_log_lines_show_dollars_as_decimals(amount: float, shown: str) -> None:
    assert _dollars(amount) == shown
