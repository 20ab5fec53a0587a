"""ElevenLabs API shapes: one recorded exchange in, what the gateway indexes out.

The second provider behind `gateway/providers/base.py`: text-to-speech calls are billed in
credits, not tokens. The response's `character-cost` header says how many credits a call
used; without it (errors aside) the request text's length times the model's credits per
character stands in. Credits become USD at a configured rate, so the cost is the provider's
to give (`Parsed.cost_usd`), not the Mistral price table's. Audio bodies are never parsed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from typing import Any

import orjson

from gateway.providers.base import Parsed, Replay

DEFAULT_MODEL = "eleven_multilingual_v2"  # what the API uses when a request names none
# Credits per character (ElevenLabs' pricing: v2/v3 models 1, Flash and Turbo 0.5).
CREDITS_PER_CHARACTER = {
    "eleven_v3": 1.0,
    "eleven_multilingual_v2": 1.0,
    "eleven_multilingual_v1": 1.0,
    "eleven_monolingual_v1": 1.0,
    "eleven_flash_v2_5": 0.5,
    "eleven_turbo_v2_5": 0.5,
    "eleven_flash_v2": 0.5,
    "eleven_turbo_v2": 0.5,
}
UNKNOWN_MODEL_CREDITS = 1.0  # the full rate: an unknown model is priced high, never free
# Path segment after /v1 -> endpoint kind.
_ENDPOINTS = {
    "text-to-speech": "tts",
    "speech-to-speech": "sts",
    "speech-to-text": "stt",
    "sound-generation": "sound",
    "text-to-dialogue": "dialogue",
    "voices": "voices",
    "models": "models",
    "history": "history",
    "user": "user",
}
_BILLED = frozenset({"tts", "dialogue"})  # endpoints whose price follows the request text


def endpoint_of(path: str) -> tuple[str, bool]:
    """(endpoint kind, streamed?) of a path such as /v1/text-to-speech/{voice}/stream."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if len(parts) < 2 or parts[0] not in ("v1", "v2"):
        return "other", False
    return _ENDPOINTS.get(parts[1], "other"), "stream" in parts[2:]


def credits_per_character(model: str | None) -> float:
    return CREDITS_PER_CHARACTER.get(model or DEFAULT_MODEL, UNKNOWN_MODEL_CREDITS)


def header_credits(headers: dict[str, str]) -> float | None:
    """The `character-cost` header as a number of credits, if it is one."""
    raw = headers.get("character-cost")
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def request_text(body: Any) -> str | None:
    """The billed text: `text` for speech, the joined `inputs[].text` for dialogue."""
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("text"), str):
        return body["text"]
    inputs = body.get("inputs")
    if isinstance(inputs, list):
        texts = [
            i["text"] for i in inputs if isinstance(i, dict) and isinstance(i.get("text"), str)
        ]
        return "".join(texts) if texts else None
    return None


class ElevenLabsProvider:
    """Parses ElevenLabs calls; prices them at `usd_per_credit`."""

    name = "elevenlabs"
    replay: Replay | None = None  # speech is not replayed
    # OpenTelemetry GenAI names: the provider, and each endpoint's operation (speech made or
    # transcribed is content generation; the rest are plain API calls named by endpoint).
    genai_name = "elevenlabs"
    genai_operations = {
        "tts": "generate_content",
        "sts": "generate_content",
        "stt": "generate_content",
        "sound": "generate_content",
        "dialogue": "generate_content",
    }

    def __init__(self, usd_per_credit: float) -> None:
        self.usd_per_credit = usd_per_credit

    def preview(self, request_json: Any) -> str | None:
        """A TTS call is shown by the text it speaks."""
        text = request_json.get("text") if isinstance(request_json, dict) else None
        return text[:300] if isinstance(text, str) else None

    def parse(
        self,
        method: str,
        path: str,
        request_headers: dict[str, str],
        request_body: bytes,
        status: int | None,
        response_headers: dict[str, str],
        response_chunks: list[bytes],
    ) -> Parsed:
        endpoint, streamed = endpoint_of(path)
        parsed = Parsed(endpoint=endpoint, streamed=streamed, category="tool")
        is_json = "json" in request_headers.get("content-type", "")
        if request_body and is_json:
            try:
                parsed.request_json = orjson.loads(request_body)
            except orjson.JSONDecodeError:
                parsed.parse_error = True
        body = parsed.request_json if isinstance(parsed.request_json, dict) else {}
        model = body.get("model_id") if isinstance(body.get("model_id"), str) else None
        text = request_text(body)
        if endpoint in _BILLED:
            parsed.request_model = model
            parsed.model = model or DEFAULT_MODEL
            parsed.request_params = {k: v for k, v in body.items() if k not in ("text", "inputs")}
            voice = _voice_id(path) if endpoint == "tts" else None
            if voice:
                parsed.request_params["voice_id"] = voice
        if response_chunks and streamed:
            parsed.first_content_chunk = 0  # time to first audio byte
        if "json" in response_headers.get("content-type", "") and response_chunks:
            self._json_response(parsed, b"".join(response_chunks), streamed)
        self._bill(parsed, endpoint, status, response_headers, text)
        return parsed

    @staticmethod
    def _json_response(parsed: Parsed, body: bytes, streamed: bool) -> None:
        """JSON answers (`/with-timestamps`, one object per line when streamed) carry audio as
        base64: store them with each `audio_base64` replaced by its size and hash."""
        documents = body.splitlines() if streamed else [body]
        kept = []
        for document in documents:
            if not document.strip():
                continue
            try:
                value = orjson.loads(document)
            except orjson.JSONDecodeError:  # unparsed, and maybe audio: keep its hash only
                parsed.parse_error = parsed.response_unparsed = True
                parsed.stored_response = orjson.dumps(
                    {"unparsed": {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}}
                )
                return
            kept.append(_without_audio(value))
        if not streamed and kept:
            parsed.response_json = kept[0]
        if any(isinstance(v, dict) and "audio_base64" in v for v in kept):
            parsed.stored_response = b"\n".join(orjson.dumps(v) for v in kept)

    def _bill(
        self,
        parsed: Parsed,
        endpoint: str,
        status: int | None,
        headers: dict[str, str],
        text: str | None,
    ) -> None:
        """Credits from the header, else estimated from the text; errors cost nothing."""
        if status is None or not 200 <= status < 300:
            return
        credits = header_credits(headers)
        if text is not None:
            parsed.units["characters"] = len(text)
        if credits is None and endpoint in _BILLED and text is not None:
            credits = len(text) * credits_per_character(parsed.model)
        if credits is None:
            return
        parsed.units["credits"] = credits
        parsed.cost_usd = round(credits * self.usd_per_credit, 10)


def _without_audio(value: Any) -> Any:
    """`{"audio_base64": "..."}` -> `{"audio_base64": {"bytes": n, "sha256": "..."}}`."""
    if not isinstance(value, dict) or not isinstance(value.get("audio_base64"), str):
        return value
    try:
        audio = base64.b64decode(value["audio_base64"], validate=True)
    except (binascii.Error, ValueError):
        audio = value["audio_base64"].encode()
    return {
        **value,
        "audio_base64": {"bytes": len(audio), "sha256": hashlib.sha256(audio).hexdigest()},
    }


def _voice_id(path: str) -> str | None:
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    return parts[2] if len(parts) >= 3 else None
