"""Every value is storable: the rule for text the databases refuse and values too long, unit
by unit, then hostile records thrown at the real writer on SQLite and PostgreSQL (each must be
stored and readable through the API, none quarantined), then the calls the issue reported,
sent through the proxy."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.capture import storable
from gateway.capture.exchange import Exchange, new_id
from tests.conftest import Upstream, make_settings, running

# -- the rule, unit by unit ------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(exclude_categories=())),  # lone surrogates included
    st.text(alphabet=st.sampled_from("a\x00\udcff\ud800é\u2028"), max_size=40),
    st.text(min_size=150, max_size=600),
)


def storable_str(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


@given(hostile_text, st.integers(min_value=1, max_value=300))
def test_clip_always_fits_and_is_storable(value: str, size: int):
    clipped = storable.clip(value, size)
    assert len(clipped) <= size
    assert storable_str(clipped)
    if storable_str(value) and len(value) <= size:
        assert clipped == value  # what fits is kept as it is


@given(
    st.text(min_size=200, max_size=300),
    st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=20),
)
def test_long_values_sharing_a_prefix_stay_apart(prefix: str, a: str, b: str):
    if a == b:
        return
    assert storable.clip(prefix + a, 200) != storable.clip(prefix + b, 200)
    assert storable.is_clipped(storable.clip(prefix + a, 200))


def test_text_rule_is_backslash_escapes():
    assert storable.text("a\x00b") == "a\\x00b"
    # what aiohttp makes of the header bytes \xff\xfe (surrogateescape) shows those bytes
    assert storable.text(b"x\xff\xfey".decode("utf-8", "surrogateescape")) == "x\\xff\\xfey"
    assert storable.text("\ud800!") == "\\ud800!"
    assert storable.text("plain é") == "plain é"


def test_integers_outside_the_column_are_null():
    column = storable.SCHEMA["exchanges"]["prompt_tokens"]  # 32-bit
    assert storable.value(column, 2**31 - 1) == 2**31 - 1
    assert storable.value(column, 2**31) is None
    assert storable.value(column, 1.2e29) is None
    assert storable.value(column, 12.0) == 12
    assert storable.value(storable.SCHEMA["exchanges"]["cost_usd"], float("nan")) is None


def test_limits_come_from_the_models():
    from gateway.store.models import Run

    assert storable.limit("runs", "name") == Run._meta.fields_map["name"].max_length == 200
    assert storable.limit("messages", "role") == 32
    assert storable.limit("exchanges", "output_text") is None


# -- hostile records at the real writer ------------------------------------------------------

huge = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_text = (
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)
    | st.just("nul \x00 inside")
    | st.text(min_size=201, max_size=400)
)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"k": [value]}
    return value


@st.composite
def chat_body(draw: st.DrawFn) -> bytes:
    messages = []
    for _ in range(draw(st.integers(1, 4))):
        message: dict[str, Any] = {
            "role": draw(json_text | st.sampled_from(["user", "tool"])),
            "content": draw(json_text | st.just(nested(40))),
        }
        if draw(st.booleans()):
            message["tool_calls"] = [
                {
                    "id": draw(json_text),
                    "type": "function",
                    "function": {"name": draw(json_text), "arguments": draw(json_text)},
                }
            ]
        if draw(st.booleans()):
            message["tool_call_id"] = draw(json_text)
        messages.append(message)
    body = {
        "model": draw(json_text),
        "messages": messages,
        "max_tokens": draw(huge),
        "extra": draw(st.just(nested(300)) | huge),
    }
    text = json.dumps(body)  # big integers and NUL (as \u0000) survive as JSON text
    if draw(st.booleans()):  # a lone surrogate escape: JSON, but not what orjson accepts
        text = text.replace('"messages"', '"\\ud800": 1, "messages"', 1)
    return text.encode()


@st.composite
def chat_answer(draw: st.DrawFn) -> bytes:
    answer = {
        "id": draw(json_text),
        "object": "chat.completion",
        "model": draw(json_text),
        "choices": [
            {
                "index": 0,
                "finish_reason": draw(json_text),
                "message": {
                    "role": draw(json_text),
                    "content": draw(json_text),
                    "tool_calls": [
                        {
                            "id": draw(json_text),
                            "type": "function",
                            "function": {"name": draw(json_text), "arguments": draw(json_text)},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": draw(huge),
            "completion_tokens": draw(huge),
            "total_tokens": draw(huge),
        },
    }
    return json.dumps(answer).encode()


header_text = st.text(alphabet=st.sampled_from("aZ9 -\x00é\udcff\udcfe\ud800;="), max_size=30)


@st.composite
def hostile_record(draw: st.DrawFn) -> Exchange:
    hints = draw(
        st.dictionaries(
            st.sampled_from(["run", "agent", "user", "tags", "run_prefix", "omit", "x\udcff"]),
            hostile_text,
            max_size=4,
        )
    )
    return Exchange(
        id=new_id(),
        started_at=draw(st.floats(1.7e9, 1.9e9)),
        method=draw(st.sampled_from(["POST", "GET", "X" * 40, "P\udcffST"])),
        client_path="/v1/chat/completions" + draw(header_text),
        path="/v1/chat/completions",
        query=draw(header_text),
        request_headers=draw(st.lists(st.tuples(header_text, header_text), max_size=5)),
        request_body=draw(chat_body() | st.binary(max_size=200)),
        hints=hints,
        status=draw(st.sampled_from([200, 400, 500, None, 2**40])),
        response_headers=[
            ("content-type", "application/json"),
            ("mistral-correlation-id", draw(header_text | hostile_text)),
        ],
        response_chunks=[draw(chat_answer() | st.binary(max_size=100))],
        chunk_ms=[1.0],
        latency_ms=draw(st.floats(0, 1e9)),
        ttfb_ms=1.0,
        error=draw(hostile_text | st.none()),
        key_fingerprint=None,
    )


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(records=st.lists(hostile_record(), min_size=25, max_size=25))
def test_hostile_records_are_all_stored_and_readable(
    records: list[Exchange], upstream: Upstream, db_url: str, tmp_path: Path
):
    asyncio.run(_store_and_read(records, upstream, db_url, tmp_path))


async def _store_and_read(
    records: list[Exchange], upstream: Upstream, db_url: str, tmp_path: Path
) -> None:
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        for record in records:
            gw.recorder.submit(record)
        await gw.recorder.drained(timeout=60)
        assert await gw.store.quarantine_count() == 0
        async with aiohttp.ClientSession() as http:
            for record in records:
                async with http.get(f"{gw.ui_url}/api/exchanges/{record.id}") as resp:
                    assert resp.status == 200, await resp.text()
                    item = await resp.json()
                async with http.get(f"{gw.ui_url}/exchanges/{record.id}") as resp:
                    assert resp.status == 200, await resp.text()
                run_id = item["run_id"]
                if run_id is not None:
                    async with http.get(f"{gw.ui_url}/api/runs/{run_id}") as resp:
                        assert resp.status == 200, await resp.text()
            async with http.get(f"{gw.ui_url}/healthz") as resp:
                health = await resp.json()
        assert health["status"] == "ok", health
        assert health["dropped_records"] == 0


# -- the reported calls, through the proxy ---------------------------------------------------


def raw_request(port: int, head: bytes, body: bytes) -> bytes:
    """One HTTP/1.1 request written byte for byte (clients refuse to send such headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


async def test_reported_poison_values_are_stored_clipped_or_escaped(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    long_run, long_agent = "r" * 250, "a" * 300
    body = orjson.dumps(
        {
            "model": "mistral-small-latest",
            "messages": [
                {"role": "x" * 40, "content": "tool output with a NUL \x00 inside"},
                {"role": "user", "content": "hi"},
            ],
        }
    )
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        port = int(gw.proxy_url.rsplit(":", 1)[1])
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer sk-poison-test-0001\r\n"
            b"X-AgentOps-Run: " + long_run.encode() + b"\r\n"
            b"X-AgentOps-Agent: " + long_agent.encode() + b"\r\n"
            b"X-Weird: \xff\xfe\r\n"
        )
        answers = await asyncio.gather(
            *(asyncio.to_thread(raw_request, port, head, body) for _ in range(2))
        )
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        # a second run name sharing the first 200 characters must not join the first run
        other = head.replace(long_run.encode(), (long_run + "-other").encode())
        assert (await asyncio.to_thread(raw_request, port, other, body)).startswith(b"HTTP/1.1 200")
        await gw.recorder.drained(timeout=30)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.ui_url}/api/exchanges") as resp:
                items = (await resp.json())["items"]
            assert len(items) == 3
            async with http.get(f"{gw.ui_url}/api/exchanges/{items[-1]['id']}") as resp:
                first = await resp.json()
            async with http.get(f"{gw.ui_url}/exchanges/{items[-1]['id']}") as resp:
                page = await resp.text()
            async with http.get(f"{gw.ui_url}/api/runs") as resp:
                runs = (await resp.json())["items"]
            async with http.get(f"{gw.ui_url}/healthz") as resp:
                health = await resp.json()
    assert first["clipped"] == {"hints.run": 250, "hints.agent": 300}
    assert "Clipped to fit" in page and "<code>hints.run</code> (250 characters)" in page
    assert ["X-Weird", "\\xff\\xfe"] in first["request_headers"]
    assert len(runs) == 2 and {r["exchange_count"] for r in runs} == {2, 1}
    assert all(len(r["name"]) == 200 and storable.is_clipped(r["name"]) for r in runs)
    assert {len(r["agent_id"]) for r in runs} == {200}
    assert health["status"] == "ok" and health["quarantined"] == 0, health


_KINDS = (
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=300),
    st.binary(max_size=20),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=300),  # NUL, surrogates
    st.datetimes(),
    st.integers(0, 600).map(lambda n: "a" * n),  # around the columns' limits
)
_ANY_VALUE = st.one_of(*_KINDS)
# One (table, column) of each kind of column the schema has (its limit or range included).
_EACH_KIND = sorted(
    {
        column: (table, name)
        for table, columns in storable.SCHEMA.items()
        for name, column in sorted(columns.items())
    }.values()
)
# A column of a batch: values of one kind (with nulls), or of any kinds.
_COLUMN = st.one_of(
    *(st.lists(st.one_of(st.none(), kind), min_size=1, max_size=6) for kind in _KINDS),
    st.lists(_ANY_VALUE, min_size=1, max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(value=_ANY_VALUE, table=st.sampled_from(sorted(storable.SCHEMA)), pick=st.integers(0, 99))
def test_fast_paths_fit_as_the_rule_does(value: Any, table: str, pick: int) -> None:
    """`rows` and `fit` answer common values first (writer CPU); whatever the value and the
    column, the result is the general rule's (`value`), clipped lengths included."""
    columns = sorted(storable.SCHEMA[table])
    name = columns[pick % len(columns)]
    column = storable.SCHEMA[table][name]
    expected = storable.value(column, value) if value is not None else None
    (got,) = storable.rows(table, [name], [[value]])[0]
    assert type(got) is type(expected) and (got == expected or got != got)
    row: dict[str, Any] = {name: value}
    clipped: dict[str, int] = {}
    storable.fit(table, row, clipped)
    assert type(row[name]) is type(expected) and (row[name] == expected or row[name] != row[name])
    long = isinstance(value, str) and column.limit is not None and len(value) > column.limit
    assert clipped == ({name: len(value)} if long else {})


def _check_batch(values: list[Any], others: list[Any], pick: Callable[[list[str]], str]) -> None:
    """`rows` of two columns of every kind equal each value's `value`."""
    pairs = [list(pair) for pair in zip(values, others, strict=True)]
    for table, name in _EACH_KIND:
        names = [name, pick([*sorted(storable.SCHEMA[table]), "unknown"])]
        got = storable.rows(table, names, pairs)
        for row, pair in zip(got, pairs, strict=True):
            for column_name, item, fitted in zip(names, pair, row, strict=True):
                column = storable.SCHEMA[table].get(column_name)
                expected = item if column is None or item is None else storable.value(column, item)
                assert type(fitted) is type(expected) and (fitted == expected or fitted != fitted)


@settings(max_examples=300, deadline=None)
@given(values=_COLUMN, data=st.data())
def test_batches_fit_as_each_value_does(values: list[Any], data: st.DataObject) -> None:
    """`rows` looks at a batch's column whole and fits value by value only a column that
    needs it: the result is still each value's `value`, in its row and column, whatever the
    column."""
    others = data.draw(st.lists(_ANY_VALUE, min_size=len(values), max_size=len(values)))
    _check_batch(values, others, lambda names: data.draw(st.sampled_from(names)))


@pytest.mark.parametrize(
    "values",
    [
        ["a\x00", None, "b"],
        ["plain", "é"],
        ["x" * 600, None],
        ["\udcff", "ok"],
        [1.5, None, math.nan],
        [2.0, math.inf],
        [1.0, 2],
        [0, -(2**31) - 1],
        [2**31, 0],
        [-(2**63) - 1, None],
        [2**63],
        [True, False, None],
        [b"\x00", None],
        [datetime(2026, 1, 1), None],
    ],
)
def test_batch_edges_fit_as_each_value_does(values: list[Any]) -> None:
    """Columns whose whole look must send them to the values' rule (NUL, non-ASCII, too
    long, a surrogate, NaN or infinite, an int in a float column, out of range, bools)."""
    _check_batch(values, values[::-1], lambda names: names[0])
