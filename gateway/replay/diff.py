"""Compares two exchanges: which request fields changed, a word-level diff of the outputs, the
tool calls added, removed or changed, and the usage deltas.

Pure functions over stored exchanges and their parsed facts; no I/O. The text diff is
RapidFuzz's Indel alignment (a longest common subsequence, in C++), over word tokens: 100 KB
outputs diff in a fraction of a second where difflib takes minutes (see bench/diff_bench.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from rapidfuzz.distance import Indel

from gateway.providers.base import Parsed
from gateway.runs.grouper import parse_arguments
from gateway.store.records import StoredExchange

# Words and punctuation runs are tokens; whitespace rides along with the token before it, so
# ops reassemble into the exact texts.
TOKEN = re.compile(r"\w+|[^\w\s]+")
# Above this many token pairs the alignment matrix grows past ~50 MB: align lines first.
MAX_PAIRS = 400_000_000
# Similarity needs no matrix (bit-parallel), only time: beyond this, compare lines instead.
MAX_SIMILARITY_PAIRS = 10_000_000_000
NOISY_KEYS = frozenset({"id", "tool_call_id", "created_at", "completed_at", "object"})


@dataclass
class Side:
    """One exchange as the diff sees it: its stored row and what its provider parsed."""

    item: StoredExchange
    parsed: Parsed
    calls: list[dict[str, Any]] = field(default_factory=list)


def tokens(text: str) -> tuple[list[str], list[str]]:
    """(pieces, keys): pieces join back to `text`; keys are the bare words compared."""
    matches = list(TOKEN.finditer(text))
    if not matches:
        return ([text] if text else []), ([text.strip()] if text.strip() else [])
    pieces, keys = [], []
    for index, match in enumerate(matches):
        start = 0 if index == 0 else match.start()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        pieces.append(text[start:end])
        keys.append(match.group())
    return pieces, keys


def similarity(before: str, after: str) -> float:
    """2 x matching words / total words (difflib's ratio, over an exact LCS)."""
    _, a = tokens(before)
    _, b = tokens(after)
    if not a and not b:
        return 1.0
    if len(a) * len(b) > MAX_SIMILARITY_PAIRS:
        a, b = before.splitlines(), after.splitlines()
    return round(Indel.normalized_similarity(a, b), 6)


def text_ops(before: str, after: str) -> list[dict[str, str]]:
    """Word-level operations (equal, insert, delete, replace) turning before into after."""
    return text_diff(before, after)[0]


def text_diff(before: str, after: str) -> tuple[list[dict[str, str]], float]:
    """(ops, similarity) from one alignment when it fits; huge texts go line by line."""
    pieces_a, keys_a = tokens(before)
    pieces_b, keys_b = tokens(after)
    if not keys_a and not keys_b:
        return _merge([{"op": "equal", "before": before, "after": after}]), 1.0
    if len(keys_a) * len(keys_b) <= MAX_PAIRS:
        ops, matched = _align(pieces_a, keys_a, pieces_b, keys_b)
        return _merge(ops), round(2 * matched / (len(keys_a) + len(keys_b)), 6)
    return _merge(_by_lines(before, after)), similarity(before, after)


def _align(
    pieces_a: list[str], keys_a: list[str], pieces_b: list[str], keys_b: list[str]
) -> tuple[list[dict[str, str]], int]:
    ops: list[dict[str, str]] = []
    matched = 0
    for opcode in Indel.opcodes(keys_a, keys_b):
        tag, i1, i2, j1, j2 = (
            opcode.tag,
            opcode.src_start,
            opcode.src_end,
            opcode.dest_start,
            opcode.dest_end,
        )
        if tag == "equal":
            matched += i2 - i1
        ops.append(
            {"op": tag, "before": "".join(pieces_a[i1:i2]), "after": "".join(pieces_b[j1:j2])}
        )
    return ops, matched


def _by_lines(before: str, after: str) -> list[dict[str, str]]:
    """Huge texts: align lines, then refine each changed block word by word when it fits."""
    lines_a, lines_b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    ops: list[dict[str, str]] = []
    if len(lines_a) * len(lines_b) > MAX_PAIRS:
        return [{"op": "replace", "before": before, "after": after}]
    for opcode in Indel.opcodes(lines_a, lines_b):
        tag, i1, i2, j1, j2 = (
            opcode.tag,
            opcode.src_start,
            opcode.src_end,
            opcode.dest_start,
            opcode.dest_end,
        )
        block_a, block_b = "".join(lines_a[i1:i2]), "".join(lines_b[j1:j2])
        if tag == "equal":
            ops.append({"op": "equal", "before": block_a, "after": block_b})
            continue
        pieces_a, keys_a = tokens(block_a)
        pieces_b, keys_b = tokens(block_b)
        if len(keys_a) * len(keys_b) <= MAX_PAIRS:
            ops += _align(pieces_a, keys_a, pieces_b, keys_b)[0]
        else:
            ops.append({"op": tag, "before": block_a, "after": block_b})
    return ops


def _merge(ops: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Adjacent delete + insert become one replace; adjacent equal runs join."""
    out: list[dict[str, str]] = []
    for op in ops:
        if not op["before"] and not op["after"]:
            continue
        last = out[-1] if out else None
        if last is not None and last["op"] != "equal" and op["op"] != "equal":
            last["before"] += op["before"]
            last["after"] += op["after"]
            last["op"] = _kind(last["before"], last["after"])
        elif last is not None and last["op"] == op["op"] == "equal":
            last["before"] += op["before"]
            last["after"] += op["after"]
        else:
            out.append(dict(op))
    return out


def _kind(before: str, after: str) -> str:
    if before and after:
        return "replace"
    return "delete" if before else "insert"


# -- tool calls -----------------------------------------------------------------------------


def call_key(call: dict[str, Any]) -> bytes:
    """What makes two tool calls the same request: name and parsed arguments, not the id."""
    return orjson.dumps([call.get("name"), call.get("arguments")], option=orjson.OPT_SORT_KEYS)


def tool_calls(parsed: Parsed) -> list[dict[str, Any]]:
    """The calls a response asked for: chat tool_calls, or Conversations function calls and
    built-in tool executions (which the server runs itself: kind builtin)."""
    out = []
    message = parsed.message_out or {}
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = call["function"] if isinstance(call.get("function"), dict) else {}
            out.append(
                {
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "kind": "function",
                    "arguments": parse_arguments(function.get("arguments")),
                }
            )
    for entry in parsed.entries_out or ():
        kind = entry.get("type")
        if kind in ("function.call", "tool.execution"):
            out.append(
                {
                    "id": entry.get("tool_call_id") or entry.get("id"),
                    "name": entry.get("name"),
                    "kind": "function" if kind == "function.call" else "builtin",
                    "arguments": parse_arguments(entry.get("arguments")),
                }
            )
    return out


def compare_calls(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """Calls matched as a multiset of (name, arguments); the rest paired by name as changed,
    and what is left is removed (before only) or added (after only)."""
    left = list(before)
    unmatched_after = []
    same = 0
    for call in after:
        twin = next((c for c in left if call_key(c) == call_key(call)), None)
        if twin is not None:
            left.remove(twin)
            same += 1
        else:
            unmatched_after.append(call)
    changed, added = [], []
    for call in unmatched_after:
        twin = next((c for c in left if c.get("name") == call.get("name")), None)
        if twin is not None:
            left.remove(twin)
            changed.append(
                {
                    "name": call.get("name"),
                    "kind": call.get("kind"),
                    "before": twin.get("arguments"),
                    "after": call.get("arguments"),
                }
            )
        else:
            added.append(_public(call))
    return {
        "same": same,
        "added": added,
        "removed": [_public(c) for c in left],
        "changed": changed,
        "before": [_public(c) for c in before],
        "after": [_public(c) for c in after],
    }


def _public(call: dict[str, Any]) -> dict[str, Any]:
    out = {"name": call.get("name"), "arguments": call.get("arguments"), "kind": call.get("kind")}
    if call.get("kind") == "builtin":
        out["server_side"] = True  # Mistral runs it: a replay executes it again
    return out


def differing_calls(compared: dict[str, Any]) -> int:
    return len(compared["added"]) + len(compared["removed"]) + len(compared["changed"])


# -- request fields and usage -----------------------------------------------------------------


def request_fields(parsed: Parsed) -> dict[str, Any]:
    """The request's fields, Conversations sampling flattened out of completion_args."""
    body = parsed.request_json if isinstance(parsed.request_json, dict) else {}
    fields = {k: v for k, v in body.items() if k != "completion_args"}
    args = body.get("completion_args")
    if isinstance(args, dict):
        for key, value in args.items():
            fields.setdefault(key, value)
    return fields


def _comparable(value: Any) -> Any:
    """Messages and entries compared without ids and timestamps (a replay's are new)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in NOISY_KEYS}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def parameter_changes(a: Parsed, b: Parsed) -> list[dict[str, Any]]:
    """Each request field that differs, before -> after. Lists (messages, inputs, tools) keep
    only their differing tail, from `from_index` on: a replayed run's histories share long
    prefixes that would otherwise be stored again with every step."""
    before, after = request_fields(a), request_fields(b)
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if _comparable(old) == _comparable(new) and (key in before) == (key in after):
            continue
        change = {"field": key, "before": old, "after": new}
        if isinstance(old, list) and isinstance(new, list):
            start = 0
            while start < min(len(old), len(new)) and _comparable(old[start]) == _comparable(
                new[start]
            ):
                start += 1
            change.update(before=old[start:], after=new[start:], from_index=start)
        changes.append(change)
    return changes


def _delta(a: Any, b: Any, digits: int) -> float | int | None:
    if a is None or b is None:
        return None
    value = b - a
    return round(value, digits) if isinstance(value, float) else value


def deltas(a: StoredExchange, b: StoredExchange) -> dict[str, Any]:
    """after - before for usage, cost and timings (None when either side lacks the figure)."""
    return {
        "tokens": _delta(a.total_tokens, b.total_tokens, 0),
        "prompt_tokens": _delta(a.prompt_tokens, b.prompt_tokens, 0),
        "completion_tokens": _delta(a.completion_tokens, b.completion_tokens, 0),
        "cost_usd": _delta(a.cost_usd, b.cost_usd, 10),
        "latency_ms": _delta(a.latency_ms, b.latency_ms, 3),
        "ttft_ms": _delta(a.ttft_ms, b.ttft_ms, 3),
    }


# -- the whole comparison --------------------------------------------------------------------


def compare(a: Side, b: Side) -> dict[str, Any]:
    """The diff of two exchanges, without its id (the store gives it one)."""
    before = a.item.output_text or ""
    after = b.item.output_text or ""
    calls = compare_calls(tool_calls(a.parsed), tool_calls(b.parsed))
    ops, similar = text_diff(before, after)
    return {
        "a": str(a.item.id),
        "b": str(b.item.id),
        "parameter_changed": parameter_changes(a.parsed, b.parsed),
        "before_output": before,
        "after_output": after,
        "identical": before == after and differing_calls(calls) == 0,
        "similarity": similar,
        "ops": ops,
        "tool_calls": calls,
        "deltas": deltas(a.item, b.item),
    }
