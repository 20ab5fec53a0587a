"""The typed records the store reads back: built alike from SQLite's and PostgreSQL's rows,
and turned into exactly the JSON the API answers; odd stored values survive both steps."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.capture import storable
from gateway.store.exchanges import EXCHANGE_COLUMNS
from gateway.store.records import (
    LIST_COLUMNS,
    Evaluation,
    ExchangeSummary,
    MemorySnapshot,
    Message,
    ProviderCost,
    Run,
    RunDetail,
    RunSummary,
    StoredExchange,
    ToolCall,
    iso_time,
)
from gateway.store.runs import RUN_COLUMNS
from gateway.store.stored import stored_body
from tests.rows import AT, exchange_row, run_row

DIALECTS = ("sqlite", "postgres")
BODY_KEYS = (
    "request_headers",
    "request_body",
    "request_body_encoding",
    "response_headers",
    "response_body",
    "response_body_encoding",
)
# The table's column order (the models' differs a little: columns added by migrations).
TABLE_ORDER = (
    *EXCHANGE_COLUMNS[: EXCHANGE_COLUMNS.index("replay_of") + 1],
    "parent_id",
    "run_source",
    "step",
    *EXCHANGE_COLUMNS[EXCHANGE_COLUMNS.index("thread_key") :],
)


def roundtrip(data: object) -> object:
    """What a client reads: the record's JSON through the API's own encoder."""
    return orjson.loads(storable.json_bytes(data))


# -- exchanges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_exchange_detail_json(dialect: str):
    row = exchange_row(
        dialect,
        streamed=True,
        omitted=False,
        run_id=387356712848797697,
        replay_of=387356712376254400,
        parent_id=387356712376254401,
        units='{"pages": 3}',
        clipped='{"model": 900}',
        response_body='{"id": "x", "choices": []}',
    )
    item = StoredExchange.from_row(row)
    assert item.started_at == datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert (item.streamed, item.truncated, item.id) == (True, False, 387356712376254464)
    data = item.to_json()
    assert tuple(data) == (*TABLE_ORDER, *BODY_KEYS)
    assert data["id"] == "387356712376254464" and data["started_at"] == "2026-03-01T10:00:00.123Z"
    assert data["run_id"] == "387356712848797697" and data["replay_of"] == "387356712376254400"
    assert data["parent_id"] == 387356712376254401  # never a string, as before
    assert data["streamed"] is True and data["omitted"] is False
    assert data["units"] == {"pages": 3} and data["clipped"] == {"model": 900}
    assert data["request_headers"] == [["Content-Type", "application/json"]]
    assert data["request_body"] == {"model": "mistral-small-latest", "messages": []}
    assert data["response_body"] == {"id": "x", "choices": []}
    assert roundtrip(data) == data


def test_both_dialects_read_the_same_record():
    for values in ({}, {"streamed": True, "truncated": True, "parse_error": True}):
        sqlite, postgres = (StoredExchange.from_row(exchange_row(d, **values)) for d in DIALECTS)
        assert sqlite == postgres
        assert ExchangeSummary.from_row(exchange_row("sqlite", **values)) == sqlite.summary()


def test_list_item_json_keeps_its_columns_and_order():
    item = ExchangeSummary.from_row(exchange_row("postgres", preview="Hi", run_id=5, omitted=True))
    data = item.to_json()
    assert tuple(data) == LIST_COLUMNS
    assert data["preview"] == "Hi" and data["omitted"] is True and data["run_id"] == "5"
    assert data["replay_of"] is None and data["started_at"] == "2026-03-01T10:00:00.123Z"
    full = StoredExchange.from_row(exchange_row(preview="Hi", run_id=5, omitted=True))
    assert full.summary().to_json() == data
    with pytest.raises(FrozenInstanceError):
        item.status = 500  # type: ignore[misc]


def test_a_call_without_a_bodies_row_reads_as_empty():
    """`LEFT JOIN exchange_bodies`: a row may come without headers or bodies."""
    row = exchange_row(**{key: None for key in BODY_KEYS})
    data = StoredExchange.from_row(row).to_json()
    assert [data[key] for key in BODY_KEYS] == [[], None, None, [], None, None]


@pytest.mark.parametrize(
    ("text", "encoding", "shown", "parsed"),
    [
        ('{"a": 1}', "json", {"a": 1}, b'{"a": 1}'),
        ("{broken", "json", "{broken", b"{broken"),  # shown as text, parsed as it is
        ("data: 1\n\n", "text", "data: 1\n\n", b"data: 1\n\n"),
        ("AAEC", "base64", "AAEC", b""),
        ('{"sha256": "ab", "bytes": 3}', "digest", {"sha256": "ab", "bytes": 3}, b""),
        (None, "omitted", None, b""),
        ("", "json", "", b""),
    ],
)
def test_bodies_as_shown_and_as_parsed(text, encoding, shown, parsed):
    row = exchange_row(response_body=text, response_body_encoding=encoding)
    item = StoredExchange.from_row(row)
    assert item.decoded_body("response") == shown == item.to_json()["response_body"]
    assert stored_body(item, "response") == parsed


def test_times_from_sqlite_text_with_or_without_an_offset():
    for text in ("2026-03-01 10:00:00.123456+00:00", "2026-03-01 10:00:00.123456"):
        item = StoredExchange.from_row(exchange_row(started_at=None) | {"started_at": text})
        assert item.to_json()["started_at"] == "2026-03-01T10:00:00.123Z"
    assert iso_time(None) is None
    assert iso_time("2026-03-01 12:00:00+02:00") == "2026-03-01T10:00:00.000Z"


ODD_TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["\x00", "a\x00b", "\u2028", "[redacted]", "…#abcd", '"]}', "\ufeff"]
)


@given(
    text=ODD_TEXT,
    header=ODD_TEXT,
    dialect=st.sampled_from(DIALECTS),
    number=st.none() | st.integers(-(2**31), 2**31 - 1),
)
def test_odd_stored_values_survive(text: str, header: str, dialect: str, number: int | None):
    """Whatever the writer stored (NUL, separators, clipped markers) reaches the JSON as is."""
    row = exchange_row(
        dialect,
        output_text=text,
        error=text,
        preview=text,
        model=text,
        status=number,
        prompt_tokens=number,
        request_headers=orjson.dumps([["X-Odd", header]]).decode(),
        request_body=text,
        request_body_encoding="text",
        response_body=orjson.dumps({"content": text}).decode(),
    )
    item = StoredExchange.from_row(row)
    data = item.to_json()
    assert data["output_text"] == data["error"] == data["preview"] == data["model"] == text
    assert data["status"] == data["prompt_tokens"] == number
    assert data["request_headers"] == [["X-Odd", header]]
    assert data["request_body"] == text and data["response_body"] == {"content": text}
    assert stored_body(item, "request") == text.encode()
    assert roundtrip(data) == data
    assert item.summary().to_json() == ExchangeSummary.from_row(row).to_json()


# -- runs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_run_json_as_lists_and_the_dashboard_show_it(dialect: str):
    row = run_row(dialect, tags='{"env": "prod"}', total_cost_usd=0.1 + 0.2, ended_at=AT)
    listed = Run.from_row(row, ["conv-b", "conv-a"]).to_json()
    assert tuple(listed) == (*RUN_COLUMNS, "activity", "conversation_ids")
    assert listed["id"] == "387356712848797697" and listed["tags"] == {"env": "prod"}
    assert listed["started_at"] == listed["ended_at"] == "2026-03-01T10:00:00.123Z"
    assert listed["total_cost_usd"] == 0.3  # rounded to 10 places, as always
    assert listed["conversation_ids"] == ["conv-b", "conv-a"]
    # the costliest runs: no conversations read
    assert tuple(Run.from_row(row).to_json()) == (*RUN_COLUMNS, "activity")
    assert Run.from_row(run_row("sqlite", tags=None)).to_json()["tags"] == {}
    assert roundtrip(listed) == listed
    assert Run.from_row(run_row("sqlite")) == Run.from_row(run_row("postgres"))


def test_run_summary_ends_when_its_last_call_ended():
    row = run_row()
    assert RunSummary.read(row, None).to_json()["ends_at"] == "2026-03-01T10:00:00.123Z"
    last = {"started_at": "2026-03-01 10:00:01.000000+00:00", "latency_ms": 250.5}
    data = RunSummary.read(row, last).to_json()
    assert tuple(data) == (*RUN_COLUMNS, "activity", "ends_at")
    assert data["ends_at"] == "2026-03-01T10:00:01.250Z"
    no_latency = {"started_at": datetime(2026, 3, 1, 10, 0, 2, tzinfo=UTC), "latency_ms": None}
    assert RunSummary.read(row, no_latency).to_json()["ends_at"] == "2026-03-01T10:00:02.000Z"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_run_detail_nests_its_children(dialect: str):
    exchange = ExchangeSummary.from_row(exchange_row(dialect, run_id=7))
    message = {
        "id": 1,
        "run_id": 7,
        "exchange_id": 11,
        "step": 0,
        "position": 1,
        "direction": "in",
        "role": "user",
        "content": '[{"type": "text", "text": "a\\u0000b"}]',
        "tool_calls": None,
        "tool_call_id": None,
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
    }
    tool = {
        "id": 2,
        "run_id": 7,
        "exchange_id": 11,
        "step": 0,
        "call_id": "c1",
        "tool_name": "get_weather",
        "kind": "function",
        "args": '{"city": "Paris"}',
        "return_value": "sunny",
        "result_exchange_id": 12,
        "asked_at_ms": 1.0,
        "latency_ms": 12.34567,
    }
    snapshots = [
        {
            "exchange_id": 11,
            "step": 0,
            "taken_at": AT.isoformat(sep=" "),
            "carried": 0,
            "appended": '["a", "b"]',
        },
        {"exchange_id": 12, "step": 1, "taken_at": AT, "carried": 1, "appended": '["c"]'},
    ]
    evaluation = {
        "id": 3,
        "run_id": 7,
        "exchange_id": None,
        "metric_name": "success",
        "metric_value": 1,
        "created_at": AT,
    }
    cost = {"provider": "mistral", "calls": 2, "cost_usd": None}
    run = RunDetail.read(
        run_row(dialect, config='{"model": "m"}'),
        [],
        exchanges=[exchange],
        messages=[Message.from_row(message)],
        tool_calls=[ToolCall.from_row(tool)],
        memory_snapshots=MemorySnapshot.rebuild(snapshots),
        evaluations=[Evaluation.from_row(evaluation)],
        cost_by_provider=[ProviderCost.from_row(cost)],
    )
    data = run.to_json()
    assert tuple(data) == (
        *RUN_COLUMNS,
        "activity",
        "config",
        "conversation_ids",
        "exchanges",
        "messages",
        "tool_calls",
        "memory_snapshots",
        "evaluations",
        "cost_by_provider",
        "cost_by_category",
    )
    assert data["config"] == {"model": "m"} and data["conversation_ids"] == []
    assert data["exchanges"] == [exchange.to_json()]
    assert data["messages"][0]["exchange_id"] == "11"
    assert data["messages"][0]["content"] == [{"type": "text", "text": "a\x00b"}]  # NUL
    assert data["tool_calls"] == [
        {
            "tool_name": "get_weather",
            "args": {"city": "Paris"},
            "return_value": "sunny",
            "call_id": "c1",
            "exchange_id": "11",
            "step": 0,
            "result_exchange_id": "12",
            "latency_ms": 12.346,
            "kind": "function",
        }
    ]
    assert [s["state"] for s in data["memory_snapshots"]] == [["a", "b"], ["a", "c"]]
    assert data["memory_snapshots"][1] == {
        "exchange_id": "12",
        "step": 1,
        "taken_at": "2026-03-01T10:00:00.123Z",
        "carried": 1,
        "state": ["a", "c"],
    }
    assert data["evaluations"] == [
        {
            "id": "3",
            "metric_name": "success",
            "metric_value": 1.0,
            "run_id": "7",
            "exchange_id": None,
            "created_at": "2026-03-01T10:00:00.123Z",
        }
    ]
    assert data["cost_by_provider"] == [{"provider": "mistral", "calls": 2, "cost_usd": 0.0}]
    assert roundtrip(data) == data


@given(name=ODD_TEXT, tag=ODD_TEXT, content=ODD_TEXT, dialect=st.sampled_from(DIALECTS))
def test_odd_run_values_survive(name: str, tag: str, content: str, dialect: str):
    row = run_row(dialect, name=name, user=name, tags=orjson.dumps({tag: content}).decode())
    data = Run.from_row(row, [name]).to_json()
    assert data["name"] == data["user"] == name and data["conversation_ids"] == [name]
    assert data["tags"] == {tag: content}
    assert roundtrip(data) == data
