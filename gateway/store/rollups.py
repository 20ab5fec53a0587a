"""Per-hour rollups the dashboard reads instead of scanning exchanges.

One row per (dimension, hour, value): dimension `model` (every exchange; no model counts as
""), `run` (the run's name, when it has one), `agent` (the run's agent id, when it has one),
`provider` (every exchange), `category` (every exchange: llm, tool, fine-tuning) and
`nomodel` (exchanges without a model: "null" or "empty", so
/api/stats can tell a missing model from an empty one). Each row holds counts, tokens, cost,
interrupted calls and a fixed-bucket latency histogram from which percentiles are
interpolated. The writer adds a batch's rows inside its own transaction, aggregated first so
each key costs one upsert per batch; deletes, purges and late pricing subtract or add the
same way, so the rollups always equal a recount of the exchanges table.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tortoise.backends.base.client import BaseDBAsyncClient

from gateway.capture.exchange import id_at

if TYPE_CHECKING:
    from gateway.capture.rows import Rows
    from gateway.store.exchanges import Store

EPOCH_MS = 1_704_067_200_000  # gateway.capture.exchange's id epoch: ids encode their start time
HOUR_MS = 3_600_000
# Upper bounds (ms) of the latency buckets; the last bucket is open-ended.
BOUNDS: tuple[float, ...] = (
    10,
    25,
    50,
    100,
    200,
    300,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    4500,
    6500,
    10000,
    15000,
    25000,
    40000,
    60000,
)
BUCKETS = tuple(f"h{i:02d}" for i in range(len(BOUNDS) + 1))
SUMS = (
    "calls",
    "errors",
    "unpriced",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "latency_count",
    "latency_sum",
    "interrupted",  # calls cut by a kill of the gateway (writer/journal.py): /api/stats' missing
)
VALUES = SUMS + BUCKETS  # the additive columns, in this order everywhere
LABEL_CACHE = 100_000  # runs whose name and agent the writer remembers
_UPSERT_COLUMNS = ("dim", "hour", "value", *VALUES)
_LATENCY = SUMS.index("latency_count")
_INTERRUPTED = SUMS.index("interrupted")


def hour_of(exchange_id: int) -> int:
    """Hours since the Unix epoch of an exchange's start, read from its time-sortable id."""
    return ((exchange_id >> 22) + EPOCH_MS) // HOUR_MS


def hour_sql(column: str) -> str:
    """The same, in SQL that SQLite and PostgreSQL both evaluate with integer arithmetic."""
    return f"((({column}) >> 22) + {EPOCH_MS}) / {HOUR_MS}"


@dataclass(frozen=True, slots=True)
class Fact:
    """What one exchange contributes; `run_name`/`agent` come from its run."""

    id: int
    model: str | None
    status: int | None
    state: str
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost_usd: float | None
    latency_ms: float | None
    provider: str
    run_name: str | None = None
    agent: str | None = None
    category: str = "llm"


def deltas(fact: Fact, sign: int = 1) -> list[tuple[int, float]]:
    """(column index in VALUES, amount) pairs: only what this exchange adds."""
    return _deltas(
        fact.model,
        fact.status,
        fact.state,
        (fact.prompt_tokens, fact.completion_tokens, fact.total_tokens, fact.cost_usd),
        fact.latency_ms,
        sign,
    )


def _deltas(
    model: str | None,
    status: int | None,
    state: str,
    amounts: tuple[int | None, int | None, int | None, float | None],
    latency_ms: float | None,
    sign: int,
) -> list[tuple[int, float]]:
    """`deltas` of an exchange's values; `amounts`: its tokens (prompt, completion, total)
    and cost, VALUES' columns 3 to 6."""
    failed = status is None or status >= 400 or state != "complete"
    # as /api/prices counts them: a model, no cost, an answer below 400
    unpriced = amounts[3] is None and model is not None and status is not None and status < 400
    out: list[tuple[int, float]] = [(0, sign)]
    if failed:
        out.append((1, sign))
    if unpriced:
        out.append((2, sign))
    for index, value in enumerate(amounts, 3):
        if value:
            out.append((index, sign * value))
    if latency_ms is not None:
        out += [
            (_LATENCY, sign),
            (_LATENCY + 1, sign * latency_ms),
            (len(SUMS) + bisect.bisect_right(BOUNDS, latency_ms), sign),
        ]
    if state == "interrupted":
        out.append((_INTERRUPTED, sign))
    return out


Key = tuple[str, int, str]


def keys(
    hour: int,
    model: str | None,
    provider: str,
    run_name: str | None,
    agent: str | None,
    category: str | None = None,
) -> list[Key]:
    """The rows one exchange counts in."""
    out = [
        ("model", hour, model or ""),
        ("provider", hour, provider),
        ("category", hour, category or "llm"),
    ]
    if not model:
        out.append(("nomodel", hour, "null" if model is None else "empty"))
    if run_name:
        out.append(("run", hour, run_name))
    if agent:
        out.append(("agent", hour, agent))
    return out


def aggregate(facts: Iterable[Fact], sign: int = 1) -> dict[Key, list[float]]:
    """Sum facts per (dimension, hour, value): the writer's per-batch work, a few list
    additions per record."""
    out: dict[Key, list[float]] = {}
    for fact in facts:
        hour = hour_of(fact.id)
        labels = (fact.run_name, fact.agent, fact.category)
        _add(out, deltas(fact, sign), keys(hour, fact.model, fact.provider, *labels))
    return out


def _add(out: dict[Key, list[float]], changes: list[tuple[int, float]], into: list[Key]) -> None:
    """Add one exchange's changes to the sums of the rows it counts in."""
    for key in into:
        sums = out.get(key)
        if sums is None:
            sums = out[key] = [0] * len(VALUES)
        for index, amount in changes:
            sums[index] += amount


def percentile(histogram: Sequence[float], q: float) -> float | None:
    """The q-quantile (0-1) interpolated linearly inside its bucket; None with no data.
    In the open last bucket the answer is its lower bound (at least 60 s)."""
    total = sum(histogram)
    if total <= 0:
        return None
    target = q * total
    seen = 0.0
    for index, count in enumerate(histogram):
        if count <= 0:
            continue
        if seen + count >= target:
            low = BOUNDS[index - 1] if index > 0 else 0.0
            if index >= len(BOUNDS):
                return float(low)
            return low + (target - seen) / count * (BOUNDS[index] - low)
        seen += count
    return float(BOUNDS[-1])


EXACT_MAX = 2000  # a group with at most this many timed calls gets exact percentiles


def exact_percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0-1) of sorted `values`, interpolated linearly between the two nearest
    ranks (NumPy's default "linear" method); None with no data."""
    if not values:
        return None
    rank = q * (len(values) - 1)
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


DIMS = ("model", "provider", "nomodel", "run", "agent")  # the 0009 migration's dimensions


def backfill_sql(where: str = "", dims: tuple[str, ...] = DIMS) -> list[str]:
    """INSERT ... SELECT statements that rebuild rollups of `dims` from stored exchanges (the
    0009 migration's rebuild of existing data; 0016's of the category dimension)."""
    buckets = []
    for index, name in enumerate(BUCKETS):
        low = f"e.latency_ms >= {BOUNDS[index - 1]}" if index else "e.latency_ms IS NOT NULL"
        high = f" AND e.latency_ms < {BOUNDS[index]}" if index < len(BOUNDS) else ""
        buckets.append(f"SUM(CASE WHEN {low}{high} THEN 1 ELSE 0 END) AS {name}")
    failed = "(e.status IS NULL OR e.status >= 400 OR e.state <> 'complete')"
    sums = ", ".join(
        [
            "COUNT(*)",
            f"SUM(CASE WHEN {failed} THEN 1 ELSE 0 END)",
            "SUM(CASE WHEN e.cost_usd IS NULL AND e.model IS NOT NULL AND e.status < 400 "
            "THEN 1 ELSE 0 END)",
            "COALESCE(SUM(e.prompt_tokens), 0)",
            "COALESCE(SUM(e.completion_tokens), 0)",
            "COALESCE(SUM(e.total_tokens), 0)",
            "COALESCE(SUM(e.cost_usd), 0)",
            "COUNT(e.latency_ms)",
            "COALESCE(SUM(e.latency_ms), 0)",
            "SUM(CASE WHEN e.state = 'interrupted' THEN 1 ELSE 0 END)",
            *buckets,
        ]
    )
    columns = ", ".join(_UPSERT_COLUMNS)
    statements = []
    for dim, value, condition in (
        ("model", "COALESCE(e.model, '')", ""),
        ("provider", "e.provider", ""),
        (
            "nomodel",
            "CASE WHEN e.model IS NULL THEN 'null' ELSE 'empty' END",
            "(e.model IS NULL OR e.model = '')",
        ),
        ("run", "r.name", "r.name IS NOT NULL AND r.name <> ''"),
        ("agent", "r.agent_id", "r.agent_id IS NOT NULL AND r.agent_id <> ''"),
        ("category", "e.category", ""),
    ):
        if dim not in dims:
            continue
        join = " JOIN runs r ON r.id = e.run_id" if dim in ("run", "agent") else ""
        clauses = [condition] if condition else []
        if where:
            clauses.append(where)
        condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        statements.append(
            f"INSERT INTO rollups ({columns}) SELECT '{dim}', {hour_sql('e.id')}, {value}, "
            f"{sums} FROM exchanges e{join}{condition} GROUP BY {hour_sql('e.id')}, {value}"
        )
    return statements


class Rollups:
    """Reads and writes the rollups table; part of the store (it builds SQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._labels: OrderedDict[int, tuple[str | None, str | None]] = OrderedDict()
        # Labels of the runs the writer's transaction upserted (their RETURNING), for
        # add_rows in that same transaction; emptied when a batch starts and when used
        self.returned: dict[int, tuple[str | None, str | None]] = {}
        marks = ", ".join("?" * len(_UPSERT_COLUMNS))
        updates = ", ".join(f"{c} = rollups.{c} + excluded.{c}" for c in VALUES)
        self._upsert = store.sql(
            f"INSERT INTO rollups ({', '.join(_UPSERT_COLUMNS)}) VALUES ({marks}) "
            f"ON CONFLICT (dim, hour, value) DO UPDATE SET {updates}"
        )

    # -- writing (always inside the caller's transaction) -----------------------------------

    async def apply(self, tx: BaseDBAsyncClient, sums: dict[Key, list[float]]) -> None:
        if sums:
            # In key order: writers of several replicas lock the rows in one order (no deadlock)
            ordered = sorted(sums.items(), key=lambda kv: tuple(map(str, kv[0])))
            await tx.execute_many(self._upsert, [[*key, *values] for key, values in ordered])

    async def labels(
        self, tx: BaseDBAsyncClient, run_ids: set[int]
    ) -> dict[int, tuple[str | None, str | None]]:
        """Each run's name and agent id: the run and agent dimensions' values."""
        if not run_ids:
            return {}
        marks, params = self.store.id_list(list(run_ids))
        _, rows = await tx.execute_query(
            self.store.sql(f"SELECT id, name, agent_id FROM runs WHERE id IN ({marks})"), params
        )
        return {row["id"]: (row["name"], row["agent_id"]) for row in rows}

    async def add_rows(self, tx: BaseDBAsyncClient, batch: list[Rows]) -> None:
        """The writer's batch, already placed in runs and inserted. A run's labels come from
        a cache: its name never changes and its agent only when an exchange brings one, so
        most batches need no look-up at all."""
        stale = set()
        for row in batch:
            run_id = row.exchange["run_id"]
            if run_id is not None and (
                run_id not in self._labels or row.hints.get("agent") or row.parsed.agent_id
            ):
                stale.add(run_id)
        if stale:
            await self._refresh(tx, stale, {row.exchange["id"] for row in batch})
        sums: dict[Key, list[float]] = {}
        labels, none = self._labels, (None, None)
        for row in batch:  # aggregate() of their facts, without making each Fact
            e = row.exchange
            model = e["model"]
            name, agent = labels.get(e["run_id"], none)
            amounts = (e["prompt_tokens"], e["completion_tokens"], e["total_tokens"], e["cost_usd"])
            changes = _deltas(model, e["status"], e["state"], amounts, e["latency_ms"], 1)
            into = keys(hour_of(e["id"]), model, e["provider"], name, agent, e["category"])
            _add(sums, changes, into)
        await self.apply(tx, sums)

    async def _refresh(self, tx: BaseDBAsyncClient, run_ids: set[int], batch_ids: set[int]) -> None:
        returned, self.returned = self.returned, {}
        found = {run_id: returned[run_id] for run_id in run_ids if run_id in returned}
        found.update(await self.labels(tx, run_ids - found.keys()))
        for run_id, (name, agent) in found.items():
            known = self._labels.get(run_id)
            if agent and known is not None and known[1] is None:
                await self._agent_arrived(tx, run_id, agent, batch_ids)
            self._labels[run_id] = (name, agent)
            self._labels.move_to_end(run_id)
        while len(self._labels) > LABEL_CACHE:
            self._labels.popitem(last=False)

    async def _agent_arrived(
        self, tx: BaseDBAsyncClient, run_id: int, agent: str, batch_ids: set[int]
    ) -> None:
        """A run got its agent after some of its exchanges were counted: they count for
        the agent now too (deleting them later subtracts them from it)."""
        _, rows = await tx.execute_query(
            self.store.sql(
                "SELECT id, model, status, state, prompt_tokens, completion_tokens, total_tokens, "
                "cost_usd, latency_ms, provider, category FROM exchanges WHERE run_id = ?"
            ),
            [run_id],
        )
        facts = [Fact(**row, agent=agent) for row in rows if row["id"] not in batch_ids]
        await self.apply(
            tx, {key: sums for key, sums in aggregate(facts).items() if key[0] == "agent"}
        )

    async def remove(self, tx: BaseDBAsyncClient, ids: list[int]) -> None:
        """Subtract exchanges about to be deleted; rows left with no calls go."""
        marks = ", ".join("?" * len(ids))
        _, rows = await tx.execute_query(
            self.store.sql(
                "SELECT e.id, e.model, e.status, e.state, e.prompt_tokens, e.completion_tokens, "
                "e.total_tokens, e.cost_usd, e.latency_ms, e.provider, e.category, "
                "r.name AS run_name, "
                "r.agent_id AS agent FROM exchanges e LEFT JOIN runs r ON r.id = e.run_id "
                f"WHERE e.id IN ({marks})"
            ),
            ids,
        )
        sums = aggregate((Fact(**row) for row in rows), sign=-1)
        await self.apply(tx, sums)
        if sums:
            await tx.execute_many(
                self.store.sql(
                    "DELETE FROM rollups WHERE dim = ? AND hour = ? AND value = ? AND calls <= 0"
                ),
                [list(key) for key in sums],
            )

    async def add_costs(self, tx: BaseDBAsyncClient, priced: list[tuple[int, float]]) -> None:
        """Late pricing (a price added for a model seen unpriced): add the cost, and the
        calls stop counting as unpriced."""
        if not priced:
            return
        ids = [exchange_id for exchange_id, _ in priced]
        cost = dict(priced)
        marks = ", ".join("?" * len(ids))
        _, rows = await tx.execute_query(
            self.store.sql(
                "SELECT e.id, e.model, e.status, e.provider, e.category, r.name, r.agent_id "
                "FROM exchanges e "
                f"LEFT JOIN runs r ON r.id = e.run_id WHERE e.id IN ({marks})"
            ),
            ids,
        )
        sums: dict[Key, list[float]] = {}
        for row in rows:
            hour = hour_of(row["id"])
            labels = (row["name"], row["agent_id"], row["category"])
            for key in keys(hour, row["model"], row["provider"], *labels):
                values = sums.setdefault(key, [0.0] * len(VALUES))
                values[SUMS.index("cost_usd")] += cost[row["id"]]
                if row["status"] is not None and row["status"] < 400:
                    values[SUMS.index("unpriced")] -= 1
        await self.apply(tx, sums)

    # -- reading ----------------------------------------------------------------------------

    async def series(self, since: int, until: int) -> list[dict[str, Any]]:
        """Totals per hour in [since, until) (hours since the epoch), from the model rows."""
        rows = await self.store.rows(
            "SELECT hour, SUM(calls) AS calls, SUM(errors) AS errors, "
            "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
            "SUM(cost_usd) AS cost_usd FROM rollups WHERE dim = 'model' AND hour >= ? "
            "AND hour < ? GROUP BY hour ORDER BY hour",
            [since, until],
        )
        return [_numbers(row) for row in rows]

    async def by_value(
        self, dim: str, since: int, until: int, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """One dimension's values with their sums and histograms, costliest first."""
        sums = ", ".join(f"SUM({c}) AS {c}" for c in VALUES)
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = await self.store.rows(
            f"SELECT value, {sums} FROM rollups WHERE dim = ? AND hour >= ? AND hour < ? "
            f"GROUP BY value ORDER BY SUM(cost_usd) DESC, SUM(calls) DESC{tail}",
            [dim, since, until],
        )
        out = []
        for row in rows:
            item = _numbers(row)
            item["histogram"] = [item.pop(b) for b in BUCKETS]
            item["p50_ms"] = percentile(item["histogram"], 0.5)
            item["p95_ms"] = percentile(item["histogram"], 0.95)
            item["percentiles"] = "histogram"
            item["unpriced_calls"] = item["unpriced"]  # the name runs and /api/stats use
            if dim == "model" and 0 < item["latency_count"] <= EXACT_MAX:
                exact = await self.latencies(item["value"], since, until)
                item["p50_ms"] = exact_percentile(exact, 0.5)
                item["p95_ms"] = exact_percentile(exact, 0.95)
                item["percentiles"] = "exact"
            out.append(item)
        return out

    async def latencies(self, model: str | None, since: int, until: int) -> list[float]:
        """Every latency of calls started in [since, until) (hours since the epoch), sorted;
        of one model's calls ("" for none) unless `model` is None. The (model, id) index
        makes a small group a short range scan."""
        clauses = ["id >= ?", "id < ?", "latency_ms IS NOT NULL"]
        params: list[Any] = [id_at(since * HOUR_MS), id_at(until * HOUR_MS)]
        if model == "":
            clauses.append("(model IS NULL OR model = '')")
        elif model is not None:
            clauses.append("model = ?")
            params.append(model)
        rows = await self.store.rows(
            f"SELECT latency_ms FROM exchanges WHERE {' AND '.join(clauses)} ORDER BY latency_ms",
            params,
        )
        return [float(row["latency_ms"]) for row in rows]

    async def first_hour(self) -> int | None:
        rows = await self.store.rows("SELECT MIN(hour) AS hour FROM rollups WHERE dim = 'model'")
        return int(rows[0]["hour"]) if rows and rows[0]["hour"] is not None else None

    async def models(self) -> list[str]:
        rows = await self.store.rows(
            "SELECT DISTINCT value FROM rollups WHERE dim = 'model' AND value <> '' ORDER BY value"
        )
        return [row["value"] for row in rows]

    async def unpriced(self) -> list[dict[str, Any]]:
        rows = await self.store.rows(
            "SELECT value AS model, SUM(unpriced) AS calls FROM rollups WHERE dim = 'model' "
            "AND value <> '' GROUP BY value HAVING SUM(unpriced) > 0 ORDER BY calls DESC"
        )
        return [{"model": row["model"], "calls": int(row["calls"])} for row in rows]


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("value", "model"):
            out[key] = value
        elif key in ("cost_usd", "latency_sum"):
            out[key] = float(value or 0)
        else:
            out[key] = int(value or 0)
    return out
