"""Budget crossings as alerts (a `budget` rule, gateway/integrations/alerts.py): real calls
through the real gateway to the fake upstream, a soft budget through /api/budgets, notices
to a local webhook receiver, the history at /api/alerts. On SQLite and PostgreSQL.

The evaluator is run by hand (its loop waits an hour here), so each round is one known
evaluation: its `now` can be put in the next period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.integrations.alerts import AlertEvaluator
from gateway.integrations.webhooks import Webhooks
from tests.conftest import Upstream, make_settings, running, wait_until
from tests.webhook_receiver import Receiver

AUTH = {"Authorization": "Bearer key-for-budget-alert-tests-1234"}
ITEM_FIELDS = {"id", "rule", "state", "started_at", "resolved_at", "value", "threshold"}


@pytest.fixture
async def gw(upstream: Upstream, db_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(upstream.url, db_url, tmp_path, alert_interval=3600)
    async with running(settings) as gw:
        gw.webhooks.retry_base = 0.1
        yield gw


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


async def call(gw: Gateway) -> None:
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=AUTH) as resp,
    ):
        assert resp.status == 200
    await gw.recorder.drained(timeout=20)


async def api(gw: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.request(method, path, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def history(gw: Gateway) -> list[dict[str, Any]]:
    status, body = await api(gw, "GET", "/api/alerts")
    assert status == 200
    return body["items"]


async def test_soft_budget_crossings_reach_history_and_webhook_once_per_period(
    gw: Gateway, receiver: Receiver
) -> None:
    status, rule = await api(
        gw,
        "POST",
        "/api/alert-rules",
        {"name": "spend caps", "kind": "budget", "threshold": 0.8, "webhook_url": receiver.url()},
    )
    assert status == 201, rule
    await call(gw)
    (row,) = await gw.store.rows("SELECT cost_usd FROM exchanges")
    cost = float(row["cost_usd"])
    assert cost > 0
    budget = {"name": "team", "scope": {"kind": "gateway"}, "period": "day"}
    status, made = await api(gw, "POST", "/api/budgets", {**budget, "limit_usd": cost / 0.85})
    assert status == 201, made

    async def notices(count: int) -> bool:
        return len(receiver.bodies()) >= count

    await gw.alerts.evaluate()  # 85% spent: the 80% crossing
    await wait_until(lambda: notices(1))
    first = receiver.bodies()[0]
    assert first["event"] == "firing" and first["alert"]["threshold"] == 0.8
    assert first["alert"]["value"] == pytest.approx(0.85)
    assert "budget 'team' (day)" in first["text"]
    assert " over " not in first["text"]  # window_seconds is unused: the period counts
    for _ in range(3):  # still over 80%: told once
        await gw.alerts.evaluate()
    # a restarted gateway or a replica (a new evaluator, nothing in memory) tells it no more
    replica = AlertEvaluator(gw.alert_store, Webhooks(), 3600, zone=ZoneInfo("UTC"))
    await replica.evaluate()
    assert replica.firing == {(int(rule["id"]), "spend caps"): 1}
    [item] = await history(gw)
    assert set(item) >= ITEM_FIELDS
    assert (item["rule"], item["state"], item["threshold"]) == (rule["id"], "firing", 0.8)
    assert item["resolved_at"] is None and item["value"] == pytest.approx(0.85)

    await call(gw)  # 170%: the 100% crossing, the 80% alert closed quietly
    await gw.alerts.evaluate()
    await wait_until(lambda: notices(2))
    await gw.alerts.evaluate()
    assert len(receiver.bodies()) == 2
    second = receiver.bodies()[1]
    assert second["event"] == "firing" and second["alert"]["threshold"] == 1.0
    newest, older = await history(gw)
    assert (newest["state"], newest["threshold"]) == ("firing", 1.0)
    assert newest["value"] == pytest.approx(1.7)
    assert (older["state"], older["threshold"]) == ("resolved", 0.8)

    # the next day is a new period: nothing spent in it yet, so the alert resolves (told)
    await gw.alerts.evaluate(datetime.now(UTC) + timedelta(days=1))
    await wait_until(lambda: notices(3))
    assert receiver.bodies()[2]["event"] == "resolved"
    assert [i["state"] for i in await history(gw)] == ["resolved", "resolved"]


async def test_a_budget_rule_names_one_budget_and_starts_at_a_level(
    gw: Gateway, receiver: Receiver
) -> None:
    bad = [
        ({"threshold": 0.5}, "0.8 or 1"),
        ({"scope": {"kind": "model", "value": "m"}}, "budget rule's scope"),
    ]
    base = {"name": "one", "kind": "budget", "threshold": 1.0}
    for change, message in bad:
        status, body = await api(gw, "POST", "/api/alert-rules", {**base, **change})
        assert status == 400 and message in body["error"], body
    status, body = await api(
        gw,
        "POST",
        "/api/alert-rules",
        {**base, "kind": "spend", "scope": {"kind": "budget", "value": "x"}},
    )
    assert status == 400
    status, rule = await api(
        gw,
        "POST",
        "/api/alert-rules",
        {**base, "scope": {"kind": "budget", "value": "cap"}, "webhook_url": receiver.url()},
    )
    assert status == 201, rule
    await call(gw)
    (row,) = await gw.store.rows("SELECT cost_usd FROM exchanges")
    cost = float(row["cost_usd"])
    for name, limit in (("cap", cost / 0.9), ("other", cost / 2)):
        status, _ = await api(
            gw,
            "POST",
            "/api/budgets",
            {"name": name, "scope": {"kind": "gateway"}, "period": "month", "limit_usd": limit},
        )
        assert status == 201
    await gw.alerts.evaluate()  # "cap" at 90%: under this rule's first level; "other" not its
    assert await history(gw) == []
    await call(gw)  # "cap" at 180%
    await gw.alerts.evaluate()
    [item] = await history(gw)
    assert item["threshold"] == 1.0 and item["value"] == pytest.approx(1.8)
    await wait_until(lambda: _one(receiver))
    assert "budget 'cap' (month)" in receiver.bodies()[0]["text"]


async def _one(receiver: Receiver) -> bool:
    return len(receiver.bodies()) == 1
