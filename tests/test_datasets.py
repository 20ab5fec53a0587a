"""Datasets through the real gateway, on SQLite and PostgreSQL: built from recorded calls, a
tool-calling run, a search and given items; each add a new version with the old ones still
readable; pages; JSONL in our shape and Mistral's Observability record shape, both ways;
bad requests are 400/404/409 with a message, never a 500.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.export.dataset_files import parse_jsonl
from tests.clients import TOOLS, get, post, send, tool_loop
from tests.conftest import Upstream, make_settings, running


async def exchange_ids(gw: Any) -> list[str]:
    status, page = await get(gw, "/api/exchanges", limit="50")
    assert status == 200
    return [item["id"] for item in reversed(page["items"])]


async def delete(gw: Any, path: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(gw.ui_url) as http, http.delete(path, json=body) as resp:
        return resp.status, await resp.json()


async def test_datasets_from_calls_runs_search_and_items(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        for n in range(3):
            await send(gw, n, temperature=0.2, tools=TOOLS)
        ids = await exchange_ids(gw)

        status, created = await post(gw, "/api/datasets", {"name": "weather", "description": "d"})
        assert status == 201, created
        assert created["name"] == "weather" and created["version"] == 0
        assert created["item_count"] == 0 and created["id"].isdigit()
        base = f"/api/datasets/{created['id']}"

        status, v1 = await post(gw, f"{base}/items", {"exchange_ids": ids})
        assert status == 201, v1
        assert (v1["version"], v1["item_count"], v1["added"]) == (1, 3, 3)
        status, page = await get(gw, f"{base}/items", version="1")
        assert status == 200 and page["next"] is None and len(page["items"]) == 3
        first = page["items"][0]
        assert first["input"]["messages"] == [{"role": "user", "content": "question 0"}]
        assert first["input"]["tools"] == TOOLS
        assert first["input"]["parameters"]["temperature"] == 0.2
        assert first["input"]["parameters"]["model"] == "mistral-large-latest"
        assert first["expected_output"]["role"] == "assistant"
        assert first["metadata"]["exchange_id"] == ids[0] == first["exchange_id"]

        # a tool-calling run: its task (the first call's input) and its final answer
        await asyncio.to_thread(tool_loop, gw, "Paris")
        status, runs = await get(gw, "/api/runs")
        run = next(r for r in runs["items"] if r["exchange_count"] == 2)
        status, v2 = await post(gw, f"{base}/items", {"run_ids": [run["id"]]})
        assert status == 201, v2
        assert (v2["version"], v2["item_count"]) == (2, 4)
        status, page = await get(gw, f"{base}/items", version="2", limit="3")
        assert len(page["items"]) == 3 and page["next"]
        status, rest = await get(gw, f"{base}/items", version="2", after=page["next"])
        (from_run,) = rest["items"]
        assert rest["next"] is None
        assert from_run["run_id"] == run["id"] and from_run["metadata"]["steps"] == 2
        assert from_run["input"]["messages"][-1]["content"] == "Weather in Paris?"
        assert "tool_calls" not in from_run["expected_output"]  # the answer, not the tool call

        # a search, and items given as JSON
        status, v3 = await post(gw, f"{base}/items", {"filter": {"q": "question", "limit": 2}})
        assert (status, v3["version"], v3["item_count"]) == (201, 3, 6), v3
        question = [{"role": "user", "content": "2+2?"}]
        given = {"input": {"messages": question}, "expected_output": "4"}
        status, v4 = await post(gw, f"{base}/items", {"items": [given]})
        assert (status, v4["version"], v4["item_count"]) == (201, 4, 7), v4

        # old versions stay as they were; removal makes a version too
        status, old = await get(gw, f"{base}/items", version="1")
        assert [i["id"] for i in old["items"]] == [i["id"] for i in page["items"][:3]]
        status, v5 = await delete(gw, f"{base}/items", {"item_ids": [first["id"]]})
        assert (status, v5["version"], v5["item_count"]) == (200, 5, 6), v5
        status, latest = await get(gw, f"{base}/items")
        assert latest["version"] == 5 and first["id"] not in [i["id"] for i in latest["items"]]
        status, old = await get(gw, f"{base}/items", version="1")
        assert len(old["items"]) == 3
        status, info = await get(gw, base)
        assert [v["version"] for v in info["versions"]] == [5, 4, 3, 2, 1, 0]
        assert [v["source"] for v in info["versions"]][:2] == ["removed", "items"]
        status, listed = await get(gw, "/api/datasets")
        assert [(d["name"], d["version"], d["item_count"]) for d in listed["items"]] == [
            ("weather", 5, 6)
        ]


async def test_jsonl_export_in_both_shapes_reads_back(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await send(gw, 1, tools=TOOLS, temperature=0)
        status, created = await post(gw, "/api/datasets", {"name": "round trip"})
        base = f"/api/datasets/{created['id']}"
        items = [
            {
                "input": {
                    "messages": [{"role": "user", "content": "<b>hi</b>"}],
                    "parameters": {"model": "mistral-small-latest", "temperature": 0},
                },
                "expected_output": {"role": "assistant", "content": "hello"},
                "metadata": {"lang": "en"},
            },
            {"input": {"messages": [{"role": "user", "content": "no answer"}]}},
        ]
        await post(gw, f"{base}/items", {"items": items})
        await post(gw, f"{base}/items", {"exchange_ids": await exchange_ids(gw)})
        async with aiohttp.ClientSession(gw.ui_url) as http:
            async with http.get(f"{base}/export", params={"format": "mistral"}) as resp:
                assert resp.status == 200
                mistral = await resp.read()
            async with http.get(f"{base}/export", params={"version": "1"}) as resp:
                ours = await resp.read()
        records = [orjson.loads(line) for line in mistral.splitlines()]
        assert len(records) == 3 and all(set(r) == {"payload", "properties"} for r in records)
        assert records[0] == {
            "payload": {
                "model": "mistral-small-latest",
                "temperature": 0,
                "messages": [
                    {"role": "user", "content": "<b>hi</b>"},
                    {"role": "assistant", "content": "hello"},
                ],
            },
            "properties": {"lang": "en"},
        }
        assert records[2]["payload"]["tools"] == TOOLS
        # the reverse: Mistral records give back the items they were made from
        back = parse_jsonl(mistral.splitlines(), "records.jsonl")
        assert back[0].input == items[0]["input"] and back[0].metadata == {"lang": "en"}
        assert back[0].expected_output == items[0]["expected_output"]
        assert back[1].expected_output is None
        assert back[2].input["tools"] == TOOLS
        assert len(ours.splitlines()) == 2  # version 1 only
        # and an import through the API of what was exported
        status, again = await post(gw, "/api/datasets", {"name": "imported"})
        status, added = await post(
            gw,
            f"/api/datasets/{again['id']}/items",
            {"items": [orjson.loads(line) for line in ours.splitlines()]},
        )
        assert (status, added["item_count"]) == (201, 2)


async def test_bad_requests_are_clear(upstream: Upstream, db_url: str, tmp_path: Path):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        status, created = await post(gw, "/api/datasets", {"name": "d"})
        base = f"/api/datasets/{created['id']}"
        deep: list[Any] = []
        for _ in range(300):
            deep = [deep]
        cases = [
            ("/api/datasets", {"name": ""}, 400, "name"),
            ("/api/datasets", {"name": "d"}, 409, "exists already"),
            ("/api/datasets", {"name": "x", "rows": 1}, 400, "unknown field"),
            ("/api/datasets/123/items", {"items": []}, 404, "dataset not found"),
            (f"{base}/items", {}, 400, "exactly one of"),
            (f"{base}/items", {"exchange_ids": [1], "run_ids": [2]}, 400, "exactly one of"),
            (f"{base}/items", {"exchange_ids": "1"}, 400, "list of 1 to"),
            (f"{base}/items", {"exchange_ids": ["abc"]}, 400, "not an id"),
            (f"{base}/items", {"exchange_ids": [42]}, 404, "exchange 42 not found"),
            (f"{base}/items", {"run_ids": [42]}, 404, "run 42 not found"),
            (f"{base}/items", {"filter": {"q": "nothing-like-this"}}, 400, "selects no"),
            (f"{base}/items", {"filter": {"colour": 1}}, 400, "unknown parameter"),
            (f"{base}/items", {"items": [{"input": "hi"}]}, 400, "items[0]: input must"),
            (f"{base}/items", {"items": [{"input": {"messages": [deep]}}]}, 400, "as JSON"),
            (f"{base}/items", {"items": [{"input": {"messages": []}, "x": 1}]}, 400, "unknown"),
        ]
        for path, body, want, words in cases:
            status, answer = await post(gw, path, body)
            assert status == want and words in answer["error"], (path, body, answer)
        for params, words in (({"version": "7"}, "does not exist"), ({"limit": "0"}, "limit")):
            status, answer = await get(gw, f"{base}/items", **params)
            assert status == 400 and words in answer["error"], answer
        status, answer = await get(gw, "/api/datasets/nope/items")
        assert status == 404
        status, answer = await get(gw, f"{base}/export", format="csv")
        assert status == 400 and "format" in answer["error"]
        status, answer = await delete(gw, f"{base}/items", {"item_ids": [99]})
        assert status == 404 and "not items" in answer["error"]
        status, info = await get(gw, base)
        assert info["version"] == 0  # nothing above made a version
