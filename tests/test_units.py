"""Unit tests that run in milliseconds, without a gateway: the capture step (raw record ->
rows) and the run grouper, fed by the real Mistral provider (no mocks)."""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.capture.rows import Rows, build_rows, keep_body
from gateway.providers.mistral import MistralProvider
from gateway.runs.grouper import (
    DONE_BYTES,
    HEADER,
    SINGLE,
    THREAD,
    Grouper,
    canonical,
    prefix_hashes,
)

PRICES = PriceTable.load(None)
JSON = [("content-type", "application/json")]


def record(
    request: Any,
    answer: Any,
    *,
    at: float = 1.8e9,
    headers: Any = None,
    hints: dict[str, str] | None = None,
    encoding: str | None = None,
) -> Exchange:
    body = orjson.dumps(answer)
    response_headers = list(JSON)
    if encoding == "gzip":
        body = gzip.compress(body)
        response_headers.append(("content-encoding", "gzip"))
    return Exchange(
        id=new_id(),
        started_at=at,
        method="POST",
        client_path="/v1/chat/completions",
        path="/v1/chat/completions",
        query="",
        request_headers=headers or list(JSON),
        request_body=orjson.dumps(request),
        hints=hints or {},
        status=200,
        response_headers=response_headers,
        response_chunks=[body],
        chunk_ms=[2.0],
        latency_ms=3.0,
    )


def rows(exchange: Exchange, limit: int = 10_000) -> Rows:
    return build_rows(exchange, MistralProvider(), PRICES, limit)


def answer(content: str | None = None, tool: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool:
        message["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": tool, "arguments": '{"city": "Paris"}'},
            }
        ]
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "mistral-small-latest",
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


# -- capture ---------------------------------------------------------------------------------


def test_capture_decodes_gzip_prices_and_keeps_bodies_exact():
    built = rows(
        record({"model": "mistral-small-latest", "messages": []}, answer("hi"), encoding="gzip")
    )
    assert built.exchange["output_text"] == "hi" and built.exchange["cost_usd"] > 0
    assert built.bodies["response_body_encoding"] == "json"
    assert orjson.loads(built.bodies["response_body"])["choices"][0]["message"]["content"] == "hi"


def test_capture_stores_non_utf8_as_base64_and_truncates_with_a_flag():
    raw = record({}, answer("x"))
    raw.request_body = b"\xff\x00binary"
    built = rows(raw)
    assert built.bodies["request_body_encoding"] == "base64"
    big = record({"model": "m", "messages": [{"role": "user", "content": "a" * 500}]}, answer("x"))
    built = rows(big, limit=100)
    assert built.exchange["truncated"] and len(built.bodies["request_body"]) <= 100


@given(
    st.binary(max_size=64)
    | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.text(alphabet=st.characters(max_codepoint=127), max_size=64).map(str.encode),
    st.booleans(),
)
def test_keep_body_tells_text_from_binary_as_decoding_does(body, is_json):
    """The ASCII shortcut (no decoding) answers as decoding the body would."""
    try:
        binary = "\x00" in body.decode("utf-8")
    except UnicodeDecodeError:
        binary = True
    expected = "base64" if binary else "json" if is_json else "text"
    assert keep_body(body, is_json, 1_000) == (body, expected, False)


def test_prefix_hashes_chain_blake2b_over_each_canonical_message():
    """The thread keys stored in exchanges.thread_key: they must not change."""
    messages = [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]
    digest, expected = b"", []
    for message in messages:
        digest = hashlib.blake2b(digest + canonical(message), digest_size=16).digest()
        expected.append(digest.hex())
    assert prefix_hashes(messages) == expected
    assert prefix_hashes(messages[1:], after=expected[:1]) == expected[1:]


def test_capture_makes_the_list_preview_once():
    ask = {"model": "m", "messages": [{"role": "user", "content": "Weather " + "x" * 400}]}
    built = rows(record(ask, answer("hi")))
    assert (
        built.exchange["preview"].startswith("Weather ") and len(built.exchange["preview"]) == 300
    )
    assert rows(record({"model": "m", "messages": []}, answer("hi"))).exchange["preview"] == ""


def test_capture_clips_hints_and_records_their_length():
    built = rows(
        record({"model": "m", "messages": []}, answer("x"), hints={"run": "n" * 300, "agent": "ok"})
    )
    assert len(built.hints["run"]) == 200 and built.hints["agent"] == "ok"
    assert orjson.loads(built.exchange["clipped"]) == {"hints.run": 300}


# -- the grouper -----------------------------------------------------------------------------


async def no_steps(run_id: int) -> int:
    raise AssertionError("the grouper should know every run here")


async def place(grouper: Grouper, exchange: Exchange) -> Any:
    built = rows(exchange)
    change = await grouper.assign(built.exchange, built.parsed, built.hints, no_steps)
    return change


async def test_a_tool_loop_threads_into_one_run():
    grouper = Grouper(run_idle=300)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = await place(grouper, record({"model": "m", "messages": ask}, answer(tool="weather")))
    assistant = answer(tool="weather")["choices"][0]["message"]
    follow = [*ask, assistant, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    second = await place(
        grouper, record({"model": "m", "messages": follow}, answer("Sunny."), at=1.8e9 + 1)
    )
    assert first.exchange["run_source"] == SINGLE and second.exchange["run_source"] == THREAD
    assert second.exchange["run_id"] == first.exchange["run_id"]
    assert (first.exchange["step"], second.exchange["step"]) == (0, 1)
    assert [t["tool_name"] for t in first.tool_calls] == ["weather"]
    assert [r["return_value"] for r in second.tool_results] == ["sunny"]


async def test_extended_steps_are_forgotten_with_their_thread_keys(monkeypatch):
    """`extended` (calls a later step continued) is pruned with `threads`: a writer that
    served agent loops for days kept one id per step for good."""
    monkeypatch.setattr("gateway.runs.grouper.THREAD_LIMIT", 4)
    grouper = Grouper(run_idle=300)
    for n in range(10):
        ask = [{"role": "user", "content": f"Weather in city {n}?"}]
        await place(grouper, record({"model": "m", "messages": ask}, answer(tool="weather")))
        assistant = answer(tool="weather")["choices"][0]["message"]
        follow = [*ask, assistant, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]
        step = await place(grouper, record({"model": "m", "messages": follow}, answer("Sunny.")))
        assert step.exchange["run_source"] == THREAD
    remembered = {c.exchange_id for found in grouper.threads.values() for c in found}
    assert len(grouper.threads) == 4
    assert grouper.extended and grouper.extended <= remembered


def _without_ids(change: Any) -> tuple[Any, ...]:
    """What a change holds, its run and exchange ids aside (new runs get random ids)."""

    def plain(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k not in ("run_id", "id")}

    return (
        plain(change.exchange),
        [plain(m) for m in change.messages],
        [plain(t) for t in change.tool_calls],
        [plain(r) for r in change.tool_results],
        change.repeats,
    )


@given(st.lists(st.text(max_size=40), min_size=1, max_size=4), st.booleans())
async def test_assign_with_what_wants_found_places_as_without(texts: list[str], tool: bool):
    """The recorder hands `assign` the prefix hashes and thread key `wants` computed: the
    same changes and memory as a grouper that computes them again."""
    helped, alone = Grouper(run_idle=300), Grouper(run_idle=300)
    messages: list[Any] = []
    for n, text in enumerate(texts):
        messages = [*messages, {"role": "user", "content": text}]
        reply = answer(text.upper(), tool="weather" if tool else None)
        built = rows(record({"model": "m", "messages": messages}, reply, at=1.8e9 + n))
        want = helped.wants(built.exchange, built.parsed, built.hints)
        one = await helped.assign(
            built.exchange, built.parsed, built.hints, no_steps, want.hashes or None, want.key
        )
        two = await alone.assign(dict(built.exchange), built.parsed, built.hints, no_steps)
        assert _without_ids(one) == _without_ids(two)
        assert helped.memory[one.run["id"]].hashes == alone.memory[two.run["id"]].hashes
        messages = [*messages, reply["choices"][0]["message"]]
    assert list(helped.threads) == list(alone.threads)


async def test_a_named_run_ends_after_run_idle_and_the_name_starts_a_new_one():
    grouper = Grouper(run_idle=10)
    ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    one = await place(grouper, record(ask, answer("a"), hints={"run": "nightly"}))
    two = await place(grouper, record(ask, answer("b"), at=1.8e9 + 5, hints={"run": "nightly"}))
    three = await place(grouper, record(ask, answer("c"), at=1.8e9 + 60, hints={"run": "nightly"}))
    assert one.exchange["run_source"] == HEADER
    assert one.exchange["run_id"] == two.exchange["run_id"] != three.exchange["run_id"]


async def test_placing_the_same_exchange_again_changes_nothing():
    """A spool replay or a batch split in halves (quarantine) places an exchange twice."""
    grouper = Grouper(run_idle=300)
    exchange = record({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, answer("a"))
    built = rows(exchange)
    first = await grouper.assign(built.exchange, built.parsed, built.hints, no_steps)
    again = await grouper.assign(built.exchange, built.parsed, built.hints, no_steps)
    assert again is first


async def test_a_long_conversation_id_is_remembered_as_it_is_stored():
    """The grouper's memory and one rebuilt from the database (clipped ids) must agree."""
    from gateway.capture import storable
    from gateway.providers.base import Parsed

    long_id = "conv_" + "x" * 300
    stored = storable.clip(long_id, 200)
    grouper = Grouper(run_idle=300)
    grouper.remember_conversation(stored, 42)  # as rebuild_grouper reads it back
    assert grouper._conversation_run(Parsed(conversation_id=long_id)) == 42


def conversation_call(method: str, path: str, request: Any, answer: Any, at: float) -> Exchange:
    raw = record(request, answer, at=at)
    raw.method, raw.client_path, raw.path = method, path, path
    raw.request_body = b"" if request is None else orjson.dumps(request)
    return raw


def conversation_answer(conversation_id: str, *outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "conversation.response",
        "conversation_id": conversation_id,
        "outputs": list(outputs),
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def message_keys(change: Any) -> list[tuple[Any, ...]]:
    return [(m["position"], m["direction"], m["role"], m["content"]) for m in change.messages]


async def test_conversation_calls_add_entries_tools_and_memory():
    """Start, append (a tool result in; a built-in tool, a handoff and a reply out), a history
    read that adds nothing, and restarts from a known and an unknown entry."""
    grouper = Grouper(run_idle=300)
    asked = {"type": "function.call", "id": "e2", "tool_call_id": "call_1", "name": "weather"}
    asked["arguments"] = '{"city": "Paris"}'
    start = await place(
        grouper,
        conversation_call(
            "POST",
            "/v1/conversations",
            {"model": "m", "inputs": "Weather?"},
            conversation_answer("conv_1", asked),
            1.8e9,
        ),
    )
    run_id = start.exchange["run_id"]
    assert start.conversations == [("conv_1", run_id)]
    assert message_keys(start) == [(0, "in", "user", '"Weather?"'), (1, "out", "assistant", None)]
    assert orjson.loads(start.messages[1]["tool_calls"])[0]["function"]["name"] == "weather"
    (call,) = start.tool_calls
    assert (call["call_id"], call["tool_name"], call["kind"], call["args"]) == (
        "call_1",
        "weather",
        "function",
        '{"city":"Paris"}',
    )
    assert call["asked_at_ms"] == 1.8e12 + 3.0 and start.tool_results == []
    assert start.snapshot is not None
    assert (start.snapshot["step"], start.snapshot["carried"], len(start.snapshot["appended"])) == (
        0,
        0,
        2,
    )

    append = await place(
        grouper,
        conversation_call(
            "POST",
            "/v1/conversations/conv_1",
            {"inputs": [{"type": "function.result", "tool_call_id": "call_1", "result": "sunny"}]},
            conversation_answer(
                "conv_1",
                {"type": "tool.execution", "id": "e4", "name": "search", "info": {"hits": 2}},
                {"type": "agent.handoff", "id": "e5", "next_agent_id": "a2"},
                {"type": "message.output", "id": "e6", "role": "assistant", "content": "Sunny."},
            ),
            1.8e9 + 1,
        ),
    )
    assert append.exchange["run_id"] == run_id and append.exchange["step"] == 1
    assert append.conversations == [("conv_1", run_id)]  # path and body id: one link
    assert [k[:3] for k in message_keys(append)] == [
        (2, "in", "tool"),
        (3, "out", "tool"),
        (4, "out", "handoff"),
        (5, "out", "assistant"),
    ]
    assert [(t["call_id"], t["kind"], t["return_value"]) for t in append.tool_calls] == [
        ("e4", "builtin", '{"hits":2}'),
        ("e5", "handoff", None),
    ]
    (result,) = append.tool_results
    assert (result["call_id"], result["return_value"], result["at_ms"]) == (
        "call_1",
        "sunny",
        1.8e12 + 1000,
    )
    assert append.snapshot is not None and append.snapshot["carried"] == 2
    assert result["result_exchange_id"] == append.snapshot["exchange_id"]
    assert grouper.memory[run_id].entry_ids == [None, "e2", None, "e4", "e5", "e6"]

    history = await place(
        grouper,
        conversation_call(
            "GET", "/v1/conversations/conv_1/history", None, {"entries": []}, 1.8e9 + 2
        ),
    )
    assert history.exchange["run_id"] == run_id and history.exchange["step"] == 2
    assert history.conversations == [("conv_1", run_id)]
    assert (history.messages, history.tool_calls, history.snapshot) == ([], [], None)

    restart = await place(
        grouper,
        conversation_call(
            "POST",
            "/v1/conversations/conv_1/restart",
            {"inputs": "Rome instead", "from_entry_id": "e2"},
            conversation_answer("conv_2", {"type": "message.output", "id": "e8", "content": "R"}),
            1.8e9 + 3,
        ),
    )
    assert restart.conversations == [("conv_1", run_id), ("conv_2", run_id)]
    assert message_keys(restart) == [
        (2, "in", "user", '"Rome instead"'),
        (3, "out", "assistant", '"R"'),
    ]
    assert restart.snapshot is not None and restart.snapshot["carried"] == 2
    assert grouper.memory[run_id].entry_ids == [None, "e2", None, "e8"]

    unknown = await place(
        grouper,
        conversation_call(
            "POST",
            "/v1/conversations/conv_2/restart",
            {"inputs": "Again", "from_entry_id": "nope"},
            conversation_answer("conv_3", {"type": "message.output", "id": "e9", "content": "H"}),
            1.8e9 + 4,
        ),
    )
    assert [k[0] for k in message_keys(unknown)] == [0, 1]
    assert unknown.snapshot is not None and unknown.snapshot["carried"] == 0
    assert grouper.memory[run_id].entry_ids == [None, "e9"]


async def test_conversation_entries_that_are_not_objects_are_kept_as_content():
    from datetime import UTC, datetime

    from gateway.providers.base import Parsed

    grouper = Grouper(run_idle=300)
    at = datetime.fromtimestamp(1.8e9, UTC)
    exchange = {"id": new_id(), "started_at": at, "method": "POST", "latency_ms": 5.0}
    parsed = Parsed(
        endpoint="conversations",
        conversation_op="append",
        entries_in=["raw", None],
        entries_out=[7, {"type": "message.output", "id": "e1", "content": "ok"}],
    )
    change = await grouper.assign(exchange, parsed, {}, no_steps)
    assert change.conversations == [] and change.tool_calls == []
    assert message_keys(change) == [
        (0, "in", None, '"raw"'),
        (1, "out", None, "7"),
        (2, "out", "assistant", '"ok"'),
    ]
    assert grouper.memory[change.exchange["run_id"]].entry_ids == [None, None, "e1"]


async def test_the_grouper_remembers_what_calls_added_within_a_byte_bound():
    """Decisions are kept so a batch written again re-emits them, but not every 100 KB text:
    10,000 of them used to keep 2 GB in the writer long after they were stored."""
    grouper = Grouper(run_idle=300)
    text = "x" * 100_000
    placed = []
    for n in range(300):
        ask = {"model": "m", "messages": [{"role": "user", "content": f"{n} {text}"}]}
        exchange = record(ask, answer("ok"), at=1.8e9 + n)
        placed.append((exchange, await place(grouper, exchange)))
    assert grouper.done_bytes <= DONE_BYTES
    assert len(grouper.done) < 300
    assert grouper.done_bytes == sum(c.weight() for c in grouper.done.values())
    assert grouper.done_weights == {i: c.weight() for i, c in grouper.done.items()}
    last_record, last_change = placed[-1]
    built = rows(last_record)
    assert await grouper.assign(built.exchange, built.parsed, built.hints, no_steps) is last_change
