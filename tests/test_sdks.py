"""The real mistralai and openai SDKs, and curl, through the gateway, on SQLite and PostgreSQL.

Each call must work exactly as it would against the upstream, and be recorded with its model,
usage, cost, output and timings. Sync SDK calls run in a thread: the gateway and the fake
upstream run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import aiohttp
import openai
import pytest
from mistralai.client import Mistral

from gateway.app import Gateway
from gateway.proxy.upstream import UpstreamPool
from tests.conftest import make_settings, running
from tests.fake_mistral import REQUESTS, start_fake
from tests.tls import make_ca

KEY = "test-key-abcdefghijklmnop-7777"


def mistral(gw: Gateway) -> Mistral:
    return Mistral(api_key=KEY, server_url=gw.proxy_url)


async def records(gw: Gateway) -> list[dict]:
    """Every recorded exchange, oldest first, as GET /api/exchanges/{id} returns it."""
    await gw.recorder.drained(timeout=10)
    async with aiohttp.ClientSession(gw.ui_url) as http:
        async with http.get("/api/exchanges", params={"limit": "500"}) as resp:
            items = (await resp.json())["items"]
        found = []
        for item in reversed(items):
            async with http.get(f"/api/exchanges/{item['id']}") as resp:
                found.append(await resp.json())
    return found


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


async def test_chat_complete_and_stream(gateway: Gateway):
    def run() -> tuple[Any, list[Any]]:
        with mistral(gateway) as client:
            answer = client.chat.complete(model="mistral-small-latest", messages=MESSAGES)
            chunks = list(client.chat.stream(model="mistral-small-latest", messages=MESSAGES))
        return answer, chunks

    answer, chunks = await asyncio.to_thread(run)
    streamed_text = "".join(c.data.choices[0].delta.content or "" for c in chunks)
    plain, streamed = await records(gateway)
    assert plain["endpoint"] == "chat" and plain["state"] == "complete"
    assert plain["model"] == answer.model
    assert plain["request_model"] == "mistral-small-latest"
    assert plain["prompt_tokens"] == answer.usage.prompt_tokens
    assert plain["completion_tokens"] == answer.usage.completion_tokens
    assert plain["output_text"] == answer.choices[0].message.content
    assert plain["finish_reason"] == "stop"
    assert plain["cost_usd"] > 0
    assert plain["ttft_ms"] is None and plain["streamed"] is False
    assert plain["correlation_id"] and plain["key_fingerprint"].endswith("7777")
    assert plain["started_at"].endswith("Z")
    assert streamed["streamed"] is True
    assert streamed["output_text"] == streamed_text
    assert streamed["completion_tokens"] == chunks[-1].data.usage.completion_tokens
    assert streamed["ttft_ms"] is not None
    assert streamed["response_body_encoding"] == "text"
    assert "data: [DONE]" in streamed["response_body"]


async def test_tool_calling_loop(gateway: Gateway):
    tools = [
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

    def run() -> Any:
        with mistral(gateway) as client:
            messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
            first = client.chat.complete(
                model="mistral-large-latest", messages=messages, tools=tools
            )
            call = first.choices[0].message.tool_calls[0]
            messages += [
                first.choices[0].message,
                {
                    "role": "tool",
                    "tool_call_id": call.id,
                    "name": call.function.name,
                    "content": "sunny, 21C",
                },
            ]
            return client.chat.complete(
                model="mistral-large-latest", messages=messages, tools=tools
            )

    final = await asyncio.to_thread(run)
    ask, answer = await records(gateway)
    assert ask["finish_reason"] == "tool_calls"
    assert answer["output_text"] == final.choices[0].message.content
    tool_message = answer["request_body"]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == "sunny, 21C"


async def test_fim_embeddings_agents_models_files(gateway: Gateway, tmp_path):
    upload = tmp_path / "train.jsonl"
    upload.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')

    def run() -> None:
        with mistral(gateway) as client:
            client.fim.complete(model="codestral-latest", prompt="def fib(n):", suffix="")
            client.embeddings.create(model="mistral-embed", inputs=["one", "two"])
            client.agents.complete(
                agent_id="ag_0123456789abcdef",
                messages=[{"role": "user", "content": "hello agent"}],
            )
            client.models.list()
            with upload.open("rb") as handle:
                client.files.upload(
                    file={"file_name": "train.jsonl", "content": handle}, purpose="fine-tune"
                )

    await asyncio.to_thread(run)
    fim, emb, agent, models, files = await records(gateway)
    assert (fim["endpoint"], emb["endpoint"], agent["endpoint"]) == ("fim", "embeddings", "agents")
    assert fim["output_text"] and fim["cost_usd"] > 0
    assert emb["prompt_tokens"] and emb["cost_usd"] > 0 and emb["output_text"] is None
    assert agent["output_text"] and agent["status"] == 200
    assert models["method"] == "GET" and models["endpoint"] == "other"
    assert files["endpoint"] == "files" and files["status"] == 200
    assert files["parse_error"] is False
    assert all(r["state"] == "complete" for r in (fim, emb, agent, models, files))


async def test_conversations_start_append_stream(gateway: Gateway):
    def run() -> str:
        with mistral(gateway) as client:
            started = client.beta.conversations.start(
                model="mistral-medium-latest", inputs="Plan a trip to Rome"
            )
            client.beta.conversations.append(
                conversation_id=started.conversation_id, inputs="Make it three days"
            )
            events = client.beta.conversations.start_stream(
                model="mistral-medium-latest", inputs="Stream me a haiku"
            )
            list(events)
            return started.conversation_id

    conversation_id = await asyncio.to_thread(run)
    start, append, stream = await records(gateway)
    assert start["endpoint"] == append["endpoint"] == stream["endpoint"] == "conversations"
    assert append["path"] == f"/v1/conversations/{conversation_id}"
    assert start["output_text"] and start["total_tokens"]
    assert stream["streamed"] is True and stream["output_text"] and stream["total_tokens"]
    assert stream["ttft_ms"] is not None


async def test_openai_sdk_with_v1_base_url(gateway: Gateway):
    def run() -> tuple[Any, str]:
        client = openai.OpenAI(api_key=KEY, base_url=f"{gateway.proxy_url}/v1", max_retries=0)
        with client:
            answer = client.chat.completions.create(model="mistral-small-latest", messages=MESSAGES)
            stream = client.chat.completions.create(
                model="mistral-small-latest", messages=MESSAGES, stream=True
            )
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
            )
        return answer, text

    answer, text = await asyncio.to_thread(run)
    plain, streamed = await records(gateway)
    assert plain["output_text"] == answer.choices[0].message.content
    assert plain["prompt_tokens"] == answer.usage.prompt_tokens
    assert streamed["output_text"] == text and streamed["streamed"] is True


async def test_sdk_error_reaches_caller_unchanged(gateway: Gateway):
    def run() -> Exception:
        with Mistral(api_key=KEY, server_url=gateway.proxy_url) as client:
            try:
                client.chat.complete(
                    model="mistral-small-latest",
                    messages=MESSAGES,
                    http_headers={"x-fake-status": "429"},
                )
            except Exception as exc:  # the SDK's own error type, as against the real API
                return exc
        raise AssertionError("no error raised")

    error = await asyncio.to_thread(run)
    assert "429" in str(error)
    (record,) = await records(gateway)
    assert record["status"] == 429 and record["cost_usd"] is None


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl(gateway: Gateway):
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-f",
        f"{gateway.proxy_url}/v1/chat/completions",
        "-H",
        f"Authorization: Bearer {KEY}",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"model": "mistral-small-latest", "messages": '
        '[{"role": "user", "content": "hi from curl"}]}',
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b'"chat.completion"' in out
    (record,) = await records(gateway)
    assert (
        record["prompt_tokens"]
        and record["request_body"]["messages"][0]["content"] == "hi from curl"
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_large_upload_with_expect_continue(gateway: Gateway, upstream, tmp_path):
    body = b'{"model": "mistral-embed", "input": "' + b"word " * 400_000 + b'"}'
    (tmp_path / "big.json").write_bytes(body)
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-f",
        "-o",
        "/dev/null",
        f"{gateway.proxy_url}/v1/embeddings",
        "-H",
        f"Authorization: Bearer {KEY}",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        f"@{tmp_path / 'big.json'}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert upstream.requests[-1]["body"] == body
    assert "expect" not in {k.lower() for k, _ in upstream.requests[-1]["headers"]}


async def test_an_https_upstream_as_api_mistral_ai_speaks_it(tmp_path, monkeypatch):
    """The default upstream is https: the proxy's own client verifies the certificate with the
    system's trust (SSL_CERT_FILE adds a CA), answers, streams and records through it, and a
    certificate nobody vouches for is a recorded 502, never a call sent in the clear."""
    ca = make_ca(tmp_path)
    runner, url, app = await start_fake("127.0.0.1", 0, ca.server_context)
    try:
        async with running(make_settings(url, f"sqlite://{tmp_path}/gw.db", tmp_path)) as gw:
            refused = await asyncio.to_thread(raw_status, gw)  # before the CA is trusted
            monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_pem))
            gw.proxy.pool = UpstreamPool()  # a fresh pool reads the trust again

            def run() -> tuple[Any, list[Any]]:
                with mistral(gw) as client:
                    answer = client.chat.complete(model="mistral-small-latest", messages=MESSAGES)
                    chunks = list(
                        client.chat.stream(model="mistral-small-latest", messages=MESSAGES)
                    )
                return answer, chunks

            answer, chunks = await asyncio.to_thread(run)
            failed, plain, streamed = await records(gw)
        assert refused == 502 and failed["status"] == 502
        assert "CERTIFICATE_VERIFY_FAILED" in failed["error"]
        assert plain["output_text"] == answer.choices[0].message.content
        assert streamed["output_text"] == "".join(
            c.data.choices[0].delta.content or "" for c in chunks
        )
        assert len(app[REQUESTS]) == 2
    finally:
        await runner.cleanup()


def raw_status(gw: Gateway) -> int:
    with mistral(gw) as client:
        try:
            client.chat.complete(model="mistral-small-latest", messages=MESSAGES)
        except Exception as exc:  # the SDK's error for a 502
            return int(getattr(exc, "status_code", 0))
    return 200
