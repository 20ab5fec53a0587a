"""Experiments: 20 exchanges replayed on a cheaper model give the right totals (read while
running too); repeating one exchange measures determinism; bad requests are clear.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from tests.clients import ENV, TOOLS, finished, get, post, send
from tests.conftest import Upstream, make_settings, running


async def test_cheaper_model_over_twenty_exchanges(upstream: Upstream, db_url: str, tmp_path: Path):
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        for n in range(20):
            extra = {"tools": TOOLS} if n % 5 == 0 else {"temperature": 0.5, "random_seed": n}
            await send(gw, n, **extra)
        await send(gw, 99, model="codestral-latest")  # not selected by the filter
        status, created = await post(
            gw,
            "/api/experiments",
            {
                "filter": {"model": "mistral-large-latest", "limit": 50},
                "overrides": {"model": "mistral-small-latest"},
                "concurrency": 3,
            },
        )
        assert status == 202, created
        report, _ = await finished(gw, created["id"])
        assert report["status"] == "done" and report["total"] == 20
        assert report["progress"] == {
            "total": 20,
            "finished": 20,
            "pending": 0,
            "ok": 20,
            "error": 0,
            "skipped": 0,
            "fraction": 1.0,
        }
        rows = report["rows"]
        originals, replays = [], []
        for row in rows:
            originals.append((await get(gw, f"/api/exchanges/{row['exchange_id']}"))[1])
            replays.append((await get(gw, f"/api/exchanges/{row['replay_id']}"))[1])
            assert replays[-1]["model"] == "mistral-small-latest"
            assert replays[-1]["replay_of"] == row["exchange_id"]
        cost_before = sum(o["cost_usd"] for o in originals)
        cost_after = sum(r["cost_usd"] for r in replays)
        totals = report["totals"]
        assert totals["replays"] == 20
        assert totals["cost_before_usd"] == pytest.approx(cost_before)
        assert totals["cost_after_usd"] == pytest.approx(cost_after)
        assert totals["cost_change_pct"] == pytest.approx(
            (cost_after - cost_before) / cost_before * 100, abs=0.01
        )
        assert totals["cost_change_pct"] < -50  # small is much cheaper than large
        assert totals["tokens_after"] == sum(r["total_tokens"] for r in replays)
        assert totals["median_similarity"] == pytest.approx(
            statistics.median(r["similarity"] for r in rows), abs=1e-4
        )
        assert 0 < totals["median_similarity"] < 1
        assert (totals["tool_calls"], totals["tool_calls_differing"]) == (4, 0)
        assert totals["tool_call_agreement"] == 1.0
        assert totals["summary"].startswith("cost \u2212")
        assert "0 of 4 tool calls differ" in totals["summary"]
        status, listed = await get(gw, "/api/experiments")
        assert [i["id"] for i in listed["items"]] == [created["id"]]


async def test_repeats_measure_determinism_and_bad_requests(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'x.db'}", tmp_path)
    async with running(settings, ENV) as gw:
        await send(gw, 1, temperature=0.7, random_seed=5)
        await send(gw, 2, temperature=0.7, headers={"x-fake-sampling": "random"})
        _, page = await get(gw, "/api/exchanges")
        unseeded, seeded = (i["id"] for i in page["items"])

        status, created = await post(
            gw,
            "/api/experiments",
            {"exchange_ids": [seeded], "overrides": {}, "repeat": 5, "concurrency": 2},
        )
        assert status == 202, created
        report, _ = await finished(gw, created["id"])
        totals = report["totals"]
        assert (totals["distinct_outputs"], totals["flakiness"]) == (1, 0.0)
        assert totals["identical"] == 5 and totals["median_similarity"] == 1.0
        assert totals["determinism"] == [
            {"exchange_id": seeded, "runs": 5, "distinct_outputs": 1, "flakiness": 0.0}
        ]

        status, created = await post(
            gw, "/api/experiments", {"exchange_ids": [unseeded], "repeat": 4}
        )
        report, _ = await finished(gw, created["id"])
        assert report["totals"]["distinct_outputs"] > 1
        assert report["totals"]["flakiness"] > 0

        for payload, words in (
            ({}, "exactly one"),
            ({"exchange_ids": [seeded], "run_id": "1"}, "exactly one"),
            ({"exchange_ids": []}, "exchange_ids"),
            ({"exchange_ids": ["999"]}, "not found"),
            ({"exchange_ids": [seeded], "overrides": {"colour": "red"}}, "colour"),
            ({"exchange_ids": [seeded], "repeat": 0}, "repeat"),
            ({"exchange_ids": [seeded], "concurrency": 99}, "concurrency"),
            ({"filter": {"status": "teapot"}}, "status"),
            ({"filter": {"modle": "x"}}, "modle"),
            ({"filter": {"model": "nothing-like-this"}}, "selects no exchanges"),
            ({"exchange_ids": [seeded], "surprise": 1}, "surprise"),
        ):
            status, error = await post(gw, "/api/experiments", payload)
            assert status == 400 and words in error["error"], (payload, error)
        assert (await get(gw, "/api/experiments/123"))[0] == 404
