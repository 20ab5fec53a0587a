"""Writers of several replicas on one database, in one process: each a real Recorder with a
grouper of its own (its memory), all on one real store (SQLite and PostgreSQL), holding
writer leases so each knows the others are there. What one wrote, the other must find
(gateway/store/grouping.py): the race where step 2 is stored before step 1, a conversation
appended before its start is stored, one run name through both, and totals never doubled.
The same with real gateway processes behind a real HAProxy: tests/test_replicas.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.capture.exchange import Exchange, new_id, node
from gateway.capture.pricing import PriceTable
from gateway.providers import provider_named
from gateway.providers.mistral import MistralProvider
from gateway.runs.grouper import Grouper
from gateway.store import grouping
from gateway.store.exchanges import Store
from gateway.store.runs import RunStore
from gateway.writer.recorder import Recorder
from gateway.writer.spool import Spool
from tests.conftest import make_settings, wait_until

TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
}
STEP_1_MESSAGES: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
STEP_1_REPLY = {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]}
STEP_2_MESSAGES = [
    *STEP_1_MESSAGES,
    STEP_1_REPLY,
    {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "sunny"},
]
STEP_2_REPLY = {"role": "assistant", "content": "It is sunny."}


def chat(
    messages: list[Any], reply: dict[str, Any], at: float, *, path: str = "/v1/chat/completions"
) -> Exchange:
    answer = {
        "id": f"cmpl-{new_id()}",
        "object": "chat.completion",
        "model": "mistral-small-latest",
        "choices": [{"index": 0, "message": reply, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    request = {"model": "mistral-small-latest", "messages": messages}
    return Exchange(
        id=new_id(),
        started_at=at,
        method="POST",
        client_path=path,
        path="/v1/chat/completions",
        query="",
        request_headers=[("content-type", "application/json")],
        request_body=orjson.dumps(request),
        status=200,
        response_headers=[("content-type", "application/json")],
        response_chunks=[orjson.dumps(answer)],
        latency_ms=10.0,
    )


def conversation(path: str, body: dict[str, Any], conversation_id: str, at: float) -> Exchange:
    answer = {
        "object": "conversation.response",
        "conversation_id": conversation_id,
        "outputs": [
            {"object": "entry", "type": "message.output", "role": "assistant", "content": "ok"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return Exchange(
        id=new_id(),
        started_at=at,
        method="POST",
        client_path=path,
        path=path,
        query="",
        request_headers=[("content-type", "application/json")],
        request_body=orjson.dumps(body),
        status=200,
        response_headers=[("content-type", "application/json")],
        response_chunks=[orjson.dumps(answer)],
        latency_ms=10.0,
    )


class Writer:
    """One replica's writer: a recorder with its grouper and a writer lease."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.lease = grouping.NodeLease(store, grouping.WRITER)
        self.recorder = Recorder(
            store,
            Spool(folder, 10_000_000),
            partial(provider_named, {"mistral": MistralProvider()}),
            PriceTable.load(None),
            max_body_bytes=1_000_000,
            queue_size=1000,
            grouper=Grouper(300.0),
            run_store=RunStore(store),
        )
        self.recorder.lease = self.lease

    async def start(self) -> None:
        await self.lease.claim()
        self.recorder.start()

    async def stop(self) -> None:
        await self.recorder.stop(5.0)
        await self.lease.release()


@pytest.fixture
async def writers(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Writer, Writer]]:
    store = Store(make_settings("http://unused", db_url, tmp_path).db)
    await store.open(migrate_schema=False)
    a, b = Writer(store, tmp_path / "a"), Writer(store, tmp_path / "b")
    await a.start()
    await b.start()
    await a.lease.renew()  # a learns that b is there
    assert a.lease.other_writers == 1 and b.lease.other_writers == 1
    try:
        yield store, a, b
    finally:
        await a.stop()
        await b.stop()
        await store.close()


async def runs_of(store: Store, ids: list[int]) -> dict[int, dict[str, Any]]:
    marks = ", ".join("?" * len(ids))
    found = await store.rows(
        f"SELECT id, run_id, step, parent_id, run_source FROM exchanges WHERE id IN ({marks})",
        ids,
    )
    return {row["id"]: row for row in found}


async def test_a_step_stored_before_its_parent_joins_the_parents_run(writers):
    store, a, b = writers
    now = time.time()
    first = chat(STEP_1_MESSAGES, STEP_1_REPLY, now - 1)
    second = chat(STEP_2_MESSAGES, STEP_2_REPLY, now - 0.5)
    b.recorder.submit(second)  # step 2 reaches its writer first: it waits for its parent
    await wait_until(lambda: _true(second.id in b.recorder.waiting))
    a.recorder.submit(first)
    await a.recorder.drained(10)
    await b.recorder.drained(10)
    rows = await runs_of(store, [first.id, second.id])
    assert rows[first.id]["run_id"] == rows[second.id]["run_id"]
    assert (rows[first.id]["step"], rows[second.id]["step"]) == (0, 1)
    assert rows[second.id]["parent_id"] == first.id
    assert rows[second.id]["run_source"] == "thread"
    run = (await store.rows("SELECT * FROM runs WHERE id = ?", [rows[first.id]["run_id"]]))[0]
    assert (run["exchange_count"], run["total_tokens"]) == (2, 12)
    assert await store.rows("SELECT COUNT(*) AS n FROM runs") == [{"n": 1}]
    # the tool call step 1 asked for has the result step 2 sent
    tool = await store.rows("SELECT return_value, result_exchange_id FROM tool_calls")
    assert tool == [{"return_value": "sunny", "result_exchange_id": second.id}]


async def test_a_named_step_stored_before_its_parent_completes_its_tool_call(writers):
    store, a, b = writers
    now = time.time()
    first = chat(STEP_1_MESSAGES, STEP_1_REPLY, now - 1)
    second = chat(STEP_2_MESSAGES, STEP_2_REPLY, now - 0.5)
    first.hints = second.hints = {"run_prefix": "agent-7"}
    b.recorder.submit(second)
    await wait_until(lambda: _true(second.id in b.recorder.waiting))
    a.recorder.submit(first)
    await a.recorder.drained(10)
    await b.recorder.drained(10)
    rows = await runs_of(store, [first.id, second.id])
    assert rows[first.id]["run_id"] == rows[second.id]["run_id"]
    assert (rows[first.id]["step"], rows[second.id]["step"]) == (0, 1)
    tool = await store.rows("SELECT return_value, result_exchange_id FROM tool_calls")
    assert tool == [{"return_value": "sunny", "result_exchange_id": second.id}]


async def test_a_step_whose_parent_never_comes_waits_a_bounded_time(writers, monkeypatch):
    store, _, b = writers
    monkeypatch.setattr("gateway.writer.recorder.HOLD_SECONDS", 0.5)
    lonely = chat(STEP_2_MESSAGES, STEP_2_REPLY, time.time())
    started = time.monotonic()
    b.recorder.submit(lonely)
    await b.recorder.drained(10)
    assert 0.4 < time.monotonic() - started < 5
    rows = await runs_of(store, [lonely.id])
    assert rows[lonely.id]["run_source"] == "single"


async def test_a_conversation_appended_before_its_start_is_stored_is_one_run(writers):
    store, a, b = writers
    now = time.time()
    start = conversation("/v1/conversations", {"inputs": "hi", "model": "m"}, "conv_1", now - 1)
    append = conversation("/v1/conversations/conv_1", {"inputs": "more"}, "conv_1", now - 0.5)
    b.recorder.submit(append)
    await wait_until(lambda: _true(append.id in b.recorder.waiting))
    a.recorder.submit(start)
    await a.recorder.drained(10)
    await b.recorder.drained(10)
    # a third turn on the first writer, whose memory of the conversation is one turn old
    again = conversation("/v1/conversations/conv_1", {"inputs": "again"}, "conv_1", time.time())
    a.recorder.submit(again)
    await a.recorder.drained(10)
    rows = await runs_of(store, [start.id, append.id, again.id])
    run_id = rows[start.id]["run_id"]
    assert rows[append.id]["run_id"] == rows[again.id]["run_id"] == run_id
    assert [rows[r.id]["step"] for r in (start, append, again)] == [0, 1, 2]
    assert await store.rows("SELECT COUNT(*) AS n FROM runs") == [{"n": 1}]
    # its memory holds every turn: each adds an input and an output entry
    assert len((await grouping.entry_ids(store, [run_id]))[run_id]) == 6


async def test_one_name_through_two_writers_is_one_run_counted_once(writers):
    """Concurrent writers on the same run: totals are added atomically, steps unique."""
    store, a, b = writers
    now = time.time()
    records = []
    for n in range(60):
        record = chat([{"role": "user", "content": f"q{n}"}], STEP_2_REPLY, now + n / 1000)
        record.hints = {"run": "shared-name"}
        records.append(record)
    for n, record in enumerate(records):
        (a if n % 2 else b).recorder.submit(record)
        if n % 7 == 0:
            await asyncio.sleep(0.01)  # several batches on each side
    await asyncio.gather(a.recorder.drained(10), b.recorder.drained(10))
    runs = await store.rows("SELECT * FROM runs")
    assert len(runs) == 1
    assert runs[0]["name"] == "shared-name"
    assert (runs[0]["exchange_count"], runs[0]["total_tokens"]) == (60, 360)
    steps = await store.rows("SELECT step FROM exchanges ORDER BY step")
    assert [row["step"] for row in steps] == list(range(60))
    rollup = await store.rows("SELECT calls FROM rollups WHERE dim = 'run'")
    assert sum(row["calls"] for row in rollup) == 60


async def test_a_named_run_restarts_after_idle_the_same_on_every_writer(writers):
    store, a, b = writers
    a.recorder.grouper.run_idle = b.recorder.grouper.run_idle = 10.0
    now = time.time()
    early = [
        chat([{"role": "user", "content": f"e{n}"}], STEP_2_REPLY, now - 60 + n) for n in (0, 1)
    ]
    late = [chat([{"role": "user", "content": f"l{n}"}], STEP_2_REPLY, now + n) for n in (0, 1)]
    for record in (*early, *late):
        record.hints = {"run_prefix": "nightly"}
    a.recorder.submit(early[0])
    await a.recorder.drained(10)
    b.recorder.submit(early[1])
    await b.recorder.drained(10)
    b.recorder.submit(late[0])  # 58 s after the last call: a new run, on either writer
    await b.recorder.drained(10)
    a.recorder.submit(late[1])
    await a.recorder.drained(10)
    rows = await runs_of(store, [r.id for r in (*early, *late)])
    assert rows[early[0].id]["run_id"] == rows[early[1].id]["run_id"]
    assert rows[late[0].id]["run_id"] == rows[late[1].id]["run_id"]
    assert rows[early[0].id]["run_id"] != rows[late[0].id]["run_id"]


async def test_node_leases_are_unique_and_a_stale_one_is_taken_again(db_url: str, tmp_path: Path):
    store = Store(make_settings("http://unused", db_url, tmp_path).db)
    await store.open(migrate_schema=False)
    try:
        leases = [grouping.NodeLease(store, "proxy") for _ in range(20)]
        nodes = [await lease.claim() for lease in leases]
        assert len(set(nodes)) == 20 and node() == nodes[-1]
        await store.rows(
            "UPDATE node_leases SET expires_at = 0 WHERE node = ? RETURNING node", [nodes[0]]
        )
        await leases[0].renew()  # expired but nobody took it: renewed
        assert leases[0].node is not None
        for lease in leases:
            await lease.release()
        assert await store.rows("SELECT COUNT(*) AS n FROM node_leases") == [{"n": 0}]
    finally:
        await store.close()


async def _true(value: bool) -> bool:
    return value
