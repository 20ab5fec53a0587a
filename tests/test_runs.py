"""Runs assemble themselves from traffic: tool loops, names, headers, conversations, threads
that interleave, evaluations, idle finishing, restarts. Real SDK, real gateway, both databases.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mistralai.client import Mistral

from gateway.app import Gateway
from tests.clients import RUNS_KEY as KEY
from tests.clients import TOOLS, tool_loop
from tests.conftest import Upstream, make_settings, running, wait_until


async def api(gw: Gateway, path: str, **params: str) -> tuple[int, Any]:
    await gw.recorder.drained(timeout=20)
    async with aiohttp.ClientSession(gw.ui_url) as http, http.get(path, params=params) as resp:
        return resp.status, await resp.json()


async def runs(gw: Gateway, **params: str) -> list[dict]:
    status, body = await api(gw, "/api/runs", limit="500", **params)
    assert status == 200, body
    return body["items"]


async def run(gw: Gateway, run_id: str) -> dict:
    status, body = await api(gw, f"/api/runs/{run_id}")
    assert status == 200, body
    return body


async def test_tool_loop_is_one_run_with_linked_tool_call(gateway: Gateway):
    final = await asyncio.to_thread(tool_loop, gateway, "Paris")
    (item,) = await runs(gateway)
    assert item["source"] == "thread" and item["exchange_count"] == 2
    assert item["status"] == "running" and item["ended_at"] is None
    assert item["total_tokens"] > 0 and item["total_cost_usd"] > 0
    detail = await run(gateway, item["id"])
    first, second = detail["exchanges"]
    assert [first["run_id"], second["run_id"]] == [item["id"]] * 2
    (tool,) = detail["tool_calls"]
    assert tool["tool_name"] == "get_weather" and tool["kind"] == "function"
    assert tool["args"] == {"city": "Weather in Paris?"}  # the fake echoes the question
    assert tool["return_value"] == "sunny in Paris"
    assert tool["exchange_id"] == first["id"] and tool["result_exchange_id"] == second["id"]
    assert tool["latency_ms"] is not None and tool["latency_ms"] >= 0
    roles = [(m["step"], m["direction"], m["role"]) for m in detail["messages"]]
    assert roles == [
        (0, "in", "system"),
        (0, "in", "user"),
        (0, "out", "assistant"),
        (1, "in", "tool"),
        (1, "out", "assistant"),
    ]
    assert detail["messages"][-1]["content"] == final.choices[0].message.content
    snapshots = detail["memory_snapshots"]
    assert [len(s["state"]) for s in snapshots] == [3, 5]
    assert snapshots[1]["carried"] == 3  # the shared prefix is not stored twice
    assert detail["config"]["model"] == "mistral-large-latest"
    assert detail["config"]["tools"] == ["get_weather"]
    _, exchange = await api(gateway, f"/api/exchanges/{second['id']}")
    assert exchange["run_id"] == item["id"]
    assert [m["role"] for m in exchange["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


async def test_concurrent_loops_with_one_system_prompt_stay_apart(gateway: Gateway):
    await asyncio.gather(
        *(asyncio.to_thread(tool_loop, gateway, city) for city in ("Paris", "Rome", "Oslo", "Lima"))
    )
    items = await runs(gateway)
    assert sorted(i["exchange_count"] for i in items) == [2, 2, 2, 2]
    for item in items:
        detail = await run(gateway, item["id"])
        (tool,) = detail["tool_calls"]
        city = tool["args"]["city"].removeprefix("Weather in ").rstrip("?")
        assert tool["return_value"] == f"sunny in {city}"


async def test_prefix_and_header_named_runs(gateway: Gateway, upstream: Upstream):
    await asyncio.to_thread(
        tool_loop, gateway, "Paris", server_url=f"{gateway.proxy_url}/r/nightly-eval"
    )
    assert all(r["path"].startswith("/v1/") for r in upstream.requests)
    headers = {
        "Authorization": f"Bearer {KEY}",
        "X-AgentOps-Run": "by-header",
        "X-AgentOps-User": "ada",
        "X-AgentOps-Agent": "planner",
        "X-AgentOps-Tags": "env=prod, team=search",
    }
    payload = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "unrelated question"}],
    }
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                f"{gateway.proxy_url}/v1/chat/completions", json=payload, headers=headers
            ) as resp:
                assert resp.status == 200
    assert not any(
        k.lower().startswith("x-agentops") for r in upstream.requests for k, _ in r["headers"]
    )
    (prefixed,) = await runs(gateway, name="nightly-eval")
    assert prefixed["source"] == "prefix" and prefixed["exchange_count"] == 2
    (named,) = await runs(gateway, name="by-header")
    assert named["source"] == "header" and named["exchange_count"] == 2
    assert (named["user"], named["agent_id"]) == ("ada", "planner")
    assert named["tags"] == {"env": "prod", "team": "search"}
    assert [r["id"] for r in await runs(gateway, tag="team=search")] == [named["id"]]
    assert [r["id"] for r in await runs(gateway, user="ada")] == [named["id"]]
    assert [r["id"] for r in await runs(gateway, agent_id="planner")] == [named["id"]]
    assert await runs(gateway, tag="team=other") == []


async def test_a_percent_encoded_prefix_names_the_run_its_header_names(gateway: Gateway):
    """`/r/nightly%20eval` is the run `X-AgentOps-Run: nightly eval` names (it was a run of
    its own, named `nightly%20eval`); bytes that are not UTF-8 are kept as escapes."""
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "q"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:
        for path, extra in (
            ("/r/nightly%20eval%2Fb%C3%A9ta/v1/chat/completions", {}),
            ("/v1/chat/completions", {"X-AgentOps-Run": "nightly eval/béta"}),
            ("/r/odd%FFbyte/v1/chat/completions", {}),
        ):
            async with http.post(
                f"{gateway.proxy_url}{path}", json=payload, headers=headers | extra
            ) as resp:
                assert resp.status == 200
    (named,) = await runs(gateway, name="nightly eval/béta")
    assert named["exchange_count"] == 2
    (odd,) = await runs(gateway, name="odd\\xffbyte")
    assert odd["exchange_count"] == 1


async def test_conversation_start_append_stream_restart_is_one_run(gateway: Gateway):
    def converse() -> tuple[str, str]:
        with Mistral(api_key=KEY, server_url=gateway.proxy_url) as client:
            started = client.beta.conversations.start(
                model="mistral-medium-latest",
                inputs="Plan a trip to Rome",
                tools=[{"type": "web_search"}],
            )
            conversation = started.conversation_id
            client.beta.conversations.append(
                conversation_id=conversation, inputs="Make it three days"
            )
            list(
                client.beta.conversations.append_stream(
                    conversation_id=conversation, inputs="And a museum?"
                )
            )
            history = client.beta.conversations.get_history(conversation_id=conversation)
            first_entry = history.entries[0].id
            restarted = client.beta.conversations.restart(
                conversation_id=conversation, from_entry_id=first_entry, inputs="Paris instead"
            )
            return conversation, restarted.conversation_id

    original, restarted = await asyncio.to_thread(converse)
    (item,) = await runs(gateway)
    assert item["source"] == "conversation" and item["exchange_count"] == 5
    assert set(item["conversation_ids"]) == {original, restarted}
    detail = await run(gateway, item["id"])
    kinds = {t["kind"] for t in detail["tool_calls"]}
    assert "builtin" in kinds  # web_search's tool.execution, with its output
    builtin = next(t for t in detail["tool_calls"] if t["kind"] == "builtin")
    assert builtin["tool_name"] == "web_search" and builtin["return_value"]
    texts = [m["content"] for m in detail["messages"] if m["direction"] == "in"]
    assert "Plan a trip to Rome" in texts and "Paris instead" in texts
    states = detail["memory_snapshots"]
    assert len(states) == 4  # the history read adds no step of its own
    assert len(states[-1]["state"]) < len(states[-2]["state"])  # a restart cuts the state


async def test_agents_complete_records_agent_id(gateway: Gateway):
    def call() -> None:
        with Mistral(api_key=KEY, server_url=gateway.proxy_url) as client:
            client.agents.complete(
                agent_id="ag_0123456789abcdef",
                messages=[{"role": "user", "content": "hello agent"}],
            )

    await asyncio.to_thread(call)
    (item,) = await runs(gateway)
    assert item["agent_id"] == "ag_0123456789abcdef"
    assert [r["id"] for r in await runs(gateway, agent_id="ag_0123456789abcdef")] == [item["id"]]


async def test_evaluations_round_trip(gateway: Gateway):
    await asyncio.to_thread(tool_loop, gateway, "Paris")
    (item,) = await runs(gateway)
    exchange_id = (await run(gateway, item["id"]))["exchanges"][0]["id"]
    async with aiohttp.ClientSession(gateway.ui_url) as http:
        async with http.post(
            f"/api/runs/{item['id']}/evaluations",
            json={"metric_name": "success", "metric_value": 1},
        ) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created["metric_name"] == "success" and created["metric_value"] == 1.0
        async with http.post(
            f"/api/exchanges/{exchange_id}/evaluations",
            json={"metric_name": "bleu", "metric_value": 0.42},
        ) as resp:
            assert resp.status == 201
        for body, word in (
            ({"metric_value": 1}, "metric_name"),
            ({"metric_name": "x", "metric_value": "high"}, "metric_value"),
            ({"metric_name": "x", "metric_value": True}, "metric_value"),
            ([1, 2], "object"),
        ):
            async with http.post(f"/api/runs/{item['id']}/evaluations", json=body) as resp:
                assert resp.status == 400
                assert word in (await resp.json())["error"]
        async with http.post(
            f"/api/runs/{item['id']}/evaluations",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 400
        async with http.post(
            "/api/runs/123/evaluations", json={"metric_name": "x", "metric_value": 1}
        ) as resp:
            assert resp.status == 404
    detail = await run(gateway, item["id"])
    assert sorted(
        (e["metric_name"], e["metric_value"], e["exchange_id"]) for e in detail["evaluations"]
    ) == [("bleu", 0.42, exchange_id), ("success", 1.0, None)]


async def chat(
    http: aiohttp.ClientSession,
    gw: Gateway,
    messages: list[Any],
    headers: dict[str, str] | None = None,
) -> dict:
    async with http.post(
        f"{gw.proxy_url}/v1/chat/completions",
        json={"model": "mistral-small-latest", "messages": messages, "tools": TOOLS},
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    ) as resp:
        assert resp.status == 200
        return (await resp.json())["choices"][0]["message"]


async def loop(http: aiohttp.ClientSession, gw: Gateway, name: str, steps: int) -> None:
    """A long agent loop: user asks, tool answers, user asks again ... `steps` calls."""
    messages: list[Any] = [
        {"role": "system", "content": "shared system prompt"},
        {"role": "user", "content": f"{name} question 0"},
    ]
    for n in range(steps):
        reply = await chat(http, gw, messages)
        messages.append(reply)
        if reply.get("tool_calls"):
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": reply["tool_calls"][0]["id"],
                    "name": "get_weather",
                    "content": f"{name} result {n}",
                }
            )
        else:
            messages.append({"role": "user", "content": f"{name} question {n + 1}"})


@pytest.mark.slow
async def test_long_and_interleaved_loops_group_correctly(gateway: Gateway):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await loop(http, gateway, "marathon", 50)
        await asyncio.gather(*(loop(http, gateway, f"agent{n}", 20) for n in range(50)))
    items = await runs(gateway)
    counts = sorted(i["exchange_count"] for i in items)
    assert counts == [20] * 50 + [50]
    assert all(i["source"] == "thread" for i in items)
    sample = await run(gateway, items[0]["id"])
    assert [e["id"] for e in sample["exchanges"]] == sorted(e["id"] for e in sample["exchanges"])
    names = {
        m["content"].split()[0]
        for m in sample["messages"]
        if m["role"] == "user" and isinstance(m["content"], str)
    }
    assert len(names) == 1  # no other loop's messages leaked in


async def test_malformed_messages_are_stored_as_they_are(gateway: Gateway, upstream: Upstream):
    bodies = [
        {"model": "m", "messages": [{"content": "no role"}, 5, None, "text"]},
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "x", "function": {"name": "f", "arguments": "{not json"}}
                    ],
                }
            ],
        },
        {"model": "m", "messages": "not a list"},
        {"model": "m", "inputs": 42},
    ]
    async with aiohttp.ClientSession() as http:
        for n, body in enumerate(bodies):
            path = "/v1/conversations" if "inputs" in body else "/v1/chat/completions"
            async with http.post(
                f"{gateway.proxy_url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {KEY}", "x-fake-raw": f"answer {n}"},
            ) as resp:
                assert resp.status == 200
        async with http.post(
            f"{gateway.proxy_url}/v1/conversations",
            data=b'{"inputs": [{"type": "mystery.entry"}]}',
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            await resp.read()
    items = await runs(gateway)
    assert sum(i["exchange_count"] for i in items) == 5
    status, page = await api(gateway, "/api/exchanges")
    assert status == 200 and len(page["items"]) == 5
    assert gateway.recorder.health().dropped_records == 0


async def test_idle_runs_finish_and_names_start_again(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path, run_idle=0.3)) as gw:
        async with aiohttp.ClientSession() as http:
            await chat(
                http, gw, [{"role": "user", "content": "first"}], {"X-AgentOps-Run": "batch"}
            )
            async with http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                json={},
                headers={
                    "X-AgentOps-Run": "batch",
                    "x-fake-status": "500",
                    "Authorization": f"Bearer {KEY}",
                },
            ) as resp:
                assert resp.status == 500

            async def finished() -> bool:
                return all(r["ended_at"] for r in await runs(gw, name="batch"))

            await wait_until(finished)
            (first,) = await runs(gw, name="batch")
            assert first["status"] == "error"  # its last exchange failed
            await chat(
                http, gw, [{"role": "user", "content": "again"}], {"X-AgentOps-Run": "batch"}
            )
        second, older = await runs(gw, name="batch")  # newest first
        assert older["id"] == first["id"] and second["id"] != first["id"]
        # running until --run-idle (0.3 s) passes, which a loaded machine may already have seen
        assert second["status"] in ("running", "ok")

        async def second_done() -> bool:
            return (await runs(gw, name="batch"))[0]["status"] == "ok"

        await wait_until(second_done)
        assert [r["id"] for r in await runs(gw, status="ok")] == [second["id"]]


async def test_threads_survive_a_restart(upstream: Upstream, db_url: str, tmp_path: Path):
    settings = make_settings(upstream.url, db_url, tmp_path)
    messages: list[Any] = [{"role": "user", "content": "Weather in Bergen?"}]
    async with running(settings) as gw:
        async with aiohttp.ClientSession() as http:
            reply = await chat(http, gw, messages)
        await gw.recorder.drained(timeout=10)
    messages += [
        reply,
        {
            "role": "tool",
            "tool_call_id": reply["tool_calls"][0]["id"],
            "name": "get_weather",
            "content": "rain",
        },
    ]
    async with running(settings) as gw:
        async with aiohttp.ClientSession() as http:
            await chat(http, gw, messages)
        (item,) = await runs(gw)
        assert item["exchange_count"] == 2
        detail = await run(gw, item["id"])
        assert [e["id"] for e in detail["exchanges"]] == sorted(
            e["id"] for e in detail["exchanges"]
        )
        assert detail["tool_calls"][0]["return_value"] == "rain"


async def test_delete_run_and_bad_parameters(gateway: Gateway):
    await asyncio.to_thread(tool_loop, gateway, "Paris")
    (item,) = await runs(gateway)
    async with aiohttp.ClientSession(gateway.ui_url) as http:
        for params, word in (
            ({"status": "done"}, "status"),
            ({"tag": "novalue"}, "tag"),
            ({"limit": "0"}, "limit"),
            ({"since": "soon"}, "since"),
        ):
            async with http.get("/api/runs", params=params) as resp:
                assert resp.status == 400 and word in (await resp.json())["error"]
        async with http.get("/api/runs/999") as resp:
            assert resp.status == 404
        async with http.delete(f"/api/runs/{item['id']}") as resp:
            assert resp.status == 200
        async with http.get(f"/api/runs/{item['id']}") as resp:
            assert resp.status == 404
    assert await runs(gateway) == []
    _, page = await api(gateway, "/api/exchanges")
    assert page["items"] == []
