"""A stored exchange read back and parsed again by its provider: its messages, tool calls
and conversation entries. One place, used by the API, the pages, replay and export alike (no
HTTP here)."""

from __future__ import annotations

import logging

from gateway.providers.base import Parsed, Provider
from gateway.store.records import Side, StoredExchange

log = logging.getLogger("agentops.stored")

# Encodings whose stored text is not the body's bytes: nothing to parse again.
UNPARSEABLE = ("omitted", "base64", "digest")


def stored_body(item: StoredExchange, side: Side) -> bytes:
    """`side`'s body as bytes to parse (empty when it was not kept as text)."""
    body, encoding = item.body(side)
    if body is None or encoding in UNPARSEABLE:
        return b""
    return body.encode()


def _headers(item: StoredExchange, side: Side) -> dict[str, str]:
    return {name.lower(): value for name, value in item.headers(side)}


def parse_stored(provider: Provider, item: StoredExchange) -> Parsed:
    """Parse a stored exchange again: its messages, tool calls and conversation entries,
    streams reassembled. Never raises."""
    response_headers = _headers(item, "response")
    response_headers.pop("content-encoding", None)  # stored bodies are already decoded
    try:
        return provider.parse(
            item.method,
            item.path,
            _headers(item, "request"),
            stored_body(item, "request"),
            item.status,
            response_headers,
            [stored_body(item, "response")],
        )
    except Exception:  # a provider bug must not break a page, a replay or an export
        log.exception("provider %s failed on stored exchange %s", provider.name, item.id)
        return Parsed(parse_error=True)
