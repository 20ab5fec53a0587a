"""The export half of the store: keyset-paged reads of exchanges (with bodies) and runs, so an
export walks a large database in batches instead of loading it.

Kept beside exchanges.py and runs.py (like them, a place that builds queries) so the export
command does not grow the store's hot-path module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway.store.bodies import BODY_SELECT
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.records import RunSummary, StoredExchange
from gateway.store.runs import RunStore

FAILED_EXCHANGE = "(e.status >= 400 OR e.status IS NULL OR e.state <> 'complete')"


@dataclass(frozen=True)
class Failures:
    """The "failures" preset: errored calls and runs, or an evaluation scored below a bound
    (optionally of one metric only)."""

    score_below: float = 0.5
    metric: str | None = None

    def low_scores(self, column: str) -> tuple[str, list[Any]]:
        metric = " AND metric_name = ?" if self.metric else ""
        params: list[Any] = [self.score_below, *([self.metric] if self.metric else [])]
        return (
            f"SELECT {column} FROM evaluations WHERE metric_value < ?{metric} "
            f"AND {column} IS NOT NULL"
        ), params


@dataclass(frozen=True, slots=True)
class ExportRun:
    """A run as the export writes it: its row, its scores (the latest value of each metric)
    and the exchange that holds its final conversation."""

    run: RunSummary
    evaluations: dict[str, float]
    final_exchange: StoredExchange | None


class ExportReader:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.runs = RunStore(store)

    def _exchange_where(
        self, f: ExchangeFilter, failures: Failures | None
    ) -> tuple[list[str], list[Any]]:
        clauses, params = self.store._where(f)
        if failures is not None:
            run_scores, run_params = failures.low_scores("run_id")
            exchange_scores, exchange_params = failures.low_scores("exchange_id")
            clauses.append(
                f"({FAILED_EXCHANGE} OR e.run_id IN (SELECT id FROM runs WHERE status = 'error')"
                f" OR e.run_id IN ({run_scores}) OR e.id IN ({exchange_scores}))"
            )
            params += run_params + exchange_params
        return clauses, params

    async def exchanges(
        self, f: ExchangeFilter, failures: Failures | None = None, batch_size: int = 100
    ) -> AsyncIterator[list[StoredExchange]]:
        """Matching exchanges with their bodies, oldest first, `batch_size` at a time."""
        clauses, params = self._exchange_where(f, failures)
        after = -1
        while True:
            where = " AND ".join([*clauses, "e.id > ?"])
            found = await self.store.rows(
                f"SELECT e.*, {BODY_SELECT} FROM exchanges e "
                f"LEFT JOIN exchange_bodies b ON b.exchange_id = e.id "
                f"WHERE {where} ORDER BY e.id LIMIT ?",
                [*params, after, batch_size],
            )
            if not found:
                return
            after = found[-1]["id"]
            yield [StoredExchange.from_row(row) for row in await self.store.read_bodies(found)]

    async def run_ids(
        self, f: ExchangeFilter, failures: Failures | None = None, batch_size: int = 500
    ) -> AsyncIterator[list[int]]:
        """Runs that hold a matching exchange (and, with the preset, that failed or scored
        low), oldest first."""
        clauses, params = self.store._where(f)
        run_clauses: list[str] = []
        run_params: list[Any] = []
        if clauses:
            run_clauses.append(
                f"r.id IN (SELECT e.run_id FROM exchanges e WHERE {' AND '.join(clauses)})"
            )
            run_params += params
        if failures is not None:
            scores, score_params = failures.low_scores("run_id")
            run_clauses.append(f"(r.status = 'error' OR r.id IN ({scores}))")
            run_params += score_params
        after = -1
        while True:
            where = " AND ".join([*run_clauses, "r.id > ?"])
            found = await self.store.rows(
                f"SELECT r.id FROM runs r WHERE {where} ORDER BY r.id LIMIT ?",
                [*run_params, after, batch_size],
            )
            if not found:
                return
            after = found[-1]["id"]
            yield [row["id"] for row in found]

    async def run_records(self, run_ids: list[int]) -> list[ExportRun]:
        """Runs with their evaluations and the exchange that holds their final conversation
        (the last call with a reply; a tool loop's last request carries the whole history)."""
        out = []
        for run in await self.runs.summaries(run_ids):
            evaluations = {
                str(row["metric_name"]): float(row["metric_value"])
                for row in await self.store.rows(
                    "SELECT metric_name, metric_value FROM evaluations "
                    "WHERE run_id = ? ORDER BY id",
                    [run.id],
                )
            }
            last = await self.store.rows(
                f"SELECT e.*, {BODY_SELECT} FROM exchanges e "
                "LEFT JOIN exchange_bodies b ON b.exchange_id = e.id WHERE e.run_id = ? "
                "ORDER BY CASE WHEN e.status >= 400 OR e.status IS NULL "
                "OR e.state <> 'complete' THEN 2 WHEN e.endpoint IN ('chat', 'agents') THEN 0 "
                "ELSE 1 END, e.id DESC LIMIT 1",
                [run.id],
            )
            last = await self.store.read_bodies(last)
            final = StoredExchange.from_row(last[0]) if last else None
            out.append(ExportRun(run, evaluations, final))
        return out
