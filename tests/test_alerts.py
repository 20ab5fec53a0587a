"""Alerts end to end: rules through /api/alert-rules, real calls through the real gateway to
the fake upstream, notices to a local webhook receiver (once while firing, then resolved),
retried while the receiver is down, Slack's shape, the unpriced-model rule, the history at
/api/alerts and the Prometheus gauge. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.integrations.alerts import AlertEvaluator
from gateway.integrations.webhooks import Webhooks
from gateway.store.alerts import AlertRule, AlertStore
from gateway.store.rollups import EPOCH_MS, HOUR_MS, hour_of
from gateway.writer.health import Health
from tests.conftest import Upstream, free_port, make_settings, running, wait_until
from tests.webhook_receiver import Receiver

AUTH = {"Authorization": "Bearer key-for-alert-tests-1234"}
SECRET = "T0000/B0000/XXXXsecretXXXX"


@pytest.fixture
async def gw(upstream: Upstream, db_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running(make_settings(upstream.url, db_url, tmp_path, alert_interval=0.1)) as gw:
        gw.webhooks.retry_base = 0.1
        yield gw


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


async def call(gw: Gateway, *, status: int = 200, model: str = "mistral-small-latest") -> int:
    headers = dict(AUTH)
    if status != 200:
        headers["x-fake-status"] = str(status)
    payload = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


async def api(gw: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.request(method, path, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def create(gw: Gateway, **rule: Any) -> dict[str, Any]:
    status, body = await api(gw, "POST", "/api/alert-rules", rule)
    assert status == 201, body
    return body


async def evaluated(gw: Gateway, times: int = 3) -> None:
    """Let the evaluator run `times` more rounds."""
    start = gw.alerts.evaluations
    await wait_until(lambda: _at_least(gw, start + times))


async def _at_least(gw: Gateway, count: int) -> bool:
    return gw.alerts.evaluations >= count


async def test_error_rate_fires_once_then_resolves(
    gw: Gateway, receiver: Receiver, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="agentops")
    rule = await create(
        gw,
        name="chat errors",
        kind="error_rate",
        scope={"kind": "model", "value": "mistral-small-latest"},
        window_seconds=600,
        threshold=0.5,
        webhook_url=receiver.url(f"/services/{SECRET}"),
    )
    assert rule["webhook_url"] == "http://127.0.0.1/…"  # the secret path is never shown
    path = f"/services/{SECRET}"
    assert [await call(gw, status=500) for _ in range(2)] == [500, 500]

    async def notices(count: int) -> bool:
        return len(receiver.bodies(path)) >= count

    await wait_until(lambda: notices(1))
    await evaluated(gw)  # still failing: no second notice while it fires
    assert len(receiver.bodies(path)) == 1
    firing = receiver.bodies(path)[0]
    assert firing["event"] == "firing" and firing["alert"]["value"] == 1.0
    assert firing["rule"]["name"] == "chat errors" and "2 of 2 calls failed" in firing["text"]
    _, history = await api(gw, "GET", "/api/alerts")
    [item] = history["items"]
    assert {k: item[k] for k in ("rule", "state", "value", "threshold", "resolved_at")} == {
        "rule": rule["id"],
        "state": "firing",
        "value": 1.0,
        "threshold": 0.5,
        "resolved_at": None,
    }
    assert isinstance(item["id"], str) and item["started_at"]
    await assert_gauge(gw, "chat errors", 1.0)

    assert [await call(gw) for _ in range(3)] == [200] * 3  # 2 of 5 failed: below 0.5
    await wait_until(lambda: notices(2))
    resolved = receiver.bodies(path)[1]
    assert resolved["event"] == "resolved" and resolved["alert"]["resolved_at"]
    # the notice says the value that resolved it, not the one it fired at (the alert keeps it)
    assert "is 0.4 (threshold 0.5" in resolved["text"] and "2 of 5 calls failed" in resolved["text"]
    assert resolved["alert"]["value"] == 1.0
    await evaluated(gw)
    assert len(receiver.bodies(path)) == 2
    _, history = await api(gw, "GET", f"/api/alerts?rule={rule['id']}&state=resolved")
    assert [i["state"] for i in history["items"]] == ["resolved"]
    await assert_gauge(gw, "chat errors", 0.0)
    assert SECRET not in caplog.text


async def assert_gauge(gw: Gateway, rule: str, expected: float) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession(gw.ui_url) as http, http.get("/metrics") as resp:
        text = await resp.text()
    values = {
        sample.labels["rule"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "agentops_alerts_firing"
    }
    assert values[rule] == expected


async def test_a_webhook_that_is_down_gets_the_notice_after_retry(gw: Gateway):
    port = free_port()
    late = Receiver(port)
    await create(
        gw,
        name="any spend",
        kind="spend",
        window_seconds=600,
        threshold=0,
        webhook_url=late.url("/late"),
    )
    assert await call(gw) == 200

    async def failed_once() -> bool:
        return gw.webhooks.failed_tries >= 1

    await wait_until(failed_once)
    await late.start()
    try:

        async def delivered() -> bool:
            return bool(late.bodies("/late"))

        await wait_until(delivered)
        assert late.bodies("/late")[0]["event"] == "firing"
    finally:
        await late.stop()


async def test_a_dead_webhook_never_slows_the_proxy(gw: Gateway):
    """A webhook that never answers: the calls that fire the alert are not held up by it."""
    held: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter):
        held.append(writer)

    hang = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = hang.sockets[0].getsockname()[1]
    try:
        await create(
            gw,
            name="hanging hook",
            kind="spend",
            window_seconds=600,
            threshold=0,
            webhook_url=f"http://127.0.0.1:{port}/never",
        )
        assert await call(gw) == 200

        async def firing() -> bool:
            return 1 in gw.alerts.firing.values()

        await wait_until(firing)
        started = asyncio.get_running_loop().time()
        assert [await call(gw) for _ in range(5)] == [200] * 5
        assert asyncio.get_running_loop().time() - started < 2.5
    finally:
        await gw.webhooks.close()  # before the silent server goes: no retry in flight
        for writer in held:
            writer.close()
        hang.close()
        await hang.wait_closed()


async def test_slack_shape(gw: Gateway, receiver: Receiver):
    await create(
        gw,
        name="spend watch",
        kind="spend",
        window_seconds=600,
        threshold=0,
        webhook_url=receiver.url("/slack"),
        webhook_format="slack",
    )
    assert await call(gw) == 200

    async def got() -> bool:
        return bool(receiver.bodies("/slack"))

    await wait_until(got)
    [body] = receiver.bodies("/slack")
    assert list(body) == ["text"]
    assert body["text"].startswith("[FIRING] spend watch: spend of gateway over 600 s is ")

    rule_id = (await api(gw, "GET", "/api/alert-rules"))[1]["items"][0]["id"]
    status, _ = await api(gw, "PATCH", f"/api/alert-rules/{rule_id}", {"enabled": False})
    assert status == 200

    _, history = await api(gw, "GET", "/api/alerts?state=firing")
    assert history["items"] == []  # paused while firing: closed at once, without a notice
    await evaluated(gw)
    assert len(receiver.bodies("/slack")) == 1


async def test_unpriced_model_rule(gw: Gateway, receiver: Receiver):
    rule = await create(
        gw,
        name="no price",
        kind="unpriced_model",
        window_seconds=3600,
        threshold=0,
        webhook_url=receiver.url("/unpriced"),
    )
    assert await call(gw) == 200  # priced: nothing fires
    await evaluated(gw)
    assert receiver.bodies("/unpriced") == []
    assert await call(gw, model="my-private-finetune") == 200

    async def got() -> bool:
        return bool(receiver.bodies("/unpriced"))

    await wait_until(got)
    [body] = receiver.bodies("/unpriced")
    assert body["alert"]["rule"] == rule["id"] and body["alert"]["value"] == 1.0
    assert "no price for my-private-finetune" in body["text"]


async def test_rules_api_validation_and_crud(gw: Gateway):
    bad = [
        ({"kind": "spend", "threshold": 1}, "name is required"),
        ({"name": "x", "kind": "nope", "threshold": 1}, "kind must be one of"),
        ({"name": "x", "kind": "spend"}, "threshold is required"),
        ({"name": "x", "kind": "spend", "threshold": -1}, "threshold must not be negative"),
        ({"name": "x", "kind": "spend", "threshold": "1"}, "threshold must be a finite number"),
        ({"name": "x", "kind": "error_rate", "threshold": 5}, "fraction"),
        ({"name": "x", "kind": "spend", "threshold": 1, "window_seconds": 0}, "window_seconds"),
        ({"name": "x", "kind": "spend", "threshold": 1, "scope": {"kind": "team"}}, "scope.kind"),
        ({"name": "x", "kind": "spend", "threshold": 1, "scope": {"kind": "model"}}, "scope.value"),
        ({"name": "x", "kind": "spend", "threshold": 1, "webhook_url": "ftp://h/x"}, "webhook_url"),
        ({"name": "x", "kind": "spend", "threshold": 1, "webhook_format": "xml"}, "webhook_format"),
        (
            {"name": "x", "kind": "spend", "threshold": 1, "colour": "red"},
            "unknown field(s): colour",
        ),
        ([1, 2], "object"),
    ]
    for body, message in bad:
        status, answer = await api(gw, "POST", "/api/alert-rules", body)
        assert status == 400 and message in answer["error"], (body, answer)

    hook = f"https://hooks.slack.com/services/{SECRET}"
    rule = await create(
        gw,
        name="p95",
        kind="p95_latency",
        threshold=2000,
        webhook_url=hook,
        webhook_format="slack",
        scope={"kind": "run", "value": "nightly"},
    )
    assert rule["webhook_url"] == "https://hooks.slack.com/…"
    assert rule["scope"] == {"kind": "run", "value": "nightly"} and rule["window_seconds"] == 300
    rid = rule["id"]
    assert isinstance(rid, str) and rid.isdigit()  # a string, as every /api resource's id
    status, listed = await api(gw, "GET", "/api/alert-rules")
    assert [r["id"] for r in listed["items"]] == [rid] and SECRET not in str(listed)

    status, patched = await api(gw, "PATCH", f"/api/alert-rules/{rid}", {"threshold": 3000})
    assert status == 200 and patched["threshold"] == 3000 and patched["name"] == "p95"
    stored = await gw.alert_store.get_rule(int(rid))
    assert stored is not None and stored.webhook_url == hook  # a masked URL sent back keeps it
    status, put = await api(gw, "PUT", f"/api/alert-rules/{rid}", {**patched, "enabled": False})
    assert status == 200 and put["enabled"] is False
    stored = await gw.alert_store.get_rule(int(rid))
    assert stored is not None and stored.webhook_url == hook and stored.threshold == 3000
    status, answer = await api(gw, "PUT", f"/api/alert-rules/{rid}", {"name": "only"})
    assert status == 400 and "kind is required" in answer["error"]

    for method in ("GET", "PUT", "PATCH", "DELETE"):
        status, answer = await api(gw, method, "/api/alert-rules/99999", {"threshold": 1})
        assert status == 404 and answer["error"] == "alert rule not found", method
    status, answer = await api(gw, "GET", "/api/alert-rules/abc")
    assert status == 404
    # An id no rule can have is unknown, never a 500 (PostgreSQL's ids are 32-bit); as a
    # filter it selects nothing, as a filter on any unknown id does.
    for method in ("GET", "PATCH", "DELETE"):
        status, _ = await api(gw, method, "/api/alert-rules/99999999999", {"threshold": 1})
        assert status == 404, method
    status, answer = await api(gw, "GET", "/api/alerts?rule=99999999999")
    assert status == 200 and answer == {"items": []}
    status, answer = await api(gw, "GET", "/api/alerts?rule=abc")
    assert status == 400 and "rule" in answer["error"]
    status, answer = await api(gw, "GET", "/api/alerts?state=open")
    assert status == 400 and "state must be firing or resolved" in answer["error"]
    status, answer = await api(gw, "GET", "/api/alerts?limit=0")
    assert status == 400 and "limit" in answer["error"]

    status, answer = await api(gw, "DELETE", f"/api/alert-rules/{rid}")
    assert status == 200 and answer == {"deleted": rid}
    status, _ = await api(gw, "GET", f"/api/alert-rules/{rid}")
    assert status == 404


async def test_replicas_open_one_alert_and_send_one_notice(db_url: str, receiver: Receiver):
    """Evaluators of two replicas over one database: the unique open alert lets one win."""
    from gateway.store.exchanges import Store

    store = Store(db_url)
    await store.open()
    hooks = [Webhooks(), Webhooks()]
    try:
        alerts = AlertStore(store)
        rule = await alerts.create_rule(
            AlertRule(
                name="loss",
                kind="capture_loss",
                window_seconds=60,
                threshold=-1,
                webhook_url=receiver.url("/replicas"),
            )
        )
        evaluators = [AlertEvaluator(alerts, hook, 1.0) for hook in hooks]
        await asyncio.gather(*(e.evaluate() for e in evaluators))
        await asyncio.gather(*(e.evaluate() for e in evaluators))

        async def got() -> bool:
            return bool(receiver.bodies("/replicas"))

        await wait_until(got)
        for hook in hooks:
            await wait_until(lambda hook=hook: _drained(hook))
        assert len(receiver.bodies("/replicas")) == 1
        [alert] = await alerts.history(rule.id)
        assert alert.state == "firing"
        assert all(e.firing == {(rule.id, "loss"): 1} for e in evaluators)
    finally:
        for hook in hooks:
            await hook.close()
        await store.close()


async def _drained(hook: Webhooks) -> bool:
    return hook.pending() == 0


async def test_alerts_page_shows_rules_and_history(gw: Gateway, receiver: Receiver):
    hostile = "<script>alert(1)</script>"
    await create(
        gw,
        name=hostile,
        kind="spend",
        window_seconds=600,
        threshold=0,
        webhook_url=receiver.url(f"/services/{SECRET}"),
    )
    assert await call(gw) == 200

    async def fired() -> bool:
        return bool(receiver.bodies(f"/services/{SECRET}"))

    await wait_until(fired)
    jar = aiohttp.CookieJar(unsafe=True)  # keep the CSRF cookie for 127.0.0.1
    async with aiohttp.ClientSession(gw.ui_url, cookie_jar=jar) as http:
        async with http.get("/") as resp:
            assert '<a href="/alerts"' in await resp.text()  # in the nav
        async with http.get("/alerts") as resp:
            page = await resp.text()
        assert resp.status == 200
        assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert SECRET not in page and "http://127.0.0.1/…" in page
        assert 'class="badge s5xx">firing' in page
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
        assert token is not None
        form = {
            "name": "slow chats",
            "kind": "p95_latency",
            "threshold": "2500",
            "window_seconds": "120",
            "scope_kind": "model",
            "scope_value": "mistral-small-latest",
            "webhook_url": "",
            "webhook_format": "json",
            "csrf_token": token[1],
        }
        async with http.post("/alerts/rules", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.post(
            "/alerts/rules", data={**form, "threshold": "fast"}, allow_redirects=False
        ) as resp:
            assert resp.status == 400 and "threshold must be a number" in await resp.text()
        _, listed = await api(gw, "GET", "/api/alert-rules")
        added = listed["items"][-1]
        assert added["name"] == "slow chats" and added["scope"]["value"] == "mistral-small-latest"
        async with http.post(
            f"/alerts/rules/{added['id']}/delete",
            data={"csrf_token": token[1]},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
        _, listed = await api(gw, "GET", "/api/alert-rules")
        assert [r["name"] for r in listed["items"]] == [hostile]


async def test_spend_spike_and_p95_measured_over_their_windows(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    """Evaluated at chosen times (the background task idles: a long interval), so the
    windows hold exactly the calls meant: one call, a second later the same call again."""
    settings = make_settings(upstream.url, db_url, tmp_path, alert_interval=3600)
    async with running(settings) as gw:
        spike = await create(
            gw,
            name="spike",
            kind="spend_spike",
            window_seconds=1,
            baseline_windows=1,
            threshold=0.5,
        )
        slow = await create(
            gw, name="slow", kind="p95_latency", window_seconds=60, threshold=0, min_calls=2
        )
        quiet = await create(
            gw, name="quiet", kind="p95_latency", window_seconds=1, threshold=0, min_calls=2
        )
        assert await call(gw) == 200
        await gw.recorder.drained(timeout=20)
        [first] = await gw.store.rows("SELECT id, latency_ms FROM exchanges")
        first_ms = started_ms(int(first["id"]))

        async def a_second_later() -> bool:
            return time.time() * 1000 >= first_ms + 1050

        await wait_until(a_second_later)
        assert await call(gw) == 200
        await gw.recorder.drained(timeout=20)
        rows = await gw.store.rows("SELECT id, latency_ms FROM exchanges ORDER BY id")
        second_ms = started_ms(int(rows[1]["id"]))
        assert 1000 <= second_ms - first_ms < 1900  # the first is in the window before
        await gw.alerts.evaluate(datetime.fromtimestamp((second_ms + 1) / 1000, UTC))
        _, history = await api(gw, "GET", "/api/alerts")
        by_rule = {item["rule"]: item for item in history["items"]}
        assert set(by_rule) == {spike["id"], slow["id"]}  # one timed call: quiet has too few
        assert by_rule[spike["id"]]["value"] == pytest.approx(1.0)  # the same call's cost
        latencies = sorted(float(row["latency_ms"]) for row in rows)
        assert latencies[0] <= by_rule[slow["id"]]["value"] <= latencies[1]
        assert quiet["id"] not in by_rule


def started_ms(exchange_id: int) -> int:
    return (exchange_id >> 22) + EPOCH_MS


async def test_capture_loss_fires_on_quarantine_and_resolves(gw: Gateway, receiver: Receiver):
    await create(
        gw,
        name="capture",
        kind="capture_loss",
        window_seconds=60,
        threshold=0,
        webhook_url=receiver.url("/loss"),
    )
    await evaluated(gw)
    assert receiver.bodies("/loss") == []
    await gw.store.quarantine_add([(424242, time.time(), "refused on purpose", b"x")])

    async def notices(count: int) -> bool:
        return len(receiver.bodies("/loss")) >= count

    await wait_until(lambda: notices(1))
    assert "1 quarantined, 0 dropped" in receiver.bodies("/loss")[0]["text"]
    await gw.store.quarantine_delete([424242])
    await wait_until(lambda: notices(2))
    assert [b["event"] for b in receiver.bodies("/loss")] == ["firing", "resolved"]


async def test_long_windows_read_the_rollups_for_whole_hours(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    """A 3-hour window evaluated two hours on: the calls' hour is read from the rollups, and
    the answer is what the exchanges say."""
    settings = make_settings(upstream.url, db_url, tmp_path, alert_interval=3600)
    async with running(settings) as gw:
        spend = await create(gw, name="spend", kind="spend", window_seconds=3 * 3600, threshold=0)
        errors = await create(
            gw,
            name="errors",
            kind="error_rate",
            window_seconds=3 * 3600,
            threshold=0,
            scope={"kind": "model", "value": "mistral-small-latest"},
        )
        assert [await call(gw), await call(gw, status=500)] == [200, 500]
        await gw.recorder.drained(timeout=20)
        rows = await gw.store.rows("SELECT id, cost_usd FROM exchanges")
        hours = {hour_of(int(row["id"])) for row in rows}
        later_ms = (max(hours) + 2) * HOUR_MS + 1000
        window = await gw.alert_store.window(
            AlertRule(name="w", kind="spend", window_seconds=3 * 3600, threshold=0),
            later_ms - 3 * 3600 * 1000,
            later_ms,
        )
        assert (window.calls, window.errors) == (2, 1)
        await gw.alerts.evaluate(datetime.fromtimestamp(later_ms / 1000, UTC))
        _, history = await api(gw, "GET", "/api/alerts")
        by_rule = {item["rule"]: item["value"] for item in history["items"]}
        cost = sum(float(row["cost_usd"] or 0) for row in rows)
        assert cost > 0 and by_rule[spend["id"]] == pytest.approx(cost)
        assert by_rule[errors["id"]] == 0.5


async def test_only_the_main_process_evaluates(upstream: Upstream, tmp_path: Path):
    """A `serve --workers N` proxy process never runs the evaluator; the supervisor does."""
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'w.db'}", tmp_path)
    worker = Gateway(settings.replace(spool_dir=str(tmp_path / "worker-spool")), worker=True)
    await worker.start(ui=False)
    try:
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "agentops-alerts" not in names
    finally:
        await worker.stop()
    async with running(settings):
        assert "agentops-alerts" in {task.get_name() for task in asyncio.all_tasks()}


def health_with(dropped: int) -> Health:
    return Health(
        writer=None,
        database="ok",
        queue_depth=0,
        queue_size=10,
        spool_bytes=0,
        spooled_records=0,
        dropped_records=dropped,
        writer_process="ok",
        writer_pid=None,
        missing_calls=0,
        recovered_records=0,
        journal="ok",
        writer_lag_seconds=0.0,
        writer_lagging=False,
        dropped_recently=dropped > 0,
    )


async def test_capture_loss_counts_records_dropped_within_the_window(pg_url: str):
    from gateway.store.exchanges import Store

    store = Store(pg_url)
    await store.open()
    dropped = [3]  # dropped before the gateway's first look: not counted
    evaluator = AlertEvaluator(AlertStore(store), Webhooks(), 1.0, lambda: health_with(dropped[0]))
    try:
        rule = await evaluator.alerts.create_rule(
            AlertRule(name="drops", kind="capture_loss", window_seconds=3600, threshold=0)
        )
        await evaluator.evaluate()
        assert evaluator.firing == {(rule.id, "drops"): 0}
        dropped[0] = 5
        await evaluator.evaluate()
        assert evaluator.firing == {(rule.id, "drops"): 1}
        [alert] = await evaluator.alerts.history(rule.id)
        assert alert.value == 2 and alert.detail == "0 quarantined, 2 dropped"
        assert evaluator.dropped_since(time.monotonic() + 1) == 0  # none after the window
        assert len(evaluator._dropped) == 2  # a sample per change, not per evaluation
    finally:
        await evaluator.webhooks.close()
        await store.close()


async def call_in_run(gw: Gateway, run: str, *, status: int = 200) -> int:
    headers = dict(AUTH)
    if status != 200:
        headers["x-fake-status"] = str(status)
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.proxy_url}/r/{run}/v1/chat/completions", json=payload, headers=headers
        ) as resp,
    ):
        await resp.read()
        return resp.status


async def test_a_run_scope_counts_only_its_runs_calls(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    settings = make_settings(upstream.url, db_url, tmp_path, alert_interval=3600)
    async with running(settings) as gw:
        run_rule = await create(
            gw,
            name="nightly",
            kind="error_rate",
            threshold=0.2,
            scope={"kind": "run", "value": "nightly"},
        )
        all_rule = await create(gw, name="all", kind="error_rate", threshold=0.5)
        assert [await call_in_run(gw, "nightly") for _ in range(2)] == [200, 200]
        assert [await call(gw, status=500) for _ in range(3)] == [500] * 3

        async def firing() -> set[int]:
            await gw.recorder.drained(timeout=20)
            await gw.alerts.evaluate()
            _, history = await api(gw, "GET", "/api/alerts?state=firing")
            return {item["rule"] for item in history["items"]}

        assert await firing() == {all_rule["id"]}  # 3 of 5 failed, none of nightly's
        assert await call_in_run(gw, "nightly", status=500) == 500
        assert await firing() == {all_rule["id"], run_rule["id"]}  # 1 of nightly's 3
