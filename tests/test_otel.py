"""OpenTelemetry: exchanges and runs arrive as spans at a real OTLP/HTTP receiver, with GenAI
attributes, real timings, the client's traceparent as parent, and links to the run span; an
unreachable collector costs the proxy nothing and is counted.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from mistralai.client import Mistral

from gateway.app import Gateway
from gateway.integrations.otel import run_provider
from gateway.providers import genai_names
from tests.clients import RUNS_KEY as KEY
from tests.clients import tool_loop
from tests.conftest import Upstream, free_port, make_settings, running, wait_until
from tests.fake_elevenlabs import VOICES, start_fake_elevenlabs
from tests.otlp_receiver import otlp_receiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def traced_call(gw: Gateway) -> None:
    with Mistral(api_key=KEY, server_url=gw.proxy_url) as client:
        client.chat.complete(
            model="mistral-small-latest",
            temperature=0.2,
            messages=[{"role": "user", "content": "traced hello"}],
            http_headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
        )


async def exchanges(gw: Gateway) -> dict[str, dict]:
    await gw.recorder.drained(timeout=20)
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.get("/api/exchanges", params={"limit": "50"}) as resp,
    ):
        return {item["id"]: item for item in (await resp.json())["items"]}


def _ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)


async def test_exchanges_and_runs_become_linked_spans(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with (
        otlp_receiver() as receiver,
        running(
            make_settings(upstream.url, db_url, tmp_path, otel_endpoint=receiver.url, run_idle=0.3)
        ) as gw,
    ):
        await asyncio.to_thread(traced_call, gw)
        sent = [h for h in upstream.requests[-1]["headers"] if h[0].lower() == "traceparent"]
        assert sent == [("traceparent", TRACEPARENT)]  # forwarded unchanged
        await asyncio.to_thread(tool_loop, gw, "Oslo")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                headers={"x-fake-status": "429"},
                json={
                    "model": "mistral-small-latest",
                    "messages": [{"role": "user", "content": "fail"}],
                },
            ) as resp,
        ):
            assert resp.status == 429
        recorded = await exchanges(gw)

        async def runs_exported() -> bool:  # the idle task finishes all three runs
            await gw.recorder.call("integrations_drained")
            return len(receiver.named("invoke_agent")) == 3 and len(receiver.spans) == 7

        await wait_until(runs_exported)

    exchange_spans = {
        s.attributes["agentops.exchange.id"]: s
        for s in receiver.spans
        if "agentops.exchange.id" in s.attributes
    }
    run_spans = {s.attributes["agentops.run.id"]: s for s in receiver.named("invoke_agent")}
    assert set(exchange_spans) == set(recorded)
    for exchange_id, span in exchange_spans.items():
        item = recorded[exchange_id]
        a = span.attributes
        assert span.kind == 3  # CLIENT
        assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "mistral_ai"
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == "mistral-small-latest" or item["model"] != (
            "mistral-small-latest"
        )
        assert span.name == f"chat {item['model']}"
        # the call's real times, to the millisecond the store keeps
        assert abs(span.start_ns - _ns(item["started_at"])) < 1_000_000
        assert abs((span.end_ns - span.start_ns) / 1e6 - item["latency_ms"]) < 1
        run = run_spans[item["run_id"]]
        assert [(t, s) for t, s, _ in span.links] == [(run.trace_id, run.span_id)]
        if item["status"] == 200:
            assert a["gen_ai.usage.input_tokens"] == item["prompt_tokens"] > 0
            assert a["gen_ai.usage.output_tokens"] == item["completion_tokens"] > 0
            assert a["gen_ai.response.model"] == item["model"]
            assert a["gen_ai.response.finish_reasons"] in (["stop"], ["tool_calls"])
            assert a["agentops.cost_usd"] == pytest.approx(item["cost_usd"])
            assert span.status_code == 0
        else:
            assert a["error.type"] == "429" and span.status_code == 2  # ERROR

    traced = [s for s in exchange_spans.values() if s.trace_id == CLIENT_TRACE]
    (traced_span,) = traced
    assert traced_span.parent_span_id == CLIENT_SPAN
    assert traced_span.attributes["gen_ai.request.temperature"] == 0.2
    loop = [
        s
        for s in exchange_spans.values()
        if s.attributes["gen_ai.request.model"] == "mistral-large-latest"
    ]
    assert len(loop) == 2 and len({s.links[0][1] for s in loop}) == 1
    assert sorted(s.attributes["gen_ai.response.finish_reasons"][0] for s in loop) == [
        "stop",
        "tool_calls",
    ]
    run = run_spans[loop[0].attributes["agentops.run.id"]]
    for span in loop:  # without a client trace, exchanges sit under their run's span
        assert (span.trace_id, span.parent_span_id) == (run.trace_id, run.span_id)
    assert run.parent_span_id == "" and run.attributes["agentops.run.exchange_count"] == 2
    assert run.start_ns <= min(s.start_ns for s in loop)
    assert abs(run.end_ns - max(s.end_ns for s in loop)) < 1_000_000
    assert run.attributes["gen_ai.usage.input_tokens"] == sum(
        s.attributes["gen_ai.usage.input_tokens"] for s in loop
    )
    assert run.resource["service.name"] == "agentops-studio"


async def test_unreachable_collector_is_counted_not_felt(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'o.db'}", tmp_path, otel_endpoint=endpoint
    )
    async with running(settings) as gw:
        payload = {
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": "nobody listens"}],
        }
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(
                    f"{gw.proxy_url}/v1/chat/completions",
                    json=payload,
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as resp:
                    assert resp.status == 200
        await gw.recorder.drained(timeout=20)
        otel = (await gw.recorder.call("integrations_drained"))["otel"]
        await gw.recorder.drained(timeout=20)  # fresh health from the writer
        async with aiohttp.ClientSession(gw.ui_url) as http, http.get("/healthz") as resp:
            health = await resp.json()
    assert otel["dropped"] == 3 and otel["sent"] == 0 and endpoint in otel["last_error"]
    assert health["status"] == "ok"  # capture is fine; the collector's trouble is its own
    assert health["integrations"]["otel"]["dropped"] == 3


@pytest.mark.parametrize(
    ("provider", "endpoint", "agent", "names"),
    [
        ("mistral", "chat", False, ("mistral_ai", "chat")),
        ("mistral", "fim", False, ("mistral_ai", "text_completion")),
        ("mistral", "conversations", True, ("mistral_ai", "invoke_agent")),
        ("mistral", "conversations", False, ("mistral_ai", "chat")),
        ("mistral", "ocr", False, ("mistral_ai", "generate_content")),
        ("mistral", "files", False, ("mistral_ai", "files")),
        (None, "embeddings", False, ("mistral_ai", "embeddings")),
        ("elevenlabs", "tts", False, ("elevenlabs", "generate_content")),
        ("elevenlabs", "stt", False, ("elevenlabs", "generate_content")),
        ("elevenlabs", "voices", False, ("elevenlabs", "voices")),
        ("someone", "chat", False, ("someone", "chat")),
    ],
)
def test_genai_names_come_from_the_provider(provider, endpoint, agent, names):
    assert genai_names(provider, endpoint, agent) == names


async def test_elevenlabs_spans_name_their_provider(upstream: Upstream, tmp_path: Path):
    """A text-to-speech call is an ElevenLabs `generate_content` span, not a Mistral one; its
    run's span says ElevenLabs too, and a run whose calls went to both names neither."""
    runner, eleven_url, _ = await start_fake_elevenlabs()
    try:
        async with otlp_receiver() as receiver:
            settings = make_settings(
                upstream.url,
                f"sqlite://{tmp_path / 'e.db'}",
                tmp_path,
                otel_endpoint=receiver.url,
                run_idle=0.3,
            ).replace(elevenlabs_upstream=eleven_url)
            async with running(settings) as gw, aiohttp.ClientSession() as http:
                for run in (None, "mixed"):
                    async with http.post(
                        f"{gw.proxy_url}/elevenlabs/v1/text-to-speech/{VOICES[0][0]}",
                        json={"text": "Spoken aloud.", "model_id": "eleven_flash_v2_5"},
                        headers={
                            "xi-api-key": "xi-key",
                            **({"X-AgentOps-Run": run} if run else {}),
                        },
                    ) as resp:
                        assert resp.status == 200
                async with http.post(
                    f"{gw.proxy_url}/v1/chat/completions",
                    json={
                        "model": "mistral-small-latest",
                        "messages": [{"role": "user", "content": "Write what to say."}],
                    },
                    headers={"Authorization": "Bearer k", "X-AgentOps-Run": "mixed"},
                ) as resp:
                    assert resp.status == 200
                await gw.recorder.drained(timeout=20)

                async def exported() -> bool:
                    await gw.recorder.call("integrations_drained")
                    return len(receiver.named("invoke_agent")) == 2

                await wait_until(exported)
    finally:
        await runner.cleanup()
    span = next(
        s
        for s in receiver.spans
        if "agentops.exchange.id" in s.attributes and "elevenlabs" in str(s.attributes)
    )
    a = span.attributes
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "elevenlabs"
    assert a["gen_ai.operation.name"] == "generate_content"
    assert a["agentops.endpoint"] == "tts"
    assert span.name == "generate_content eleven_flash_v2_5"
    runs = {
        s.attributes.get("agentops.run.exchange_count"): s for s in receiver.named("invoke_agent")
    }
    alone, mixed = runs[1].attributes, runs[2].attributes
    assert alone["gen_ai.provider.name"] == alone["gen_ai.system"] == "elevenlabs"
    assert "gen_ai.provider.name" not in mixed and "gen_ai.system" not in mixed
    assert list(mixed["agentops.run.providers"]) == ["elevenlabs", "mistral_ai"]


@pytest.mark.parametrize(
    ("providers", "attributes"),
    [
        (("mistral",), {"gen_ai.provider.name": "mistral_ai", "gen_ai.system": "mistral_ai"}),
        (("elevenlabs",), {"gen_ai.provider.name": "elevenlabs", "gen_ai.system": "elevenlabs"}),
        (("elevenlabs", "mistral"), {"agentops.run.providers": ["elevenlabs", "mistral_ai"]}),
        ((), {}),
    ],
)
def test_run_spans_name_their_calls_provider(providers, attributes):
    assert run_provider(providers) == attributes
