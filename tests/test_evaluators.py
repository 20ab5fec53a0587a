"""Evaluators: the built-in scorers on a table of cases; then through the real gateway (SQLite
and PostgreSQL) a judge in Mistral's Observability shape stored and read back unchanged,
recorded calls and a run scored by every built-in, embeddings and the judge (their calls
recorded with the replay key in runs of their own, source `evaluator`, at temperature 0,
priced), a custom scorer found as an entry point, and clear 400/404/409s.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.replay import scorers
from gateway.replay.judge import cosine
from tests.clients import ENV, REPLAY_KEY, TOOLS, get, post, send, tool_loop
from tests.conftest import Upstream, make_settings, running

CALL = {"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
EXPECTED_CALL = {"role": "assistant", "content": "", "tool_calls": [CALL]}
CASES = [
    ({"type": "exact_match"}, " 4 ", "4", 1.0),
    ({"type": "exact_match"}, "four", "4", 0.0),
    ({"type": "contains", "value": "Paris"}, "It is Paris.", None, 1.0),
    ({"type": "contains", "value": "paris", "ignore_case": True}, "PARIS", None, 1.0),
    ({"type": "contains"}, "answer: 42!", {"role": "assistant", "content": "42"}, 1.0),
    ({"type": "regex", "pattern": r"^\d+$"}, "123", None, 1.0),
    ({"type": "regex", "pattern": r"^\d+$"}, "12a", None, 0.0),
    ({"type": "json_valid"}, '{"a": 1}', None, 1.0),
    ({"type": "json_valid"}, "{a: 1}", None, 0.0),
    (
        {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}},
        '{"a": 1}',
        None,
        1.0,
    ),
    ({"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}, "{}", None, 0.0),
    ({"type": "bleu"}, "the cat sat on the mat", "the cat sat on the mat", 1.0),
    ({"type": "bleu"}, "completely different words here", "the cat sat on the mat", 0.0),
    ({"type": "chrf"}, "the cat sat on the mat", "the cat sat on the mat", 1.0),
    ({"type": "rouge_l"}, "the cats sat on a mat", "the cat sat on the mat", 5 / 6),
    ({"type": "tool_calls"}, "", EXPECTED_CALL, 1.0),
]


@pytest.mark.parametrize(("spec", "output", "expected", "value"), CASES)
async def test_built_in_scorers(spec: dict[str, Any], output: str, expected: Any, value: float):
    calls = [scorers.normal_call(CALL)] if spec["type"] == "tool_calls" else []
    sample = scorers.Sample(output, calls, expected)
    score = await scorers.run(scorers.make(spec), sample)
    assert score.value == pytest.approx(value, abs=1e-6)


async def test_tool_call_match_compares_parsed_arguments():
    scorer = scorers.make({"type": "tool_calls"})
    other = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    spaced = {"name": "get_weather", "arguments": '{ "city":"Paris" }'}
    for calls, want in (([spaced], 1.0), ([other], 0.0), ([spaced, other], 0.5), ([], 0.0)):
        got = await scorers.run(
            scorer, scorers.Sample("", [scorers.normal_call(c) for c in calls], EXPECTED_CALL)
        )
        assert got.value == want, calls
    names = scorers.make({"type": "tool_calls", "names_only": True})
    assert (await scorers.run(names, scorers.Sample("", [other], EXPECTED_CALL))).value == 1.0
    assert cosine([1.0, 0.0], [1.0, 0.0]) == 1.0 and cosine([1.0, 0.0], [0.0, 1.0]) == 0.0


JUDGE = {
    "name": "helpfulness",
    "description": "Is the answer helpful?",
    "model_name": "mistral-small-latest",
    "instructions": "Judge whether the answer helps the user.",
    "tools": [],
    "output": {
        "type": "CLASSIFICATION",
        "options": [
            {"value": "helpful", "description": "answers the question"},
            {"value": "unhelpful", "description": "does not"},
        ],
    },
}
REGRESSION = {
    "name": "closeness",
    "description": "How close to the expected answer?",
    "model_name": "mistral-large-latest",
    "instructions": "Compare with the expected answer.",
    "tools": [],
    "output": {
        "type": "REGRESSION",
        "min": 0,
        "max": 10,
        "min_description": "unrelated",
        "max_description": "the same",
    },
}


async def test_scoring_calls_and_a_run_through_the_gateway(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        await send(gw, 1)
        await send(gw, 2, tools=TOOLS)
        status, page = await get(gw, "/api/exchanges")
        ids = [item["id"] for item in page["items"]]
        status, stored = await post(gw, "/api/judges", JUDGE)
        assert (status, stored) == (201, JUDGE)
        status, again = await get(gw, "/api/judges/helpfulness")
        assert (status, again) == (200, JUDGE)  # exported unchanged
        status, listed = await get(gw, "/api/judges")
        assert listed["items"] == [JUDGE]
        # one exported from La Plateforme (a Judge: id, dates, revisions) comes in unchanged
        remote = {
            **REGRESSION,
            "name": "remote-judge",
            "id": "0b6a5e1e-2f55-4a8e-9d0c-3c1f0a4b7e21",
            "created_at": "2026-01-02T03:04:05Z",
            "up_revision": None,
        }
        assert await post(gw, "/api/judges", remote) == (201, remote)
        assert await get(gw, "/api/judges/remote-judge") == (200, remote)
        status, create = await get(gw, "/api/judges/remote-judge", shape="create")
        assert create == {**REGRESSION, "name": "remote-judge"}
        sent = len(upstream.requests)

        status, answer = await post(
            gw,
            "/api/evaluations",
            {
                "exchange_ids": ids,
                "expected": "question one answer",
                "scorers": [
                    {"type": "exact_match"},
                    {"type": "contains", "value": "e"},
                    {"type": "regex", "pattern": "\\w+"},
                    {"type": "json_valid"},
                    {"type": "bleu"},
                    {"type": "chrf"},
                    {"type": "rouge_l"},
                    {"type": "tool_calls"},
                    {"type": "embedding_cosine"},
                    {"type": "judge", "judge": "helpfulness"},
                    {"type": "judge", "definition": REGRESSION},
                ],
            },
        )
        assert status == 201, answer
        assert len(answer["results"]) == 2
        text_result = answer["results"][1]  # ids are newest first: the tool call is ids[0]
        assert text_result["exchange_id"] == ids[1]
        by_name = {s["name"]: s for s in text_result["scores"]}
        assert set(by_name) == {
            "exact_match", "contains", "regex", "json_valid", "bleu", "chrf", "rouge_l",
            "tool_calls", "embedding_cosine", "judge:helpfulness", "judge:closeness",
        }  # fmt: skip
        assert by_name["regex"]["value"] == 1.0 and by_name["json_valid"]["value"] == 0.0
        assert 0 < by_name["chrf"]["value"] < 1
        assert -1 <= by_name["embedding_cosine"]["value"] <= 1
        helpful = by_name["judge:helpfulness"]
        assert (helpful["value"], helpful["answer"]) == (0.0, "helpful") and helpful["analysis"]
        assert helpful["judge_cost_usd"] > 0
        assert by_name["judge:closeness"]["value"] == 5.0
        tool_scores = {r["exchange_id"]: r["scores"][7]["value"] for r in answer["results"]}
        assert sorted(tool_scores.values()) == [0.0, 1.0]  # the tool call was not expected

        # the gateway's own calls: the replay key, temperature 0, recorded in evaluator runs
        made = upstream.requests[sent:]
        assert len(made) == 6  # per exchange: embeddings and two judges
        for request in made:
            assert ("Authorization", f"Bearer {REPLAY_KEY}") in request["headers"]
        judged = [orjson.loads(r["body"]) for r in made if r["path"] == "/v1/chat/completions"]
        assert {b["temperature"] for b in judged} == {0}
        assert all(b["response_format"]["type"] == "json_schema" for b in judged)
        judge_call = helpful["judge_exchange_id"]
        status, recorded = await get(gw, f"/api/exchanges/{judge_call}")
        assert recorded["cost_usd"] == helpful["judge_cost_usd"]
        status, run = await get(gw, f"/api/runs/{recorded['run_id']}")
        assert run["source"] == "evaluator" and run["tags"]["purpose"] == "evaluator"
        assert [e["id"] for e in run["exchanges"]] == [judge_call]  # a run of its own
        status, original = await get(gw, f"/api/exchanges/{ids[1]}")
        assert original["run_id"] != recorded["run_id"]
        status, evaluations = await get(gw, f"/api/runs/{original['run_id']}")
        names = {e["metric_name"] for e in evaluations["evaluations"]}
        assert "judge:helpfulness" in names or names == set()  # exchange-level, see below
        rows = await gw.store.rows(
            "SELECT metric_name, metric_value FROM evaluations WHERE exchange_id = ?", [int(ids[1])]
        )
        assert {r["metric_name"] for r in rows} == set(by_name)
        kept = {e.metric_name: e for e in await gw.run_store.exchange_evaluations(int(ids[1]))}
        verdict = kept["judge:helpfulness"].detail or {}
        assert verdict["answer"] == "helpful" and verdict["analysis"] == helpful["analysis"]
        assert verdict["judge_cost_usd"] == helpful["judge_cost_usd"]
        assert kept["bleu"].detail is None
        async with (
            aiohttp.ClientSession(gw.ui_url) as http,
            http.get(f"/exchanges/{ids[1]}") as resp,
        ):
            html = await resp.text()
        assert f'<a href="/exchanges/{judge_call}">the judge\'s call</a>' in html
        assert '<span class="tag">helpful</span>' in html

        # a run is judged by its final answer; the evaluation is the run's
        await asyncio.to_thread(tool_loop, gw, "Rome")
        status, runs = await get(gw, "/api/runs")
        loop = next(
            r for r in runs["items"] if r["exchange_count"] == 2 and r["source"] != "evaluator"
        )
        status, answer = await post(
            gw,
            "/api/evaluations",
            {"run_ids": [loop["id"]], "scorers": [{"type": "contains", "value": "Rome"}]},
        )
        assert status == 201 and answer["results"][0]["run_id"] == loop["id"]
        status, detail = await get(gw, f"/api/runs/{loop['id']}")
        assert [e["metric_name"] for e in detail["evaluations"]] == ["contains"]
        # the manual route keeps working beside it
        status, _ = await post(
            gw, f"/api/runs/{loop['id']}/evaluations", {"metric_name": "success", "metric_value": 1}
        )
        assert status == 201


async def test_evaluator_mistakes_are_clear(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'e.db'}"
    async with running(make_settings(upstream.url, db, tmp_path), {}) as gw:
        await send(gw, 1)
        status, page = await get(gw, "/api/exchanges")
        one = [page["items"][0]["id"]]
        cases = [
            ({"exchange_ids": one}, 400, "scorers must be"),
            ({"exchange_ids": one, "scorers": [{"type": "nope"}]}, 400, "no scorer of type 'nope'"),
            ({"exchange_ids": one, "scorers": [{"type": "bleu"}]}, 400, "needs an expected"),
            (
                {"exchange_ids": one, "scorers": [{"type": "regex", "pattern": "("}]},
                400,
                "bad pattern",
            ),
            (
                {"exchange_ids": ["9"], "scorers": [{"type": "json_valid"}]},
                404,
                "exchange 9 not found",
            ),
            ({"run_ids": ["9"], "scorers": [{"type": "json_valid"}]}, 404, "run 9 not found"),
            (
                {"exchange_ids": one, "scorers": [{"type": "judge", "judge": "absent"}]},
                404,
                "judge 'absent'",
            ),
            (
                {"exchange_ids": one, "scorers": [{"type": "judge", "definition": JUDGE}]},
                400,
                "no api key",
            ),
        ]
        for body, want, words in cases:
            status, answer = await post(gw, "/api/evaluations", body)
            assert status == want and words in answer["error"].lower(), (body, answer)
        bad = {**JUDGE, "output": {"type": "REGRESSION", "min_description": "x"}}
        status, answer = await post(gw, "/api/judges", bad)
        assert status == 400 and "judge definition" in answer["error"]
        status, answer = await post(gw, "/api/judges", {**JUDGE, "name": "abc"})
        assert status == 400 and "name" in answer["error"]
        assert (await post(gw, "/api/judges", JUDGE))[0] == 201
        status, answer = await post(gw, "/api/judges", JUDGE)
        assert status == 409


SCORER = """
from gateway.replay.scorers import Score


class Shouting:
    def __init__(self, spec):
        self.name = spec.get("name") or "shouting"

    def score(self, sample):
        if self.name == "broken":
            raise RuntimeError("a bug in the plugin")
        text = sample.output_text or ""
        return Score(self.name, sum(c.isupper() for c in text) / max(1, len(text)))
"""


async def test_custom_scorer_from_an_entry_point(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    plugin = tmp_path / "plugin"
    (plugin / "shout_scorers-1.0.dist-info").mkdir(parents=True)
    (plugin / "shout_scorers.py").write_text(textwrap.dedent(SCORER))
    (plugin / "shout_scorers-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: shout-scorers\nVersion: 1.0\n"
    )
    (plugin / "shout_scorers-1.0.dist-info" / "entry_points.txt").write_text(
        "[agentops_studio.scorers]\nshouting = shout_scorers:Shouting\n"
    )
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.delitem(sys.modules, "shout_scorers", raising=False)
    db = f"sqlite://{tmp_path / 'c.db'}"
    async with running(make_settings(upstream.url, db, tmp_path), {}) as gw:
        await send(gw, 1)
        status, listed = await get(gw, "/api/scorers")
        assert "shouting" in listed["custom"] and "bleu" in listed["built_in"]
        status, page = await get(gw, "/api/exchanges")
        status, answer = await post(
            gw,
            "/api/evaluations",
            {
                "exchange_ids": [page["items"][0]["id"]],
                "scorers": [{"type": "shouting"}, {"type": "shouting", "name": "broken"}],
            },
        )
        assert status == 201, answer
        score, broken = answer["results"][0]["scores"]
        assert score["name"] == "shouting" and 0 <= score["value"] < 0.5
        assert broken["value"] is None and "RuntimeError: a bug in the plugin" in broken["error"]
