"""Late parents: a step stored before the call it continues is merged into that call's run
when the call is stored, however late.

A step that waited HOLD_SECONDS (gateway/writer/recorder.py) for its parent and was placed
without it (a run of its own, or its named run with its tool results unlinked) leaves a row
in `run_orphans`: the thread key of its parent, how many of its input messages that parent's
state holds, and the tool results it sent. When a writer stores a call with that thread key
(right after its batch commits, when it knows orphans are waiting, and in a sweep every
second while any are), the orphan's run moves into the parent's in one transaction: its
exchanges and everything else naming the run, its totals added, the merged run's steps
renumbered 0..n-1 in start order, its tool results linked, the orphan run deleted. A
conversation turn stored before its start is merged the same way when the start is stored.

`run_merges` says where a merged run went: a writer whose memory still names it writes a
step into it (the upsert brings it back), sees that from the upsert's answer, and merges it
again. Runs are locked in id order, so concurrent merges and writers never deadlock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from gateway.capture import storable
from gateway.store.exchanges import Store
from gateway.store.grouping import seconds
from gateway.store.runs import RUN_TOTALS
from gateway.store.sqlite_batch import sqlite_batch

log = logging.getLogger("agentops.merging")

ORPHAN_SECONDS = 7 * 24 * 3600.0  # an orphan whose parent never came is forgotten after this
ATTEMPTS = 5  # a merge retried when another moved one of its runs meanwhile
# Tables whose rows name a run (besides exchanges and runs): they follow a merged run.
RUN_TABLES = (
    ("messages", "run_id"),
    ("tool_calls", "run_id"),
    ("memory_snapshots", "run_id"),
    ("evaluations", "run_id"),
    ("run_conversations", "run_id"),
    ("run_names", "run_id"),
    ("diffs", "run_id"),
    ("dataset_items", "source_run_id"),
    ("fine_tuned_models", "run_id"),
    ("run_merges", "into_run_id"),
)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A step placed without its parent (the call whose reply has thread key `parent_key`)."""

    exchange_id: int
    parent_key: str
    carried: int  # input messages of the step its parent's state holds
    results: list[dict[str, Any]]  # the tool results it sent: call_id, return_value, at_ms


@dataclass(frozen=True, slots=True)
class Merge:
    """Move run `source` into run `target` (a step's or a conversation's late parent)."""

    source: int
    target: int
    orphan: Orphan | None = None
    parent_id: int | None = None  # the orphan's parent exchange
    conversation: bool = False
    # tool results the source's steps sent that found no call in it (theirs moved on): each
    # (exchange id, call id, return value, at_ms), linked in the target
    results: tuple[tuple[int, str, Any, float], ...] = ()


# -- remembering orphans (inside the writer's batch transaction) ------------------------------


async def add_orphans(store: Store, tx: BaseDBAsyncClient, orphans: Sequence[Orphan]) -> None:
    if not orphans:
        return
    now = time.time()
    await tx.execute_many(
        store.sql(
            "INSERT INTO run_orphans (exchange_id, parent_key, carried, results, at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        ),
        storable.rows(
            "run_orphans",
            ("exchange_id", "parent_key", "carried", "results", "at"),
            [
                [o.exchange_id, o.parent_key, o.carried, storable.json_text(o.results), now]
                for o in orphans
            ],
        ),
    )


# -- finding what to merge ------------------------------------------------------------------


async def found_parents(
    store: Store, keys: Iterable[str] | None = None, since: float | None = None
) -> list[Merge]:
    """Orphans whose parent is stored now (only those waiting for `keys`, when given; only
    those stored after `since`, when given): each with its parent's run, the latest call
    with that key that started before it."""
    clause, params = "", list[Any]()
    if keys is not None:
        wanted = sorted(set(keys))
        if not wanted:
            return []
        clause = f" AND o.parent_key IN ({', '.join('?' * len(wanted))})"
        params = list(wanted)
    if since is not None:
        clause += " AND o.at >= ?"
        params = [*params, since]
    found = await store.rows(
        "SELECT o.exchange_id, o.parent_key, o.carried, o.results, c.run_id AS source, "
        "p.id AS parent_id, p.run_id AS target FROM run_orphans o "
        "JOIN exchanges c ON c.id = o.exchange_id "
        "JOIN exchanges p ON p.thread_key = o.parent_key AND p.started_at <= c.started_at "
        "AND p.id <> o.exchange_id AND p.status = 200 AND p.run_id IS NOT NULL "
        f"WHERE c.run_id IS NOT NULL{clause} ORDER BY o.exchange_id, p.started_at, p.id",
        params,
    )
    latest: dict[int, dict[str, Any]] = {}
    for row in found:
        latest[int(row["exchange_id"])] = row
    merges = []
    for row in latest.values():
        try:
            results = orjson.loads(row["results"]) if row["results"] else []
        except orjson.JSONDecodeError:
            results = []
        orphan = Orphan(int(row["exchange_id"]), row["parent_key"], int(row["carried"]), results)
        merges.append(Merge(int(row["source"]), int(row["target"]), orphan, int(row["parent_id"])))
    return merges


async def moved(store: Store, run_ids: Iterable[int]) -> dict[int, int]:
    """Where merged runs went, followed to the end: {run: run it is part of now}."""
    wanted = sorted(set(run_ids))
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    found = await store.rows(
        f"SELECT run_id, into_run_id FROM run_merges WHERE run_id IN ({marks})", wanted
    )
    return {int(r["run_id"]): int(r["into_run_id"]) for r in found}


async def conversation_runs(store: Store, links: Iterable[tuple[str, int]]) -> list[Merge]:
    """Conversations whose turns are in two runs (a turn stored before its start, placed in a
    run of its own): merge the later-started run into the earlier."""
    wanted = {cid: run_id for cid, run_id in links}
    if not wanted:
        return []
    marks = ", ".join("?" * len(wanted))
    found = await store.rows(
        "SELECT c.conversation_id, c.run_id, r.started_at FROM run_conversations c "
        f"JOIN runs r ON r.id = c.run_id WHERE c.conversation_id IN ({marks})",
        sorted(wanted),
    )
    merges = []
    for row in found:
        linked, ours = int(row["run_id"]), wanted[row["conversation_id"]]
        if linked == ours:
            continue
        starts = await store.rows("SELECT started_at FROM runs WHERE id = ?", [ours])
        if not starts:
            continue
        later = seconds(starts[0]["started_at"]) >= seconds(row["started_at"])
        source, target = (ours, linked) if later else (linked, ours)
        merges.append(Merge(source, target, conversation=True))
    return merges


async def prune(store: Store) -> None:
    """Forget orphans whose parent never came, and old merge marks."""
    cutoff = time.time() - ORPHAN_SECONDS
    for table in ("run_orphans", "run_merges"):
        await store.rows(f"DELETE FROM {table} WHERE at < ? RETURNING at", [cutoff])


async def pending(store: Store) -> int:
    """1 when steps wait for a late parent, else 0 (one row looked at, not a count)."""
    found = await store.rows("SELECT COUNT(*) AS n FROM (SELECT 1 FROM run_orphans LIMIT 1) o")
    return int(found[0]["n"]) if found else 0


# -- merging ---------------------------------------------------------------------------------


async def merge(store: Store, wanted: Merge) -> Merge | None:
    """Apply one merge in its own transaction; the merge as done (its runs as they were when
    locked), or None when there was nothing left to do (another writer did it)."""
    for _ in range(ATTEMPTS):
        source, target = await _current(store, wanted)
        if source is None or target is None:
            return None
        done = Merge(source, target, wanted.orphan, wanted.parent_id, wanted.conversation)
        async with _transaction(store) as tx:
            await _lock(store, tx, sorted({source, target}))
            now = await _current_in(store, tx, wanted)
            if now[0] is None or now[1] is None:
                return None  # merged already
            if now != (source, target):
                continue  # a run moved between the look and the lock: look again
            if wanted.orphan is not None:
                claimed = await tx.execute_query_dict(
                    store.sql("DELETE FROM run_orphans WHERE exchange_id = ? RETURNING carried"),
                    [wanted.orphan.exchange_id],
                )
                if not claimed:
                    return None  # another writer merged it
            if source != target:
                await _move(store, tx, source, target)
            if wanted.orphan is not None:
                await _adopt(store, tx, target, wanted.orphan, wanted.parent_id)
            elif source != target:
                await _carry_conversation(store, tx, target)
            for exchange_id, call_id, value, at_ms in wanted.results:
                await _link(store, tx, target, exchange_id, call_id, value, at_ms)
            await _renumber(store, tx, target)
        return done
    log.warning("could not merge run %s into %s: it kept moving", wanted.source, wanted.target)
    return None


async def _current(store: Store, wanted: Merge) -> tuple[int | None, int | None]:
    if wanted.orphan is None:  # the source as it is (brought back, it is a run again)
        found = await moved(store, [wanted.target])
        return wanted.source, _follow(found, wanted.target)
    ids = [wanted.orphan.exchange_id, wanted.parent_id]
    rows = await store.rows(
        "SELECT id, run_id FROM exchanges WHERE id IN (?, ?) AND run_id IS NOT NULL", ids
    )
    runs = {int(r["id"]): int(r["run_id"]) for r in rows}
    return runs.get(wanted.orphan.exchange_id), runs.get(wanted.parent_id or 0)


async def _current_in(
    store: Store, tx: BaseDBAsyncClient, wanted: Merge
) -> tuple[int | None, int | None]:
    if wanted.orphan is None:
        rows = await tx.execute_query_dict(
            store.sql("SELECT run_id, into_run_id FROM run_merges WHERE run_id = ?"),
            [wanted.target],
        )
        found = {int(r["run_id"]): int(r["into_run_id"]) for r in rows}
        source, target = wanted.source, _follow(found, wanted.target)
        present = await tx.execute_query_dict(
            store.sql("SELECT id FROM runs WHERE id IN (?, ?)"), [source, target]
        )
        ids = {int(r["id"]) for r in present}
        return (source if source in ids else None), (target if target in ids else None)
    rows = await tx.execute_query_dict(
        store.sql("SELECT id, run_id FROM exchanges WHERE id IN (?, ?)"),
        [wanted.orphan.exchange_id, wanted.parent_id],
    )
    runs = {int(r["id"]): r["run_id"] for r in rows}
    return runs.get(wanted.orphan.exchange_id), runs.get(wanted.parent_id or 0)


def _follow(moves: dict[int, int], run_id: int) -> int:
    seen = set()
    while run_id in moves and run_id not in seen:
        seen.add(run_id)
        run_id = moves[run_id]
    return run_id


def _transaction(store: Store) -> Any:
    if store.dialect == "sqlite":
        return sqlite_batch(store.conn)
    return in_transaction("default")


async def _lock(store: Store, tx: BaseDBAsyncClient, run_ids: list[int]) -> None:
    """Lock the runs, in id order (as every writer's upsert does). On SQLite a write first:
    the transaction holds the database's write lock from here on."""
    marks = ", ".join("?" * len(run_ids))
    if store.dialect == "sqlite":
        await tx.execute_query(f"UPDATE runs SET steps = steps WHERE id IN ({marks})", run_ids)
        return
    await tx.execute_query(
        store.sql(f"SELECT id FROM runs WHERE id IN ({marks}) ORDER BY id FOR UPDATE"), run_ids
    )


async def _move(store: Store, tx: BaseDBAsyncClient, source: int, target: int) -> None:
    """Everything of run `source` into run `target`; its totals added; `source` deleted."""
    rows = await tx.execute_query_dict(
        store.sql(
            f"SELECT id, {', '.join(RUN_TOTALS)}, started_at, last_seen_at, ended_at, status, "
            'last_failed, source, agent_id, "user", tags, config FROM runs WHERE id IN (?, ?)'
        ),
        [source, target],
    )
    by_id = {int(r["id"]): r for r in rows}
    old, new = by_id.get(source), by_id.get(target)
    await tx.execute_query(
        store.sql("UPDATE exchanges SET run_id = ? WHERE run_id = ?"), [target, source]
    )
    for table, column in RUN_TABLES:
        await tx.execute_query(
            store.sql(f"UPDATE {table} SET {column} = ? WHERE {column} = ?"), [target, source]
        )
    await tx.execute_query(
        store.sql(
            "INSERT INTO run_merges (run_id, into_run_id, at) VALUES (?, ?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET into_run_id = excluded.into_run_id, "
            "at = excluded.at"
        ),
        [source, target, time.time()],
    )
    if old is None:
        return
    if new is None:  # the target run's row is gone (deleted): the source's becomes it
        await tx.execute_query(store.sql("UPDATE runs SET id = ? WHERE id = ?"), [target, source])
        return
    later = seconds(old["last_seen_at"]) > seconds(new["last_seen_at"])
    running = old["ended_at"] is None or new["ended_at"] is None
    sets = [f"{c} = {c} + ?" for c in RUN_TOTALS]
    params: list[Any] = [old[c] or 0 for c in RUN_TOTALS]
    sets += [
        "started_at = CASE WHEN ? < started_at THEN ? ELSE started_at END",
        "last_seen_at = CASE WHEN ? > last_seen_at THEN ? ELSE last_seen_at END",
    ]
    params += [old["started_at"], old["started_at"], old["last_seen_at"], old["last_seen_at"]]
    if later:
        sets.append("last_failed = ?")
        params.append(old["last_failed"])
    if running:
        sets.append("ended_at = NULL, status = 'running'")
    else:  # both settled: ended when the later ended, an error if either was
        sets.append("ended_at = CASE WHEN ? > ended_at THEN ? ELSE ended_at END")
        params += [old["ended_at"], old["ended_at"]]
        if old["status"] == "error":
            sets.append("status = 'error'")
    for column in ("agent_id", '"user"', "tags", "config"):
        sets.append(f"{column} = COALESCE({column}, ?)")
        params.append(old[column.strip('"')])
    sets.append("source = CASE WHEN source = 'single' THEN ? ELSE source END")
    params.append("thread" if old["source"] == "single" else old["source"])
    await tx.execute_query(
        store.sql(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?"), [*params, target]
    )
    await tx.execute_query(store.sql("DELETE FROM runs WHERE id = ?"), [source])


async def _adopt(
    store: Store, tx: BaseDBAsyncClient, run_id: int, orphan: Orphan, parent_id: int | None
) -> None:
    """The orphan continues its parent as if it had been there in time: threaded from it,
    only its new input messages kept, the tool results it sent linked to the calls asking."""
    await tx.execute_query(
        store.sql(
            "UPDATE exchanges SET parent_id = CASE WHEN run_source IN ('single', 'thread') "
            "THEN ? "
            "ELSE parent_id END, run_source = CASE WHEN run_source = 'single' "
            "THEN 'thread' ELSE run_source END WHERE id = ?"
        ),
        [parent_id, orphan.exchange_id],
    )
    if orphan.carried > 0:
        await tx.execute_query(
            store.sql(
                "DELETE FROM messages WHERE exchange_id = ? AND direction = 'in' AND position < ?"
            ),
            [orphan.exchange_id, orphan.carried],
        )
        # a snapshot that reads its items from the exchange's request starts after them
        await tx.execute_query(
            store.sql(
                "UPDATE memory_snapshots SET carried = ? WHERE exchange_id = ? "
                "AND appended_from = 'exchange' AND carried < ?"
            ),
            [orphan.carried, orphan.exchange_id, orphan.carried],
        )
    for result in orphan.results:
        if not result.get("call_id"):
            continue
        position = result.get("position")
        if position is not None and position < orphan.carried:
            # a result its parent sent (the orphan, placed after an older call, repeated it
            # and got the link): the parent's
            await tx.execute_query(
                store.sql(
                    "UPDATE tool_calls SET result_exchange_id = ? WHERE run_id = ? "
                    "AND result_exchange_id = ? AND call_id = ?"
                ),
                [parent_id, run_id, orphan.exchange_id, result["call_id"]],
            )
            continue
        value, at_ms = result.get("return_value"), result.get("at_ms") or 0
        await _link(store, tx, run_id, orphan.exchange_id, result["call_id"], value, at_ms)


async def _link(
    store: Store,
    tx: BaseDBAsyncClient,
    run_id: int,
    exchange_id: int,
    call_id: str,
    value: Any,
    at_ms: float,
) -> None:
    """A tool result completes the first call of the run that asked for it and has none (as
    RunStore._write_tool_results does)."""
    await tx.execute_query(
        store.sql(
            "UPDATE tool_calls SET return_value = ?, result_exchange_id = ?, "
            "latency_ms = CASE WHEN ? >= asked_at_ms THEN ? - asked_at_ms ELSE 0 END "
            "WHERE id = (SELECT t.id FROM tool_calls t WHERE t.run_id = ? "
            "AND t.call_id = ? AND t.result_exchange_id IS NULL AND t.kind = 'function' "
            "AND t.exchange_id < ? ORDER BY t.id LIMIT 1)"
        ),
        [value, exchange_id, at_ms, at_ms, run_id, call_id, exchange_id],
    )


async def _carry_conversation(store: Store, tx: BaseDBAsyncClient, run_id: int) -> None:
    """A Conversations API turn of the moved run appended to the conversation though its
    writer knew none of it (carried 0): its snapshot keeps every entry before it, as an
    append does."""
    rows = await tx.execute_query_dict(
        store.sql(
            "SELECT s.id, s.exchange_id, s.carried, s.appended, e.started_at "
            "FROM memory_snapshots s JOIN exchanges e ON e.id = s.exchange_id WHERE s.run_id = ? "
            "AND s.appended_from IS NULL AND e.endpoint = 'conversations' "
            "ORDER BY e.started_at, e.id"
        ),
        [run_id],
    )
    size = 0
    for n, row in enumerate(rows):
        try:
            added = len(orjson.loads(row["appended"]))
        except (orjson.JSONDecodeError, TypeError):
            added = 0
        carried = int(row["carried"])
        if n > 0 and carried == 0:  # an append placed without its conversation
            carried = size
            await tx.execute_query(
                store.sql("UPDATE memory_snapshots SET carried = ? WHERE id = ?"),
                [carried, row["id"]],
            )
        size = min(carried, size) + added


async def _renumber(store: Store, tx: BaseDBAsyncClient, run_id: int) -> None:
    """The run's steps 0..n-1 in the order its calls started; its step counter n."""
    rows = await tx.execute_query_dict(
        store.sql("SELECT id, step FROM exchanges WHERE run_id = ? ORDER BY started_at, id"),
        [run_id],
    )
    changed = [[n, int(r["id"])] for n, r in enumerate(rows) if r["step"] != n]
    if changed:
        for table, column in (
            ("exchanges", "id"),
            ("messages", "exchange_id"),
            ("tool_calls", "exchange_id"),
            ("memory_snapshots", "exchange_id"),
        ):
            await tx.execute_many(
                store.sql(f"UPDATE {table} SET step = ? WHERE {column} = ?"), changed
            )
    await tx.execute_query(store.sql("UPDATE runs SET steps = ? WHERE id = ?"), [len(rows), run_id])
