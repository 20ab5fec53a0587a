"""Campaigns through the real gateway and the fake upstream (SQLite and PostgreSQL): a batch
campaign judges a sample of one agent's calls (its judge calls recorded in evaluator runs,
never selected themselves), a live one judges a call made after it started and stops when
deleted, the dashboard's score series averages the evaluations, and bad input is a 400/404.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.app import Gateway
from tests.clients import AUTH, ENV, REPLAY_KEY, get, post, send
from tests.conftest import Upstream, make_settings, running, wait_until
from tests.test_evaluators import JUDGE


async def delete(gw: Gateway, path: str) -> int:
    async with aiohttp.ClientSession(gw.ui_url) as http, http.delete(path) as resp:
        return resp.status


async def progress(gw: Gateway, campaign_id: str) -> dict[str, Any]:
    status, campaign = await get(gw, f"/api/campaigns/{campaign_id}")
    assert status == 200, campaign
    return campaign


async def test_batch_campaign_judges_a_sample_of_one_agents_calls(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        for n in range(4):
            await send(gw, n, headers={"X-AgentOps-Agent": "support"})
        for n in range(2):
            await send(
                gw, 10 + n, model="mistral-small-latest", headers={"X-AgentOps-Agent": "sales"}
            )
        assert (await post(gw, "/api/judges", JUDGE))[0] == 201
        sent = len(upstream.requests)
        body = {
            "name": "support helpfulness",
            "description": "last week's support calls",
            "judge": "helpfulness",
            "filter": {"agent": "support", "since": "7d"},
            "max_nb_events": 3,
            "mode": "batch",
        }
        status, made = await post(gw, "/api/campaigns", body)
        assert status == 201, made
        assert made["judge"] == {"type": "judge", "judge": "helpfulness"}
        assert made["filter"] == {"agent": "support", "since": "7d"}

        async def done() -> bool:
            return (await progress(gw, made["id"]))["status"] == "done"

        await wait_until(done, 30)
        campaign = await progress(gw, made["id"])
        assert campaign["progress"] == {"selected": 3, "scored": 3, "failed": 0, "mean_score": 0.0}
        rows = await gw.store.rows(
            "SELECT exchange_id, metric_name, detail FROM evaluations WHERE metric_name = ?",
            ["judge:helpfulness"],
        )
        assert len(rows) == 3
        for row in rows:
            detail = orjson.loads(row["detail"])
            assert detail["campaign_id"] == made["id"] and detail["answer"] == "helpful"
            status, judged = await get(gw, f"/api/exchanges/{row['exchange_id']}")
            status, run = await get(gw, f"/api/runs/{judged['run_id']}")
            assert run["agent_id"] == "support"
            shown = [e["metric_name"] for e in run["evaluations"]]
            assert shown == ["judge:helpfulness"]  # on the call's run too
            status, call = await get(gw, f"/api/exchanges/{detail['judge_exchange_id']}")
            status, own = await get(gw, f"/api/runs/{call['run_id']}")
            assert own["source"] == "evaluator"  # the judge's call, in a run of its own
        made_calls = upstream.requests[sent:]
        assert len(made_calls) == 3
        assert all(("Authorization", f"Bearer {REPLAY_KEY}") in r["headers"] for r in made_calls)

        # a second campaign over every call never selects the judges' own calls
        body = {**body, "name": "everything", "filter": {}, "max_nb_events": 100}
        status, every = await post(gw, "/api/campaigns", body)
        assert status == 201

        async def all_done() -> bool:
            return (await progress(gw, every["id"]))["status"] == "done"

        await wait_until(all_done, 30)
        assert (await progress(gw, every["id"]))["progress"]["selected"] == 6
        status, listed = await get(gw, "/api/campaigns")
        assert [c["id"] for c in listed["items"]] == [every["id"], made["id"]]

        # the dashboard's series: per agent and model, hourly means
        status, series = await get(gw, "/api/evaluations/series", bucket="day")
        assert status == 200
        keys = {(s["metric"], s["agent"], s["model"]) for s in series["series"]}
        assert ("judge:helpfulness", "sales", "mistral-small-latest") in keys
        assert ("judge:helpfulness", "support", "mistral-large-latest") in keys
        assert all(p["mean"] == 0.0 for s in series["series"] for p in s["points"])


async def test_live_campaign_judges_new_calls_until_deleted(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        gw.campaigns.poll_seconds = 0.2
        await send(gw, 1)  # before the campaign: never judged
        body = {
            "name": "live json",
            "judge": "json_valid",
            "filter": {"model": "mistral-small-latest"},
            "max_nb_events": 5,
            "mode": "live",
        }
        status, made = await post(gw, "/api/campaigns", body)
        assert status == 201, made
        await send(gw, 2)  # another model: not selected
        await send(gw, 3, model="mistral-small-latest")

        async def scored() -> bool:
            return (await progress(gw, made["id"]))["progress"]["scored"] == 1

        await wait_until(scored, 20)
        campaign = await progress(gw, made["id"])
        assert campaign["status"] == "running" and campaign["progress"]["selected"] == 1
        rows = await gw.store.rows(
            "SELECT exchange_id, metric_value FROM evaluations WHERE metric_name = 'json_valid'"
        )
        status, latest = await get(gw, "/api/exchanges", model="mistral-small-latest")
        assert [str(r["exchange_id"]) for r in rows] == [latest["items"][0]["id"]]
        assert campaign["progress"]["mean_score"] == 0.0
        assert gw.campaigns.tasks  # the live task runs
        # replicas sharing the database: each call is taken once, and no more than asked
        row = await gw.campaigns.store.get(int(made["id"]))
        judged = int(latest["items"][0]["id"])
        assert await gw.campaigns.store.taken(row.id, [judged, 1]) == {judged}
        assert not await gw.campaigns.store.take(row, judged)
        assert await gw.campaigns.store.take(row, 1) and not await gw.campaigns.store.take(row, 1)
        assert await delete(gw, f"/api/campaigns/{made['id']}") == 204
        await wait_until(lambda: _empty(gw), 10)
        assert (await get(gw, f"/api/campaigns/{made['id']}"))[0] == 404
        assert await delete(gw, f"/api/campaigns/{made['id']}") == 404


async def _empty(gw: Gateway) -> bool:
    return not gw.campaigns.tasks


async def test_bad_campaigns_are_400_or_404(upstream: Upstream, db_url: str, tmp_path: Path):
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        good = {"name": "c", "judge": "json_valid", "max_nb_events": 2}
        cases = [
            ({**good, "extra": 1}, 400, "unknown field"),
            ({**good, "mode": "sometimes"}, 400, "mode"),
            ({**good, "max_nb_events": 0}, 400, "max_nb_events"),
            ({**good, "max_nb_events": "3"}, 400, "max_nb_events"),
            ({**good, "name": ""}, 400, "name"),
            ({**good, "filter": {"since": "last tuesday"}}, 400, "since"),
            ({**good, "filter": {"color": "red"}}, 400, "unknown filter"),
            ({**good, "judge": "bleu"}, 400, "expected output"),
            ({**good, "judge": 7}, 400, "judge"),
            ({**good, "judge": "nobody-judge"}, 404, "not found"),
        ]
        for body, want, words in cases:
            status, answer = await post(gw, "/api/campaigns", body)
            assert status == want and words in answer["error"], (body, answer)
        assert (await get(gw, "/api/campaigns/123"))[0] == 404
        assert (await get(gw, "/api/campaigns/abc"))[0] == 404
        assert (await get(gw, "/api/evaluations/series", bucket="week"))[0] == 400


async def test_a_campaign_needs_a_replay_key(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'db.sqlite3'}", tmp_path)
    async with running(settings, {}) as gw:
        assert (await post(gw, "/api/judges", JUDGE))[0] == 201
        body = {"name": "c", "judge": "helpfulness", "max_nb_events": 2}
        status, answer = await post(gw, "/api/campaigns", body)
        assert status == 400 and "AGENTOPS_REPLAY_API_KEY" in answer["error"]
        # the advice is one a campaign can follow: it takes no per-request api_key
        assert '"api_key"' not in answer["error"] and "background" in answer["error"]
        status, answer = await post(gw, "/api/campaigns", {**body, "api_key": "sk-given-12345"})
        assert status == 400 and "api_key" in answer["error"]


async def test_campaigns_page_and_dashboard_scores(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'db.sqlite3'}", tmp_path)
    async with running(settings, ENV) as gw:
        await send(gw, 1, headers={"X-AgentOps-Agent": "<b>support</b>"})
        assert (await post(gw, "/api/judges", JUDGE))[0] == 201
        jar = aiohttp.CookieJar(unsafe=True)  # keep the CSRF cookie for 127.0.0.1
        async with aiohttp.ClientSession(gw.ui_url, cookie_jar=jar) as http:
            async with http.get("/dashboard") as resp:
                page = await resp.text()
            assert "No scores in this range" in page and '<a href="/campaigns"' in page
            async with http.get("/campaigns") as resp:
                page = await resp.text()
            assert resp.status == 200 and '<option value="helpfulness">' in page
            token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
            assert token is not None
            form = {
                "name": "<i>weekly</i>",
                "judge": "helpfulness",
                "since": "7d",
                "agent": "<b>support</b>",
                "max_nb_events": "5",
                "mode": "batch",
                "csrf_token": token[1],
            }
            async with http.post("/campaigns", data=form, allow_redirects=False) as resp:
                assert resp.status == 303
            bad = {**form, "max_nb_events": "many"}
            async with http.post("/campaigns", data=bad, allow_redirects=False) as resp:
                assert resp.status == 400 and "whole number" in await resp.text()
            _, listed = await get(gw, "/api/campaigns")
            made = listed["items"][0]
            assert made["filter"] == {"agent": "<b>support</b>", "since": "7d"}

            async def done() -> bool:
                return (await progress(gw, made["id"]))["progress"]["scored"] == 1

            await wait_until(done, 30)
            async with http.get("/campaigns") as resp:
                page = await resp.text()
            assert "<i>weekly</i>" not in page and "&lt;i&gt;weekly&lt;/i&gt;" in page
            async with http.get("/dashboard") as resp:
                page = await resp.text()
            assert "Scores over time" in page and "No scores in this range" not in page
            assert "<b>support</b>" not in page and "judge:helpfulness" in page
            async with http.post(
                f"/campaigns/{made['id']}/delete",
                data={"csrf_token": token[1]},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
            assert (await get(gw, "/api/campaigns"))[1]["items"] == []


async def test_a_live_campaign_resumes_after_a_restart(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'db.sqlite3'}", tmp_path)
    body = {"name": "resumed", "judge": "json_valid", "max_nb_events": 1, "mode": "live"}
    async with running(settings, ENV) as gw:
        status, made = await post(gw, "/api/campaigns", body)
        assert status == 201
    async with running(settings, ENV) as gw:
        gw.campaigns.poll_seconds = 0.2
        assert int(made["id"]) in gw.campaigns.tasks
        await send(gw, 1)

        async def done() -> bool:
            return (await progress(gw, made["id"]))["status"] == "done"

        await wait_until(done, 20)
        assert (await progress(gw, made["id"]))["progress"]["scored"] == 1
        await wait_until(lambda: _empty(gw), 10)  # a finished campaign's task ends


async def test_a_live_campaign_judges_a_long_call_recorded_after_newer_ones(
    upstream: Upstream, tmp_path: Path
):
    """A call is recorded when it ends: a slow stream that started first appears after a
    quick call that started later (a smaller id behind a bigger one) and is judged too."""
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'db.sqlite3'}", tmp_path)
    async with running(settings, ENV) as gw:
        gw.campaigns.poll_seconds = 0.1
        body = {"name": "all new", "judge": "json_valid", "max_nb_events": 5, "mode": "live"}
        status, made = await post(gw, "/api/campaigns", body)
        assert status == 201

        async def slow() -> None:
            payload = {
                "model": "mistral-large-latest",
                "stream": True,
                "messages": [{"role": "user", "content": "a long story please"}],
            }
            headers = {**AUTH, "x-fake-chunk-delay-ms": "60"}
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=headers
                ) as resp,
            ):
                assert resp.status == 200
                await resp.read()

        streaming = asyncio.create_task(slow())
        await asyncio.sleep(0.05)  # the slow call starts first (a smaller id)
        await send(gw, 1)

        async def quick_judged() -> bool:
            return (await progress(gw, made["id"]))["progress"]["scored"] >= 1

        await wait_until(quick_judged, 20)
        await streaming

        async def both() -> bool:
            return (await progress(gw, made["id"]))["progress"]["scored"] == 2

        await wait_until(both, 20)
        rows = await gw.store.rows("SELECT exchange_id FROM evaluations ORDER BY id")
        judged = [int(r["exchange_id"]) for r in rows]
        assert judged[1] < judged[0]  # the slow call: started first, judged second
