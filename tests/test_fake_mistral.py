"""The fake Mistral upstream must be parseable by the real SDKs, with no gateway in between.

If these pass, a gateway test failing against the fake points at the gateway, not at the fake.
The sync SDK clients block, so they run in a thread while the fake serves in the test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from difflib import SequenceMatcher
from typing import Any, TypeVar

import aiohttp
import openai
import pytest
from aiohttp import web
from mistralai.client import Mistral, errors

from tests.fake_mistral import REQUESTS, FakeMistral, start_fake

T = TypeVar("T")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
TOOL_ID = re.compile(r"^[A-Za-z0-9]{9}$")
USER = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
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


@pytest.fixture
async def fake() -> AsyncIterator[tuple[str, web.Application]]:
    runner, base, app = await start_fake()
    yield base, app
    await runner.cleanup()


@pytest.fixture
def base(fake: tuple[str, web.Application]) -> str:
    return fake[0]


@pytest.fixture
def recorded(fake: tuple[str, web.Application]) -> list[dict[str, Any]]:
    return fake[1][REQUESTS]


@pytest.fixture
def mistral(base: str) -> Iterator[Mistral]:
    with Mistral(api_key="test-key-123", server_url=base) as client:
        yield client


@pytest.fixture
def oai(base: str) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    yield client
    client.close()


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Raw POST (no automatic decompression), for wire-level checks."""
    all_headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    all_headers.update(headers or {})
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(url, data=body, headers=all_headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def chat_body(**extra: Any) -> bytes:
    return json.dumps({"model": "mistral-small-latest", "messages": USER, **extra}).encode()


# ---------------------------------------------------------------- mistralai SDK


async def test_chat_complete(mistral: Mistral, recorded: list[dict[str, Any]]) -> None:
    res = await in_thread(
        lambda: mistral.chat.complete(model="mistral-small-latest", messages=USER)
    )
    assert HEX32.match(res.id)
    assert res.object == "chat.completion"
    choice = res.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert res.usage.prompt_tokens == 6
    assert res.usage.completion_tokens == len(choice.message.content.split())
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    assert res.usage.additional_properties["prompt_tokens_details"] == {"cached_tokens": 0}
    [req] = recorded
    assert (req["method"], req["path"], req["query"]) == ("POST", "/v1/chat/completions", "")
    assert ("Authorization", "Bearer test-key-123") in req["headers"]
    assert json.loads(req["body"])["stream"] is False


async def test_answers_are_deterministic(mistral: Mistral) -> None:
    def say(model: str = "mistral-small-latest", **kw: Any) -> str:
        res = mistral.chat.complete(model=model, messages=USER, **kw)
        return str(res.choices[0].message.content)

    assert await in_thread(say) == await in_thread(say)
    assert await in_thread(lambda: say(random_seed=1)) == await in_thread(
        lambda: say(random_seed=1)
    )
    assert await in_thread(lambda: say(random_seed=1)) != await in_thread(
        lambda: say(random_seed=2)
    )
    assert await in_thread(lambda: say(temperature=0, random_seed=1)) == await in_thread(
        lambda: say(temperature=0, random_seed=2)
    )
    assert await in_thread(say) != await in_thread(lambda: say("mistral-large-latest"))


async def test_answers_depend_on_model_temperature_and_seed(base: str) -> None:
    """Like a real model: models share much of an answer but not all, and at other lengths;
    hotter sampling strays further from the greedy answer; without a seed and with the
    x-fake-sampling knob, every call differs."""

    async def say(headers: dict[str, str] | None = None, **extra: Any) -> tuple[str, int]:
        _, _, raw = await post(f"{base}/v1/chat/completions", chat_body(**extra), headers)
        body = json.loads(raw)
        return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]

    def ratio(a: str, b: str) -> float:
        return SequenceMatcher(None, a.split(), b.split()).ratio()

    small, small_tokens = await say(model="mistral-small-latest", temperature=0)
    large, large_tokens = await say(model="mistral-large-latest", temperature=0)
    assert small != large and small_tokens != large_tokens
    assert 0.2 < ratio(small, large) < 0.95
    warm = [
        (await say(model="mistral-small-latest", temperature=0.3, random_seed=s))[0]
        for s in range(5)
    ]
    hot = [
        (await say(model="mistral-small-latest", temperature=1.5, random_seed=s))[0]
        for s in range(5)
    ]
    assert sum(ratio(small, w) for w in warm) > sum(ratio(small, h) for h in hot)
    assert len(set(warm)) > 1
    assert (await say(temperature=0.5, random_seed=9)) == (
        await say(temperature=0.5, random_seed=9)
    )
    knob = {"x-fake-sampling": "random"}
    unseeded = {(await say(knob, temperature=0.7))[0] for _ in range(4)}
    assert len(unseeded) > 1
    assert len({(await say(knob, temperature=0.7, random_seed=3))[0] for _ in range(3)}) == 1
    assert len({(await say(knob, temperature=0))[0] for _ in range(3)}) == 1


async def test_chat_stream(mistral: Mistral) -> None:
    def run() -> list[Any]:
        stream = mistral.chat.stream(model="mistral-small-latest", messages=USER)
        return [event.data for event in stream]

    chunks = await in_thread(run)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None and last.usage.prompt_tokens == 6
    text = "".join(str(c.choices[0].delta.content or "") for c in chunks)
    assert last.usage.completion_tokens == len(text.split())
    assert len({c.id for c in chunks}) == 1


async def test_chat_complete_async(base: str) -> None:
    async with Mistral(api_key="k", server_url=base) as client:  # closes the async transport
        res = await client.chat.complete_async(model="mistral-small-latest", messages=USER)
    assert res.choices[0].message.content


async def test_fim_complete(mistral: Mistral, recorded: list[dict[str, Any]]) -> None:
    res = await in_thread(
        lambda: mistral.fim.complete(
            model="codestral-latest", prompt="def f(n):", suffix="return n"
        )
    )
    assert res.choices[0].message.content
    assert res.usage.prompt_tokens == 4
    assert recorded[0]["path"] == "/v1/fim/completions"


async def test_embeddings_create(mistral: Mistral, recorded: list[dict[str, Any]]) -> None:
    res = await in_thread(
        lambda: mistral.embeddings.create(model="mistral-embed", inputs=["a b", "c"])
    )
    assert [d.index for d in res.data] == [0, 1]
    assert len(res.data[0].embedding or []) == 1024
    assert (res.usage.prompt_tokens, res.usage.completion_tokens) == (3, 0)
    assert json.loads(recorded[0]["body"])["input"] == ["a b", "c"]


async def test_agents_complete(mistral: Mistral, recorded: list[dict[str, Any]]) -> None:
    res = await in_thread(lambda: mistral.agents.complete(agent_id="ag_123", messages=USER))
    assert res.object == "chat.completion" and res.choices[0].message.content
    assert recorded[0]["path"] == "/v1/agents/completions"


async def test_conversations(mistral: Mistral, recorded: list[dict[str, Any]]) -> None:
    conv = mistral.beta.conversations
    start = await in_thread(lambda: conv.start(model="mistral-medium-latest", inputs="Hello"))
    assert start.conversation_id.startswith("conv_")
    [out] = start.outputs
    assert out.type == "message.output" and str(out.id).startswith("msg_")
    assert start.usage.connector_tokens is None
    more = await in_thread(
        lambda: conv.append(conversation_id=start.conversation_id, inputs="And then?")
    )
    assert more.conversation_id == start.conversation_id
    assert more.usage.prompt_tokens > start.usage.prompt_tokens
    history = await in_thread(lambda: conv.get_history(conversation_id=start.conversation_id))
    assert [e.type for e in history.entries] == ["message.input", "message.output"] * 2
    assert json.loads(recorded[1]["body"])["store"] is True


async def test_conversation_connectors_usage(mistral: Mistral) -> None:
    res = await in_thread(
        lambda: mistral.beta.conversations.start(
            model="mistral-medium-latest", inputs="news today", tools=[{"type": "web_search"}]
        )
    )
    assert [o.type for o in res.outputs] == ["tool.execution", "message.output"]
    usage = res.usage
    assert usage.connectors == {"web_search": 1}
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens + 95


async def test_conversation_stream(mistral: Mistral) -> None:
    def run() -> list[Any]:
        stream = mistral.beta.conversations.start_stream(
            model="mistral-medium-latest", inputs="Hello"
        )
        return list(stream)

    events = await in_thread(run)
    kinds = [e.event for e in events]
    assert kinds[0] == "conversation.response.started"
    assert set(kinds[1:-1]) == {"message.output.delta"}
    assert kinds[-1] == "conversation.response.done"
    assert events[-1].data.usage.completion_tokens == len(
        "".join(e.data.content for e in events[1:-1]).split()
    )


async def test_conversation_restart(mistral: Mistral) -> None:
    conv = mistral.beta.conversations
    start = await in_thread(lambda: conv.start(model="mistral-medium-latest", inputs="Hi"))
    entry_id = str(start.outputs[0].id)
    again = await in_thread(
        lambda: conv.restart(
            conversation_id=start.conversation_id, from_entry_id=entry_id, inputs="Other"
        )
    )
    assert again.conversation_id != start.conversation_id


async def test_agents_and_handoffs(mistral: Mistral, base: str) -> None:
    """Agents as the SPEC's `Agent`; a conversation hands off to the agent of `handoffs` its
    input names (server-side), never with handoff_execution "client" or no name."""
    agents = mistral.beta.agents
    helper = await in_thread(lambda: agents.create(model="mistral-small-latest", name="Helper"))
    boss = await in_thread(
        lambda: agents.create(model="mistral-large-latest", name="Boss", handoffs=[helper.id])
    )
    assert (boss.object, boss.version, boss.handoffs) == ("agent", 0, [helper.id])
    assert (await in_thread(lambda: agents.get(agent_id=helper.id))).name == "Helper"
    conv = mistral.beta.conversations
    handed = await in_thread(lambda: conv.start(agent_id=boss.id, inputs="Ask the helper"))
    handoff, answer = handed.outputs
    assert (handoff.type, handoff.previous_agent_id, handoff.next_agent_name) == (
        "agent.handoff",
        boss.id,
        "Helper",
    )
    assert (answer.agent_id, answer.model) == (helper.id, "mistral-small-latest")
    kept = await in_thread(lambda: conv.start(agent_id=boss.id, inputs="Answer yourself"))
    assert [o.agent_id for o in kept.outputs] == [boss.id]
    client = await in_thread(
        lambda: conv.start(agent_id=boss.id, inputs="Ask the helper", handoff_execution="client")
    )
    assert [o.type for o in client.outputs] == ["message.output"]
    status, _, raw = await post(base + "/v1/agents", b'{"model": "m", "name": "n", "x": 1}')
    assert status == 422 and json.loads(raw)["message"]["detail"][0]["loc"] == ["body", "x"]


async def test_files_upload(mistral: Mistral, recorded: list[dict[str, Any]]) -> None:
    content = b'{"a": 1}\n{"b": 2}\n'
    res = await in_thread(
        lambda: mistral.files.upload(
            file={"file_name": "train.jsonl", "content": content}, purpose="batch"
        )
    )
    assert (res.object, res.filename, res.size_bytes, res.num_lines) == (
        "file",
        "train.jsonl",
        len(content),
        2,
    )
    assert (res.purpose, res.sample_type, res.source) == ("batch", "batch_request", "upload")
    assert content in recorded[0]["body"]


async def test_models_list(mistral: Mistral) -> None:
    res = await in_thread(mistral.models.list)
    ids = [m.id for m in res.data or []]
    assert "mistral-small-latest" in ids and "mistral-embed" in ids


async def test_ocr_and_moderation(mistral: Mistral) -> None:
    doc = {"type": "document_url", "document_url": "https://example.com/a.pdf"}
    res = await in_thread(
        lambda: mistral.ocr.process(model="mistral-ocr-latest", document=doc, pages=[0, 1, 2])
    )
    assert res.usage_info.pages_processed == 3 and len(res.pages) == 3
    mod = await in_thread(
        lambda: mistral.classifiers.moderate(
            model="mistral-moderation-latest", inputs=["hello", "bye"]
        )
    )
    assert len(mod.results) == 2


async def test_tool_call_loop(mistral: Mistral) -> None:
    messages: list[Any] = [{"role": "user", "content": "Paris"}]
    first = await in_thread(
        lambda: mistral.chat.complete(
            model="mistral-large-latest", messages=messages, tools=[WEATHER_TOOL]
        )
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert TOOL_ID.match(str(call.id))
    assert call.function.name == "get_weather"
    assert json.loads(str(call.function.arguments)) == {"city": "Paris"}
    messages.append(choice.message)
    messages.append(
        {"role": "tool", "tool_call_id": call.id, "name": "get_weather", "content": "sunny 21C"}
    )
    final = await in_thread(
        lambda: mistral.chat.complete(
            model="mistral-large-latest", messages=messages, tools=[WEATHER_TOOL]
        )
    )
    assert final.choices[0].finish_reason == "stop"
    assert "sunny 21C" in str(final.choices[0].message.content)


async def test_tool_call_stream(mistral: Mistral) -> None:
    def run() -> list[Any]:
        stream = mistral.chat.stream(
            model="mistral-large-latest",
            messages=[{"role": "user", "content": "Paris"}],
            tools=[WEATHER_TOOL],
        )
        return [e.data for e in stream]

    chunks = await in_thread(run)
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert calls and calls[0][0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_sdk_errors(mistral: Mistral) -> None:
    def call(status: str) -> Any:
        return mistral.chat.complete(
            model="m", messages=USER, http_headers={"x-fake-status": status}
        )

    with pytest.raises(errors.SDKError) as limited:
        await in_thread(lambda: call("429"))
    assert limited.value.status_code == 429
    assert limited.value.headers.get("retry-after") == "7"
    with pytest.raises(errors.HTTPValidationError):
        await in_thread(lambda: call("422"))


# ---------------------------------------------------------------- openai SDK


async def test_openai_chat(oai: openai.OpenAI, recorded: list[dict[str, Any]]) -> None:
    res = await in_thread(
        lambda: oai.chat.completions.create(model="mistral-small-latest", messages=USER)
    )
    assert res.choices[0].message.content
    assert res.usage is not None and res.usage.prompt_tokens == 6
    assert res.usage.prompt_tokens_details is not None
    assert res.usage.prompt_tokens_details.cached_tokens == 0
    assert set(json.loads(recorded[0]["body"])) == {"model", "messages"}


async def test_openai_chat_stream(oai: openai.OpenAI, recorded: list[dict[str, Any]]) -> None:
    def run() -> list[Any]:
        stream = oai.chat.completions.create(
            model="mistral-small-latest", messages=USER, stream=True
        )
        return list(stream)

    chunks = await in_thread(run)
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert set(json.loads(recorded[0]["body"])) == {"model", "messages", "stream"}


# ---------------------------------------------------------------- wire format and knobs


async def test_stream_wire_format(base: str) -> None:
    status, headers, raw = await post(
        base + "/v1/chat/completions", chat_body(stream=True), {"x-fake-chunks": "4"}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert len(payloads) == 1 + 4 + 1
    assert [("usage" in p) for p in payloads] == [False] * 5 + [True]


async def test_headers_and_auth(base: str) -> None:
    status, headers, _ = await post(base + "/v1/chat/completions", chat_body())
    assert status == 200 and HEX32.match(headers["mistral-correlation-id"])
    assert int(headers["x-ratelimit-tokens-query-cost"]) > 0
    status, _, raw = await post(base + "/v1/chat/completions", chat_body(), {"Authorization": "k"})
    assert status == 401
    body = json.loads(raw)
    assert body["message"] == "Unauthorized" and HEX32.match(body["request_id"])


async def test_validation_errors(base: str) -> None:
    status, _, raw = await post(
        base + "/v1/chat/completions", chat_body(max_completion_tokens=5, store=True)
    )
    assert status == 422
    details = json.loads(raw)["message"]["detail"]
    assert [(d["type"], d["loc"][1]) for d in details] == [
        ("extra_forbidden", "max_completion_tokens"),
        ("extra_forbidden", "store"),
    ]
    status, _, raw = await post(base + "/v1/chat/completions", b"{not json")
    assert status == 422 and json.loads(raw)["object"] == "error"


async def test_status_knob(base: str) -> None:
    status, headers, raw = await post(
        base + "/v1/chat/completions", chat_body(), {"x-fake-status": "429"}
    )
    assert (status, headers["Retry-After"]) == (429, "7")
    assert json.loads(raw)["type"] == "rate_limited"
    status, _, _ = await post(base + "/v1/chat/completions", chat_body(), {"x-fake-status": "503"})
    assert status == 503


async def test_gzip_knob(base: str) -> None:
    status, headers, raw = await post(
        base + "/v1/chat/completions",
        chat_body(),
        {"x-fake-gzip": "1", "Accept-Encoding": "identity"},
    )
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    assert json.loads(gzip.decompress(raw))["object"] == "chat.completion"
    _, headers, raw = await post(
        base + "/v1/chat/completions", chat_body(stream=True), {"x-fake-gzip": "1"}
    )
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw).endswith(b"data: [DONE]\n\n")


async def test_raw_and_echo_knobs(base: str) -> None:
    status, headers, raw = await post(
        base + "/v1/chat/completions", b"x", {"x-fake-raw": "plain words"}
    )
    assert (status, raw) == (200, b"plain words")
    assert headers["Content-Type"].startswith("text/plain")
    status, _, raw = await post(
        base + "/any/where?a=%20b&c", b"\x00\xffbytes", {"X-Odd-Case": "v", "x-fake-echo": "1"}
    )
    echo = json.loads(raw)
    assert (echo["method"], echo["path"], echo["query"]) == ("POST", "/any/where", "a=%20b&c")
    assert ["X-Odd-Case", "v"] in echo["headers"]
    assert base64.b64decode(echo["body_b64"]) == b"\x00\xffbytes"


async def test_unknown_path_is_recorded(base: str, recorded: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as session, session.delete(base + "/v2/nope?x=1") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Not Found"}
    assert (recorded[0]["method"], recorded[0]["path"], recorded[0]["query"]) == (
        "DELETE",
        "/v2/nope",
        "x=1",
    )


async def test_hang_knob(base: str, recorded: list[dict[str, Any]]) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            post(base + "/v1/chat/completions", chat_body(), {"x-fake-hang": "1"}), 0.3
        )
    assert len(recorded) == 1


async def test_close_mid_stream_knob(base: str) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(
            base + "/v1/chat/completions", chat_body(stream=True), {"x-fake-close-mid-stream": "1"}
        )


async def test_chunk_delay_knob(base: str) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, _ = await post(
        base + "/v1/chat/completions",
        chat_body(stream=True),
        {"x-fake-chunks": "3", "x-fake-chunk-delay-ms": "40"},
    )
    assert status == 200 and loop.time() - started >= 0.2  # 6 events -> 5 gaps


async def test_fake_mistral_holder() -> None:
    async with FakeMistral() as fake:
        status, _, _ = await post(fake.url + "/v1/models", b"")
        assert status == 405
        assert fake.requests[0]["method"] == "POST"
