"""Replaying a whole run: a tool loop replays into a new run with the recorded tool output fed
back under the new tool_call_ids; a forced change of answer stops it at the right step; runs
that are not one chain are refused. Real SDK, real gateway, fake upstream.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.clients import ENV, TOOLS, get, post, tool_loop
from tests.conftest import Upstream, make_settings, running


async def only_run(gw: Any) -> dict[str, Any]:
    status, page = await get(gw, "/api/runs")
    assert status == 200 and len(page["items"]) == 1, page
    return page["items"][0]


async def test_tool_loop_replays_with_recorded_tool_output(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        await asyncio.to_thread(tool_loop, gw, "Paris")
        original = await only_run(gw)
        sent_before = len(upstream.requests)

        status, body = await post(
            gw,
            f"/api/runs/{original['id']}/replay",
            {"overrides": {"random_seed": 3, "temperature": 0.3}},
        )
        assert status == 201, body
        assert body["diverged_at"] is None and body["divergence"] is None
        assert (body["steps_recorded"], body["steps_replayed"]) == (2, 2)
        run = body["run"]
        assert run["id"] != original["id"] and run["source"] == "replay"
        assert run["exchange_count"] == 2 and run["tags"] == {"replay_of_run": original["id"]}
        first, second = run["exchanges"]
        _, recorded = await get(gw, f"/api/runs/{original['id']}")
        assert [first["replay_of"], second["replay_of"]] == [e["id"] for e in recorded["exchanges"]]

        step0, step1 = (json.loads(r["body"]) for r in upstream.requests[sent_before:])
        assert step0["random_seed"] == 3 and step0["temperature"] == 0.3
        _, replayed0 = await get(gw, f"/api/exchanges/{first['id']}")
        new_call = replayed0["response_body"]["choices"][0]["message"]["tool_calls"][0]
        system, user, assistant, tool = step1["messages"]
        assert (system["role"], user["role"]) == ("system", "user")
        assert assistant["tool_calls"][0]["id"] == new_call["id"]
        assert tool == {
            "role": "tool",
            "tool_call_id": new_call["id"],
            "name": "get_weather",
            "content": "sunny in Paris",
        }  # the recorded result, re-addressed
        assert step1["random_seed"] == 3 and step1["tools"] == TOOLS
        assert [d["b"] for d in body["diffs"]] == [first["id"], second["id"]]
        assert body["diffs"][0]["tool_calls"]["same"] == 1
        assert "sunny in Paris" in body["diffs"][1]["after_output"]
        assert all(d["run_id"] == run["id"] for d in body["diffs"])
        _, still = await get(gw, f"/api/runs/{original['id']}")
        assert still["exchange_count"] == 2  # the original run is untouched
        (tool_row,) = run["tool_calls"]
        assert tool_row["return_value"] == "sunny in Paris"


async def test_divergence_stops_the_replay_and_linear_runs_only(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'runs.db'}", tmp_path)
    async with running(settings, ENV) as gw:
        await asyncio.to_thread(tool_loop, gw, "Rome")
        original = await only_run(gw)
        status, body = await post(
            gw, f"/api/runs/{original['id']}/replay", {"overrides": {"tool_choice": "none"}}
        )
        assert status == 201, body
        assert body["diverged_at"] == 0 and body["steps_replayed"] == 1
        divergence = body["divergence"]
        assert "final answer early" in divergence["reason"]
        assert divergence["expected"] == [
            {"name": "get_weather", "kind": "function", "arguments": {"city": "Weather in Rome?"}}
        ]
        assert divergence["got"] == []
        assert body["diffs"][0]["tool_calls"]["removed"] == divergence["expected"]

        other_tool = [
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "parameters": {
                        "type": "object",
                        "properties": {"zone": {"type": "string"}},
                        "required": ["zone"],
                    },
                },
            }
        ]
        status, body = await post(
            gw, f"/api/runs/{original['id']}/replay", {"overrides": {"tools": other_tool}}
        )
        assert status == 201 and body["diverged_at"] == 0
        assert "other tool calls" in body["divergence"]["reason"]

        for payload, code in (({"overrides": {"bogus": 1}}, 400), ({"overrides": {}}, 404)):
            run_id = original["id"] if code == 400 else "424242"
            status, error = await post(gw, f"/api/runs/{run_id}/replay", payload)
            assert status == code, error

        headers = {"Authorization": "Bearer k", "X-AgentOps-Run": "interleaved"}
        async with aiohttp.ClientSession() as http:
            for text in ("loop one", "loop two", "loop one again"):
                async with http.post(
                    f"{gw.proxy_url}/v1/chat/completions",
                    headers=headers,
                    json={
                        "model": "mistral-small-latest",
                        "messages": [{"role": "user", "content": text}],
                    },
                ) as resp:
                    assert resp.status == 200
        _, named = await get(gw, "/api/runs", name="interleaved")
        status, error = await post(gw, f"/api/runs/{named['items'][0]['id']}/replay")
        assert status == 409 and "not one linear chain" in error["error"]


async def test_conversation_run_replays_with_function_results(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'conv.db'}", tmp_path)
    async with running(settings, ENV) as gw, aiohttp.ClientSession() as http:
        auth = {"Authorization": "Bearer k"}
        async with http.post(
            f"{gw.proxy_url}/v1/conversations",
            headers=auth,
            json={
                "model": "mistral-medium-latest",
                "inputs": "Weather in Lyon?",
                "tools": TOOLS,
                "completion_args": {"temperature": 0.3},
            },
        ) as resp:
            started = await resp.json()
        call = started["outputs"][0]
        assert call["type"] == "function.call"
        async with http.post(
            f"{gw.proxy_url}/v1/conversations/{started['conversation_id']}",
            headers=auth,
            json={
                "inputs": [
                    {
                        "type": "function.result",
                        "tool_call_id": call["tool_call_id"],
                        "result": "mild in Lyon",
                    }
                ]
            },
        ) as resp:
            assert resp.status == 200
        original = await only_run(gw)
        sent_before = len(upstream.requests)

        status, body = await post(
            gw, f"/api/runs/{original['id']}/replay", {"overrides": {"random_seed": 8}}
        )
        assert status == 201, body
        assert body["diverged_at"] is None and body["steps_replayed"] == 2
        start, append = upstream.requests[sent_before:]
        start_body, append_body = json.loads(start["body"]), json.loads(append["body"])
        assert start["path"] == "/v1/conversations"
        assert start_body["completion_args"] == {"temperature": 0.3, "random_seed": 8}
        _, first = await get(gw, f"/api/exchanges/{body['run']['exchanges'][0]['id']}")
        new_conversation = first["response_body"]["conversation_id"]
        new_call = first["response_body"]["outputs"][0]["tool_call_id"]
        assert new_conversation != started["conversation_id"]
        assert append["path"] == f"/v1/conversations/{new_conversation}"
        assert append_body["inputs"] == [
            {"type": "function.result", "tool_call_id": new_call, "result": "mild in Lyon"}
        ]
        assert append_body["completion_args"] == {"random_seed": 8}
        assert "mild in Lyon" in body["diffs"][1]["after_output"]
