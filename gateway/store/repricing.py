"""Re-pricing stored calls from the current price table (`agentops-studio reprice`, and the
start's filling in of calls priced later): each call's cost, then everything summed from it
in the same transaction: its run's `total_cost_usd` and `unpriced_calls`, and the rollups
(which /api/stats and the dashboard read). Only calls the price table prices are touched:
ElevenLabs calls are priced from their credits by their provider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from gateway.capture.exchange import id_at
from gateway.store.rollups import VALUES, Fact, Key, aggregate

if TYPE_CHECKING:
    from gateway.store.exchanges import Store

PriceOf = Callable[..., float | None]  # PriceTable.cost
TABLE_PRICED = ("mistral",)  # providers whose calls the price table prices
BATCH = 1000
_COLUMNS = (
    "e.id, e.model, e.status, e.state, e.prompt_tokens, e.completion_tokens, e.total_tokens, "
    "e.cached_tokens, e.units, e.cost_usd, e.latency_ms, e.provider, e.category, e.run_id, "
    "r.name AS run_name, r.agent_id AS agent"
)


@dataclass(slots=True)
class Repriced:
    """What a re-pricing changed (or, in a dry run, would change)."""

    examined: int = 0
    changed: int = 0
    newly_priced: int = 0  # had no cost, have one now
    newly_unpriced: int = 0  # had a cost, their model has no price now
    cost_before: float = 0.0  # of the changed calls
    cost_after: float = 0.0
    runs: set[int] = field(default_factory=set)  # whose totals change
    models: dict[str, int] = field(default_factory=dict)  # changed calls per model


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-12


def _fact(row: dict[str, Any], cost: float | None) -> Fact:
    return Fact(
        row["id"],
        row["model"],
        row["status"],
        row["state"],
        row["prompt_tokens"],
        row["completion_tokens"],
        row["total_tokens"],
        cost,
        row["latency_ms"],
        row["provider"],
        row["run_name"],
        row["agent"],
        row["category"],
    )


def _unpriced(row: dict[str, Any], cost: float | None) -> int:
    """1 when the call counts as unpriced with this cost (as rollups.deltas counts it)."""
    status = row["status"]
    return int(cost is None and row["model"] is not None and status is not None and status < 400)


async def reprice(
    store: Store,
    price_of: PriceOf,
    model: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    only_unpriced: bool = False,
) -> Repriced:
    """Recompute the cost of stored calls (of `model`, started at or after `since`; only
    those without a cost with `only_unpriced`) and every total that depends on them."""
    out = Repriced()
    after = id_at(int(since.timestamp() * 1000)) - 1 if since is not None else -1
    while True:
        clauses = [
            "e.id > ?",
            f"e.provider IN ({', '.join('?' * len(TABLE_PRICED))})",
            "e.category = 'llm'",  # a fine-tuning job is priced from its job, not its tokens
        ]
        params: list[Any] = [after, *TABLE_PRICED]
        if model is not None:
            clauses.append("e.model = ?")
            params.append(model)
        if only_unpriced:
            clauses.append("e.cost_usd IS NULL")
        rows = await store.rows(
            f"SELECT {_COLUMNS} FROM exchanges e LEFT JOIN runs r ON r.id = e.run_id "
            f"WHERE {' AND '.join(clauses)} ORDER BY e.id LIMIT ?",
            [*params, BATCH],
        )
        if not rows:
            return out
        after = rows[-1]["id"]
        out.examined += len(rows)
        changes = [
            (row, cost) for row in rows if not _same(cost := _cost(row, price_of), row["cost_usd"])
        ]
        for row, cost in changes:
            _count(out, row, cost)
        if changes and not dry_run:
            async with in_transaction("default") as tx:
                await _apply(store, tx, changes)


def _cost(row: dict[str, Any], price_of: PriceOf) -> float | None:
    units = orjson.loads(row["units"]) if row["units"] else None
    return price_of(
        row["model"], row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"], units
    )


def _count(out: Repriced, row: dict[str, Any], cost: float | None) -> None:
    out.changed += 1
    out.newly_priced += int(row["cost_usd"] is None)
    out.newly_unpriced += int(cost is None)
    out.cost_before += row["cost_usd"] or 0.0
    out.cost_after += cost or 0.0
    if row["run_id"] is not None:
        out.runs.add(row["run_id"])
    name = row["model"] or ""
    out.models[name] = out.models.get(name, 0) + 1


async def _apply(
    store: Store, tx: BaseDBAsyncClient, changes: list[tuple[dict[str, Any], float | None]]
) -> None:
    """One batch: the calls' costs, their runs' totals, the rollups (old facts out, new in)."""
    await tx.execute_many(
        store.sql("UPDATE exchanges SET cost_usd = ? WHERE id = ?"),
        [[cost, row["id"]] for row, cost in changes],
    )
    runs: dict[int, list[float]] = {}
    for row, cost in changes:
        if row["run_id"] is not None:
            run = runs.setdefault(row["run_id"], [0.0, 0])
            run[0] += (cost or 0.0) - (row["cost_usd"] or 0.0)
            run[1] += _unpriced(row, cost) - _unpriced(row, row["cost_usd"])
    if runs:
        await tx.execute_many(
            store.sql(
                "UPDATE runs SET total_cost_usd = total_cost_usd + ?, "
                "unpriced_calls = unpriced_calls + ? WHERE id = ?"
            ),
            [[cost, int(unpriced), run_id] for run_id, (cost, unpriced) in runs.items()],
        )
    before = aggregate((_fact(row, row["cost_usd"]) for row, _ in changes), sign=-1)
    now = aggregate(_fact(row, cost) for row, cost in changes)
    sums: dict[Key, list[float]] = {}
    for part in (before, now):
        for key, values in part.items():
            into = sums.setdefault(key, [0.0] * len(VALUES))
            for index, value in enumerate(values):
                into[index] += value
    await store.rollups.apply(tx, sums)


async def set_cost(store: Store, exchange_id: int, cost: float) -> bool:
    """Put `cost` on one stored call (a fine-tuning job's, once it reports its trained tokens)
    with every total summed from it; False when the call is not stored."""
    rows = await store.rows(
        f"SELECT {_COLUMNS} FROM exchanges e LEFT JOIN runs r ON r.id = e.run_id WHERE e.id = ?",
        [exchange_id],
    )
    if not rows:
        return False
    if not _same(rows[0]["cost_usd"], cost):
        async with in_transaction("default") as tx:
            await _apply(store, tx, [(rows[0], cost)])
    return True
