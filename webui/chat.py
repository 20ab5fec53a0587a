"""Messages as a chat: each message's text parts, tool calls with parsed arguments, and tool
results, in a shape the templates print as plain (autoescaped) text.

Everything here is captured content: it only ever becomes strings for Jinja to escape.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.capture import storable

MAX_RAW_CHARS = 200_000  # a raw body longer than this is shown cut, with a note
PART_LIMIT = 4_000  # characters of one message part a page shows before "show all"
RAW_INLINE = 20_000  # a raw body longer than this is loaded on demand
RAW_PREVIEW = 2_000  # ... and shows this much until then


def pretty_json(value: Any) -> str:
    return storable.json_text(value, orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


def arguments(raw: Any) -> str:
    """Tool-call arguments, pretty-printed when they are JSON (they usually arrive as a
    JSON string)."""
    if isinstance(raw, str):
        try:
            return pretty_json(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return raw
    return pretty_json(raw) if raw is not None else ""


def parts(content: Any) -> list[dict[str, str]]:
    """Content as a list of {kind, text}: text, image (its URL as text, never loaded),
    thinking, or JSON for anything else."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"kind": "text", "text": content}]
    chunks = content if isinstance(content, list) else [content]
    out = []
    for chunk in chunks:
        if isinstance(chunk, str):
            out.append({"kind": "text", "text": chunk})
        elif isinstance(chunk, dict) and isinstance(chunk.get("text"), str):
            out.append({"kind": "text", "text": chunk["text"]})
        elif isinstance(chunk, dict) and chunk.get("type") == "thinking":
            thought = chunk.get("thinking")
            text = (
                "".join(t.get("text", "") for t in thought if isinstance(t, dict))
                if isinstance(thought, list)
                else str(thought or "")
            )
            out.append({"kind": "thinking", "text": text})
        elif isinstance(chunk, dict) and chunk.get("type") in ("image_url", "document_url"):
            url = chunk.get(chunk["type"])
            url = url.get("url") if isinstance(url, dict) else url
            out.append({"kind": "attachment", "text": f"{chunk['type']}: {str(url)[:200]}"})
        else:
            out.append({"kind": "json", "text": pretty_json(chunk)})
    return out


def tool_calls(calls: Any) -> list[dict[str, Any]]:
    """A message's tool calls; arguments past PART_LIMIT keep their start and `more` (their
    whole length): the raw body has them all, and a page stays a page."""
    out = []
    for call in calls or ():
        if not isinstance(call, dict):
            continue
        function = call["function"] if isinstance(call.get("function"), dict) else {}
        out.append(
            {
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or "?"),
                **clipped_arguments(function.get("arguments")),
            }
        )
    return out


def clipped_arguments(raw: Any) -> dict[str, Any]:
    """{"arguments": the pretty-printed start} and, when cut, {"more": the whole length}."""
    text = arguments(raw)
    if len(text) <= PART_LIMIT:
        return {"arguments": text}
    return {"arguments": text[:PART_LIMIT], "more": len(text)}


def role_of(message: dict[str, Any]) -> str:
    """user, assistant, system, tool; conversation entries by their type."""
    role = message.get("role")
    if isinstance(role, str) and role:
        return role
    kind = str(message.get("type") or "")
    return {
        "message.input": "user",
        "message.output": "assistant",
        "function.call": "assistant",
        "function.result": "tool",
        "tool.execution": "tool",
        "agent.handoff": "handoff",
    }.get(kind, kind or "message")


def chat_items(messages: list[dict[str, Any]], limit: int | None = None) -> list[dict[str, Any]]:
    """The exchange's messages (input then output) ready to print. With a limit, a part
    longer than it keeps its start, `more` (its whole length) and `index` (message, part),
    so the page can load the rest on demand (see full_part)."""
    items = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        pieces = parts(message.get("content"))
        if limit is not None:
            pieces = [clipped(p, limit, (index, n)) for n, p in enumerate(pieces)]
        items.append(
            {
                "role": role_of(message),
                "output": message.get("direction") == "out",
                "parts": pieces,
                "tool_calls": tool_calls(message.get("tool_calls")),
                "tool_call_id": str(message.get("tool_call_id") or ""),
            }
        )
    return items


def clipped(part: dict[str, Any], limit: int, index: tuple[int, int]) -> dict[str, Any]:
    text = part["text"]
    if len(text) <= limit:
        return part
    return {**part, "text": text[:limit], "more": len(text), "index": f"{index[0]}-{index[1]}"}


def full_part(messages: list[dict[str, Any]], index: str) -> str | None:
    """The whole text of part "m-p" of message m, or None when there is no such part."""
    m, _, n = index.partition("-")
    if not (m.isascii() and m.isdigit() and n.isascii() and n.isdigit()) or int(m) >= len(messages):
        return None
    message = messages[int(m)]
    pieces = parts(message.get("content")) if isinstance(message, dict) else []
    return pieces[int(n)]["text"] if int(n) < len(pieces) else None


def pretty_body(body: Any, encoding: str | None, *, whole: bool = False) -> dict[str, Any]:
    """A stored body for the raw view: {text, note}, and `more` (its length) when only its
    start is shown until asked (`whole` gives it up to MAX_RAW_CHARS)."""
    if encoding == "omitted":
        return {"text": "", "note": "not recorded (X-AgentOps-Omit: bodies)"}
    if body is None or body == "":
        return {"text": "", "note": "empty"}
    if encoding == "base64":
        return {
            "text": str(body)[:2000],
            "note": "binary, shown as base64 (cut at 2,000 characters)",
        }
    text = body if isinstance(body, str) else pretty_json(body)
    if len(text) > RAW_INLINE and not whole:
        return {
            "text": text[:RAW_PREVIEW],
            "note": f"{len(text):,} characters, the first {RAW_PREVIEW:,} shown",
            "more": len(text),
        }
    if len(text) > MAX_RAW_CHARS:
        return {
            "text": text[:MAX_RAW_CHARS],
            "note": f"cut at {MAX_RAW_CHARS:,} of {len(text):,} characters; the API has it whole",
        }
    return {"text": text, "note": ""}
