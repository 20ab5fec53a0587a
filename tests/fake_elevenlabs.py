"""A fake api.elevenlabs.io for tests: text-to-speech (whole, streamed, with timestamps, both)
and the voices list, in the shapes of ElevenLabs' public API (/work/shared/mistral/API_NOTES.md
section 10, and the elevenlabs-python client).

Every request is recorded in ``app[REQUESTS]`` like tests/fake_mistral.py does. Audio is fake
but deterministic MPEG bytes (an ID3 tag, then frames), so a test can hash what it received.

Knobs (request headers):
  x-fake-no-cost: 1            leave out the character-cost header
  x-fake-status: N             answer with error N (401 says quota_exceeded, as the API does)
  x-fake-chunk-delay-ms: N     sleep N ms between streamed audio chunks
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import uuid
from typing import Any

import orjson
from aiohttp import web

from tests.fake_mistral import REQUESTS, record_middleware

CREDITS_PER_CHARACTER = {
    "eleven_flash_v2_5": 0.5,
    "eleven_turbo_v2_5": 0.5,
    "eleven_flash_v2": 0.5,
    "eleven_turbo_v2": 0.5,
}
VOICES = (
    ("21m00Tcm4TlvDq8ikWAM", "Rachel", "premade", {"accent": "american", "gender": "female"}),
    ("JBFqnCBsd6RMkjVDRZzb", "George", "premade", {"accent": "british", "gender": "male"}),
)
VOICE_IDS = frozenset(v[0] for v in VOICES)
STREAM_CHUNKS = 4


def audio_for(text: str, voice_id: str) -> bytes:
    """Deterministic stand-in MP3: an ID3v2 header, then 'frames' derived from the text."""
    seed = hashlib.sha256(f"{voice_id}:{text}".encode()).digest()
    frames = b"".join(b"\xff\xfb\x90\x64" + seed * 13 for _ in range(max(1, len(text) // 8)))
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + frames


def credits(text: str, model_id: str) -> int:
    return math.ceil(len(text) * CREDITS_PER_CHARACTER.get(model_id, 1.0))


def error(status: int, kind: str, message: str) -> web.Response:
    body = {
        "detail": {
            "type": "error",
            "code": kind,
            "status": kind,
            "message": message,
            "request_id": uuid.uuid4().hex,
        }
    }
    return web.json_response(body, status=status, dumps=lambda v: orjson.dumps(v).decode())


@web.middleware
async def knob_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.headers.get("xi-api-key"):
        return error(401, "invalid_api_key", "Invalid API key")
    status = request.headers.get("x-fake-status")
    if status:
        if status == "401":
            return error(401, "quota_exceeded", "This request exceeds your quota.")
        return error(int(status), "fake_error", f"fake error {status}")
    return await handler(request)


async def _speech_request(request: web.Request) -> tuple[str, str, str] | web.Response:
    voice_id = request.match_info["voice_id"]
    if voice_id not in VOICE_IDS:
        return error(404, "voice_not_found", f"A voice with voice_id {voice_id} was not found.")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(400, "invalid_json", "Request body is not valid JSON.")
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        return web.json_response(
            {"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]},
            status=422,
        )
    return voice_id, text, body.get("model_id") or "eleven_multilingual_v2"


def _headers(request: web.Request, text: str, model_id: str) -> dict[str, str]:
    headers = {
        "request-id": uuid.uuid4().hex,
        "current-concurrent-requests": "1",
        "maximum-concurrent-requests": "5",
    }
    if request.headers.get("x-fake-no-cost") != "1":
        headers["character-cost"] = str(credits(text, model_id))
    return headers


async def text_to_speech(request: web.Request) -> web.StreamResponse:
    parsed = await _speech_request(request)
    if isinstance(parsed, web.Response):
        return parsed
    voice_id, text, model_id = parsed
    return web.Response(
        body=audio_for(text, voice_id),
        content_type="audio/mpeg",
        headers=_headers(request, text, model_id),
    )


async def text_to_speech_stream(request: web.Request) -> web.StreamResponse:
    parsed = await _speech_request(request)
    if isinstance(parsed, web.Response):
        return parsed
    voice_id, text, model_id = parsed
    audio = audio_for(text, voice_id)
    response = web.StreamResponse(
        headers={**_headers(request, text, model_id), "Content-Type": "audio/mpeg"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    delay = int(request.headers.get("x-fake-chunk-delay-ms", "0")) / 1000
    size = math.ceil(len(audio) / STREAM_CHUNKS)
    for start in range(0, len(audio), size):
        if delay and start:
            await asyncio.sleep(delay)
        await response.write(audio[start : start + size])
    await response.write_eof()
    return response


async def text_to_speech_with_timestamps(request: web.Request) -> web.StreamResponse:
    parsed = await _speech_request(request)
    if isinstance(parsed, web.Response):
        return parsed
    voice_id, text, model_id = parsed
    starts = [round(i * 0.07, 3) for i in range(len(text))]
    alignment = {
        "characters": list(text),
        "character_start_times_seconds": starts,
        "character_end_times_seconds": [round(s + 0.07, 3) for s in starts],
    }
    body = {
        "audio_base64": base64.b64encode(audio_for(text, voice_id)).decode(),
        "alignment": alignment,
        "normalized_alignment": alignment,
    }
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers=_headers(request, text, model_id),
    )


async def text_to_speech_stream_with_timestamps(request: web.Request) -> web.StreamResponse:
    """One JSON object per line, each with a piece of audio and its characters' timing."""
    parsed = await _speech_request(request)
    if isinstance(parsed, web.Response):
        return parsed
    voice_id, text, model_id = parsed
    response = web.StreamResponse(
        headers={**_headers(request, text, model_id), "Content-Type": "application/json"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    audio, words = audio_for(text, voice_id), text.split(" ")
    size = math.ceil(len(audio) / len(words))
    for index, word in enumerate(words):
        piece = audio[index * size : (index + 1) * size]
        alignment = {
            "characters": list(word),
            "character_start_times_seconds": [0.0] * len(word),
            "character_end_times_seconds": [0.1] * len(word),
        }
        await response.write(
            orjson.dumps(
                {
                    "audio_base64": base64.b64encode(piece).decode(),
                    "alignment": alignment,
                    "normalized_alignment": alignment,
                }
            )
            + b"\n"
        )
    await response.write_eof()
    return response


async def voices(request: web.Request) -> web.Response:
    items = [
        {
            "voice_id": vid,
            "name": name,
            "category": category,
            "labels": labels,
            "description": None,
            "preview_url": None,
            "settings": None,
        }
        for vid, name, category, labels in VOICES
    ]
    return web.Response(body=orjson.dumps({"voices": items}), content_type="application/json")


def make_app() -> web.Application:
    app = web.Application(middlewares=[record_middleware, knob_middleware])
    app[REQUESTS] = []
    app.router.add_post("/v1/text-to-speech/{voice_id}", text_to_speech)
    app.router.add_post("/v1/text-to-speech/{voice_id}/stream", text_to_speech_stream)
    app.router.add_post(
        "/v1/text-to-speech/{voice_id}/with-timestamps", text_to_speech_with_timestamps
    )
    app.router.add_post(
        "/v1/text-to-speech/{voice_id}/stream/with-timestamps",
        text_to_speech_stream_with_timestamps,
    )
    app.router.add_get("/v1/voices", voices)
    return app


async def start_fake_elevenlabs() -> tuple[web.AppRunner, str, web.Application]:
    """Run it on an ephemeral loopback port. Caller must `await runner.cleanup()`."""
    app = make_app()
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}", app
