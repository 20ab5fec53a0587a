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
from gateway.runs.grouper import RunChanges, message_fields
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

MESSAGE_COLUMNS = (
    "run_id",
    "exchange_id",
    "step",
    "position",
    "direction",
    "role",
    "content",
    "tool_calls",
    "tool_call_id",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
)
WITH_FROM = (*MESSAGE_COLUMNS, "content_from")
ITEM_COLUMNS = ("role", "content", "tool_calls")  # what a snapshot's output item reads
INT32, INT64 = storable.INT32, storable.INT64
ROLE_CHARS = storable.limit("messages", "role") or 0
CALL_ID_CHARS = storable.limit("messages", "tool_call_id") or 0
REASON_CHARS = storable.limit("messages", "finish_reason") or 0


@dataclass(frozen=True, slots=True)
class RunRows:
    """What a batch of run changes stores of its messages and snapshots (RunStore.write)."""

    messages: list[list[Any]]  # rows to insert, values in WITH_FROM order, made storable
    snapshots: list[tuple[str, str | None, str | None]]  # for each change with a snapshot, in
    # order: its appended, appended_from and inputs_from


def run_rows(changes: Sequence[RunChanges], sources: Mapping[int, Sources]) -> RunRows:
    """The message rows to store and each snapshot's columns, as `fold_rows`, `refer_message`
    and `refer_snapshot` decide them over the whole batch. Each change is decided alone (its
    rows and snapshot carry one exchange id of their own, as the grouper makes them), and the
    common case first: a step whose rows are all derived is found on the grouper's values
    without making them storable, where the storable rules would keep them as they are;
    anything else takes the general way. A batch whose changes share an exchange id, or carry
    one the rules would change, takes it all along."""
    ids = [_exchange_of(change) for change in changes]
    present = [eid for eid in ids if eid != _EMPTY]
    if None in present or len(set(present)) != len(present):
        return _general(changes, sources)
    messages: list[list[Any]] = []
    snapshots = []
    for change, eid in zip(changes, ids, strict=True):
        if eid == _EMPTY:
            continue
        assert eid is not None
        source = sources.get(eid)
        rows, outputs, inputs_from = _change_rows(change, source)
        messages += rows
        if change.snapshot is not None:
            snapshots.append((*_snapshot(change.snapshot, outputs, source), inputs_from))
    return RunRows(messages, snapshots)


_EMPTY = -1  # not an exchange id (new_id is positive): a change with no rows nor snapshot


def _exchange_of(change: RunChanges) -> int | None:
    """The exchange id all of a change's message rows and its snapshot carry, when it is an
    integer the storable rules keep as it is (_EMPTY: the change has none; None: anything
    else)."""
    snapshot = change.snapshot
    if snapshot is not None:
        eid = snapshot["exchange_id"]
    elif change.messages:
        eid = change.messages[0]["exchange_id"]
    else:
        return _EMPTY
    if type(eid) is not int or not 0 <= eid <= INT64[1]:
        return None
    for row in change.messages:
        found = row["exchange_id"]
        if found is not eid and (type(found) is not int or found != eid):
            return None
    return eid


def _change_rows(
    change: RunChanges, source: Sources | None
) -> tuple[list[list[Any]], list[dict[str, Any]], str | None]:
    """(rows to store, its output rows made storable (role, content and tool calls: what
    its snapshot reads), its snapshot's inputs_from) of one change, as `_general` decides
    them."""
    snapshot = change.snapshot
    rows = change.messages
    if snapshot is None or source is None or source.messages is None:
        return _general_change(change, source)
    inputs = [row for row in rows if row["direction"] == "in"]
    if not _inputs_derived(inputs, source.messages, snapshot):
        return _general_change(change, source)
    others = [row for row in rows if row["direction"] != "in"] if len(inputs) < len(rows) else []
    if _output_derived(others, len(source.messages), snapshot, source):
        # made storable: the role and no tool calls are kept as they are (checked)
        answer = {"role": "assistant", "content": storable.text(others[0]["content"])}
        return [], [{**answer, "tool_calls": None}], EXCHANGE
    outputs = _outputs(others)
    fitted = _fitted(others)
    referred = [refer_message(row, source) for row in fitted]
    derived = _derived_output(len(source.messages), snapshot, source.answer)
    if referred and _same(referred, [derived], snapshot):
        return [], outputs, EXCHANGE
    kept = [[row[c] for c in WITH_FROM] for row in referred if row["direction"] == "out"]
    return kept, outputs, REQUEST


def _general_change(
    change: RunChanges, source: Sources | None
) -> tuple[list[list[Any]], list[dict[str, Any]], str | None]:
    """`_general` for one change whose rows and snapshot carry one exchange id alone."""
    fitted = _fitted(change.messages)
    outputs = [row for row in fitted if row["direction"] == "out"]
    referred = [refer_message(row, source) for row in fitted]
    snapshot = change.snapshot
    if snapshot is None:
        return [[row[c] for c in WITH_FROM] for row in referred], outputs, None
    eid = snapshot["exchange_id"]
    kept, folded = fold_rows(referred, {eid: snapshot}, {} if source is None else {eid: source})
    return [[row[c] for c in WITH_FROM] for row in kept], outputs, folded.get(eid)


def _general(changes: Sequence[RunChanges], sources: Mapping[int, Sources]) -> RunRows:
    """`run_rows` over the whole batch at once, for any rows."""
    fitted = _fitted([m for ch in changes for m in ch.messages])
    outputs: dict[int, list[dict[str, Any]]] = {}
    for message in fitted:
        if message["direction"] == "out":
            outputs.setdefault(message["exchange_id"], []).append(message)
    referred = [refer_message(m, sources.get(m["exchange_id"])) for m in fitted]
    snapshots = {s["exchange_id"]: s for ch in changes if (s := ch.snapshot) is not None}
    kept, folded = fold_rows(referred, snapshots, sources)
    return RunRows(
        [[m[c] for c in WITH_FROM] for m in kept],
        [
            (
                *refer_snapshot(
                    s, outputs.get(s["exchange_id"], []), sources.get(s["exchange_id"])
                ),
                folded.get(s["exchange_id"]),
            )
            for ch in changes
            if (s := ch.snapshot) is not None
        ],
    )


def _fitted(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Message rows with their values made storable."""
    if not rows:
        return []
    values = storable.rows(
        "messages", MESSAGE_COLUMNS, [[m[c] for c in MESSAGE_COLUMNS] for m in rows]
    )
    return [dict(zip(MESSAGE_COLUMNS, found, strict=True)) for found in values]


def _outputs(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The output rows among `rows`, of what `_item` reads, made storable."""
    outs = [[row[c] for c in ITEM_COLUMNS] for row in rows if row["direction"] == "out"]
    if not outs:
        return []
    found = storable.rows("messages", ITEM_COLUMNS, outs)
    return [dict(zip(ITEM_COLUMNS, values, strict=True)) for values in found]


def _int_is(value: Any, expected: Any, bounds: tuple[int, int]) -> bool:
    """Whether `value` made storable equals `expected`, known for an integer kept as it is."""
    return type(value) is int and value == expected and bounds[0] <= value <= bounds[1]


def _text_is(value: Any, expected: str | None, limit: int) -> bool:
    """Whether `value` made storable equals `expected` (text of at most `limit` characters),
    known where the storable rules keep it as it is: else False, for the general way."""
    if expected is None:
        return value is None
    return (
        value == expected
        and type(expected) is str
        and expected.isascii()
        and len(expected) <= limit
        and "\x00" not in expected
    )


def _inputs_derived(
    rows: Sequence[Mapping[str, Any]], messages: Sequence[Any], snapshot: Mapping[str, Any]
) -> bool:
    """True when a step's in rows (as the grouper made them) are what `fold_rows` leaves
    out: each its request's message, by position from `carried` on, that `refer_message`
    points into. False also where only the general way can tell."""
    start = max(int(snapshot["carried"]), 0)
    if len(rows) != max(len(messages) - start, 0):
        return False
    run_id, step = snapshot["run_id"], snapshot["step"]
    if not (_int_is(run_id, run_id, INT64) and _int_is(step, step, INT32)):
        return False
    for position, row in enumerate(rows, start):
        message = messages[position]
        if type(message) is not dict:
            return False
        fields = message_fields(message)  # as refer_message and _derived_inputs read it
        found_run, found_step, found_position = row["run_id"], row["step"], row["position"]
        if not (
            type(found_run) is int
            and found_run == run_id
            and type(found_step) is int
            and found_step == step
            and type(found_position) is int
            and found_position == position  # (an int32: the request has fewer messages)
            and _text_is(row["role"], fields["role"], ROLE_CHARS)
            and _text_is(row["tool_call_id"], fields["tool_call_id"], CALL_ID_CHARS)
            and row["finish_reason"] is None
            and row["prompt_tokens"] is None
            and row["completion_tokens"] is None
            and row["content"] == fields["content"]
            and row["tool_calls"] == fields["tool_calls"]
        ):
            return False
    return True


def _output_derived(
    rows: Sequence[Mapping[str, Any]], position: int, snapshot: Mapping[str, Any], source: Sources
) -> bool:
    """True when a step's other rows are the one plain answer `fold_rows` derives from its
    exchange (EXCHANGE). False also where only the general way can tell."""
    if len(rows) != 1 or source.output_text is None:
        return False
    row, answer = rows[0], source.answer
    prompt, completion = answer.get("prompt_tokens"), answer.get("completion_tokens")
    return (
        row["direction"] == "out"
        and _int_is(row["run_id"], snapshot["run_id"], INT64)
        and _int_is(row["step"], snapshot["step"], INT32)
        and _int_is(row["position"], position, INT32)
        and type(row["role"]) is str
        and row["role"] == "assistant"
        and row["tool_calls"] is None
        and row["tool_call_id"] is None
        and _text_is(row["finish_reason"], answer.get("finish_reason"), REASON_CHARS)
        and (_int_is(row["prompt_tokens"], prompt, INT32) or row["prompt_tokens"] is prompt is None)
        and (
            _int_is(row["completion_tokens"], completion, INT32)
            or row["completion_tokens"] is completion is None
        )
        and type(row["content"]) is str
        and row["content"] == storable.json_text(source.output_text)
    )


def _snapshot(
    snapshot: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]], source: Sources | None
) -> tuple[str, str | None]:
    """`refer_snapshot`, written once where the grouper's items are its request's messages
    themselves (the same objects): then only the output items are compared."""
    if source is None or source.messages is None:
        return refer_snapshot(snapshot, outputs, source)
    appended, carried = snapshot["appended"], snapshot["carried"]
    resent = source.messages[carried:]
    count = len(resent)
    if (
        type(appended) is not list
        or len(appended) != count + len(outputs)
        or not all(a is b for a, b in zip(appended, resent, strict=False))
    ):
        return refer_snapshot(snapshot, outputs, source)
    try:  # what refer_snapshot writes of both, but once
        orjson.dumps(resent)
        tail = orjson.dumps(appended[count:], default=str)
    except TypeError:  # too deep: its other way
        return refer_snapshot(snapshot, outputs, source)
    items = [_item(row) for row in outputs]
    try:
        same = orjson.dumps(items) == tail
    except TypeError:
        same = False
    return ("[]", EXCHANGE) if same else (storable.json_text(appended), None)


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
