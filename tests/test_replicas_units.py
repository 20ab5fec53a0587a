"""Writers of several replicas on one database, in one process: each a real Recorder with a
grouper of its own (its memory), all on one real store (SQLite and PostgreSQL), holding
writer leases so each knows the others are there. What one wrote, the other must find
(gateway/store/grouping.py): the race where step 2 is stored before step 1, a conversation
appended before its start is stored, one run name through both, and totals never doubled.
The same with real gateway processes behind a real HAProxy: tests/test_replicas.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
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
from gateway.store import grouping, merging
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

    def __init__(self, store: Store, folder: Path, hold: float | None = None) -> None:
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
            hold_seconds=hold,
        )
        self.recorder.lease = self.lease

    async def start(self) -> None:
        await self.lease.claim()
        self.recorder.start()

    async def stop(self) -> None:
        await self.recorder.stop(5.0)
        await self.lease.release()


@contextlib.asynccontextmanager
async def two_writers(
    db_url: str, tmp_path: Path, hold: float | None = None
) -> AsyncIterator[tuple[Store, Writer, Writer]]:
    store = Store(make_settings("http://unused", db_url, tmp_path).db)
    await store.open(migrate_schema=False)
    a, b = Writer(store, tmp_path / "a", hold), Writer(store, tmp_path / "b", hold)
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


@pytest.fixture
async def writers(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Writer, Writer]]:
    async with two_writers(db_url, tmp_path) as found:
        yield found


@pytest.fixture
async def late(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Writer, Writer]]:
    """Writers whose steps wait 0.2 s for their parent (HOLD_SECONDS is 5): a parent stored
    later than that is late, without a test sleeping 5 s."""
    async with two_writers(db_url, tmp_path, 0.2) as found:
        yield found


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


# -- a parent stored past the window: the runs merge when it comes (gateway/store/merging.py)


def loop(task: str, steps: int, at: float) -> list[Exchange]:
    """A tool loop's calls: each but the last asks for a tool, the next sends its result."""
    messages: list[Any] = [{"role": "user", "content": f"Weather for {task}?"}]
    records = []
    for k in range(steps):
        call_id = f"call_{task}_{k}"
        if k < steps - 1:
            call = {**TOOL_CALL, "id": call_id}
            reply: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [call]}
        else:
            reply = {"role": "assistant", "content": f"Done with {task}."}
        records.append(chat(list(messages), reply, at + k * 0.1))
        result = {"role": "tool", "tool_call_id": call_id, "name": "weather", "content": f"r{k}"}
        messages += [reply, result]
    return records


async def stored(store: Store, record: Exchange) -> bool:
    return bool(await store.rows("SELECT id FROM exchanges WHERE id = ?", [record.id]))


async def whole(store: Store, records: list[Exchange]) -> bool:
    """Whether the records are one run, and no step waits for a late parent any more (a step
    placed in its grandparent's run is in the right run, but its parent is still due)."""
    rows = await runs_of(store, [r.id for r in records])
    if len(rows) != len(records) or len({row["run_id"] for row in rows.values()}) != 1:
        return False
    marks = ", ".join("?" * len(records))
    waiting = await store.rows(
        f"SELECT COUNT(*) AS n FROM run_orphans WHERE exchange_id IN ({marks})",
        [r.id for r in records],
    )
    return waiting == [{"n": 0}]


async def check_whole(store: Store, records: list[Exchange], source: str = "thread") -> int:
    """One run: totals equal to its exchanges', steps 0..n-1 in start order, each step
    threaded from the one before, every tool call with its result; nothing left waiting."""
    rows = await runs_of(store, [r.id for r in records])
    run_ids = {row["run_id"] for row in rows.values()}
    assert len(run_ids) == 1, rows
    run_id = run_ids.pop()
    run = (await store.rows("SELECT * FROM runs WHERE id = ?", [run_id]))[0]
    sums = await store.rows(
        "SELECT COUNT(*) AS n, SUM(total_tokens) AS tokens, SUM(cost_usd) AS cost "
        "FROM exchanges WHERE run_id = ?",
        [run_id],
    )
    assert (run["exchange_count"], run["total_tokens"]) == (sums[0]["n"], sums[0]["tokens"])
    assert run["exchange_count"] == len(records) and run["steps"] == len(records)
    assert run["total_cost_usd"] == pytest.approx(sums[0]["cost"] or 0)
    assert [rows[r.id]["step"] for r in records] == list(range(len(records)))
    if source == "thread":
        assert [rows[r.id]["parent_id"] for r in records[1:]] == [r.id for r in records[:-1]]
        assert {rows[r.id]["run_source"] for r in records[1:]} == {"thread"}
    for table in ("messages", "tool_calls", "memory_snapshots"):
        steps = await store.rows(
            f"SELECT DISTINCT exchange_id, step FROM {table} WHERE run_id = ?", [run_id]
        )
        assert all(row["step"] == rows[row["exchange_id"]]["step"] for row in steps), table
    tools = await store.rows(
        "SELECT call_id, return_value, result_exchange_id FROM tool_calls WHERE run_id = ? "
        "ORDER BY step, id",
        [run_id],
    )
    assert [t["return_value"] for t in tools] == [f"r{k}" for k in range(len(records) - 1)]
    assert [t["result_exchange_id"] for t in tools] == [r.id for r in records[1:]]
    return int(run_id)


async def test_a_parent_stored_past_the_window_merges_the_steps_run(late):
    store, a, b = late
    first, second = loop("paris", 2, time.time() - 1)
    b.recorder.submit(second)  # its parent is late: it is stored in a run of its own
    await b.recorder.drained(10)
    assert (await runs_of(store, [second.id]))[second.id]["run_source"] == "single"
    assert await store.rows("SELECT COUNT(*) AS n FROM run_orphans") == [{"n": 1}]
    a.recorder.submit(first)  # stored later by the other writer
    await a.recorder.drained(10)
    await wait_until(lambda: whole(store, [first, second]))  # a, or b's sweep, merged them
    run_id = await check_whole(store, [first, second])
    assert await store.rows("SELECT COUNT(*) AS n FROM runs") == [{"n": 1}]
    assert await store.rows("SELECT COUNT(*) AS n FROM run_orphans") == [{"n": 0}]
    # its messages as the run shows them: each once, as if step 2 had been placed in time
    detail = await RunStore(store).get_run(run_id)
    assert detail is not None
    assert [(m.exchange_id, m.step, m.position, m.direction) for m in detail.messages] == [
        (first.id, 0, 0, "in"),
        (first.id, 0, 1, "out"),
        (second.id, 1, 2, "in"),
        (second.id, 1, 3, "out"),
    ]
    assert [len(s.state) for s in detail.memory_snapshots] == [2, 4]


async def test_a_parent_stored_by_a_writer_that_knows_merges_in_its_batch(late):
    store, a, b = late
    first, second = loop("lyon", 2, time.time() - 1)
    b.recorder.submit(second)
    await b.recorder.drained(10)
    await a.lease.renew()  # a counts the step waiting for its parent
    assert a.lease.orphans == 1
    a.recorder.submit(first)
    await a.recorder.drained(10)  # merged right after the parent's batch, by a
    assert a.recorder.merges == 1
    await check_whole(store, [first, second])


async def test_a_late_middle_step_joins_its_loop_whole(late):
    store, a, b = late
    steps = loop("nice", 3, time.time() - 2)
    a.recorder.submit(steps[0])
    await a.recorder.drained(10)
    b.recorder.submit(steps[2])  # finds no parent (step 2 is late): a run of its own
    await b.recorder.drained(10)
    a.recorder.submit(steps[1])  # continues step 1, and is step 3's late parent
    await a.recorder.drained(10)
    await wait_until(lambda: whole(store, steps))
    await check_whole(store, steps)
    assert await store.rows("SELECT COUNT(*) AS n FROM runs") == [{"n": 1}]


async def test_concurrent_writers_merge_late_parents_and_follow_merged_runs(late):
    """Loops whose step 2 is late while both writers store steps: step 3 in a run of its own,
    step 4 continues it on the other writer, step 2 comes (the runs merge), then step 5 goes
    to the writer whose memory still names step 3's run (written there, it is merged again).
    """
    store, a, b = late
    now = time.time() - 5
    loops = [loop(f"city{n}", 5, now + n * 0.01) for n in range(8)]

    async def phase(which: int, writer: Writer) -> None:
        for steps in loops:
            writer.recorder.submit(steps[which])
        await writer.recorder.drained(10)

    await asyncio.gather(phase(0, a), phase(2, b))
    await phase(3, a)  # step 4 on a: its parent (step 3) is b's, found in the database
    await asyncio.gather(phase(1, b), b.lease.renew(), a.lease.renew())  # the late parents
    await wait_until(lambda: _all_whole(store, [steps[:4] for steps in loops]))
    await phase(4, a)  # a may still remember step 4 in the run merged away
    await wait_until(lambda: _all_whole(store, loops))
    for steps in loops:
        await check_whole(store, steps)
    assert await store.rows("SELECT COUNT(*) AS n FROM runs") == [{"n": len(loops)}]
    assert await store.rows("SELECT COUNT(*) AS n FROM run_orphans") == [{"n": 0}]


async def test_a_named_step_stored_before_its_late_asking_call_gets_linked(late):
    store, a, b = late
    first, second = loop("bordeaux", 2, time.time() - 1)
    first.hints = second.hints = {"run_prefix": "agent-9"}
    b.recorder.submit(second)  # its named run, but the tool call it answers is not stored
    await b.recorder.drained(10)
    a.recorder.submit(first)
    await a.recorder.drained(10)
    await wait_until(lambda: _no_orphans(store))
    await check_whole(store, [first, second], source="prefix")


async def test_a_conversation_turn_stored_before_its_late_start_is_merged(late):
    store, a, b = late
    now = time.time()
    start = conversation("/v1/conversations", {"inputs": "hi", "model": "m"}, "conv_9", now - 2)
    append = conversation("/v1/conversations/conv_9", {"inputs": "more"}, "conv_9", now - 1)
    b.recorder.submit(append)  # its conversation is not stored: a run of its own
    await b.recorder.drained(10)
    a.recorder.submit(start)  # the start finds the conversation in another run: merged
    await a.recorder.drained(10)
    again = conversation("/v1/conversations/conv_9", {"inputs": "again"}, "conv_9", now)
    b.recorder.submit(again)  # b's memory named the run merged away
    await b.recorder.drained(10)
    await wait_until(lambda: whole(store, [start, append, again]))
    rows = await runs_of(store, [start.id, append.id, again.id])
    run_id = rows[start.id]["run_id"]
    assert [rows[r.id]["step"] for r in (start, append, again)] == [0, 1, 2]
    run = (await store.rows("SELECT * FROM runs WHERE id = ?", [run_id]))[0]
    assert (run["exchange_count"], run["total_tokens"]) == (3, 12)
    assert await store.rows("SELECT COUNT(*) AS n FROM runs") == [{"n": 1}]
    assert len((await grouping.entry_ids(store, [run_id]))[run_id]) == 6


async def test_two_settled_runs_merge_their_totals_and_end(late):
    """merging.merge on its own: every total added, the later end kept, the source gone."""
    store, a, _ = late
    now = time.time()
    one = chat([{"role": "user", "content": "one"}], STEP_2_REPLY, now - 20)
    two = chat([{"role": "user", "content": "two"}], STEP_2_REPLY, now - 10)
    a.recorder.submit(one)
    a.recorder.submit(two)
    await a.recorder.drained(10)
    await RunStore(store).finish_idle(datetime.now(UTC))
    rows = await runs_of(store, [one.id, two.id])
    source, target = rows[two.id]["run_id"], rows[one.id]["run_id"]
    before = {r["id"]: r for r in await store.rows("SELECT * FROM runs")}
    done = await merging.merge(store, merging.Merge(source, target))
    assert done is not None and (done.source, done.target) == (source, target)
    runs = await store.rows("SELECT * FROM runs")
    assert [r["id"] for r in runs] == [target]
    run = runs[0]
    for column in ("exchange_count", "total_tokens", "prompt_tokens", "completion_tokens"):
        assert run[column] == before[source][column] + before[target][column]
    assert run["ended_at"] == before[source]["ended_at"] and run["status"] == "ok"
    after = await runs_of(store, [one.id, two.id])
    assert (after[one.id]["step"], after[two.id]["step"]) == (0, 1)
    assert await store.rows("SELECT into_run_id FROM run_merges") == [{"into_run_id": target}]
    assert await merging.merge(store, merging.Merge(source, target)) is None  # done already


async def _all_whole(store: Store, groups: list[list[Exchange]]) -> bool:
    for records in groups:
        if not await whole(store, records):
            return False
    return True


async def _no_orphans(store: Store) -> bool:
    return await store.rows("SELECT COUNT(*) AS n FROM run_orphans") == [{"n": 0}]


async def _true(value: bool) -> bool:
    return value
