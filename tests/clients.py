"""How the tests act as agents and as API clients: an SDK tool loop, JSON API calls, chat
calls through the proxy, waiting for an experiment. Shared here so that no test module
imports from another."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from mistralai.client import Mistral

from gateway.app import Gateway

RUNS_KEY = "runs-test-key-0000111122223333"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


CLIENT_KEY = "client-key-never-used-for-replays-1111"
REPLAY_KEY = "replay-key-from-the-environment-2222"
GIVEN_KEY = "replay-key-given-in-the-body-3333"
ENV = {"AGENTOPS_REPLAY_API_KEY": REPLAY_KEY, "MISTRAL_API_KEY": "lower-priority-key-4444"}


AUTH = {"Authorization": "Bearer client-key-5555"}


def tool_loop(
    gw: Gateway, city: str, *, server_url: str | None = None, system: str = "You are a weather bot."
) -> Any:
    """user -> tool call -> tool result -> answer, as an agent written with the SDK does it."""
    with Mistral(api_key=RUNS_KEY, server_url=server_url or gw.proxy_url) as client:
        messages: list[Any] = [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Weather in {city}?"},
        ]
        first = client.chat.complete(model="mistral-large-latest", messages=messages, tools=TOOLS)
        call = first.choices[0].message.tool_calls[0]
        messages += [
            first.choices[0].message,
            {
                "role": "tool",
                "tool_call_id": call.id,
                "name": call.function.name,
                "content": f"sunny in {city}",
            },
        ]
        return client.chat.complete(model="mistral-large-latest", messages=messages, tools=TOOLS)


async def post(
    gw: Gateway, path: str, body: Any = None, *, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    await gw.recorder.drained(timeout=20)
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.post(path, json=body if body is not None else {}, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def get(gw: Gateway, path: str, **params: str) -> tuple[int, Any]:
    await gw.recorder.drained(timeout=20)
    async with aiohttp.ClientSession(gw.ui_url) as http, http.get(path, params=params) as resp:
        return resp.status, await resp.json()


async def latest_id(gw: Gateway) -> str:
    status, page = await get(gw, "/api/exchanges", limit="1")
    assert status == 200
    return page["items"][0]["id"]


async def send(
    gw: Gateway,
    n: int,
    *,
    model: str = "mistral-large-latest",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> None:
    payload = {"model": model, "messages": [{"role": "user", "content": f"question {n}"}], **extra}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.proxy_url}/v1/chat/completions", json=payload, headers={**AUTH, **(headers or {})}
        ) as resp,
    ):
        assert resp.status == 200


async def finished(gw: Gateway, experiment_id: str) -> tuple[dict[str, Any], int]:
    """Poll with a deadline; returns the report and how many reads saw it unfinished."""
    deadline = time.monotonic() + 60
    reads = 0
    while True:
        status, report = await get(gw, f"/api/experiments/{experiment_id}")
        assert status == 200, report
        progress = report["progress"]
        assert progress["finished"] + progress["pending"] == progress["total"]
        if report["status"] != "running":
            return report, reads
        reads += 1
        assert time.monotonic() < deadline, report["progress"]
        await asyncio.sleep(0.05)


@dataclass
class Loop:
    """What a growing tool loop sent and got: each request's and answer's bytes, and its
    unique content (the bytes of each request's new messages and of each answer)."""

    requests: list[bytes] = field(default_factory=list)
    answers: list[bytes] = field(default_factory=list)
    unique_bytes: int = 0


async def growing_loop(
    proxy_url: str, steps: int = 30, tool_bytes: int = 1700, seed: int = 0
) -> Loop:
    """An agent loop whose context grows at each step: every step resends the whole history
    plus the model's last reply and a tool result of `tool_bytes` incompressible characters
    (base64 of random bytes). The fake asks for the tool once, then answers each result by
    quoting it, so the context grows by about twice `tool_bytes` a step."""
    rng = random.Random(seed)
    messages: list[Any] = [
        {"role": "system", "content": "You are a field agent. Read every station."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    loop, sent, call_id = Loop(), 0, "call_0"
    async with aiohttp.ClientSession() as http:
        for _ in range(steps):
            body = orjson.dumps(
                {"model": "mistral-large-latest", "messages": messages, "tools": TOOLS}
            )
            loop.unique_bytes += sum(len(orjson.dumps(m)) for m in messages[sent:])
            sent = len(messages)
            async with http.post(
                f"{proxy_url}/v1/chat/completions",
                data=body,
                headers={**AUTH, "Content-Type": "application/json"},
            ) as resp:
                answer = await resp.read()
                assert resp.status == 200, answer
            loop.requests.append(body)
            loop.answers.append(answer)
            loop.unique_bytes += len(answer)
            reply = orjson.loads(answer)["choices"][0]["message"]
            call_id = (reply.get("tool_calls") or [{"id": call_id}])[0]["id"]
            output = base64.b64encode(rng.randbytes(tool_bytes * 3 // 4)).decode()
            messages += [
                reply,
                {"role": "tool", "tool_call_id": call_id, "name": "get_weather", "content": output},
            ]
    return loop
