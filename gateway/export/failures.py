"""Failures as Mistral fine-tuning examples: each failing request (gateway/store/failures.py)
with the answer it should have given, validated line by line before anything is uploaded.

The expected output is known when a later call of the same request (a retry in its run, or
with the same key within minutes) was answered without error; a failure without one cannot
teach anything (Mistral's format ends on the assistant message) and is counted, not written.
`failures()` is the integration point a `failures` dataset fills from.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.export.finetune import ROLES, message, parse_for_export
from gateway.store.failures import FailingCall, failing_calls, later_answers

if TYPE_CHECKING:
    from gateway.providers.base import Provider
    from gateway.store.exchanges import Store

TOOL_CALL_ID = re.compile(r"^[A-Za-z0-9]{9}$")  # Mistral's fine-tuning tool call ids


@dataclass(frozen=True, slots=True)
class Failure:
    """A failing request: its input (messages, tools) and, when known, the expected output."""

    call: FailingCall
    messages: list[dict[str, Any]]
    tools: list[Any] | None
    expected: dict[str, Any] | None  # an assistant message
    expected_from: int | None  # the exchange that answered it

    def example(self) -> dict[str, Any] | None:
        """The Mistral fine-tuning line, or None without an expected output."""
        if self.expected is None:
            return None
        line: dict[str, Any] = {"messages": [*self.messages, self.expected]}
        if self.tools:
            line["tools"] = self.tools
        return line


def _inputs(provider: Provider, item: Any) -> tuple[list[dict[str, Any]], list[Any] | None]:
    parsed = parse_for_export(provider, item)
    if parsed is None or parsed.messages_in is None:
        return [], None
    messages = [message(m) for m in parsed.messages_in if m.get("role") in ROLES]
    request = parsed.request_json
    tools = request.get("tools") if isinstance(request, dict) else None
    return messages, (tools if isinstance(tools, list) and tools else None)


async def _expected(
    store: Store,
    provider: Provider,
    call: FailingCall,
    messages: list[dict[str, Any]],
    min_score: float | None,
) -> tuple[dict[str, Any] | None, int | None]:
    for exchange_id in await later_answers(store, call, min_score):
        item = await store.get_exchange(exchange_id)
        parsed = parse_for_export(provider, item) if item is not None else None
        if parsed is None or parsed.messages_in is None or parsed.message_out is None:
            continue
        inputs = [message(m) for m in parsed.messages_in if m.get("role") in ROLES]
        if inputs == messages:
            return message(parsed.message_out), exchange_id
    return None, None


async def failures(
    store: Store,
    provider: Provider,
    since: datetime | None = None,
    min_score: float | None = None,
    metric: str | None = None,
    *,
    skip: Callable[[FailingCall], bool] | None = None,
) -> AsyncIterator[Failure]:
    """Every failing request since `since`, oldest first, with its expected output if known;
    `skip` leaves calls out before their bodies are read (the failures rule's: those it has)."""
    for call in await failing_calls(store, since, min_score, metric):
        if skip is not None and skip(call):
            continue
        item = await store.get_exchange(call.exchange_id)
        if item is None:
            continue  # deleted meanwhile
        messages, tools = _inputs(provider, item)
        if not messages:
            continue  # bodies omitted or not a chat request: nothing to learn from
        expected, source = await _expected(store, provider, call, messages, min_score)
        yield Failure(call, messages, tools, expected, source)


def _tool_call_problems(calls: Any, where: str, asked: set[str]) -> list[str]:
    if not isinstance(calls, list) or not calls:
        return [f"{where}: tool_calls must be a non-empty list"]
    problems = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(f"{where}: a tool call without a function name")
            continue
        call_id = call.get("id")
        if not isinstance(call_id, str) or not TOOL_CALL_ID.match(call_id):
            problems.append(f"{where}: tool call id {call_id!r} is not 9 letters or digits")
        else:
            asked.add(call_id)
        try:
            arguments = orjson.loads(fn.get("arguments") or "")
        except (orjson.JSONDecodeError, TypeError):
            arguments = None
        if not isinstance(arguments, dict):
            problems.append(f"{where}: arguments of {fn['name']!r} are not a JSON object string")
    return problems


def _message_problems(messages: list[Any]) -> list[str]:
    problems: list[str] = []
    asked: set[str] = set()
    for index, msg in enumerate(messages):
        where = f"message {index}"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ROLES:
            problems.append(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
            continue
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            problems.append(f"{where}: content must be a string")
        if role == "assistant" and "tool_calls" in msg:
            problems += _tool_call_problems(msg["tool_calls"], where, asked)
        elif role == "tool":
            if msg.get("tool_call_id") not in asked:
                problems.append(f"{where}: a tool result answers no earlier tool call")
        elif not content:
            problems.append(f"{where}: empty {role} message")
    return problems


def _tools_problems(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        return ["tools must be a list"]
    problems = []
    for index, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            problems.append(f"tool {index}: must be {{'type': 'function', 'function': {{...}}}}")
        elif not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(f"tool {index}: function without a name")
        elif "parameters" in fn and not isinstance(fn["parameters"], dict):
            problems.append(f"tool {index}: parameters must be a JSON schema object")
    return problems


def problems_of(line: Any) -> list[str]:
    """What makes one line unfit for Mistral fine-tuning ([] when it is fit): messages with
    known roles and string contents, the last one the assistant's, tool calls well formed
    (9-character ids, JSON object arguments, every tool result answering one), tools well
    formed."""
    if not isinstance(line, dict) or not isinstance(line.get("messages"), list):
        return ["a line must be an object with a messages list"]
    messages = line["messages"]
    problems = [f"unknown key {k!r}" for k in line if k not in ("messages", "tools")]
    if not messages:
        return [*problems, "messages is empty"]
    problems += _message_problems(messages)
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        problems.append("the last message must be the assistant's")
    if "tools" in line:
        problems += _tools_problems(line["tools"])
    return problems


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    """The training file, one example per line (UTF-8, no trailing spaces), in a folder that
    exists (`finetune --out` refuses one that does not, as `export --out` does)."""
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
