"""Experiments: 20 exchanges replayed on a cheaper model give the right totals (read while
running too); repeating one exchange measures determinism; bad requests are clear.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from gateway.replay.experiments import totals
from tests.clients import ENV, TOOLS, finished, get, post, send
from tests.conftest import Upstream, make_settings, running
from webui.replay_views import chart


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
        # The 4 tool-call steps have no text: they count for tool-call agreement, not for
        # text similarity (two empty texts are not "identical answers").
        texts = [r["similarity"] for r in rows if r["similarity"] is not None]
        assert len(texts) == totals["text_steps"] == 16
        assert totals["median_similarity"] == pytest.approx(statistics.median(texts), abs=1e-4)
        assert 0 < totals["median_similarity"] < 1
        assert (totals["tool_calls"], totals["tool_calls_differing"]) == (4, 0)
        assert (totals["tool_call_steps"], totals["tool_call_steps_agreeing"]) == (4, 4)
        assert totals["tool_call_agreement"] == 1.0
        assert totals["summary"].startswith("cost \u2212")
        assert "(median of 16 steps with text)" in totals["summary"]
        assert "same tool calls in 4 of 4 steps (0 of 4 tool calls differ)" in totals["summary"]
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


def row(exchange_id: str, status: str = "ok", **values: object) -> dict[str, object]:
    """An experiment row as the replay store reads it back (unset figures are None)."""
    figures = (
        "similarity identical tool_calls_before tool_calls_differing tokens_before tokens_after"
        " cost_before cost_after latency_before latency_after output_hash"
    )
    return {
        "exchange_id": exchange_id,
        "status": status,
        **dict.fromkeys(figures.split()),
        **values,
    }


def test_totals_of_no_rows_and_of_rows_not_done():
    empty = {
        "replays": 0,
        "cost_before_usd": 0,
        "cost_after_usd": 0,
        "cost_change_pct": None,
        "tokens_before": 0,
        "tokens_after": 0,
        "tokens_change_pct": None,
        "median_latency_delta_ms": None,
        "median_similarity": None,
        "text_steps": 0,
        "identical": 0,
        "tool_calls": 0,
        "tool_calls_differing": 0,
        "tool_call_steps": 0,
        "tool_call_steps_agreeing": 0,
        "tool_call_agreement": None,
        "summary": "nothing replayed yet",
    }
    assert totals([], 1) == empty
    assert totals([row("1", "pending"), row("1", "error", cost_before=1.0)], 1) == empty
    assert totals([], 3) == {**empty, "determinism": [], "distinct_outputs": 0, "flakiness": None}


def test_totals_sum_only_done_rows_and_skip_missing_figures():
    rows = [
        row(
            "1",
            similarity=0.5,
            identical=False,
            tool_calls_before=2,
            tool_calls_differing=1,
            tokens_before=100,
            tokens_after=50,
            cost_before=0.002,
            cost_after=0.0005,
            latency_before=100.0,
            latency_after=40.0,
        ),
        row(
            "2",
            similarity=1.0,
            identical=True,
            tool_calls_before=1,
            tool_calls_differing=0,
            tokens_before=100,
            tokens_after=150,
            cost_before=0.002,
            cost_after=None,
            latency_before=None,
            latency_after=10.0,
        ),
        row("3", similarity=None, identical=False, latency_before=10.0, latency_after=30.0),
        row("4", "skipped", cost_before=5.0, tokens_before=999),
    ]
    assert totals(rows, 1) == {
        "replays": 3,
        "cost_before_usd": 0.004,
        "cost_after_usd": 0.0005,
        "cost_change_pct": -87.5,
        "tokens_before": 200,
        "tokens_after": 200,
        "tokens_change_pct": 0.0,
        "median_latency_delta_ms": -20.0,
        "median_similarity": 0.75,
        "text_steps": 2,
        "identical": 1,
        "tool_calls": 3,
        "tool_calls_differing": 1,
        "tool_call_steps": 2,
        "tool_call_steps_agreeing": 1,
        "tool_call_agreement": 0.5,
        "summary": "cost \u221288%, text similarity 0.75 (median of 2 steps with text), "
        "same tool calls in 1 of 2 steps (1 of 3 tool calls differ)",
    }


def test_totals_measure_determinism_per_exchange_when_repeated():
    rows = [
        row("a", output_hash="x"),
        row("a", output_hash="x"),
        row("a", output_hash="y"),
        row("b", output_hash="z"),
        row("b", "error", output_hash="w"),
        row("c", output_hash="p"),
        row("c", output_hash="q"),
    ]
    found = totals(rows, 3)
    assert found["determinism"] == [
        {"exchange_id": "a", "runs": 3, "distinct_outputs": 2, "flakiness": 0.5},
        {"exchange_id": "b", "runs": 1, "distinct_outputs": 1, "flakiness": 0.0},
        {"exchange_id": "c", "runs": 2, "distinct_outputs": 2, "flakiness": 1.0},
    ]
    assert (found["distinct_outputs"], found["flakiness"]) == (2, 0.5)
    assert found["summary"] == "2 distinct outputs, flakiness 0.50"
    assert "determinism" not in totals(rows, 1)


def test_tool_call_steps_do_not_make_different_answers_look_identical():
    """The issue's model swap: 9 tool-call steps without text (same calls) and 3 final answers
    that all differ. The headline gives the answers' similarity, and tool calls apart."""
    tool_steps = [
        row(str(n), similarity=None, identical=True, tool_calls_before=1, tool_calls_differing=0)
        for n in range(9)
    ]
    answers = [
        row(f"a{n}", similarity=value, identical=False, tool_calls_before=0)
        for n, value in enumerate((0.7, 0.71, 0.725))
    ]
    found = totals(tool_steps + answers, 1)
    assert (found["median_similarity"], found["text_steps"]) == (0.71, 3)
    assert (found["tool_call_steps"], found["tool_call_agreement"]) == (9, 1.0)
    assert found["summary"] == (
        "text similarity 0.71 (median of 3 steps with text), "
        "same tool calls in 9 of 9 steps (0 of 9 tool calls differ)"
    )


def test_chart_puts_tool_call_steps_in_their_own_band():
    """Text steps are dots by similarity; tool-call-only steps are marks on a band, by whether
    they asked for the same tools and arguments; failed or unpriced replays are left out."""
    rows = [
        row("t", similarity=0.5, identical=False, cost_before=1.0, cost_after=0.5, diff_id=1),
        row(
            "same",
            tool_calls_before=1,
            tool_calls_differing=0,
            cost_before=1.0,
            cost_after=1.0,
            diff_id=2,
        ),
        row(
            "other",
            tool_calls_before=2,
            tool_calls_differing=1,
            cost_before=1.0,
            cost_after=2.0,
            diff_id=3,
        ),
        row("free", tool_calls_before=1, tool_calls_differing=0, cost_before=0, cost_after=0),
        row("failed", "error", tool_calls_before=1, cost_before=1.0, cost_after=1.0),
    ]
    drawn = chart(rows)
    assert [d["diff_id"] for d in drawn["dots"]] == [1]
    band = drawn["band"]
    assert [(m["diff_id"], m["kind"]) for m in band["marks"]] == [(2, "same"), (3, "differ")]
    assert (band["agreeing"], band["count"]) == (1, 2)
    assert band["marks"][0]["y"] < band["marks"][1]["y"]  # "same" is the top row
    assert "differ (1 of 2)" in band["marks"][1]["title"]
    assert drawn["below_y"] == band["bottom"] > drawn["bottom_y"]
    assert drawn["height"] > chart(rows[:1])["height"] and chart(rows[:1])["band"] is None
