"""The replay half of the store: diffs, experiments and their rows, and the recorded history a
replay needs (a conversation's start and its entries so far).

Kept beside exchanges.py and runs.py, in the same way: the only place that builds replay
queries.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from tortoise.transactions import in_transaction

from gateway.capture.exchange import new_id
from gateway.store import run_refs
from gateway.store.bodies import BODY_SELECT
from gateway.store.exchanges import Store
from gateway.store.records import MemorySnapshot, iso_time, iso_z

ROW_METRICS = (
    "similarity",
    "identical",
    "tool_calls_before",
    "tool_calls_differing",
    "tokens_before",
    "tokens_after",
    "cost_before",
    "cost_after",
    "latency_before",
    "latency_after",
    "output_hash",
)


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class ReplayStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- diffs ------------------------------------------------------------------------------

    async def save_diff(self, diff: dict[str, Any], run_id: int | None = None) -> dict[str, Any]:
        store = self.store
        diff_id = new_id()
        created = datetime.now(UTC)
        extra = {k: diff[k] for k in ("ops", "tool_calls", "deltas")}
        await store.conn.execute_query(
            store.sql(
                "INSERT INTO diffs (id, a, b, run_id, created_at, identical, similarity, "
                "parameter_changed, before_output, after_output, diff_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            [
                diff_id,
                int(diff["a"]),
                int(diff["b"]),
                run_id,
                store._value(created),
                store._value(bool(diff["identical"])),
                diff["similarity"],
                _dumps(diff["parameter_changed"]),
                diff["before_output"],
                diff["after_output"],
                _dumps(extra),
            ],
        )
        return {
            "id": str(diff_id),
            "run_id": str(run_id) if run_id else None,
            "created_at": iso_z(created),
            **diff,
        }

    async def get_diff(self, diff_id: int) -> dict[str, Any] | None:
        found = await self.store.rows("SELECT * FROM diffs WHERE id = ?", [diff_id])
        if not found:
            return None
        row = found[0]
        extra = _loads(row["diff_json"]) or {}
        return {
            "id": str(row["id"]),
            "run_id": str(row["run_id"]) if row["run_id"] else None,
            "created_at": iso_time(row["created_at"]),
            "a": str(row["a"]),
            "b": str(row["b"]),
            "parameter_changed": _loads(row["parameter_changed"]),
            "before_output": row["before_output"] or "",
            "after_output": row["after_output"] or "",
            "identical": bool(row["identical"]),
            "similarity": row["similarity"],
            "ops": extra.get("ops", []),
            "tool_calls": extra.get("tool_calls", {}),
            "deltas": extra.get("deltas", {}),
        }

    # -- what a conversation replay needs ------------------------------------------------------

    async def conversation_history(self, exchange_id: int) -> tuple[Any, list[Any] | None]:
        """(the recorded start request of the exchange's conversation run, the entries that
        came before this exchange), from the run's memory snapshots."""
        store = self.store
        found = await store.rows("SELECT run_id, step FROM exchanges WHERE id = ?", [exchange_id])
        if not found or found[0]["run_id"] is None:
            return None, None
        run_id, step = found[0]["run_id"], found[0]["step"]
        snapshots = await store.rows(
            "SELECT * FROM memory_snapshots WHERE run_id = ? AND step <= ? ORDER BY step",
            [run_id, step],
        )
        if any(s["appended_from"] for s in snapshots):
            messages = await store.rows(
                "SELECT * FROM messages WHERE run_id = ? AND step <= ? ORDER BY step, position",
                [run_id, step],
            )
            _, snapshots = await run_refs.resolve(store, run_id, messages, snapshots)
        history = None
        for snapshot in MemorySnapshot.rebuild(snapshots):
            if snapshot.exchange_id == exchange_id:
                history = list(snapshot.state[: snapshot.carried])
        starts = await store.rows(
            f"SELECT e.id, {BODY_SELECT} FROM exchanges e JOIN exchange_bodies b "
            "ON b.exchange_id = e.id WHERE e.run_id = ? AND e.path = '/v1/conversations' "
            "AND e.method = 'POST' AND b.request_body_encoding = 'json' AND e.id <= ? "
            "ORDER BY e.id LIMIT 1",
            [run_id, exchange_id],
        )
        starts = await store.read_bodies(starts)
        start = _loads(starts[0]["request_body"]) if starts else None
        return start, history

    # -- experiments ----------------------------------------------------------------------------

    async def create_experiment(
        self,
        selection: dict[str, Any],
        overrides: dict[str, Any],
        repeat: int,
        concurrency: int,
        rows: list[dict[str, Any]],
    ) -> int:
        store = self.store
        experiment_id = new_id()
        async with in_transaction("default") as tx:
            await tx.execute_query(
                store.sql(
                    "INSERT INTO experiments (id, created_at, status, selection, overrides, "
                    "repeat, concurrency, total) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)"
                ),
                [
                    experiment_id,
                    store._value(datetime.now(UTC)),
                    _dumps(selection),
                    _dumps(overrides),
                    repeat,
                    concurrency,
                    len(rows),
                ],
            )
            await tx.execute_many(
                store.sql(
                    "INSERT INTO experiment_rows (experiment_id, position, repeat_index, "
                    "exchange_id, status, error) VALUES (?, ?, ?, ?, ?, ?)"
                ),
                [
                    [
                        experiment_id,
                        r["position"],
                        r["repeat_index"],
                        r["exchange_id"],
                        r["status"],
                        r.get("error"),
                    ]
                    for r in rows
                ],
            )
        return experiment_id

    async def pending_rows(self, experiment_id: int) -> list[dict[str, Any]]:
        return await self.store.rows(
            "SELECT id, position, repeat_index, exchange_id FROM experiment_rows "
            "WHERE experiment_id = ? AND status = 'pending' ORDER BY position, repeat_index",
            [experiment_id],
        )

    async def finish_row(
        self,
        row_id: int,
        status: str,
        *,
        error: str | None = None,
        replay_id: int | None = None,
        diff_id: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        store = self.store
        metrics = metrics or {}
        values = [store._value(metrics.get(k)) for k in ROW_METRICS]
        await store.conn.execute_query(
            store.sql(
                "UPDATE experiment_rows SET status = ?, error = ?, replay_id = ?, diff_id = ?, "
                + ", ".join(f"{k} = ?" for k in ROW_METRICS)
                + " WHERE id = ?"
            ),
            [status, error, replay_id, diff_id, *values, row_id],
        )

    async def finish_experiment(self, experiment_id: int, status: str) -> None:
        store = self.store
        await store.conn.execute_query(
            store.sql("UPDATE experiments SET status = ?, finished_at = ? WHERE id = ?"),
            [status, store._value(datetime.now(UTC)), experiment_id],
        )

    async def interrupt_running(self) -> int:
        """Experiments left running by a previous process cannot finish: say so."""
        store = self.store
        found = await store.rows(
            "UPDATE experiments SET status = 'interrupted', finished_at = ? "
            "WHERE status = 'running' RETURNING id",
            [store._value(datetime.now(UTC))],
        )
        return len(found)

    async def get_experiment(self, experiment_id: int) -> dict[str, Any] | None:
        store = self.store
        found = await store.rows("SELECT * FROM experiments WHERE id = ?", [experiment_id])
        if not found:
            return None
        row = found[0]
        rows = await store.rows(
            "SELECT * FROM experiment_rows WHERE experiment_id = ? ORDER BY position, repeat_index",
            [experiment_id],
        )
        return {
            "id": str(row["id"]),
            "status": row["status"],
            "created_at": iso_time(row["created_at"]),
            "finished_at": iso_time(row["finished_at"]),
            "selection": _loads(row["selection"]),
            "overrides": _loads(row["overrides"]),
            "repeat": row["repeat"],
            "concurrency": row["concurrency"],
            "total": row["total"],
            "rows": [self._row(r) for r in rows],
        }

    async def list_experiments(self, limit: int) -> list[dict[str, Any]]:
        found = await self.store.rows(
            "SELECT x.id, x.created_at, x.finished_at, x.status, x.total, x.repeat, "
            "x.overrides, (SELECT COUNT(*) FROM experiment_rows r WHERE r.experiment_id = x.id "
            "AND r.status <> 'pending') AS done FROM experiments x ORDER BY x.id DESC LIMIT ?",
            [limit],
        )
        return [
            {
                "id": str(r["id"]),
                "created_at": iso_time(r["created_at"]),
                "finished_at": iso_time(r["finished_at"]),
                "status": r["status"],
                "total": r["total"],
                "done": int(r["done"]),
                "repeat": r["repeat"],
                "overrides": _loads(r["overrides"]),
            }
            for r in found
        ]

    @staticmethod
    def _row(row: dict[str, Any]) -> dict[str, Any]:
        out = {
            "position": row["position"],
            "repeat_index": row["repeat_index"],
            "exchange_id": str(row["exchange_id"]),
            "status": row["status"],
            "error": row["error"],
            "replay_id": str(row["replay_id"]) if row["replay_id"] else None,
            "diff_id": str(row["diff_id"]) if row["diff_id"] else None,
        }
        for key in ROW_METRICS:
            out[key] = row[key]
        if out["identical"] is not None:
            out["identical"] = bool(out["identical"])
        return out

    # -- experiments over datasets (gateway/replay/dataset_experiments.py) ------------------

    async def unfinished_dataset_experiments(self) -> list[int]:
        """Dataset experiments a stopped gateway left with rows still to send."""
        found = await self.store.rows(
            "SELECT x.id, x.selection FROM experiments x WHERE x.status IN "
            "('running', 'interrupted') AND EXISTS (SELECT 1 FROM experiment_rows r "
            "WHERE r.experiment_id = x.id AND r.status = 'pending') ORDER BY x.id",
            [],
        )
        return [int(r["id"]) for r in found if "dataset_id" in (_loads(r["selection"]) or {})]

    async def experiment_scores(self, exchange_ids: list[int]) -> dict[int, dict[str, float]]:
        """The evaluations of some calls, as {exchange id: {scorer: value}}."""
        out: dict[int, dict[str, float]] = {}
        for start in range(0, len(exchange_ids), 500):
            chunk = exchange_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in await self.store.rows(
                "SELECT exchange_id, metric_name, metric_value FROM evaluations "
                f"WHERE exchange_id IN ({marks}) ORDER BY id",
                chunk,
            ):
                out.setdefault(int(row["exchange_id"]), {})[row["metric_name"]] = row[
                    "metric_value"
                ]
        return out
