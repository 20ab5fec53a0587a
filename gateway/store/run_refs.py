"""Messages and memory snapshots that point into their exchange instead of copying it.

A step's new input messages are in its request body, and its output message's text is the
exchange's output text. So the writer stores a marker instead of a copy wherever reading the
marker back gives exactly what would have been stored: it checks that when writing, so a body
kept as text (truncated), omitted or not JSON, or a message the grouper reshaped, is copied as
before. Reading a run decompresses its frames once each (bodies.Frames) and fills the
markers in; the rows then read as they always did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from gateway.capture import storable
from gateway.capture.rows import Rows
from gateway.runs.grouper import message_fields
from gateway.store.bodies import Frames, Parts
from gateway.store.exchanges import Store

REQUEST = "request"  # a message's content and tool calls: its request's message `position`
# (and as a snapshot's `inputs_from`: the step's new input messages are not rows at all)
OUTPUT = "output"  # a message's content: its exchange's output_text
EXCHANGE = "exchange"  # a snapshot's items: its request's messages from `carried`, its outputs
# (and as its `inputs_from`: the step's input and output messages are not rows at all)
ANSWER = ("finish_reason", "prompt_tokens", "completion_tokens")  # exchange columns


@dataclass(frozen=True, slots=True)
class Sources:
    """What one exchange's run rows may point into: its request's messages (when the request
    is stored as JSON, so reading it back gives the same) and its output text."""

    messages: Sequence[Any] | None
    output_text: str | None
    answer: Mapping[str, Any] = field(default_factory=dict)  # finish_reason and tokens

    @classmethod
    def of(cls, rows: Rows) -> Sources:
        request = rows.parsed.request_json
        messages = None
        if isinstance(request, dict) and rows.bodies["request_body_encoding"] == "json":
            found = request.get("messages")
            messages = found if isinstance(found, list) else None
        exchange = rows.exchange
        answer = {key: exchange.get(key) for key in ANSWER}
        return cls(messages, exchange["output_text"], answer)


def _text(value: str | None) -> str | None:
    """A JSON text column's value as the writer stores it (storable.rows does the same)."""
    return None if value is None else storable.text(value)


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _from_request(messages: Sequence[Any], position: int) -> dict[str, Any] | None:
    """Content and tool calls of the request's message at `position` (None: no such)."""
    if not 0 <= position < len(messages):
        return None
    fields = message_fields(messages[position])
    return {"content": _text(fields["content"]), "tool_calls": _text(fields["tool_calls"])}


def _from_output(output_text: str | None) -> str | None:
    return None if output_text is None else _text(storable.json_text(output_text))


def _item(message: Mapping[str, Any]) -> dict[str, Any]:
    """An output message row as the memory item it came from (the provider's message_out)."""
    return {
        "role": message["role"],
        "content": _loads(message["content"]),
        "tool_calls": _loads(message["tool_calls"]),
    }


# -- writing ----------------------------------------------------------------------------------


def refer_message(row: dict[str, Any], source: Sources | None) -> dict[str, Any]:
    """A messages row (values already made storable), with `content_from` set and the copy
    left out where the marker reads back the same."""
    row = {**row, "content_from": None}
    if source is None:
        return row
    if row["direction"] == "in" and source.messages is not None:
        found = _from_request(source.messages, row["position"])
        if found == {"content": row["content"], "tool_calls": row["tool_calls"]}:
            return {**row, "content": None, "tool_calls": None, "content_from": REQUEST}
    elif (
        row["direction"] == "out"
        and row["content"] is not None
        and row["content"] == _from_output(source.output_text)
    ):
        return {**row, "content": None, "content_from": OUTPUT}
    return row


def refer_snapshot(
    snapshot: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]], source: Sources | None
) -> tuple[str, str | None]:
    """(appended, appended_from) of a snapshot: "[]" and EXCHANGE when its items are its
    request's messages from `carried` on, then its output messages (`outputs`: the exchange's
    out rows, made storable, in position order), else the items themselves."""
    appended = storable.json_bytes(snapshot["appended"])  # json_text, not yet decoded
    if source is None or source.messages is None:
        return appended.decode(), None
    rebuilt = [*source.messages[snapshot["carried"] :], *map(_item, outputs)]
    try:
        same = orjson.dumps(rebuilt) == appended
    except TypeError:  # nested too deep for orjson: keep the copy
        same = False
    return ("[]", EXCHANGE) if same else (appended.decode(), None)


def fold_rows(
    messages: list[dict[str, Any]],
    snapshots: Mapping[int, Mapping[str, Any]],
    sources: Mapping[int, Sources],
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """(the message rows to store, each folded exchange's snapshot `inputs_from`).

    A step's input rows are left out when they are exactly what reading derives from its
    request (its messages from the snapshot's `carried` on, each pointing into the request):
    REQUEST. Its output row too when it is a plain answer (no tool calls) whose content,
    finish reason and tokens are its exchange's: EXCHANGE. One row less per message, and its
    index entries."""
    inputs: dict[int, list[dict[str, Any]]] = {}
    outputs: dict[int, list[dict[str, Any]]] = {}
    for row in messages:
        (inputs if row["direction"] == "in" else outputs).setdefault(row["exchange_id"], []).append(
            row
        )
    folded: dict[int, str] = {}
    for eid, snapshot in snapshots.items():
        source = sources.get(eid)
        if source is None or source.messages is None:
            continue
        if not _same(inputs.get(eid, []), _derived_inputs(source.messages, snapshot), snapshot):
            continue
        out = outputs.get(eid, [])
        derived = _derived_output(len(source.messages), snapshot, source.answer)
        folded[eid] = EXCHANGE if out and _same(out, [derived], snapshot) else REQUEST
    if not folded:
        return messages, folded
    kept = [
        m
        for m in messages
        if m["exchange_id"] not in folded
        or (m["direction"] == "out" and folded[m["exchange_id"]] == REQUEST)
    ]
    return kept, folded


def _same(
    rows: Sequence[Mapping[str, Any]],
    derived: Sequence[Mapping[str, Any]],
    snapshot: Mapping[str, Any],
) -> bool:
    return len(rows) == len(derived) and all(
        row["run_id"] == snapshot["run_id"]
        and row["step"] == snapshot["step"]
        and all(row[key] == value for key, value in found.items())
        for row, found in zip(rows, derived, strict=True)
    )


def _derived_inputs(messages: Sequence[Any], snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The input message rows a step's request gives from its snapshot's `carried` on,
    pointing into it (content and tool calls filled in when read)."""
    rows = []
    for position in range(max(int(snapshot["carried"]), 0), len(messages)):
        fields = _identity(messages[position])
        rows.append(
            {
                "position": position,
                "direction": "in",
                "role": fields["role"],
                "content": None,
                "tool_calls": None,
                "tool_call_id": fields["tool_call_id"],
                "finish_reason": None,
                "prompt_tokens": None,
                "completion_tokens": None,
                "content_from": REQUEST,
            }
        )
    return rows


def _identity(message: Any) -> dict[str, Any]:
    """A message's role and tool_call_id as message_fields gives them, without writing its
    content as JSON (the content is filled in from the request when read)."""
    if not isinstance(message, dict):
        return {"role": None, "tool_call_id": None}
    return message_fields(
        {"role": message.get("role"), "tool_call_id": message.get("tool_call_id")}
    )


def _derived_output(
    position: int, snapshot: Mapping[str, Any], answer: Mapping[str, Any]
) -> dict[str, Any]:
    """A plain answer's output row, pointing into its exchange's output text; its finish
    reason and tokens (`answer`) are its exchange's columns."""
    return {
        "position": position,
        "direction": "out",
        "role": "assistant",
        "content": None,
        "tool_calls": None,
        "tool_call_id": None,
        "finish_reason": answer.get("finish_reason"),
        "prompt_tokens": answer.get("prompt_tokens"),
        "completion_tokens": answer.get("completion_tokens"),
        "content_from": OUTPUT,
    }


# -- reading ----------------------------------------------------------------------------------


async def resolve(
    store: Store, run_id: int, messages: list[dict[str, Any]], snapshots: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's messages and snapshot rows with their markers filled in, as if copied."""
    wanted = {m["exchange_id"] for m in messages if m.get("content_from")}
    wanted |= {s["exchange_id"] for s in snapshots if s.get("appended_from")}
    folded = [s for s in snapshots if s.get("inputs_from")]
    wanted |= {s["exchange_id"] for s in folded}
    parts = await _parts(store, run_id, wanted) if wanted else {}
    requests = {eid: _messages(p) for eid, p in parts.items()}
    outputs = {eid: p.text("output") for eid, p in parts.items() if p is not None}
    if folded:
        messages = await _with_folded(store, run_id, messages, folded, requests)
    filled = [_fill_message(m, requests, outputs) for m in messages]
    by_exchange: dict[int, list[dict[str, Any]]] = {}
    for message in filled:
        if message["direction"] == "out":
            by_exchange.setdefault(message["exchange_id"], []).append(message)
    return filled, [_fill_snapshot(s, requests, by_exchange) for s in snapshots]


async def _with_folded(
    store: Store,
    run_id: int,
    messages: list[dict[str, Any]],
    folded: list[dict[str, Any]],
    requests: Mapping[int, Sequence[Any] | None],
) -> list[dict[str, Any]]:
    """A run's message rows with the folded ones derived (markers still to fill), in the
    order the rows would have been read: step, position."""
    answers: dict[int, dict[str, Any]] = {}
    if any(s["inputs_from"] == EXCHANGE for s in folded):
        found = await store.rows(
            f"SELECT id, {', '.join(ANSWER)} FROM exchanges WHERE run_id = ?", [run_id]
        )
        answers = {int(row["id"]): row for row in found}
    derived = []
    for snapshot in folded:
        eid = snapshot["exchange_id"]
        request = requests.get(eid) or ()
        rows = _derived_inputs(request, snapshot)
        if snapshot["inputs_from"] == EXCHANGE and eid in answers:
            rows.append(_derived_output(len(request), snapshot, answers[eid]))
        keys = {"run_id": snapshot["run_id"], "exchange_id": eid, "step": snapshot["step"]}
        derived += [{**keys, **row} for row in rows]
    return sorted([*messages, *derived], key=lambda m: (m["step"], m["position"]))


def _fill_message(
    row: dict[str, Any],
    requests: Mapping[int, Sequence[Any] | None],
    outputs: Mapping[int, str | None],
) -> dict[str, Any]:
    source = row.get("content_from")
    if source == REQUEST:
        found = _from_request(requests.get(row["exchange_id"]) or (), row["position"])
        return {**row, **(found or {})}
    if source == OUTPUT:
        return {**row, "content": _from_output(outputs.get(row["exchange_id"]))}
    return row


def _fill_snapshot(
    row: dict[str, Any],
    requests: Mapping[int, Sequence[Any] | None],
    outputs: Mapping[int, list[dict[str, Any]]],
) -> dict[str, Any]:
    if row.get("appended_from") != EXCHANGE:
        return row
    messages = requests.get(row["exchange_id"]) or ()
    items = [*messages[int(row["carried"]) :], *map(_item, outputs.get(row["exchange_id"], ()))]
    return {**row, "appended": storable.json_text(items)}


async def _parts(store: Store, run_id: int, wanted: set[int]) -> dict[int, Parts | None]:
    """The stored parts of some exchanges of a run. The run's frames are decompressed once
    each, bases first (a delta's base is in the same run)."""
    found = await store.rows(
        "SELECT b.exchange_id, b.data, b.data_base, b.request_body_encoding FROM exchanges e "
        "JOIN exchange_bodies b ON b.exchange_id = e.id WHERE e.run_id = ? ORDER BY e.id",
        [run_id],
    )
    frames = Frames()
    frames.add(found)
    await frames.complete(store._fetch())
    out: dict[int, Parts | None] = {}
    for row in found:
        eid = row["exchange_id"]
        if eid in wanted:
            parts = frames.parts(eid)
            if parts is not None and row["request_body_encoding"] != "json":
                parts = replace(parts, request=None)  # no messages to point into
            out[eid] = parts
    return out


def _messages(parts: Parts | None) -> Sequence[Any] | None:
    """The messages of a request stored as JSON."""
    if parts is None or parts.request is None:
        return None
    try:
        body = orjson.loads(parts.request)
    except orjson.JSONDecodeError:
        return None
    messages = body.get("messages") if isinstance(body, dict) else None
    return messages if isinstance(messages, list) else None
