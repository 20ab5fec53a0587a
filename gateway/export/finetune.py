"""Stored exchanges as chat examples: Mistral's fine-tuning format, and the normalised
`messages` column of flat exports (a failed call's too: what it sent).

A training example is the call's input messages plus its reply, from the stored bodies
(re-parsed by the provider, streams reassembled). Mistral's format: {"messages": [...],
"tools": [...]} with string contents and tool calls as {"id", "type": "function",
"function": {"name", "arguments": "<JSON string>"}}.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.providers.base import Parsed, Provider
from gateway.store.records import StoredExchange
from gateway.store.stored import parse_stored, stored_body

ROLES = ("system", "user", "assistant", "tool")


def parse_for_export(provider: Provider, item: StoredExchange) -> Parsed | None:
    """A stored exchange parsed again (gateway/store/stored.py); None when its request body is
    gone (omitted, or not text), as there is nothing to learn from."""
    if not stored_body(item, "request"):
        return None
    return parse_stored(provider, item)


def text_of(content: Any) -> str | None:
    """Message content as a string: text chunks joined, anything else as JSON."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(c, dict) and c.get("type") == "text" for c in content
    ):
        return "".join(str(c.get("text") or "") for c in content)
    return orjson.dumps(content).decode()


def tool_call(call: Any) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    fn = fn if isinstance(fn, dict) else {}
    arguments = fn.get("arguments")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
    return {
        "id": call.get("id") if isinstance(call, dict) else None,
        "type": "function",
        "function": {"name": fn.get("name"), "arguments": arguments},
    }


def message(raw: dict[str, Any]) -> dict[str, Any]:
    """One message in Mistral's fine-tuning shape (keys that do not apply are left out)."""
    out: dict[str, Any] = {"role": raw.get("role")}
    calls = raw.get("tool_calls")
    content = text_of(raw.get("content"))
    if content is not None or not calls:
        out["content"] = content or ""
    if calls:
        out["tool_calls"] = [tool_call(c) for c in calls]
    if raw.get("role") == "tool":
        if raw.get("tool_call_id"):
            out["tool_call_id"] = raw["tool_call_id"]
        if raw.get("name"):
            out["name"] = raw["name"]
    return out


def conversation(parsed: Parsed | None) -> list[dict[str, Any]] | None:
    """The call's input messages plus its reply, or None when it has no assistant reply (an
    error, a FIM or embeddings call, omitted bodies)."""
    if parsed is None or parsed.messages_in is None or parsed.message_out is None:
        return None
    messages = [message(m) for m in parsed.messages_in if m.get("role") in ROLES]
    return [*messages, message(parsed.message_out)]


def sent_and_answered(parsed: Parsed | None) -> list[dict[str, Any]] | None:
    """The `messages` of a flat export record: the call's input messages, plus its reply
    when it has one. A failed call (an error status, no response) keeps what it sent, which
    is what a reader of failures looks for; None without input messages (FIM, embeddings,
    omitted bodies)."""
    if parsed is None or parsed.messages_in is None:
        return None
    whole = conversation(parsed)
    if whole is not None:
        return whole
    return [message(m) for m in parsed.messages_in if m.get("role") in ROLES]


def example(parsed: Parsed | None) -> dict[str, Any] | None:
    """A Mistral fine-tuning example, with the request's tool definitions when it had any."""
    messages = conversation(parsed)
    if messages is None or parsed is None:
        return None
    out: dict[str, Any] = {"messages": messages}
    request = parsed.request_json
    tools = request.get("tools") if isinstance(request, dict) else None
    if isinstance(tools, list) and tools:
        out["tools"] = tools
    return out
