"""Replaying one exchange: the merged body and the replay key reach the upstream (and only
the upstream), the replay is recorded in a run of its own and diffed; same seed, same answer;
streams and conversations replay; refusals are clear. Real SDK, real gateway, fake upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mistralai.client import Mistral

from gateway.app import Gateway
from tests.clients import CLIENT_KEY, ENV, GIVEN_KEY, REPLAY_KEY, get, latest_id, post
from tests.conftest import Upstream, make_settings, running
from tests.fake_mistral import CONVERSATIONS, REQUESTS, start_fake


@pytest.fixture
async def gw(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'replay.db'}", tmp_path)
    async with running(settings, ENV) as gateway:
        yield gateway


def chat(gw: Gateway, **kwargs: Any) -> Any:
    with Mistral(api_key=CLIENT_KEY, server_url=gw.proxy_url) as client:
        if kwargs.pop("stream", False):
            return [e.data for e in client.chat.stream(**kwargs)]
        return client.chat.complete(**kwargs)


def last_request(upstream: Upstream) -> dict[str, Any]:
    request = upstream.requests[-1]
    return {
        **request,
        "json": json.loads(request["body"]),
        "header": {k.lower(): v for k, v in request["headers"]},
    }


async def everything_stored(gw: Gateway) -> str:
    """Every text column of every table, to look for secrets."""
    text = []
    for table in (
        "exchanges",
        "exchange_bodies",
        "runs",
        "diffs",
        "messages",
        "tool_calls",
        "memory_snapshots",
        "experiments",
        "experiment_rows",
    ):
        for row in await gw.store.rows(f"SELECT * FROM {table}"):
            text += [str(v) for v in row.values()]
    return "\n".join(text)


async def test_replay_with_overrides_is_recorded_sent_merged_and_diffed(
    upstream: Upstream, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        await asyncio.to_thread(
            chat,
            gw,
            model="mistral-large-latest",
            temperature=0.7,
            random_seed=1,
            max_tokens=500,
            messages=[{"role": "user", "content": "Describe a harbor."}],
        )
        original_id = await latest_id(gw)
        _, original = await get(gw, f"/api/exchanges/{original_id}")
        sent = json.loads(upstream.requests[-1]["body"])
        overrides = {"model": "mistral-small-latest", "temperature": 0.2, "max_tokens": None}

        status, body = await post(
            gw, f"/api/exchanges/{original_id}/replay", {"overrides": overrides}
        )
        assert status == 201, body
        expected = {k: v for k, v in sent.items() if k != "max_tokens"}
        expected.update(model="mistral-small-latest", temperature=0.2)
        received = last_request(upstream)
        assert received["path"] == "/v1/chat/completions"
        assert received["json"] == expected  # exactly the merged body
        assert received["header"]["authorization"] == f"Bearer {REPLAY_KEY}"

        item = body["exchange"]
        assert item["replay_of"] == original_id and item["model"] == "mistral-small-latest"
        assert item["run_id"] and item["run_id"] != original["run_id"]
        _, run = await get(gw, f"/api/runs/{item['run_id']}")
        assert run["source"] == "replay" and run["exchange_count"] == 1
        assert run["tags"] == {"replay_of": original_id}
        _, original_run = await get(gw, f"/api/runs/{original['run_id']}")
        assert original_run["exchange_count"] == 1  # never threaded into the original's run
        _, stored = await get(gw, f"/api/exchanges/{item['id']}")
        assert stored["replay_of"] == original_id
        assert ("Authorization", "[redacted]") in [tuple(h) for h in stored["request_headers"]]

        diff = body["diff"]
        assert (diff["a"], diff["b"]) == (original_id, item["id"])
        assert {c["field"]: (c["before"], c["after"]) for c in diff["parameter_changed"]} == {
            "model": ("mistral-large-latest", "mistral-small-latest"),
            "temperature": (0.7, 0.2),
            "max_tokens": (500, None),
        }
        assert diff["before_output"] == original["output_text"]
        assert diff["after_output"] == stored["output_text"]
        assert "".join(op["before"] for op in diff["ops"]) == diff["before_output"]
        assert "".join(op["after"] for op in diff["ops"]) == diff["after_output"]
        assert {op["op"] for op in diff["ops"]} <= {"equal", "insert", "delete", "replace"}
        assert 0 < diff["similarity"] < 1 and diff["identical"] is False
        assert diff["deltas"]["tokens"] == stored["total_tokens"] - original["total_tokens"]
        assert diff["deltas"]["cost_usd"] == pytest.approx(
            stored["cost_usd"] - original["cost_usd"]
        )
        assert diff["tool_calls"]["added"] == diff["tool_calls"]["removed"] == []

        status, again = await get(gw, f"/api/diffs/{diff['id']}")
        assert status == 200 and again == diff
        status, computed = await get(gw, "/api/diff", a=original_id, b=item["id"])
        assert status == 200 and computed["id"] is None
        assert {k: v for k, v in computed.items() if k not in ("id", "run_id", "created_at")} == {
            k: v for k, v in diff.items() if k not in ("id", "run_id", "created_at")
        }
        assert (await get(gw, "/api/diffs/123"))[0] == 404

        stored_text = await everything_stored(gw)
        assert REPLAY_KEY not in stored_text and CLIENT_KEY not in stored_text
        async with (
            aiohttp.ClientSession(gw.ui_url) as http,
            http.delete(f"/api/exchanges/{original_id}") as resp,
        ):
            assert resp.status == 200
        assert (await get(gw, f"/api/diffs/{diff['id']}"))[0] == 404  # went with its exchange
    assert REPLAY_KEY not in caplog.text


async def test_deleting_a_call_deletes_the_calls_made_about_it(gw: Gateway):
    # A data-subject request: replays, and judge or embedding calls about the call (replay_of),
    # quote its conversation; they go with it (and those about them), other calls stay.
    secret = "My passport number is X1234567."
    await asyncio.to_thread(
        chat, gw, model="mistral-small-latest", messages=[{"role": "user", "content": secret}]
    )
    original_id = await latest_id(gw)
    await asyncio.to_thread(
        chat, gw, model="mistral-small-latest", messages=[{"role": "user", "content": "Hi"}]
    )
    other_id = await latest_id(gw)
    status, replay = await post(gw, f"/api/exchanges/{original_id}/replay", {"overrides": {}})
    assert status == 201, replay
    replay_id = replay["exchange"]["id"]
    scorer = {"type": "embedding_cosine"}
    for about in (original_id, replay_id):
        body = {"exchange_ids": [about], "expected": "X1234567", "scorers": [scorer]}
        status, scored = await post(gw, "/api/evaluations", body)
        assert status == 201, scored
    _, page = await get(gw, "/api/exchanges", limit="50")
    made = [e["id"] for e in page["items"] if e["id"] not in (original_id, other_id)]
    assert len(made) == 3 and replay_id in made  # the replay and two embedding calls
    assert "X1234567" in await everything_stored(gw)

    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.delete(f"/api/exchanges/{original_id}") as resp,
    ):
        assert resp.status == 200
    for gone in (original_id, *made):
        assert (await get(gw, f"/api/exchanges/{gone}"))[0] == 404
    assert (await get(gw, f"/api/exchanges/{other_id}"))[0] == 200
    assert "X1234567" not in await everything_stored(gw)


async def test_same_seed_is_identical_and_streams_replay_as_streams(
    gw: Gateway, upstream: Upstream
):
    messages = [{"role": "user", "content": "Tell me about rivers."}]
    await asyncio.to_thread(
        chat, gw, model="mistral-small-latest", temperature=0.9, random_seed=42, messages=messages
    )
    seeded = await latest_id(gw)
    status, body = await post(gw, f"/api/exchanges/{seeded}/replay", {"overrides": {}})
    assert status == 201
    assert body["diff"]["identical"] is True and body["diff"]["similarity"] == 1.0
    assert [op["op"] for op in body["diff"]["ops"]] == ["equal"]
    assert body["diff"]["parameter_changed"] == []
    # The replay's messages and reply equal the original's: continuing the conversation
    # must still thread into the original's run, never into the replay's.
    reply = (await get(gw, f"/api/exchanges/{seeded}"))[1]["response_body"]["choices"][0]
    await asyncio.to_thread(
        chat,
        gw,
        model="mistral-small-latest",
        temperature=0.9,
        random_seed=42,
        messages=[
            *messages,
            {"role": "assistant", "content": reply["message"]["content"]},
            {"role": "user", "content": "And lakes?"},
        ],
    )
    continued = (await get(gw, f"/api/exchanges/{await latest_id(gw)}"))[1]
    assert continued["run_id"] == (await get(gw, f"/api/exchanges/{seeded}"))[1]["run_id"]
    assert continued["run_id"] != body["exchange"]["run_id"]
    status, other = await post(
        gw, f"/api/exchanges/{seeded}/replay", {"overrides": {"random_seed": 43}}
    )
    assert status == 201 and other["diff"]["identical"] is False
    assert other["diff"]["parameter_changed"] == [
        {"field": "random_seed", "before": 42, "after": 43}
    ]

    chunks = await asyncio.to_thread(
        chat, gw, model="mistral-small-latest", stream=True, random_seed=7, messages=messages
    )
    streamed_text = "".join(str(c.choices[0].delta.content or "") for c in chunks)
    streamed = await latest_id(gw)
    status, body = await post(
        gw, f"/api/exchanges/{streamed}/replay", {"overrides": {"temperature": 0}}
    )
    assert status == 201, body
    received = last_request(upstream)
    assert received["json"]["stream"] is True
    assert received["header"]["accept"] == "text/event-stream"
    assert body["exchange"]["streamed"] is True and body["exchange"]["ttft_ms"] is not None
    assert body["diff"]["before_output"] == streamed_text
    _, replayed = await get(gw, f"/api/exchanges/{body['exchange']['id']}")
    assert replayed["output_text"] == body["diff"]["after_output"] != ""
    assert replayed["response_body_encoding"] == "text"  # the SSE, reassembled above


async def test_conversation_append_replays_as_a_new_conversation(gw: Gateway, upstream: Upstream):
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    async with aiohttp.ClientSession() as http:  # raw calls: the SDK's beta is slow to load
        async with http.post(
            f"{gw.proxy_url}/v1/conversations",
            headers=auth,
            json={
                "model": "mistral-medium-latest",
                "inputs": "Plan a trip.",
                "instructions": "Be brief.",
                "completion_args": {"temperature": 0.5},
            },
        ) as resp:
            conversation = (await resp.json())["conversation_id"]
        async with http.post(
            f"{gw.proxy_url}/v1/conversations/{conversation}",
            headers=auth,
            json={"inputs": "Now by train."},
        ) as resp:
            assert resp.status == 200
    append_id = await latest_id(gw)
    entries_before = len(upstream.app[CONVERSATIONS][conversation]["entries"])
    status, body = await post(
        gw,
        f"/api/exchanges/{append_id}/replay",
        {"overrides": {"random_seed": 5, "max_tokens": 50}},
    )
    assert status == 201, body
    received = last_request(upstream)
    assert received["path"] == "/v1/conversations"  # a start, not an append
    sent = received["json"]
    assert sent["model"] == "mistral-medium-latest" and sent["instructions"] == "Be brief."
    assert sent["completion_args"] == {"temperature": 0.5, "random_seed": 5, "max_tokens": 50}
    first = sent["inputs"][0]
    assert (first["type"], first["content"]) == ("message.input", "Plan a trip.")
    assert sent["inputs"][1]["type"] == "message.output"
    assert sent["inputs"][-1] == {
        "type": "message.input",
        "role": "user",
        "content": "Now by train.",
    }
    assert len(upstream.app[CONVERSATIONS][conversation]["entries"]) == entries_before
    assert body["diff"]["after_output"]
    bad, error = await post(gw, f"/api/exchanges/{append_id}/replay", {"overrides": {"stop": 7}})
    assert bad == 400 and "stop" in error["error"]


def upload_form() -> aiohttp.FormData:
    form = aiohttp.FormData({"purpose": "batch"})
    form.add_field("file", b'{"a": 1}\n', filename="batch.jsonl")
    return form


async def test_refusals_are_clear_and_send_nothing(upstream: Upstream, tmp_path: Path):
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'r.db'}", tmp_path, max_body_bytes=4096
    )
    async with running(settings, {}) as gw:
        await asyncio.to_thread(
            chat, gw, model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}]
        )
        good = await latest_id(gw)
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with aiohttp.ClientSession() as http:
            for path, kwargs in (
                (
                    "/v1/chat/completions",
                    {"data": b"hello", "headers": {**auth, "Content-Type": "text/plain"}},
                ),
                ("/v1/models", {}),
                ("/v1/files", {"data": upload_form(), "headers": auth}),
                (
                    "/v1/chat/completions",
                    {
                        "json": {
                            "model": "m",
                            "messages": [{"role": "user", "content": "x" * 5000}],
                        },
                        "headers": auth,
                    },
                ),
                (
                    "/v1/chat/completions",
                    {
                        "json": {"model": "m", "messages": [{"role": "user", "content": "secret"}]},
                        "headers": {**auth, "X-AgentOps-Omit": "bodies"},
                    },
                ),
            ):
                method = http.get if path == "/v1/models" else http.post
                async with method(f"{gw.proxy_url}{path}", **kwargs) as resp:
                    await resp.read()
        status, page = await get(gw, "/api/exchanges", limit="5")
        not_json, models, upload, truncated, omitted = [i["id"] for i in reversed(page["items"])]
        sent_before = len(upstream.requests)
        for exchange_id, words in (
            (not_json, "not a JSON object"),
            (models, "GET"),
            (upload, "multipart"),
            (truncated, "truncated"),
            (omitted, "not recorded"),
        ):
            status, body = await post(gw, f"/api/exchanges/{exchange_id}/replay")
            assert status == 409 and words in body["error"], body
        for path, payload, code, words in (
            (f"/api/exchanges/{good}/replay", {"overrides": {}}, 400, "AGENTOPS_REPLAY_API_KEY"),
            ("/api/exchanges/999/replay", {}, 404, "not found"),
            ("/api/exchanges/abc/replay", {}, 404, "not found"),
            (
                f"/api/exchanges/{good}/replay",
                {"overrides": {"server_url": "http://x"}},
                400,
                "server_url",
            ),
            (
                f"/api/exchanges/{good}/replay",
                {"overrides": {"temperature": "hot"}},
                400,
                "temperature",
            ),
            (f"/api/exchanges/{good}/replay", {"overrides": {"model": None}}, 400, "model"),
            (f"/api/exchanges/{good}/replay", {"overrides": [1]}, 400, "object"),
            (f"/api/exchanges/{good}/replay", {"upstream": "http://x"}, 400, "upstream"),
            (f"/api/exchanges/{good}/replay", {"api_key": ""}, 400, "api_key"),
        ):
            status, body = await post(gw, path, payload)
            assert status == code and words in body["error"], (path, payload, body)
        async with aiohttp.ClientSession(gw.ui_url) as http:
            async with http.post(
                f"/api/exchanges/{good}/replay", data="{}", headers={"Content-Type": "text/plain"}
            ) as resp:
                assert resp.status == 415 and "application/json" in (await resp.json())["error"]
            async with http.post(
                f"/api/exchanges/{good}/replay", json={}, headers={"Host": "rebind.example:8081"}
            ) as resp:
                body = await resp.json()
                assert resp.status == 400 and "AGENTOPS_ALLOWED_HOSTS" in body["error"]
        assert len(upstream.requests) == sent_before  # nothing was sent

        status, body = await post(gw, f"/api/exchanges/{good}/replay", {"api_key": GIVEN_KEY})
        assert status == 201, body
        assert last_request(upstream)["header"]["authorization"] == f"Bearer {GIVEN_KEY}"
        assert GIVEN_KEY not in await everything_stored(gw)


async def test_replay_never_reaches_another_host(gw: Gateway, upstream: Upstream):
    runner, elsewhere_url, elsewhere = await start_fake()
    try:
        port = elsewhere_url.rsplit(":", 1)[1]
        await asyncio.to_thread(
            chat, gw, model="mistral-small-latest", messages=[{"role": "user", "content": "hi"}]
        )
        original = await latest_id(gw)
        for forged in (
            f"//127.0.0.1:{port}/v1/chat/completions",
            f"@127.0.0.1:{port}/v1/chat/completions",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            "/v1/chat/completions/../../x",
        ):
            await gw.store.rows(
                "UPDATE exchanges SET path = ? WHERE id = ?", [forged, int(original)]
            )
            status, body = await post(gw, f"/api/exchanges/{original}/replay")
            assert status == 409 and "not a Mistral API route" in body["error"], forged
        await gw.store.rows(
            "UPDATE exchanges SET path = '/v1/chat/completions' WHERE id = ?", [int(original)]
        )
        forged_headers = json.dumps(
            [
                ["Host", f"127.0.0.1:{port}"],
                ["X-Forwarded-Host", f"127.0.0.1:{port}"],
                ["Content-Type", "application/json"],
            ]
        )
        await gw.store.rows(
            "UPDATE exchange_bodies SET request_headers = ? WHERE exchange_id = ?",
            [forged_headers, int(original)],
        )
        for overrides in (
            {"base_url": elsewhere_url},
            {"server_url": elsewhere_url},
            {"path": "/x"},
        ):
            status, _ = await post(
                gw, f"/api/exchanges/{original}/replay", {"overrides": overrides}
            )
            assert status == 400
        status, body = await post(gw, f"/api/exchanges/{original}/replay")
        assert status == 201, body
        assert last_request(upstream)["path"] == "/v1/chat/completions"
        assert elsewhere[REQUESTS] == []
    finally:
        await runner.cleanup()
