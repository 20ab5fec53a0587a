"""The runs half of the store: writing what the grouper decided, and reading runs back.

Kept beside exchanges.py (which owns the connection and the exchange tables) so each file stays
one concern; like exchanges.py, this is the only place that builds run queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from gateway.capture import storable
from gateway.capture.exchange import id_at, new_id
from gateway.runs.grouper import RunChanges
from gateway.store import run_refs
from gateway.store.exchanges import ExchangeFilter, Store, time_bounds
from gateway.store.records import (
    CategoryCost,
    Evaluation,
    MemorySnapshot,
    Message,
    ProviderCost,
    Run,
    RunDetail,
    RunSummary,
    ToolCall,
    iso_time,
)

# A run's totals: added up as its calls are stored, and added together when runs merge.
RUN_TOTALS = (
    "exchange_count",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "total_cost_usd",
    "error_count",
    "unpriced_calls",
)
RUN_COLUMNS = (
    "id",
    "name",
    "agent_id",
    "user",
    "tags",
    "source",
    "started_at",
    "last_seen_at",
    "ended_at",
    "status",
    *RUN_TOTALS,
)
UPSERT_COLUMNS = (
    "id",
    "name",
    "agent_id",
    "user",
    "tags",
    "source",
    "started_at",
    "last_seen_at",
    "last_failed",
    *RUN_TOTALS,
    "config",
    "steps",
)
UPSERT_MARKS = "(" + ", ".join(["?"] * 18) + ", 'running')"
UPSERT_CHUNK = 1000
UPSERT = (
    'INSERT INTO runs (id, name, agent_id, "user", tags, source, started_at, '
    "last_seen_at, last_failed, exchange_count, prompt_tokens, completion_tokens, "
    "total_tokens, total_cost_usd, error_count, unpriced_calls, config, steps, status) "
    "VALUES {} "
    "ON CONFLICT (id) DO UPDATE SET "
    "exchange_count = runs.exchange_count + excluded.exchange_count, "
    "steps = runs.steps + excluded.steps, "
    "prompt_tokens = runs.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = runs.completion_tokens + excluded.completion_tokens, "
    "total_tokens = runs.total_tokens + excluded.total_tokens, "
    "total_cost_usd = runs.total_cost_usd + excluded.total_cost_usd, "
    "error_count = runs.error_count + excluded.error_count, "
    "unpriced_calls = runs.unpriced_calls + excluded.unpriced_calls, "
    "last_failed = CASE WHEN excluded.last_seen_at >= runs.last_seen_at "
    "THEN excluded.last_failed ELSE runs.last_failed END, "
    "last_seen_at = CASE WHEN excluded.last_seen_at >= runs.last_seen_at "
    "THEN excluded.last_seen_at ELSE runs.last_seen_at END, "
    "started_at = CASE WHEN excluded.started_at < runs.started_at "
    "THEN excluded.started_at ELSE runs.started_at END, "
    "agent_id = COALESCE(runs.agent_id, excluded.agent_id), "
    '"user" = COALESCE(runs."user", excluded."user"), '
    "tags = COALESCE(runs.tags, excluded.tags), "
    "config = COALESCE(runs.config, excluded.config), "
    "source = CASE WHEN runs.source = 'single' THEN excluded.source "
    "ELSE runs.source END, "
    "ended_at = NULL, status = 'running' "
    "RETURNING id, steps, name, agent_id"
)
SNAPSHOT_COLUMNS = (
    "run_id",
    "exchange_id",
    "step",
    "taken_at",
    "carried",
    "appended",
    "appended_from",
    "inputs_from",
)
TITLE_CHARS = 80  # an unnamed run's title, at most
RUN_SELECT = ", ".join('r."user"' if c == "user" else f"r.{c}" for c in RUN_COLUMNS)
TOOL_COLUMNS = (
    "id",
    "run_id",
    "exchange_id",
    "step",
    "call_id",
    "tool_name",
    "kind",
    "args",
    "return_value",
    "result_exchange_id",
    "asked_at_ms",
    "latency_ms",
)


@dataclass(frozen=True)
class RunFilter:
    name: str | None = None
    agent_id: str | None = None
    user: str | None = None
    tag: tuple[str, str] | None = None
    status: str | None = None
    errors: bool = False  # only runs with a failed call
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Written:
    """What writing a batch's runs found that may need a merge (gateway/store/merging.py):
    runs inserted again though the grouper knew them (a merged run a writer's memory still
    names), and conversations linked to another run than the batch's (conversation id, this
    batch's run, the linked run)."""

    revived: list[int] = field(default_factory=list)
    split: list[tuple[str, int, int]] = field(default_factory=list)


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _number_steps(changes: list[RunChanges], counts: dict[int, int]) -> None:
    """Each change's step: its run's count before this batch, plus its place in the batch."""
    batch: dict[int, int] = {}
    for change in changes:
        run_id = change.run["id"]
        batch[run_id] = batch.get(run_id, 0) + 1
    taken = {run_id: counts.get(run_id, n) - n for run_id, n in batch.items()}
    for change in changes:
        run_id = change.run["id"]
        step = taken[run_id]
        taken[run_id] = step + 1
        change.exchange["step"] = step
        for row in (*change.messages, *change.tool_calls):
            row["step"] = step
        if change.snapshot is not None:
            change.snapshot["step"] = step


class RunStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._upserts: dict[int, str] = {}  # the runs upsert of n rows, for the database

    def _upsert(self, count: int) -> str:
        """The runs upsert of `count` rows in the database's style (made once: PostgreSQL's
        numbering of 18 marks a row is most of a batch's cost otherwise)."""
        found = self._upserts.get(count)
        if found is None:
            found = self.store.sql(UPSERT.format(", ".join([UPSERT_MARKS] * count)))
            self._upserts[count] = found
        return found

    # -- writing (inside the writer's transaction) -------------------------------------------

    async def write(
        self,
        tx: BaseDBAsyncClient,
        changes: list[RunChanges],
        sources: Mapping[int, run_refs.Sources] | None = None,
        shared: bool = True,
    ) -> Written:
        """Write what the grouper decided; `sources` (by exchange id) are what messages and
        snapshots may point into instead of copying (see run_refs.py). Says which runs may
        have been merged away (gateway/store/merging.py) from what the statements answered;
        `shared`: other writers may link the same conversations (a writer alone on SQLite
        keeps its links in the batch's one hand-off instead of asking)."""
        if not changes:
            return Written()
        sources = sources or {}
        revived = await self._upsert_runs(tx, changes)
        rows = run_refs.run_rows(changes, sources)
        await self._write_messages(tx, rows)
        await self._insert(
            tx, "tool_calls", TOOL_COLUMNS[1:], [t for ch in changes for t in ch.tool_calls]
        )
        await self._write_tool_results(tx, changes)
        await self._write_snapshots(tx, changes, rows)
        split = await self._write_conversation_links(tx, changes, shared)
        return Written(revived, split)

    async def _write_messages(self, tx: BaseDBAsyncClient, rows: run_refs.RunRows) -> None:
        """Insert the messages (run_refs.run_rows left out those read from the exchange)."""
        await self._insert_fitted(tx, "messages", run_refs.WITH_FROM, rows.messages)

    async def _write_tool_results(self, tx: BaseDBAsyncClient, changes: list[RunChanges]) -> None:
        """A tool's result, found in a later call, completes the call that asked for it:
        matched by (run, tool call id, order of appearance), so an id a provider reuses within
        a run pairs its n-th result with its n-th ask, never with a later ask (which would
        take a negative time). The latency is never below 0 (clocks of separate records)."""
        results = storable.rows(
            "tool_calls",
            (
                "return_value",
                "result_exchange_id",
                "latency_ms",
                "latency_ms",
                "run_id",
                "call_id",
                "result_exchange_id",
            ),
            [
                [
                    r["return_value"],
                    r["result_exchange_id"],
                    r["at_ms"],
                    r["at_ms"],
                    r["run_id"],
                    r["call_id"],
                    r["result_exchange_id"],
                ]
                for ch in changes
                for r in ch.tool_results
                if r["call_id"]
            ],
        )
        if results:
            await tx.execute_many(
                self.store.sql(
                    "UPDATE tool_calls SET return_value = ?, result_exchange_id = ?, "
                    "latency_ms = CASE WHEN ? >= asked_at_ms THEN ? - asked_at_ms ELSE 0 END "
                    "WHERE id = (SELECT t.id FROM tool_calls t WHERE t.run_id = ? "
                    "AND t.call_id = ? AND t.result_exchange_id IS NULL AND t.kind = 'function' "
                    "AND t.exchange_id < ? ORDER BY t.id LIMIT 1)"
                ),
                results,
            )

    async def _write_snapshots(
        self, tx: BaseDBAsyncClient, changes: list[RunChanges], rows: run_refs.RunRows
    ) -> None:
        """Insert the snapshots, their appended items and markers as run_refs.run_rows
        decided (one for each change with a snapshot, in order)."""
        store = self.store
        snapshots = storable.rows(
            "memory_snapshots",
            SNAPSHOT_COLUMNS,
            [
                [
                    s["run_id"],
                    s["exchange_id"],
                    s["step"],
                    store._value(s["taken_at"]),
                    s["carried"],
                    *refs,
                ]
                for s, refs in zip(
                    [ch.snapshot for ch in changes if ch.snapshot is not None],
                    rows.snapshots,
                    strict=True,
                )
            ],
        )
        await store.bulk.insert(tx, "memory_snapshots", SNAPSHOT_COLUMNS, snapshots)

    async def _write_conversation_links(
        self, tx: BaseDBAsyncClient, changes: list[RunChanges], shared: bool = True
    ) -> list[tuple[str, int, int]]:
        """Link conversations to runs (the first link stays). Returns the conversations
        linked to another run than this batch's (conversation id, this run, the linked run):
        a turn stored before its start put them in two runs, to merge (merging.py). A link
        that is already there is not written again (the WHERE), so nothing is returned for
        the usual case."""
        links = {cid: rid for ch in changes for cid, rid in ch.conversations}
        if not links:
            return []
        rows = storable.rows(
            "run_conversations", ("conversation_id", "run_id"), [[c, r] for c, r in links.items()]
        )
        if not shared and self.store.dialect == "sqlite":
            await tx.execute_many(
                self.store.sql(
                    "INSERT INTO run_conversations (conversation_id, run_id) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING"
                ),
                rows,
            )
            return []
        ours = {c: r for c, r in rows}
        split = []
        for start in range(0, len(rows), UPSERT_CHUNK):
            chunk = rows[start : start + UPSERT_CHUNK]
            found = await tx.execute_query_dict(
                self.store.sql(
                    "INSERT INTO run_conversations (conversation_id, run_id) VALUES "
                    + ", ".join(["(?, ?)"] * len(chunk))
                    + " ON CONFLICT (conversation_id) DO UPDATE SET "
                    "run_id = run_conversations.run_id "
                    "WHERE run_conversations.run_id <> excluded.run_id "
                    "RETURNING conversation_id, run_id"
                ),
                [value for row in chunk for value in row],
            )
            for row in found:
                cid, linked = row["conversation_id"], int(row["run_id"])
                if linked != ours.get(cid):
                    split.append((cid, int(ours[cid]), linked))
        return split

    async def _insert(
        self,
        tx: BaseDBAsyncClient,
        table: str,
        columns: tuple[str, ...],
        items: list[dict[str, Any]],
    ) -> None:
        """Insert row dicts into `table` in one executemany, their values made storable."""
        if not items:
            return
        rows = storable.rows(table, columns, [[item[c] for c in columns] for item in items])
        await self._insert_fitted(tx, table, columns, rows)

    async def _insert_fitted(
        self, tx: BaseDBAsyncClient, table: str, columns: tuple[str, ...], rows: list[list[Any]]
    ) -> None:
        """Insert rows whose values are storable already, in one executemany (as arrays,
        bulk.py, not measured to help the writer's CPU as for snapshots)."""
        if not rows:
            return
        marks = ", ".join("?" * len(columns))
        await tx.execute_many(
            self.store.sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"), rows
        )

    async def _upsert_runs(self, tx: BaseDBAsyncClient, changes: list[RunChanges]) -> list[int]:
        """Add the batch to its runs' totals (atomically: `x = x + excluded.x`, so writers of
        several replicas never lose or double an update) and number its steps from the count
        the database returns: steps are unique in a run whichever writer stored them."""
        merged: dict[int, dict[str, Any]] = {}
        created: set[int] = set()
        copied: set[int] = set()  # the merged deltas that are copies (a run's first is not)
        for change in changes:
            delta = change.run
            run_id = delta["id"]
            if delta["created"]:
                created.add(run_id)
            seen = merged.get(run_id)
            if seen is None:
                merged[run_id] = delta
                continue
            if run_id not in copied:
                copied.add(run_id)
                seen = merged[run_id] = dict(seen)
            for key in RUN_TOTALS:
                seen[key] += delta[key]
            seen["last_seen_at"], seen["last_failed"] = delta["last_seen_at"], delta["last_failed"]
            if seen["source"] == "single":
                seen["source"] = delta["source"]
            for key in ("agent_id", "user", "tags", "name", "config"):
                seen[key] = seen[key] or delta[key]
        store = self.store
        rows = storable.rows(
            "runs",
            UPSERT_COLUMNS,
            [
                [
                    d["id"],
                    d["name"],
                    d["agent_id"],
                    d["user"],
                    storable.json_text(d["tags"]) if d["tags"] else None,
                    d["source"],
                    (started := store._value(d["started_at"])),
                    started
                    if d["last_seen_at"] is d["started_at"]
                    else store._value(d["last_seen_at"]),
                    store._value(d["last_failed"]),
                    d["exchange_count"],
                    d["prompt_tokens"],
                    d["completion_tokens"],
                    d["total_tokens"],
                    d["total_cost_usd"],
                    d["error_count"],
                    d["unpriced_calls"],
                    storable.json_text(d["config"]) if d["config"] else None,
                    d["exchange_count"],  # as many steps as calls
                ]
                for d in sorted(merged.values(), key=lambda d: d["id"])  # one lock order
            ],
        )
        counts: dict[int, int] = {}
        for start in range(0, len(rows), UPSERT_CHUNK):
            chunk = rows[start : start + UPSERT_CHUNK]
            found = await tx.execute_query_dict(
                self._upsert(len(chunk)),
                [value for row in chunk for value in row],
            )
            counts.update({int(r["id"]): int(r["steps"]) for r in found})
            # the rows as they now are: the rollups' run labels need no look-up of their own
            store.rollups.returned.update({int(r["id"]): (r["name"], r["agent_id"]) for r in found})
        _number_steps(changes, counts)
        # A run the grouper knew (not created here) whose counter holds only this batch's
        # steps was inserted again: it was merged away (or deleted) since the grouper saw it.
        return [
            run_id
            for run_id, delta in merged.items()
            if run_id not in created and counts.get(run_id) == delta["exchange_count"]
        ]

    async def finish_idle(self, cutoff: datetime) -> list[int]:
        """Settle runs with no exchange since `cutoff`: ended, and ok or error."""
        store = self.store
        finished = await store.rows(
            "UPDATE runs SET ended_at = last_seen_at, status = CASE WHEN last_failed "
            "THEN 'error' ELSE 'ok' END WHERE ended_at IS NULL AND last_seen_at < ? "
            "RETURNING id",
            [store._value(cutoff)],
        )
        return [row["id"] for row in finished]

    # -- rebuilding the grouper at start -------------------------------------------------------

    async def recent_threads(self, since: datetime, limit: int) -> list[dict[str, Any]]:
        return await self.store.rows(
            "SELECT id, run_id, parent_id, thread_key, started_at FROM exchanges "
            "WHERE id >= ? AND (thread_key IS NOT NULL OR parent_id IS NOT NULL) "
            "ORDER BY id DESC LIMIT ?",
            [id_at(int(since.timestamp() * 1000)), limit],
        )

    async def open_named_runs(self) -> list[dict[str, Any]]:
        return await self.store.rows(
            "SELECT id, name, last_seen_at, exchange_count FROM runs "
            "WHERE ended_at IS NULL AND name IS NOT NULL"
        )

    async def conversation_links(self, limit: int) -> list[dict[str, Any]]:
        return await self.store.rows(
            "SELECT conversation_id, run_id FROM run_conversations ORDER BY run_id DESC LIMIT ?",
            [limit],
        )

    async def next_step(self, run_id: int) -> int:
        found = await self.store.rows("SELECT exchange_count FROM runs WHERE id = ?", [run_id])
        return int(found[0]["exchange_count"]) if found else 0

    # -- reading ------------------------------------------------------------------------------

    async def list_runs(
        self, f: RunFilter, limit: int, before: int | None
    ) -> tuple[list[Run], int | None]:
        store = self.store
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("name", f.name), ("agent_id", f.agent_id), ('"user"', f.user)):
            if value is not None:
                clauses.append(f"r.{column} = ?")
                params.append(value)
        if f.status == "running":
            clauses.append("r.ended_at IS NULL")
        elif f.status is not None:
            clauses.append("r.status = ?")
            params.append(f.status)
        if f.errors:
            clauses.append("r.error_count > 0")
        time_bounds("r.id", f.since, f.until, clauses, params)
        if before is not None:
            clauses.append("r.id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # A tag filter is checked in Python over the JSON; the page grows until it is full.
        found: list[dict[str, Any]] = []
        cursor = None
        while len(found) <= limit:
            batch = await store.rows(
                f"SELECT {RUN_SELECT} FROM runs r {where}{' AND' if where else ' WHERE'} r.id < ? "
                "ORDER BY r.id DESC LIMIT ?",
                [*params, cursor or 2**63 - 1, limit + 1],
            )
            if not batch:
                break
            cursor = batch[-1]["id"]
            found += [row for row in batch if self._tag_matches(row, f.tag)]
            if len(batch) <= limit or f.tag is None:
                break
        more = len(found) > limit
        found = found[:limit]
        conversations = await self._conversations([row["id"] for row in found])
        titles = await self._titles([row for row in found if not row["name"]])
        items = [
            replace(
                Run.from_row(row, conversations.get(row["id"], [])), title=titles.get(row["id"])
            )
            for row in found
        ]
        return items, (found[-1]["id"] if more else None)

    async def _titles(self, rows: list[dict[str, Any]]) -> dict[int, str]:
        """What unnamed runs were about: their first call's user message (its preview), else
        their agent's id."""
        if not rows:
            return {}
        ids = [row["id"] for row in rows]
        marks = ", ".join("?" * len(ids))
        firsts = await self.store.rows(
            "SELECT run_id, preview FROM exchanges WHERE id IN (SELECT MIN(id) FROM exchanges "
            f"WHERE run_id IN ({marks}) GROUP BY run_id)",
            ids,
        )
        previews = {row["run_id"]: row["preview"] for row in firsts if row["preview"]}
        titles = {}
        for row in rows:
            title = previews.get(row["id"]) or row["agent_id"]
            if title:
                titles[row["id"]] = " ".join(title.split())[:TITLE_CHARS]
        return titles

    @staticmethod
    def _tag_matches(row: dict[str, Any], tag: tuple[str, str] | None) -> bool:
        if tag is None:
            return True
        tags = _loads(row.get("tags")) or {}
        return tags.get(tag[0]) == tag[1]

    async def _conversations(self, run_ids: list[int]) -> dict[int, list[str]]:
        """The conversation ids of some runs, in order."""
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(run_ids))
        links = await self.store.rows(
            f"SELECT conversation_id, run_id FROM run_conversations WHERE run_id IN ({marks}) "
            "ORDER BY conversation_id",
            run_ids,
        )
        by_run: dict[int, list[str]] = {}
        for link in links:
            by_run.setdefault(link["run_id"], []).append(link["conversation_id"])
        return by_run

    async def summaries(self, run_ids: list[int]) -> list[RunSummary]:
        """Runs without their children (for exporters), each with `ends_at`: when its last
        call ended (ended_at is when that call started)."""
        if not run_ids:
            return []
        marks = ", ".join("?" * len(run_ids))
        found = await self.store.rows(
            f"SELECT {RUN_SELECT} FROM runs r WHERE r.id IN ({marks}) ORDER BY r.id", run_ids
        )
        items = []
        for row in found:
            last = await self.store.rows(
                "SELECT started_at, latency_ms FROM exchanges WHERE run_id = ? "
                "ORDER BY id DESC LIMIT 1",
                [row["id"]],
            )
            items.append(RunSummary.read(row, last[0] if last else None))
        return items

    async def get_run(self, run_id: int) -> RunDetail | None:
        store = self.store
        found = await store.rows(
            f"SELECT {RUN_SELECT}, r.config FROM runs r WHERE r.id = ?", [run_id]
        )
        if not found:
            return None
        conversations = await self._conversations([run_id])
        exchanges, _ = await store.list_exchanges(ExchangeFilter(run=run_id), 10_000, None)
        messages = await store.rows(
            "SELECT * FROM messages WHERE run_id = ? ORDER BY step, position", [run_id]
        )
        tools = await store.rows(
            "SELECT * FROM tool_calls WHERE run_id = ? ORDER BY step, id", [run_id]
        )
        snapshots = await store.rows(
            "SELECT * FROM memory_snapshots WHERE run_id = ? ORDER BY step", [run_id]
        )
        messages, snapshots = await run_refs.resolve(store, run_id, messages, snapshots)
        evaluations = await store.rows(
            "SELECT * FROM evaluations WHERE run_id = ? ORDER BY id", [run_id]
        )
        # The LLM's cost beside the tools' (ElevenLabs) cost.
        costs = await store.rows(
            "SELECT provider, COUNT(*) AS calls, COALESCE(SUM(cost_usd), 0) AS cost_usd "
            "FROM exchanges WHERE run_id = ? GROUP BY provider ORDER BY cost_usd DESC",
            [run_id],
        )
        categories = await store.rows(
            "SELECT category, provider, COUNT(*) AS calls, COALESCE(SUM(cost_usd), 0) AS cost_usd "
            "FROM exchanges WHERE run_id = ? GROUP BY category, provider "
            "ORDER BY cost_usd DESC, category, provider",
            [run_id],
        )
        titles = await self._titles([] if found[0]["name"] else found)
        detail = RunDetail.read(
            found[0],
            conversations.get(run_id, []),
            exchanges=sorted(exchanges, key=lambda item: item.id),
            messages=map(Message.from_row, messages),
            tool_calls=map(ToolCall.from_row, tools),
            memory_snapshots=MemorySnapshot.rebuild(snapshots),
            evaluations=map(Evaluation.from_row, evaluations),
            cost_by_provider=map(ProviderCost.from_row, costs),
            cost_by_category=map(CategoryCost.from_row, categories),
        )
        return replace(detail, title=titles.get(run_id))

    async def add_evaluation(
        self,
        run_id: int | None,
        exchange_id: int | None,
        name: str,
        value: float,
        detail: dict[str, Any] | None = None,
    ) -> Evaluation:
        store = self.store
        row = {
            "id": new_id(),
            "run_id": run_id,
            "exchange_id": exchange_id,
            "metric_name": name,
            "metric_value": value,
            "created_at": datetime.now(UTC),
            "detail": detail,
        }
        text = None if detail is None else storable.json_text(detail)
        await store.conn.execute_query(
            store.sql(
                "INSERT INTO evaluations (id, run_id, exchange_id, metric_name, metric_value, "
                "created_at, detail) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            [row["id"], run_id, exchange_id, name, value, store._value(row["created_at"]), text],
        )
        return Evaluation.from_row(row)

    async def names(self, run_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Name, agent and source of some runs (for the exchange list's run column)."""
        ids = sorted(set(run_ids))
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        found = await self.store.rows(
            f"SELECT id, name, agent_id, source FROM runs WHERE id IN ({marks})", ids
        )
        return {row["id"]: row for row in found}

    async def providers(self, run_ids: list[int]) -> dict[int, tuple[str, ...]]:
        """The providers each run's calls went to (sorted): a run span's provider."""
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(run_ids))
        found = await self.store.rows(
            f"SELECT DISTINCT run_id, provider FROM exchanges WHERE run_id IN ({marks})",
            run_ids,
        )
        out: dict[int, list[str]] = {}
        for row in found:
            out.setdefault(int(row["run_id"]), []).append(str(row["provider"]))
        return {run_id: tuple(sorted(names)) for run_id, names in out.items()}

    async def last_exchanges(self, run_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Each run's last exchange (start and latency): where its timeline ends."""
        if not run_ids:
            return {}
        marks = ", ".join("?" * len(run_ids))
        found = await self.store.rows(
            "SELECT run_id, started_at, latency_ms FROM exchanges WHERE id IN "
            f"(SELECT MAX(id) FROM exchanges WHERE run_id IN ({marks}) GROUP BY run_id)",
            run_ids,
        )
        return {
            row["run_id"]: {
                "started_at": iso_time(row["started_at"]),
                "latency_ms": row["latency_ms"],
            }
            for row in found
        }

    async def costliest(
        self, since: datetime | None, until: datetime | None, limit: int = 10
    ) -> list[Run]:
        """The most expensive runs started in a time window."""
        clauses: list[str] = []
        params: list[Any] = []
        time_bounds("r.id", since, until, clauses, params)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        found = await self.store.rows(
            f"SELECT {RUN_SELECT} FROM runs r {where} ORDER BY r.total_cost_usd DESC, r.id DESC "
            "LIMIT ?",
            [*params, limit],
        )
        titles = await self._titles([row for row in found if not row["name"]])
        return [replace(Run.from_row(row), title=titles.get(row["id"])) for row in found]

    async def evaluations_of(self, run_ids: list[int]) -> list[Evaluation]:
        """Run-level evaluations of some runs (the runs list shows them)."""
        if not run_ids:
            return []
        marks = ", ".join("?" * len(run_ids))
        return [
            Evaluation.from_row(row)
            for row in await self.store.rows(
                f"SELECT * FROM evaluations WHERE run_id IN ({marks}) AND exchange_id IS NULL "
                "ORDER BY id",
                run_ids,
            )
        ]

    async def exchange_evaluations(self, exchange_id: int) -> list[Evaluation]:
        return [
            Evaluation.from_row(row)
            for row in await self.store.rows(
                "SELECT * FROM evaluations WHERE exchange_id = ? ORDER BY id", [exchange_id]
            )
        ]

    async def get_run_row(self, run_id: int) -> dict[str, Any] | None:
        found = await self.store.rows("SELECT id FROM runs WHERE id = ?", [run_id])
        return found[0] if found else None

    async def run_ended(self, run_id: int) -> bool:
        """Whether the run has ended (its integrations were told it finished)."""
        found = await self.store.rows("SELECT ended_at FROM runs WHERE id = ?", [run_id])
        return bool(found) and found[0]["ended_at"] is not None

    async def run_of_exchange(self, exchange_id: int) -> tuple[bool, int | None]:
        found = await self.store.rows("SELECT run_id FROM exchanges WHERE id = ?", [exchange_id])
        return (True, found[0]["run_id"]) if found else (False, None)

    async def delete_run(self, run_id: int) -> bool:
        store = self.store
        found = await store.rows("SELECT id FROM runs WHERE id = ?", [run_id])
        if not found:
            return False
        while True:
            ids = [
                r["id"]
                for r in await store.rows(
                    "SELECT id FROM exchanges WHERE run_id = ? LIMIT 500", [run_id]
                )
            ]
            if not ids:
                break
            await store.delete_exchanges(await store.with_calls_about(ids))
        for table in (
            "messages",
            "tool_calls",
            "memory_snapshots",
            "evaluations",
            "run_conversations",
            "run_names",  # a name's next call opens a new run
        ):
            await store.conn.execute_query(
                store.sql(f"DELETE FROM {table} WHERE run_id = ?"), [run_id]
            )
        await store.conn.execute_query(store.sql("DELETE FROM runs WHERE id = ?"), [run_id])
        return True
