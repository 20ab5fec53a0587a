"""Alert rules and alerts in the database, and the cheap measures rules are evaluated on.

Opening and resolving an alert are single statements that only one process can win: an
open alert holds its rule's id in a unique column (`open_rule`), so replicas evaluating the
same rule at once open one alert, and the one whose statement took effect sends the notice.
Measures read the exchanges of one window by id range (ids are time-sortable), so a window
of minutes is a short primary-key range scan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.capture.exchange import id_at
from gateway.store.stats import IdRange, split

if TYPE_CHECKING:
    from gateway.store.exchanges import Store

# A new kind: add it to KINDS, give it a measure in gateway/integrations/alerts.py (MEASURES).
KINDS = (
    "spend",
    "spend_spike",
    "error_rate",
    "p95_latency",
    "unpriced_model",
    "capture_loss",
    "budget",  # a budget's 80% and 100% crossings (gateway/integrations/alerts.py)
)
SCOPES = ("gateway", "model", "agent", "run", "budget")  # run: the run's name; budget: its name
FAILED_SQL = "(e.status IS NULL OR e.status >= 400 OR e.state <> 'complete')"
UNPRICED_SQL = "(e.cost_usd IS NULL AND e.model IS NOT NULL AND e.status < 400)"
# The rollup dimension that counts a scope's calls once each (gateway: every call has a provider)
DIMS = {"gateway": "provider", "model": "model", "agent": "agent", "run": "run"}
RULE_COLUMNS = (
    "name",
    "kind",
    "scope_kind",
    "scope_value",
    "window_seconds",
    "threshold",
    "baseline_windows",
    "min_calls",
    "webhook_url",
    "webhook_format",
    "enabled",
)


@dataclass(frozen=True, slots=True)
class AlertRule:
    """A rule as stored; `id` is 0 until it is."""

    name: str
    kind: str
    window_seconds: int
    threshold: float
    scope_kind: str = "gateway"
    scope_value: str | None = None
    baseline_windows: int = 24
    min_calls: int = 1
    webhook_url: str | None = None
    webhook_format: str = "json"
    enabled: bool = True
    id: int = 0
    created_at: datetime | None = None

    def with_id(self, rule_id: int, created_at: datetime) -> AlertRule:
        return replace(self, id=rule_id, created_at=created_at)


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    rule_id: int
    state: str  # firing, resolved
    started_at: datetime
    resolved_at: datetime | None
    value: float
    threshold: float
    detail: str | None = None
    rule_name: str | None = None  # None once its rule was deleted

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),  # strings, as every id in the API
            "rule": str(self.rule_id),
            "rule_name": self.rule_name,
            "state": self.state,
            "started_at": self.started_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Window:
    """A scope's calls in one window of time."""

    calls: int
    errors: int
    cost_usd: float
    latency_count: int = 0

    def __add__(self, other: Window) -> Window:
        return Window(
            self.calls + other.calls,
            self.errors + other.errors,
            self.cost_usd + other.cost_usd,
            self.latency_count + other.latency_count,
        )


def as_time(value: Any) -> datetime:
    """A stored time (SQLite gives text, PostgreSQL a datetime) as an aware datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _rule(row: dict[str, Any]) -> AlertRule:
    return AlertRule(
        id=int(row["id"]),
        name=row["name"],
        kind=row["kind"],
        scope_kind=row["scope_kind"],
        scope_value=row["scope_value"],
        window_seconds=int(row["window_seconds"]),
        threshold=float(row["threshold"]),
        baseline_windows=int(row["baseline_windows"]),
        min_calls=int(row["min_calls"]),
        webhook_url=row["webhook_url"],
        webhook_format=row["webhook_format"],
        enabled=bool(row["enabled"]),
        created_at=as_time(row["created_at"]),
    )


def _alert(row: dict[str, Any]) -> Alert:
    return Alert(
        id=int(row["id"]),
        rule_id=int(row["rule_id"]),
        state=row["state"],
        started_at=as_time(row["started_at"]),
        resolved_at=as_time(row["resolved_at"]) if row["resolved_at"] is not None else None,
        value=float(row["value"]),
        threshold=float(row["threshold"]),
        detail=row["detail"],
        rule_name=row.get("rule_name"),
    )


class AlertStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _time(self, value: datetime) -> Any:
        return value.isoformat(sep=" ") if self.store.dialect == "sqlite" else value

    # -- rules ------------------------------------------------------------------------------

    def _values(self, rule: AlertRule) -> list[Any]:
        return [getattr(rule, column) for column in RULE_COLUMNS]

    async def create_rule(self, rule: AlertRule) -> AlertRule:
        now = datetime.now(UTC)
        marks = ", ".join("?" * (len(RULE_COLUMNS) + 1))
        rows = await self.store.rows(
            f"INSERT INTO alert_rules ({', '.join(RULE_COLUMNS)}, created_at) "
            f"VALUES ({marks}) RETURNING id",
            [*self._values(rule), self._time(now)],
        )
        return rule.with_id(int(rows[0]["id"]), now)

    async def update_rule(self, rule: AlertRule) -> bool:
        sets = ", ".join(f"{column} = ?" for column in RULE_COLUMNS)
        rows = await self.store.rows(
            f"UPDATE alert_rules SET {sets} WHERE id = ? RETURNING id",
            [*self._values(rule), rule.id],
        )
        if rows and not rule.enabled:  # paused: its open alert closes now, without a notice
            await self._close_open(rule.id)
        return bool(rows)

    async def delete_rule(self, rule_id: int) -> bool:
        """Delete a rule; its open alert is resolved (its history stays)."""
        rows = await self.store.rows("DELETE FROM alert_rules WHERE id = ? RETURNING id", [rule_id])
        if rows:
            await self._close_open(rule_id)
        return bool(rows)

    async def _close_open(self, rule_id: int) -> None:
        await self.store.rows(
            "UPDATE alerts SET state = 'resolved', resolved_at = ?, open_rule = NULL "
            "WHERE rule_id = ? AND state = 'firing' RETURNING id",
            [self._time(datetime.now(UTC)), rule_id],
        )

    async def get_rule(self, rule_id: int) -> AlertRule | None:
        rows = await self.store.rows("SELECT * FROM alert_rules WHERE id = ?", [rule_id])
        return _rule(rows[0]) if rows else None

    async def rules(self, enabled_only: bool = False) -> list[AlertRule]:
        where = " WHERE enabled = ?" if enabled_only else ""
        rows = await self.store.rows(
            f"SELECT * FROM alert_rules{where} ORDER BY id", [True] if enabled_only else []
        )
        return [_rule(row) for row in rows]

    # -- alerts -----------------------------------------------------------------------------

    async def open_alerts(self) -> dict[int, Alert]:
        """The firing alert of each rule that has one."""
        rows = await self.store.rows("SELECT * FROM alerts WHERE open_rule IS NOT NULL ORDER BY id")
        return {int(row["rule_id"]): _alert(row) for row in rows}

    async def fire(
        self,
        rule: AlertRule,
        value: float,
        detail: str | None,
        now: datetime,
        threshold: float | None = None,
    ) -> Alert | None:
        """Open the rule's alert (at `threshold`, the rule's unless given); None when one is
        open already (another replica's)."""
        threshold = rule.threshold if threshold is None else threshold
        rows = await self.store.rows(
            "INSERT INTO alerts (rule_id, state, started_at, value, threshold, detail, "
            "open_rule) VALUES (?, 'firing', ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            [rule.id, self._time(now), value, threshold, detail, rule.id],
        )
        if not rows:
            return None
        return Alert(
            int(rows[0]["id"]),
            rule.id,
            "firing",
            now,
            None,
            value,
            threshold,
            detail,
            rule.name,
        )

    async def resolve(self, alert: Alert, now: datetime) -> Alert | None:
        """Close an open alert; None when another process closed it first."""
        rows = await self.store.rows(
            "UPDATE alerts SET state = 'resolved', resolved_at = ?, open_rule = NULL "
            "WHERE id = ? AND state = 'firing' RETURNING id",
            [self._time(now), alert.id],
        )
        return replace(alert, state="resolved", resolved_at=now) if rows else None

    async def history(
        self, rule_id: int | None = None, state: str | None = None, limit: int = 100
    ) -> list[Alert]:
        """Alerts newest first, with their rule's name."""
        clauses: list[str] = []
        params: list[Any] = []
        if rule_id is not None:
            clauses.append("a.rule_id = ?")
            params.append(rule_id)
        if state is not None:
            clauses.append("a.state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        rows = await self.store.rows(
            "SELECT a.*, r.name AS rule_name FROM alerts a "
            f"LEFT JOIN alert_rules r ON r.id = a.rule_id {where}ORDER BY a.id DESC LIMIT ?",
            [*params, limit],
        )
        return [_alert(row) for row in rows]

    # -- measures ---------------------------------------------------------------------------

    def _scope(self, rule: AlertRule, ids: IdRange) -> tuple[str, list[Any]]:
        """FROM and WHERE of a rule's calls with ids in [low, high)."""
        where = ["e.id >= ?", "e.id < ?"]
        params: list[Any] = list(ids)
        source = "exchanges e"
        if rule.scope_kind == "model":
            where.append("e.model = ?")
            params.append(rule.scope_value)
        elif rule.scope_kind in ("agent", "run"):
            source += " JOIN runs r ON r.id = e.run_id"
            where.append("r.agent_id = ?" if rule.scope_kind == "agent" else "r.name = ?")
            params.append(rule.scope_value)
        return f"FROM {source} WHERE {' AND '.join(where)}", params

    async def window(self, rule: AlertRule, since_ms: int, until_ms: int) -> Window:
        """A scope's calls started in [since_ms, until_ms) (Unix ms): the whole hours inside
        from the rollups, the rest (under an hour at either end) from the exchanges, as
        /api/stats counts (gateway/store/stats.py)."""
        span = split(id_at(since_ms), id_at(until_ms))
        total = Window(0, 0, 0.0, 0)
        if span.hours is not None:
            total += await self._rollup_window(rule, span.hours)
        for edge in span.edges:
            total += await self._rows_window(rule, edge)
        return total

    async def _rollup_window(self, rule: AlertRule, hours: IdRange) -> Window:
        where, params = ["dim = ?", "hour >= ?", "hour < ?"], [DIMS[rule.scope_kind], *hours]
        if rule.scope_kind != "gateway":
            where.append("value = ?")
            params.append(rule.scope_value)
        rows = await self.store.rows(
            "SELECT COALESCE(SUM(calls), 0) AS calls, COALESCE(SUM(errors), 0) AS errors, "
            "COALESCE(SUM(cost_usd), 0) AS cost_usd, COALESCE(SUM(latency_count), 0) AS timed "
            f"FROM rollups WHERE {' AND '.join(where)}",
            params,
        )
        return _window(rows[0])

    async def _rows_window(self, rule: AlertRule, ids: IdRange) -> Window:
        tail, params = self._scope(rule, ids)
        rows = await self.store.rows(
            "SELECT COUNT(*) AS calls, "
            f"COALESCE(SUM(CASE WHEN {FAILED_SQL} THEN 1 ELSE 0 END), 0) AS errors, "
            "COALESCE(SUM(e.cost_usd), 0) AS cost_usd, COUNT(e.latency_ms) AS timed "
            f"{tail}",
            params,
        )
        return _window(rows[0])

    async def latency_rank(
        self, rule: AlertRule, since_ms: int, until_ms: int, rank: int
    ) -> list[float]:
        """The latencies at `rank` and the next one in the window's sorted latencies."""
        tail, params = self._scope(rule, (id_at(since_ms), id_at(until_ms)))
        rows = await self.store.rows(
            f"SELECT e.latency_ms {tail} AND e.latency_ms IS NOT NULL "
            "ORDER BY e.latency_ms LIMIT 2 OFFSET ?",
            [*params, rank],
        )
        return [float(row["latency_ms"]) for row in rows]

    async def unpriced_models(
        self, rule: AlertRule, since_ms: int, until_ms: int
    ) -> dict[str, int]:
        """Models answering without a price in the window, with their calls."""
        tail, params = self._scope(rule, (id_at(since_ms), id_at(until_ms)))
        rows = await self.store.rows(
            f"SELECT e.model AS model, COUNT(*) AS calls {tail} AND {UNPRICED_SQL} "
            "GROUP BY e.model ORDER BY e.model",
            params,
        )
        return {row["model"]: int(row["calls"]) for row in rows}


def _window(row: dict[str, Any]) -> Window:
    return Window(
        int(row["calls"]), int(row["errors"]), float(row["cost_usd"] or 0), int(row["timed"])
    )
