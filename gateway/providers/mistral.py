"""Mistral API shapes: one recorded exchange in, the facts the gateway indexes out.

Why this exists: the proxy forwards and records bytes without looking at them. Everything the
gateway knows about api.mistral.ai (which endpoint a path is, where the model and usage live,
how chat/FIM/agents chunks and conversation events stream, OCR pages, audio seconds) is kept
here, behind the `Provider` interface, so the proxy, writer and UI stay vendor-neutral.

It runs in the background writer, so it must be cheap (orjson, one join per body, a lazy SSE
parse) and must never raise: hostile or truncated input yields whatever could be read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import sseclient

from gateway.providers.base import Parsed

_EXACT = {
    "/v1/chat/completions": "chat",
    "/v1/fim/completions": "fim",
    "/v1/agents/completions": "agents",
    "/v1/embeddings": "embeddings",
    "/v1/ocr": "ocr",
    "/v1/moderations": "moderations",
    "/v1/chat/moderations": "moderations",
    "/v1/classifications": "moderations",
    "/v1/chat/classifications": "moderations",
}
_PREFIXES = (("/v1/conversations", "conversations"), ("/v1/files", "files"), ("/v1/audio", "audio"))
_COMPLETIONS = frozenset({"chat", "fim", "agents"})
_JSON_ENDPOINTS = _COMPLETIONS | {"embeddings", "conversations", "ocr", "moderations"}
_MULTIPART_MODEL = b'form-data; name="model"'


def endpoint_of(path: str) -> str:
    """The endpoint kind of a forwarded path (query and fragment ignored)."""
    p = path.split("?", 1)[0].split("#", 1)[0]
    if len(p) > 1:
        p = p.rstrip("/")
    kind = _EXACT.get(p)
    if kind:
        return kind
    for prefix, kind in _PREFIXES:
        if p == prefix or p.startswith(prefix + "/"):
            return kind
    return "other"


def request_messages(request_json: Any) -> list | None:
    """The `messages` list of a chat/agents request body, else None."""
    if isinstance(request_json, dict):
        messages = request_json.get("messages")
        if isinstance(messages, list):
            return messages
    return None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _text(content: Any) -> str | None:
    """Text of a message content: a string, one chunk, or a list of chunks (thinking excluded)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = (content,)
    elif not isinstance(content, list):
        return None
    parts = [
        c["text"]
        for c in content
        if isinstance(c, dict)
        and c.get("type", "text") == "text"
        and isinstance(c.get("text"), str)
    ]
    return "".join(parts) if parts else None


def _usage(p: Parsed, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    p.prompt_tokens = _int(usage.get("prompt_tokens"))
    p.completion_tokens = _int(usage.get("completion_tokens"))
    p.total_tokens = _int(usage.get("total_tokens"))
    if p.total_tokens is None and (p.prompt_tokens is not None or p.completion_tokens is not None):
        p.total_tokens = (p.prompt_tokens or 0) + (p.completion_tokens or 0)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        p.cached_tokens = _int(details.get("cached_tokens"))
    p.connector_tokens = _int(usage.get("connector_tokens"))
    seconds = usage.get("prompt_audio_seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        p.units["audio_seconds"] = float(seconds)


def _multipart_model(body: bytes) -> str | None:
    at = body.find(_MULTIPART_MODEL)
    if at < 0:
        return None
    start = body.find(b"\r\n\r\n", at)
    end = body.find(b"\r\n--", start + 4) if start >= 0 else -1
    if end < 0 or end - start > 260:
        return None
    return body[start + 4 : end].decode("utf-8", "replace").strip() or None


def _request(p: Parsed, headers: dict[str, str], body: bytes) -> None:
    ctype = headers.get("content-type", "").lower()
    if ctype.startswith("multipart/"):
        p.request_model = _multipart_model(body)
        return
    head = body[:256].lstrip()[:1]
    if not head and not body.strip():
        return  # no body (a GET, or a POST without one) is never a parse error
    if not ("json" in ctype or head in (b"{", b"[") or p.endpoint in _JSON_ENDPOINTS):
        return
    try:
        p.request_json = orjson.loads(body)
    except orjson.JSONDecodeError:
        p.parse_error = True
        return
    if isinstance(p.request_json, dict):
        p.request_model = _str(p.request_json.get("model"))
        p.agent_id = _str(p.request_json.get("agent_id"))


def _response(p: Parsed, resp: dict) -> None:
    """Facts from a non-streamed 2xx/3xx JSON body."""
    p.model = _str(resp.get("model")) or p.model
    _usage(p, resp.get("usage"))
    if p.endpoint in _COMPLETIONS or "choices" in resp:
        choices = resp.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            p.finish_reason = _str(choices[0].get("finish_reason"))
            message = choices[0].get("message")
            if isinstance(message, dict):
                p.output_text = _text(message.get("content"))
    elif p.endpoint == "conversations":
        p.conversation_id = _str(resp.get("conversation_id")) or p.conversation_id
        outputs = resp.get("outputs")
        for entry in reversed(outputs) if isinstance(outputs, list) else ():
            if isinstance(entry, dict) and entry.get("type") == "message.output":
                p.output_text = _text(entry.get("content"))
                p.agent_id = p.agent_id or _str(entry.get("agent_id"))
                p.model = _str(resp.get("model")) or _str(entry.get("model")) or p.model
                break
    elif p.endpoint == "ocr":
        info = resp.get("usage_info")
        pages = _int(info.get("pages_processed")) if isinstance(info, dict) else None
        if pages is not None:
            p.units["pages"] = float(pages)
    elif p.endpoint == "audio":
        p.output_text = _str(resp.get("text"))


class _Acc:
    """What a stream parse gathered; applied to Parsed at the end."""

    __slots__ = ("agent_id", "conv_id", "finish", "first", "model", "saw", "texts", "usage")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.saw = False
        self.model = self.finish = self.usage = self.first = self.conv_id = self.agent_id = None


def _feed(chunks: list[bytes], pos: list[int]) -> Iterator[bytes]:
    """Yield chunks to sseclient, recording in pos[0] the index of the last one yielded.

    Runs of chunks without a line break are joined first: sseclient grows its buffer with
    `bytes +=` per line, which is quadratic when one event is split into many tiny chunks.
    """
    pending: list[bytes] = []
    for i, chunk in enumerate(chunks):
        if 10 not in chunk and 13 not in chunk:  # no LF, no CR (int lookups are memchr)
            pending.append(chunk)
            continue
        if pending:
            pending.append(chunk)
            chunk = b"".join(pending)
            pending = []
        pos[0] = i
        yield chunk
    if pending:
        pos[0] = len(chunks) - 1
        yield b"".join(pending)


def _on_chunk(acc: _Acc, obj: dict, choices: Any) -> bool:
    """One chat/FIM/agents chunk; True when it carried content or a tool call. (Hot loop.)"""
    if acc.model is None:
        acc.model = _str(obj.get("model"))
    if "usage" in obj:
        acc.usage = obj["usage"]
    if type(choices) is not list:
        return False
    content = False
    for choice in choices:
        if type(choice) is not dict:
            continue
        first = choice.get("index", 0) in (0, None)
        finish = choice.get("finish_reason")
        if finish is not None and first and type(finish) is str:
            acc.finish = finish
        delta = choice.get("delta")
        if type(delta) is not dict:
            continue
        acc.saw = True
        text = delta.get("content")
        if type(text) is not str:
            text = _text(text)
        if text:
            content = True
            if first:
                acc.texts.append(text)
        elif delta.get("tool_calls"):
            content = True
    return content


def _on_event(acc: _Acc, obj: dict, kind: str) -> bool:
    """One typed event (conversations, transcriptions); True when it carried content."""
    if kind in ("message.output.delta", "transcription.text.delta"):
        acc.saw = True
        delta = obj.get("content") if kind == "message.output.delta" else obj.get("text")
        text = _text(delta)
        acc.model = _str(obj.get("model")) or acc.model
        acc.agent_id = acc.agent_id or _str(obj.get("agent_id"))
        if text:
            acc.texts.append(text)
        return bool(text)
    if kind == "function.call.delta":
        return True
    if kind == "conversation.response.started":
        acc.conv_id = _str(obj.get("conversation_id"))
    elif kind in ("conversation.response.done", "transcription.done"):
        acc.usage = obj.get("usage")
        acc.model = _str(obj.get("model")) or acc.model
    elif kind == "conversation.response.error":
        acc.finish = "error"
    return False


def _stream(chunks: list[bytes]) -> _Acc:
    """Walk the SSE events. sseclient decodes as latin-1 (never fails, bytes round-trip) and
    orjson checks the UTF-8, so a bad byte costs one event, not the rest of the stream."""
    acc, pos = _Acc(), [-1]
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    try:
        for event in sseclient.SSEClient(_feed(chunks, pos), "latin-1").events():
            try:
                obj = loads(event.data.encode("latin-1"))
            except decode_error:
                if event.data.strip() == "[DONE]":
                    break
                continue
            if type(obj) is not dict:  # orjson makes exact dicts
                continue
            choices = obj.get("choices")
            if choices is not None:
                content = _on_chunk(acc, obj, choices)
            else:
                content = _on_event(acc, obj, _str(obj.get("type")) or event.event)
            if content and acc.first is None:
                acc.first = pos[0]
    except Exception:  # hostile bytes: keep what was read
        pass
    return acc


class MistralProvider:
    """Parses exchanges with api.mistral.ai (see /work/shared/mistral/API_NOTES.md)."""

    name = "mistral"

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
        p = Parsed()
        try:
            p.endpoint = endpoint_of(path or "")
            if p.endpoint == "conversations":
                parts = (path or "").split("?", 1)[0].split("/")
                if len(parts) > 3 and parts[3].startswith("conv_"):
                    p.conversation_id = parts[3]
            _request(p, request_headers or {}, request_body or b"")
            p.model = p.request_model
            ctype = (response_headers or {}).get("content-type", "").lower()
            p.streamed = "text/event-stream" in ctype
            chunks = response_chunks or []
            if p.streamed:
                if status is None or status < 400:
                    self._apply_stream(p, _stream(chunks))
                return p
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if "json" in ctype or body[:256].lstrip()[:1] in (b"{", b"["):
                try:
                    p.response_json = orjson.loads(body)
                except orjson.JSONDecodeError:
                    return p
            if isinstance(p.response_json, dict) and (status is None or status < 400):
                _response(p, p.response_json)
        except Exception:  # never raise: return what was gathered
            pass
        return p

    @staticmethod
    def _apply_stream(p: Parsed, acc: _Acc) -> None:
        p.model = acc.model or p.model
        p.finish_reason = acc.finish
        p.first_content_chunk = acc.first
        p.conversation_id = acc.conv_id or p.conversation_id
        p.agent_id = p.agent_id or acc.agent_id
        if acc.saw or acc.texts:
            p.output_text = "".join(acc.texts)
        _usage(p, acc.usage)
