"""ElevenLabs as a second upstream: routed by the /elevenlabs prefix, forwarded as it is,
recorded with provider "elevenlabs", priced in credits, audio kept as size and hash, grouped
into runs beside the LLM calls. Real gateway, fake Mistral and fake ElevenLabs upstreams.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.providers.elevenlabs import ElevenLabsProvider
from tests.conftest import Upstream, make_settings, running
from tests.fake_elevenlabs import VOICES, audio_for, start_fake_elevenlabs
from tests.fake_mistral import REQUESTS

XI_KEY = "xi-SECRET-elevenlabs-key-9876ZYXW"
VOICE = VOICES[0][0]
RATE = 0.0001  # the default USD per credit


@pytest.fixture
async def eleven() -> AsyncIterator[tuple[str, web.Application]]:
    runner, url, app = await start_fake_elevenlabs()
    try:
        yield url, app
    finally:
        await runner.cleanup()


def settings_for(upstream: Upstream, eleven_url: str, db: str, tmp_path: Path) -> Any:
    return make_settings(upstream.url, db, tmp_path).replace(elevenlabs_upstream=eleven_url)


async def api(gw: Gateway, path: str, **params: str) -> Any:
    await gw.recorder.drained(timeout=20)
    async with aiohttp.ClientSession(gw.ui_url) as http, http.get(path, params=params) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def tts(
    http: aiohttp.ClientSession,
    gw: Gateway,
    text: str,
    *,
    prefix: str = "",
    suffix: str = "",
    model: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[aiohttp.ClientResponse, bytes]:
    body: dict[str, Any] = {"text": text}
    if model:
        body["model_id"] = model
    url = f"{gw.proxy_url}{prefix}/elevenlabs/v1/text-to-speech/{VOICE}{suffix}"
    async with http.post(
        url,
        json=body,
        params={"output_format": "mp3_44100_128"},
        headers={"xi-api-key": XI_KEY, **(headers or {})},
    ) as resp:
        return resp, await resp.read()


# -- the provider, table-driven -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "headers", "credits", "characters"),
    [
        ("/v1/text-to-speech/v1d", {"text": "Hello there"}, 200, {"character-cost": "11"}, 11, 11),
        (
            "/v1/text-to-speech/v1d",
            {"text": "Hello there", "model_id": "eleven_flash_v2_5"},
            200,
            {},
            5.5,
            11,
        ),
        ("/v1/text-to-speech/v1d/stream", {"text": "abcd"}, 200, {}, 4, 4),
        ("/v1/text-to-speech/v1d", {"text": "abcd", "model_id": "eleven_new_model"}, 200, {}, 4, 4),
        ("/v1/text-to-speech/v1d", {"text": "abcd"}, 401, {"character-cost": "4"}, None, None),
        ("/v1/text-to-speech/v1d", {"text": "abcd"}, 200, {"character-cost": "lots"}, 4, 4),
        ("/v1/voices", None, 200, {}, None, None),
        (
            "/v1/text-to-dialogue",
            {"inputs": [{"text": "Hi", "voice_id": "a"}, {"text": "Yo", "voice_id": "b"}]},
            200,
            {},
            4,
            4,
        ),
    ],
)
def test_credits_and_cost(path, body, status, headers, credits, characters):
    raw = orjson.dumps(body) if body is not None else b""
    parsed = ElevenLabsProvider(RATE).parse(
        "POST" if body else "GET",
        path,
        {"content-type": "application/json"},
        raw,
        status,
        {"content-type": "audio/mpeg", **headers},
        [b"\xff\xfb audio"],
    )
    assert parsed.units.get("credits") == credits
    assert parsed.units.get("characters") == characters
    assert parsed.cost_usd == (None if credits is None else round(credits * RATE, 10))


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[1, 2]", b'{"text": 5, "model_id": []}', b'{"inputs": "x"}', b"\xff\xfe"]
)
@pytest.mark.parametrize(
    "path",
    ["/", "/v1", "/v1/text-to-speech", "/v1/text-to-speech/v/s", "/v2/voices?x=1", "/nowhere"],
)
def test_hostile_input_never_raises(raw, path):
    parsed = ElevenLabsProvider(RATE).parse(
        "POST",
        path,
        {"content-type": "application/json"},
        raw,
        200,
        {"content-type": "application/json"},
        [raw],
    )
    assert parsed.cost_usd is None or parsed.cost_usd >= 0


# -- through the gateway --------------------------------------------------------------------


async def test_tts_and_chat_share_a_run_and_split_cost_by_provider(
    upstream: Upstream, eleven, db_url: str, tmp_path: Path
):
    eleven_url, eleven_app = eleven
    async with (
        running(settings_for(upstream, eleven_url, db_url, tmp_path)) as gw,
        aiohttp.ClientSession(auto_decompress=False) as http,
    ):
        chat = {
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": "Write a greeting"}],
        }
        async with http.post(
            f"{gw.proxy_url}/r/story/v1/chat/completions",
            json=chat,
            headers={"Authorization": "Bearer mistral-key"},
        ) as resp:
            assert resp.status == 200
        text = "Hello from the agent, spoken aloud."
        resp, audio = await tts(http, gw, text, prefix="/r/story")
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/mpeg"
        assert audio == audio_for(text, VOICE)  # forwarded unchanged
        assert resp.headers["character-cost"] == str(len(text))
        seen = eleven_app[REQUESTS][-1]
        assert seen["path"] == f"/v1/text-to-speech/{VOICE}"  # prefixes stripped
        assert seen["query"] == "output_format=mp3_44100_128"
        assert dict((k.lower(), v) for k, v in seen["headers"])["xi-api-key"] == XI_KEY
        # a second named call by header joins the same run
        resp, _ = await tts(
            http, gw, "And goodbye.", model="eleven_flash_v2_5", headers={"X-AgentOps-Run": "story"}
        )
        assert resp.status == 200

        (run,) = (await api(gw, "/api/runs", name="story"))["items"]
        assert run["exchange_count"] == 3
        detail = await api(gw, f"/api/runs/{run['id']}")
        by_provider = {row["provider"]: row for row in detail["cost_by_provider"]}
        tts_cost = round((len(text) + 6) * RATE, 10)  # flash: 12 characters at 0.5 credits
        assert by_provider["elevenlabs"]["calls"] == 2
        assert by_provider["elevenlabs"]["cost_usd"] == pytest.approx(tts_cost)
        assert by_provider["mistral"]["cost_usd"] > 0
        assert run["total_cost_usd"] == pytest.approx(by_provider["mistral"]["cost_usd"] + tts_cost)
        by_category = {(c["category"], c["provider"]): c for c in detail["cost_by_category"]}
        assert set(by_category) == {("llm", "mistral"), ("tool", "elevenlabs")}
        assert by_category["tool", "elevenlabs"]["cost_usd"] == pytest.approx(tts_cost)
        assert by_category["llm", "mistral"]["calls"] == 1
        async with aiohttp.ClientSession(gw.ui_url) as page, page.get(f"/runs/{run['id']}") as resp:
            html = await resp.text()
        table = html.split('id="run-cost-by-category"')[1].split("</table>")[0]
        assert '<th scope="row">tool</th><td>elevenlabs</td>' in table
        assert '<th scope="row">llm</th><td>mistral</td>' in table

        stats = await api(gw, "/api/stats")
        providers = {row["provider"]: row for row in stats["by_provider"]}
        assert providers["elevenlabs"]["cost_usd"] == pytest.approx(tts_cost)
        assert providers["mistral"]["calls"] == 1
        # cost categories: ElevenLabs is a tool's cost, Mistral's chat an LLM's
        costs = stats["totals"]["cost_by_category"]
        assert costs["tool"] == pytest.approx(tts_cost)
        assert costs["llm"] == pytest.approx(providers["mistral"]["cost_usd"])
        assert costs["fine-tuning"] == 0
        assert {row["model"] for row in stats["by_model"]} >= {
            "eleven_multilingual_v2",
            "eleven_flash_v2_5",
        }

        items = (await api(gw, "/api/exchanges", limit="10"))["items"]
        assert {i["provider"]: i["category"] for i in items} == {
            "elevenlabs": "tool",
            "mistral": "llm",
        }
        first_tts = next(
            i
            for i in items
            if i["provider"] == "elevenlabs" and i["model"] == "eleven_multilingual_v2"
        )
        record = await api(gw, f"/api/exchanges/{first_tts['id']}")
        assert record["endpoint"] == "tts" and record["path"] == f"/v1/text-to-speech/{VOICE}"
        assert record["client_path"] == f"/r/story/elevenlabs/v1/text-to-speech/{VOICE}"
        assert record["units"] == {"characters": len(text), "credits": len(text)}
        assert record["response_body_encoding"] == "digest"
        assert record["response_body"] == {
            "content_type": "audio/mpeg",
            "bytes": len(audio),
            "sha256": hashlib.sha256(audio).hexdigest(),
        }
        assert record["request_body"] == {"text": text}
        headers = dict(record["request_headers"])
        assert headers["xi-api-key"] == "[redacted]"
        assert record["key_fingerprint"].endswith(XI_KEY[-4:])
        dump = orjson.dumps(await api(gw, "/api/exchanges", limit="10")).decode()
        assert XI_KEY not in dump and XI_KEY not in orjson.dumps(record).decode()


async def test_stream_voices_estimate_and_websocket(upstream: Upstream, eleven, tmp_path: Path):
    eleven_url, _ = eleven
    settings = settings_for(upstream, eleven_url, f"sqlite://{tmp_path / 'e.db'}", tmp_path)
    async with running(settings) as gw, aiohttp.ClientSession() as http:
        text = "A streamed sentence that arrives in pieces."
        url = f"{gw.proxy_url}/elevenlabs/v1/text-to-speech/{VOICE}/stream"
        start, arrivals, audio = time.perf_counter(), [], b""
        async with http.post(
            url, json={"text": text}, headers={"xi-api-key": XI_KEY, "x-fake-chunk-delay-ms": "150"}
        ) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                arrivals.append(time.perf_counter() - start)
                audio += chunk
        assert audio == audio_for(text, VOICE)
        assert arrivals[0] < arrivals[-1] - 0.3, arrivals  # relayed as it arrives

        resp, _ = await tts(
            http, gw, "no header here", model="eleven_turbo_v2_5", headers={"x-fake-no-cost": "1"}
        )
        assert "character-cost" not in resp.headers
        async with http.get(
            f"{gw.proxy_url}/elevenlabs/v1/voices", headers={"xi-api-key": XI_KEY}
        ) as resp:
            assert resp.status == 200 and len((await resp.json())["voices"]) == len(VOICES)
        async with http.get(
            f"{gw.proxy_url}/elevenlabs/v1/text-to-speech/{VOICE}"
            "/stream-input?model_id=eleven_flash_v2_5",
            headers={
                "xi-api-key": XI_KEY,
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as resp:
            assert resp.status == 501
            message = (await resp.json())["detail"]["message"]
        assert "not proxied" in message
        assert f"ws://127.0.0.1:{eleven_url.rsplit(':', 1)[1]}/v1/text-to-speech/" in message
        resp, _ = await tts(http, gw, "quota", headers={"x-fake-status": "401"})
        assert resp.status == 401
        timed = "Words with their timing"
        for suffix in ("/with-timestamps", "/stream/with-timestamps"):
            resp, body = await tts(http, gw, timed, suffix=suffix)
            assert resp.status == 200 and b"audio_base64" in body

        async def stored_body(path: str) -> Any:
            item = next(
                i
                for i in (await api(gw, "/api/exchanges", limit="20"))["items"]
                if i["path"] == f"/v1/text-to-speech/{VOICE}{path}"
            )
            return (await api(gw, f"/api/exchanges/{item['id']}"))["response_body"]

        whole = await stored_body("/with-timestamps")  # JSON, audio as its size and hash
        assert whole["audio_base64"] == {
            "bytes": len(audio_for(timed, VOICE)),
            "sha256": hashlib.sha256(audio_for(timed, VOICE)).hexdigest(),
        }
        assert whole["alignment"]["characters"] == list(timed)
        lines = [
            orjson.loads(line)
            for line in (await stored_body("/stream/with-timestamps")).splitlines()
        ]
        assert len(lines) == 4 and all(
            set(line["audio_base64"]) == {"bytes", "sha256"} for line in lines
        )

        async with http.get(f"{gw.proxy_url}/elevenlabs-not/v1/models") as resp:
            assert resp.status == 404  # not the prefix: a Mistral path, to the Mistral upstream
        assert upstream.requests[-1]["path"] == "/elevenlabs-not/v1/models"

        items = (await api(gw, "/api/exchanges", limit="20"))["items"]
        by_path = {(i["path"], i["status"]): i for i in items}
        assert by_path[("/elevenlabs-not/v1/models", 404)]["provider"] == "mistral"
        streamed = by_path[(f"/v1/text-to-speech/{VOICE}/stream", 200)]
        assert streamed["streamed"] is True and streamed["provider"] == "elevenlabs"
        assert streamed["ttft_ms"] is not None
        assert streamed["ttft_ms"] < streamed["latency_ms"] - 300  # first audio byte, early
        assert streamed["cost_usd"] == pytest.approx(len(text) * RATE)
        estimated = by_path[(f"/v1/text-to-speech/{VOICE}", 200)]
        assert estimated["cost_usd"] == pytest.approx(len("no header here") * 0.5 * RATE)
        assert by_path[("/v1/voices", 200)]["cost_usd"] is None
        assert by_path[("/v1/voices", 200)]["endpoint"] == "voices"
        refused = by_path[(f"/v1/text-to-speech/{VOICE}/stream-input", 501)]
        assert "not proxied" in refused["error"]
        assert by_path[(f"/v1/text-to-speech/{VOICE}", 401)]["cost_usd"] is None
