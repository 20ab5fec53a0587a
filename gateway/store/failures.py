"""The failures rule, as queries: which recorded calls failed (an error, or an evaluation
under a threshold), and which later calls may hold the answer they should have given.

A failed run is represented by its failing turn: its first call with an error, else its last
chat step (the answer that was judged), never the last successful turn. Calls the gateway's
own tools made (runs of source evaluator, experiment, finetune) and replays never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.capture.exchange import id_at
from gateway.runs.grouper import PURPOSES

if TYPE_CHECKING:
    from gateway.store.exchanges import Store

CHAT = ("chat", "agents")
RETRY_WINDOW_MS = 10 * 60 * 1000  # a retry of a failed call, outside its run, comes soon after
RETRY_CANDIDATES = 50
_OURS = ", ".join(f"'{p}'" for p in PURPOSES)
USERS_CALL = (
    "e.replay_of IS NULL AND (e.run_source IS NULL OR e.run_source NOT IN "
    f"({_OURS})) AND e.endpoint IN ('chat', 'agents')"
)


@dataclass(frozen=True, slots=True)
class FailingCall:
    """One failing request: the exchange, its run and why it counts as failed."""

    exchange_id: int
    run_id: int | None
    reason: str  # "error: ...", "score NAME=V < T", "run score NAME=V < T"


def _since(since: datetime | None) -> int:
    return 0 if since is None else id_at(int(since.timestamp() * 1000))


async def failing_calls(
    store: Store,
    since: datetime | None = None,
    min_score: float | None = None,
    metric: str | None = None,
) -> list[FailingCall]:
    """The failing requests started at or after `since`, oldest first: calls with an error,
    and (with `min_score`) calls or runs with an evaluation (of `metric`, or any) under it."""
    low = _since(since)
    found: dict[int, FailingCall] = {}
    for row in await store.rows(
        f"SELECT e.id, e.run_id, e.error FROM exchanges e WHERE e.id >= ? AND {USERS_CALL} "
        "AND e.error IS NOT NULL ORDER BY e.id",
        [low],
    ):
        found[row["id"]] = FailingCall(row["id"], row["run_id"], f"error: {row['error']}")
    if min_score is not None:
        for call in await _low_scored(store, low, min_score, metric):
            found.setdefault(call.exchange_id, call)
    return sorted(found.values(), key=lambda c: c.exchange_id)


async def _low_scored(
    store: Store, low: int, min_score: float, metric: str | None
) -> list[FailingCall]:
    named = " AND v.metric_name = ?" if metric else ""
    params: list[Any] = [low, min_score, *([metric] if metric else [])]
    out = [
        FailingCall(
            r["id"], r["run_id"], f"score {r['metric_name']}={r['metric_value']:g} < {min_score:g}"
        )
        for r in await store.rows(
            "SELECT e.id, e.run_id, v.metric_name, v.metric_value FROM evaluations v "
            f"JOIN exchanges e ON e.id = v.exchange_id WHERE e.id >= ? AND {USERS_CALL} "
            f"AND v.metric_value < ?{named} ORDER BY e.id",
            params,
        )
    ]
    runs = await store.rows(
        "SELECT v.run_id, v.metric_name, v.metric_value FROM evaluations v "
        f"WHERE v.exchange_id IS NULL AND v.run_id IS NOT NULL AND v.metric_value < ?{named} "
        "ORDER BY v.id",
        [min_score, *([metric] if metric else [])],
    )
    for run in runs:
        turn = await failing_turn(store, run["run_id"], low)
        if turn is not None:
            reason = f"run score {run['metric_name']}={run['metric_value']:g} < {min_score:g}"
            out.append(FailingCall(turn, run["run_id"], reason))
    return out


async def failing_turn(store: Store, run_id: int, low: int = 0) -> int | None:
    """A failed run's failing turn: its first call with an error, else its last chat step."""
    for clause, order in (("e.error IS NOT NULL", "e.id"), ("e.error IS NULL", "e.id DESC")):
        rows = await store.rows(
            f"SELECT e.id FROM exchanges e WHERE e.run_id = ? AND e.id >= ? AND {USERS_CALL} "
            f"AND {clause} ORDER BY {order} LIMIT 1",
            [run_id, low],
        )
        if rows:
            return int(rows[0]["id"])
    return None


async def later_answers(
    store: Store, call: FailingCall, min_score: float | None = None
) -> list[int]:
    """Calls after `call` that may be its retry (same run, or the same key soon after),
    answered without an error nor an evaluation under `min_score`: the export compares their
    messages to find the expected output."""
    rows = await store.rows(
        "SELECT e.run_id, e.key_fingerprint FROM exchanges e WHERE e.id = ?", [call.exchange_id]
    )
    if not rows:
        return []
    key = rows[0]["key_fingerprint"]
    high = call.exchange_id + (RETRY_WINDOW_MS << 22)  # ids are time-sortable: see id_at
    scored, params = "", []
    if min_score is not None:
        scored = (
            " AND NOT EXISTS (SELECT 1 FROM evaluations v WHERE v.exchange_id = e.id "
            "AND v.metric_value < ?)"
        )
        params = [min_score]
    answers = await store.rows(
        f"SELECT e.id FROM exchanges e WHERE e.id > ? AND {USERS_CALL} AND e.error IS NULL "
        "AND e.status = 200 AND ((e.run_id IS NOT NULL AND e.run_id = ?) "
        f"OR (e.id < ? AND e.key_fingerprint = ?)){scored} ORDER BY e.id LIMIT ?",
        [call.exchange_id, rows[0]["run_id"], high, key, *params, RETRY_CANDIDATES],
    )
    return [int(r["id"]) for r in answers]
