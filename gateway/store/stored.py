"""A stored exchange read back: its bodies decoded for people, and parsed again by its
provider. One place, used by the API, the pages, replay and export alike (no HTTP here)."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.capture import storable
from gateway.providers.base import Parsed, Provider

log = logging.getLogger("agentops.stored")

# Encodings whose stored text is not the body's bytes: nothing to parse again.
UNPARSEABLE = ("omitted", "base64", "digest")


def decode_body(text: str | None, encoding: str | None) -> Any:
    """A stored body as the API shows it: JSON (and audio digests) parsed, the rest as text."""
    if text is None:
        return None
    if encoding in ("json", "digest"):  # digest: an audio body's type, size and SHA-256
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


def exchange_detail(item: dict[str, Any]) -> dict[str, Any]:
    """A stored exchange with its headers, bodies and units decoded, as the API shows it."""
    for side in ("request", "response"):
        item[f"{side}_headers"] = orjson.loads(item[f"{side}_headers"] or "[]")
        item[f"{side}_body"] = decode_body(item[f"{side}_body"], item[f"{side}_body_encoding"])
    if item.get("units"):
        item["units"] = orjson.loads(item["units"])
    return item


def stored_body(item: dict[str, Any], side: str) -> bytes:
    """`side`'s body as bytes to parse (empty when it was not kept as text)."""
    body, encoding = item.get(f"{side}_body"), item.get(f"{side}_body_encoding")
    if body is None or encoding in UNPARSEABLE:
        return b""
    return body.encode() if isinstance(body, str) else storable.json_bytes(body)


def _headers(item: dict[str, Any], side: str) -> dict[str, str]:
    pairs = item.get(f"{side}_headers") or []
    if isinstance(pairs, str):  # a store row, not yet through exchange_detail
        try:
            pairs = orjson.loads(pairs)
        except orjson.JSONDecodeError:
            pairs = []
    return {str(k).lower(): str(v) for k, v in pairs}


def parse_stored(provider: Provider, item: dict[str, Any]) -> Parsed:
    """Parse a stored exchange (a store row, or as exchange_detail returns it) again: its
    messages, tool calls and conversation entries, streams reassembled. Never raises."""
    response_headers = _headers(item, "response")
    response_headers.pop("content-encoding", None)  # stored bodies are already decoded
    try:
        return provider.parse(
            item["method"],
            item["path"],
            _headers(item, "request"),
            stored_body(item, "request"),
            item["status"],
            response_headers,
            [stored_body(item, "response")],
        )
    except Exception:  # a provider bug must not break a page, a replay or an export
        log.exception("provider %s failed on stored exchange %s", provider.name, item.get("id"))
        return Parsed(parse_error=True)
