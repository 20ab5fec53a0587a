"""What went wrong with a call, for its `error`, `error_type` and `error_code` columns.

A call failed when the gateway says so (a transport failure, a timeout, a shutdown: the proxy
sets `Exchange.error`), when the upstream answered a status of 400 or more, or when a body
that should be JSON is not. The upstream's own message is kept when it sent one: Mistral's
`{"message", "type", "code"}` (its message may itself be `{"detail": [...]}`), FastAPI's
`{"detail": ...}`, ElevenLabs' `{"detail": {"status", "message"}}`, OpenAI's `{"error": {...}}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MESSAGE_CHARS = 2000  # an upstream's message is kept this long, at most
TYPE_CHARS = 64  # the error_type and error_code columns' width


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    type: str | None = None
    code: str | None = None


def of_call(
    status: int | None,
    transport_error: str | None,
    state: str,
    response_json: Any,
    response_body: bytes,
    response_unparsed: bool,
) -> Failure | None:
    """The failure of one call, or None when it succeeded."""
    if transport_error:
        return Failure(transport_error, state if state != "complete" else "gateway_error")
    if status is not None and status >= 400:
        return _http(status, response_json, response_body)
    if response_unparsed:
        return Failure(
            f"HTTP {status}: the response body is not the JSON this endpoint answers",
            "unparsable_response",
        )
    if state != "complete":
        return Failure(f"call ended {state.replace('_', ' ')}", state)
    return None


def _http(status: int, body_json: Any, body: bytes) -> Failure:
    found = _from_json(body_json) if body_json is not None else None
    if found is None:
        text = body[:MESSAGE_CHARS].decode("utf-8", "replace").strip()
        found = Failure(text or "(no body)")
    return Failure(
        f"HTTP {status}: {found.message}"[:MESSAGE_CHARS],
        _short(found.type) or "http_error",
        _short(found.code),
    )


def _from_json(value: Any) -> Failure | None:
    if not isinstance(value, dict):
        return Failure(_text(value)) if value not in (None, "") else None
    nested = value.get("error")
    if isinstance(nested, dict):
        return _from_json(nested)
    detail = value.get("detail")
    if isinstance(detail, dict) and ("message" in detail or "status" in detail):
        return Failure(
            _text(detail.get("message") or detail.get("status")), _opt(detail.get("status"))
        )
    message = value.get("message", detail if detail is not None else nested)
    if message is None:
        return Failure(_text(value))
    kind = value.get("type")
    return Failure(_text(message), _opt(kind), _opt(value.get("code")))


def _text(value: Any) -> str:
    """A message as text: validation details as `loc: msg`, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "detail" in value:
        return _text(value["detail"])
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        parts = []
        for item in value:
            loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
            msg = item.get("msg") or item.get("message") or orjson.dumps(item).decode()
            parts.append(f"{loc}: {msg}" if loc else str(msg))
        return "; ".join(parts)
    return orjson.dumps(value, default=str).decode()


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _short(value: str | None) -> str | None:
    return None if value is None else value[:TYPE_CHARS]
