"""The Mistral stream and entry parsing, by property: the handlers never raise on any JSON, and
a stream reads the same however the network cut it into chunks.

Table tests of the same code are in test_mistral_provider.py; these check what no table can:
every shape of event the handlers may meet, and every byte boundary a chunk may end on.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers import mistral
from gateway.providers.base import Parsed
from gateway.providers.mistral import MistralProvider

JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
ENTRY_TYPES = set(mistral._ENTRY_FIELDS)
EVENT_TYPES = [
    *mistral._ENTRY_OF,
    "conversation.response.started",
    "conversation.response.done",
    "conversation.response.error",
    "transcription.text.delta",
    "transcription.done",
    "some.future.event",
]
ENDPOINTS = ["chat", "fim", "agents", "conversations", "ocr", "audio", "embeddings", "other"]
PATH_OF = {
    "chat": "/v1/chat/completions",
    "conversations": "/v1/conversations",
    "audio": "/v1/audio/transcriptions",
}

# Any JSON value orjson can make (64-bit integers), nested a few levels.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
# The keys the handlers read, so that generated objects reach their branches.
KEYS = [
    "id",
    "index",
    "output_index",
    "type",
    "function",
    "name",
    "arguments",
    "content",
    "text",
    "info",
    "role",
    "model",
    "agent_id",
    "tool_call_id",
    "delta",
    "finish_reason",
    "tool_calls",
    "usage",
    "choices",
    "message",
    "outputs",
    "conversation_id",
    "usage_info",
    "previous_agent_id",
    "next_agent_name",
]
# Small pools of ids, indexes and texts, so that events collide the way streamed deltas do.
ids = st.sampled_from(["a", "b", "", None, 7])
indexes = st.sampled_from([0, 1, None, "0", True])
texts = st.sampled_from(["x", "é€", "", None])  # multi-byte: a cut may fall inside one
arguments = st.sampled_from(["{", "}", '"x"', ""])
loose = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5)


def or_hostile(base: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `base`; else `base` with loose keys holding any JSON, or any JSON at all."""
    spoilt = st.tuples(base, loose).map(
        lambda pair: {**pair[1], **pair[0]} if isinstance(pair[0], dict) else pair[0]
    )
    return base | base | spoilt | json_values


tool_call_deltas = st.fixed_dictionaries(
    {"index": indexes, "id": ids},
    optional={
        "type": st.sampled_from(["function", 5]),
        "function": or_hostile(
            st.fixed_dictionaries(
                {}, optional={"name": st.sampled_from(["f", "g", ""]), "arguments": arguments}
            )
        ),
    },
)
choices = st.fixed_dictionaries(
    {"index": st.sampled_from([0, 0, 0, None, 1, "0", True])},  # mostly the first choice
    optional={
        "finish_reason": st.sampled_from(["stop", "tool_calls", None, 3]),
        "delta": or_hostile(
            st.fixed_dictionaries(
                {},
                optional={
                    "content": or_hostile(texts),
                    "tool_calls": or_hostile(st.lists(or_hostile(tool_call_deltas), max_size=3)),
                },
            )
        ),
    },
)
chat_chunks = st.fixed_dictionaries(
    {"choices": or_hostile(st.lists(or_hostile(choices), max_size=2))},
    optional={"model": st.sampled_from(["m", None, 1]), "usage": or_hostile(loose)},
)
entry_events = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES)},
    optional={
        "id": ids,
        "output_index": indexes,
        "content": or_hostile(texts),
        "text": texts,
        "arguments": or_hostile(arguments),
        "name": st.sampled_from(["f", "", None]),
        "info": json_values,
        "role": st.sampled_from(["assistant", None]),
        "conversation_id": ids,
    },
)
event = st.tuples(chat_chunks | entry_events, loose).map(
    lambda pair: pair[0] if pair[1].keys() & pair[0].keys() else {**pair[1], **pair[0]}
)
events = st.lists(chat_chunks | chat_chunks | entry_events | entry_events | event, max_size=8)
messages = st.fixed_dictionaries(
    {},
    optional={
        "content": or_hostile(texts),
        "tool_calls": or_hostile(st.lists(or_hostile(tool_call_deltas), max_size=2)),
    },
)
responses = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["m", None, 1]),
        "usage": or_hostile(
            st.fixed_dictionaries(
                {},
                optional={
                    "prompt_tokens": st.sampled_from([1, None, True]),
                    "completion_tokens": st.sampled_from([2, None, 2.5]),
                    "total_tokens": st.sampled_from([3, None]),
                    "prompt_tokens_details": or_hostile(st.just({"cached_tokens": 1})),
                    "prompt_audio_seconds": st.sampled_from([1, 1.5, None, False]),
                },
            )
        ),
        "choices": or_hostile(
            st.lists(
                or_hostile(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "finish_reason": st.sampled_from(["stop", None, 1]),
                            "message": or_hostile(messages),
                        },
                    )
                ),
                max_size=2,
            )
        ),
        "conversation_id": ids,
        "outputs": or_hostile(st.lists(or_hostile(entry_events), max_size=3)),
        "usage_info": or_hostile(st.just({"pages_processed": 2})),
        "text": texts,
    },
)


def well_formed(acc: mistral._Acc) -> None:
    message = acc.message_out()
    if message is not None:
        assert message["role"] == "assistant" and isinstance(message["content"], str)
        for call in message["tool_calls"] or []:
            assert set(call) == {"id", "type", "function"}
            assert set(call["function"]) == {"name", "arguments"}
    for entry in acc.entries_out() or []:
        assert entry["type"] in ENTRY_TYPES


@settings(max_examples=200, deadline=None)
@given(events)
def test_handlers_never_raise_on_any_event(objs: list[dict[str, Any]]) -> None:
    """_on_chunk/_on_event (and so _merge_calls, _on_entry) take whatever JSON came, without
    the stream's catch-all to hide a raise."""
    acc = mistral._Acc()
    for obj in objs:
        found = obj.get("choices")
        if found is not None:
            mistral._on_chunk(acc, obj, found)
        else:
            kind = obj.get("type")
            mistral._on_event(acc, obj, kind if isinstance(kind, str) else "")
    well_formed(acc)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ENDPOINTS), responses)
def test_response_never_raises_on_any_body(endpoint: str, resp: dict[str, Any]) -> None:
    p = Parsed(endpoint=endpoint)
    mistral._response(p, resp)
    for value in (p.output_text, p.finish_reason, p.model, p.conversation_id):
        assert value is None or isinstance(value, str)
    assert p.entries_out is None or all(isinstance(e, dict) for e in p.entries_out)


# -- one stream, any chunking ---------------------------------------------------------------


def sse_body(objs: list[dict[str, Any]], newline: bytes, named: bool, done: bool) -> bytes:
    """The stream a server sends: one `data:` event per object (with its `event:` line for
    typed events when `named`), lines ended by LF or by CRLF throughout."""
    out = []
    for obj in objs:
        if named and isinstance(obj.get("type"), str):
            out.append(b"event: " + obj["type"].encode() + newline)
        out.append(b"data: " + orjson.dumps(obj) + newline + newline)
    if done:
        out.append(b"data: [DONE]" + newline + newline)
    return b"".join(out)


def cut(body: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(o % (len(body) + 1) for o in offsets)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


def facts(p: Parsed) -> dict[str, Any]:
    """Everything parsed but the index of the first content chunk (which depends on the cut)."""
    out = dataclasses.asdict(p)
    del out["first_content_chunk"]
    return out


def parse(path: str, chunks: list[bytes]) -> Parsed:
    return MistralProvider().parse("POST", path, JSON, b"{}", 200, SSE, chunks)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(PATH_OF.values())),
    events,
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 40),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_chunking_reads_the_same(
    path: str,
    objs: list[dict[str, Any]],
    newline: bytes,
    named: bool,
    done: bool,
    cut_short: int,
    offsets: list[int],
) -> None:
    """However the body is cut into chunks (a stream that ends early included), the parse is
    the same; only the index of the first content chunk moves with the cuts."""
    body = sse_body(objs, newline, named, done)
    body = body[: max(0, len(body) - cut_short)] if cut_short > 4 else body
    whole = parse(path, [body])
    split = parse(path, cut(body, offsets))
    assert facts(split) == facts(whole)
    assert (split.first_content_chunk is None) == (whole.first_content_chunk is None)


@settings(max_examples=50, deadline=None)
@given(events, st.sampled_from([b"\n", b"\r\n"]))
def test_byte_by_byte_reads_the_same(objs: list[dict[str, Any]], newline: bytes) -> None:
    body = sse_body(objs, newline, named=True, done=True)
    whole = parse("/v1/conversations", [body])
    assert facts(parse("/v1/conversations", cut(body, list(range(len(body)))))) == facts(whole)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.sampled_from(sorted(PATH_OF.values())))
def test_any_bytes_never_raise(chunks: list[bytes], path: str) -> None:
    p = parse(path, chunks)
    assert p.streamed and isinstance(p, Parsed)


# -- entry merging, case by case (what the tables in test_mistral_provider.py leave out) -------


def ev(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {orjson.dumps({'type': kind, **fields}).decode()}\n\n".encode()


def tool_execution(id: str | None, arguments: Any, info: Any = None) -> dict[str, Any]:
    return {"type": "tool.execution", "id": id, "name": None, "arguments": arguments, "info": info}


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        # arguments that are not a string are kept as sent, until a string piece comes
        (
            [ev("tool.execution.started", id="t", arguments={"k": 1})],
            [tool_execution("t", {"k": 1})],
        ),
        (
            [
                ev("tool.execution.started", id="t", arguments={"k": 1}),
                ev("tool.execution.done", id="t", arguments="{}"),
            ],
            [tool_execution("t", "{}")],
        ),
        # after string pieces: a non-string is ignored, and so is the done event's whole string
        (
            [
                ev("tool.execution.delta", id="t", arguments="{"),
                ev("tool.execution.delta", id="t", arguments={"k": 1}),
                ev("tool.execution.delta", id="t", arguments="}"),
                ev("tool.execution.done", id="t", arguments="{}", info={"n": 1}),
            ],
            [tool_execution("t", "{}", {"n": 1})],
        ),
        # info belongs to tool executions only; the first non-empty field wins
        (
            [
                ev("function.call.delta", id="f", name="", info={"n": 1}, arguments="{"),
                ev("function.call.delta", id="f", name="g", tool_call_id="c", arguments="}"),
                ev("function.call.delta", id="f", name="h"),
            ],
            [
                {
                    "type": "function.call",
                    "id": "f",
                    "tool_call_id": "c",
                    "name": "g",
                    "arguments": "{}",
                }
            ],
        ),
        # by output_index when there is no id; a new id at a used index is a new entry
        (
            [
                ev("tool.execution.delta", output_index=0, arguments="a"),
                ev("tool.execution.delta", output_index=0, id="t", arguments="b"),
                ev("tool.execution.delta", output_index=0, id="u", arguments="c"),
                ev("tool.execution.delta", output_index=0, arguments="d"),
                ev("tool.execution.delta", id="t", arguments="e"),
            ],
            [tool_execution("t", "abe"), tool_execution("u", "cd")],
        ),
        # the same index for another type is another entry
        (
            [
                ev("tool.execution.delta", output_index=0, arguments="a"),
                ev("function.call.delta", output_index=0, arguments="b"),
                ev("tool.execution.delta", output_index=0, arguments="c"),
            ],
            [
                tool_execution(None, "ac"),
                {
                    "type": "function.call",
                    "id": None,
                    "tool_call_id": None,
                    "name": None,
                    "arguments": "b",
                },
            ],
        ),
    ],
)
def test_entry_merging(chunks: list[bytes], expected: list[dict[str, Any]]) -> None:
    assert parse("/v1/conversations", chunks).entries_out == expected
