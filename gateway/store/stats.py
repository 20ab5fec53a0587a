"""/api/stats: totals, per model and per provider, over any time range, in one statement that
reads the per-hour rollups for the whole hours inside the range and the exchanges table only
for the partial hours at its edges (an id range each: ids are time-sortable).

The rollups count exactly what a recount of the exchanges would (gateway/store/rollups.py),
so the answer is the one a GROUP BY over every row in the range gives, at any table size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.capture.exchange import id_at
from gateway.store.rollups import HOUR_MS, hour_of

if TYPE_CHECKING:
    from gateway.store.exchanges import Store

IdRange = tuple[int | None, int | None]  # [low, high) of exchange ids; None: unbounded
CATEGORIES = ("llm", "tool", "fine-tuning")  # what a cost is for (exchanges.category)
NO_MODEL = {"null": None, "empty": ""}  # the nomodel dimension's values: which "no model"
_SUMS = (
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "errors",
    "missing_calls",
    "unpriced_calls",
)  # the JSON's keys, in its order


@dataclass(frozen=True, slots=True)
class Span:
    """How an id range is counted: rollups for `hours` ([first, end) in hours since the
    epoch, None when no whole hour fits) and exchange rows for the `edges`."""

    hours: IdRange | None
    edges: tuple[IdRange, ...]


def hour_start(hour: int) -> int:
    """The first exchange id of an hour (hours since the Unix epoch)."""
    return id_at(hour * HOUR_MS)


def split(low: int | None, high: int | None) -> Span:
    """Whole hours inside [low, high) go to the rollups; what is left at either end (less
    than an hour each) is read row by row."""
    if low is not None and high is not None and low >= high:
        return Span(None, ())
    first = None if low is None else hour_of(low) + (hour_start(hour_of(low)) != low)
    end = None if high is None else hour_of(high)
    if first is not None and end is not None and first >= end:
        return Span(None, ((low, high),))
    edges = []
    if first is not None and low is not None and low < hour_start(first):
        edges.append((low, hour_start(first)))
    if end is not None and high is not None and hour_start(end) < high:
        edges.append((hour_start(end), high))
    return Span((first, end), tuple(edges))


def id_range(since: datetime | None, until: datetime | None) -> IdRange:
    """The ids /api/stats counts: started at or after `since`, at or before `until` (to the
    millisecond), as exchanges.time_bounds filters them."""
    low = None if since is None else id_at(int(since.timestamp() * 1000))
    high = None if until is None else id_at(int(until.timestamp() * 1000) + 1)
    return low, high


@dataclass(slots=True)
class Sums:
    """One group's totals, summed from rollup rows and edge rows alike."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    missing_calls: int = 0
    unpriced_calls: int = 0  # calls of a model with no price: not in cost_usd, never $0

    def add(self, row: dict[str, Any]) -> None:
        self.calls += int(row["calls"] or 0)
        self.prompt_tokens += int(row["prompt_tokens"] or 0)
        self.completion_tokens += int(row["completion_tokens"] or 0)
        self.cost_usd += float(row["cost_usd"] or 0)
        self.errors += int(row["errors"] or 0)
        self.missing_calls += int(row["missing_calls"] or 0)
        self.unpriced_calls += int(row["unpriced_calls"] or 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 10) + 0.0,  # + 0.0: never -0.0 from drift
            "errors": self.errors,
            "missing_calls": self.missing_calls,
            "unpriced_calls": self.unpriced_calls,
        }


def _rollup_part(span: Span, params: list[Any]) -> list[str]:
    if span.hours is None:
        return []
    clauses = ["dim IN ('model', 'provider', 'nomodel', 'category')"]
    first, end = span.hours
    if first is not None:
        clauses.append("hour >= ?")
        params.append(first)
    if end is not None:
        clauses.append("hour < ?")
        params.append(end)
    return [
        "SELECT dim AS kind, value AS model, NULL AS provider, NULL AS category, "
        "SUM(calls) AS calls, "
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
        "SUM(cost_usd) AS cost_usd, SUM(errors) AS errors, SUM(interrupted) AS missing_calls, "
        "SUM(unpriced) AS unpriced_calls "
        f"FROM rollups WHERE {' AND '.join(clauses)} GROUP BY dim, value"
    ]


def _edge_part(edge: IdRange, params: list[Any]) -> str:
    clauses = []
    low, high = edge
    if low is not None:
        clauses.append("e.id >= ?")
        params.append(low)
    if high is not None:
        clauses.append("e.id < ?")
        params.append(high)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return (
        "SELECT 'row' AS kind, e.model AS model, e.provider AS provider, "
        "e.category AS category, COUNT(*) AS calls, "
        "COALESCE(SUM(e.prompt_tokens), 0) AS prompt_tokens, "
        "COALESCE(SUM(e.completion_tokens), 0) AS completion_tokens, "
        "COALESCE(SUM(e.cost_usd), 0) AS cost_usd, "
        "SUM(CASE WHEN e.status >= 400 OR e.status IS NULL OR e.state <> 'complete' "
        "THEN 1 ELSE 0 END) AS errors, "
        # calls cut by a kill of the gateway (journal.py): known only by their start
        "SUM(CASE WHEN e.state = 'interrupted' THEN 1 ELSE 0 END) AS missing_calls, "
        # as the rollups count them (rollups.deltas)
        "SUM(CASE WHEN e.cost_usd IS NULL AND e.model IS NOT NULL AND e.status < 400 "
        "THEN 1 ELSE 0 END) AS unpriced_calls "
        f"FROM exchanges e {where} GROUP BY e.model, e.provider, e.category"
    )


def statement(span: Span) -> tuple[str, list[Any]]:
    """One statement (one snapshot: a batch committed meanwhile is counted whole or not at
    all) whose rows are rollup groups (`kind` is the dimension) and edge groups (`row`)."""
    params: list[Any] = []
    parts = _rollup_part(span, params) + [_edge_part(edge, params) for edge in span.edges]
    return " UNION ALL ".join(parts), params


def combine(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON: totals, then groups costliest first (ties: more calls, then by name)."""
    totals = Sums()
    models: dict[str | None, Sums] = {}
    providers: dict[str | None, Sums] = {}
    costs = dict.fromkeys(CATEGORIES, 0.0)
    for row in rows:
        kind = row["kind"]
        if kind == "category":
            costs[row["model"]] = costs.get(row["model"], 0.0) + float(row["cost_usd"] or 0)
        elif kind == "model":
            if row["model"]:  # "" is both no-model kinds: the nomodel rows tell them apart
                models.setdefault(row["model"], Sums()).add(row)
        elif kind == "nomodel":
            models.setdefault(NO_MODEL[row["model"]], Sums()).add(row)
        elif kind == "provider":
            totals.add(row)
            providers.setdefault(row["model"], Sums()).add(row)
        else:  # an edge group
            totals.add(row)
            models.setdefault(row["model"], Sums()).add(row)
            providers.setdefault(row["provider"], Sums()).add(row)
            category = row["category"] or "llm"
            costs[category] = costs.get(category, 0.0) + float(row["cost_usd"] or 0)
    return {
        "totals": {
            **totals.as_json(),
            "cost_by_category": {k: round(v, 10) + 0.0 for k, v in costs.items()},
        },
        "by_model": _groups("model", models),
        "by_provider": _groups("provider", providers),
    }


def _groups(key: str, groups: dict[str | None, Sums]) -> list[dict[str, Any]]:
    items = [{key: name, **sums.as_json()} for name, sums in groups.items()]
    items.sort(key=lambda i: (-i["cost_usd"], -i["calls"], i[key] is not None, i[key] or ""))
    return items


async def read_stats(
    store: Store, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    """/api/stats' answer for calls started in [since, until] (either may be open)."""
    span = split(*id_range(since, until))
    if span.hours is None and not span.edges:
        return combine([])
    text, params = statement(span)
    return combine(await store.rows(text, params))


def by_category(costs: dict[str, float], storage_usd: float) -> list[dict[str, Any]]:
    """Cost per category, in CATEGORIES' order: the calls' cost (`cost_by_category`) plus, for
    fine-tuning, the storage fee its models accrued (`storage_usd`, not a call's cost)."""
    groups = []
    for category in (*CATEGORIES, *sorted(set(costs) - set(CATEGORIES))):
        calls = costs.get(category, 0.0)
        storage = storage_usd if category == "fine-tuning" else 0.0
        groups.append(
            {
                "category": category,
                "cost_usd": round(calls + storage, 10) + 0.0,
                "calls_usd": calls,
                "storage_usd": storage,
            }
        )
    return groups
