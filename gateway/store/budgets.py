"""Budgets: what one is (a scope, a calendar period, a limit in USD), where they are kept (the
`budgets` table, shared by every worker and replica), how a TOML file of them is read, and the
one query that sums each budget's spend in its current period.

Spend is read from `exchanges` by id range: ids are time-sortable (capture/exchange.py), so
"calls since the period began" is one primary-key range walk for all budgets together.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tortoise.exceptions import IntegrityError

from gateway.capture.exchange import id_at, new_id
from gateway.errors import NotFound, UserError

if TYPE_CHECKING:
    from gateway.store.exchanges import Store

# gateway/capture/redact.py's fingerprint(): a hash prefix, then the key's last 4 characters
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{12}(\.\.\..{4})?", re.DOTALL)
KINDS = ("gateway", "run", "agent", "user", "key", "model", "provider")
PERIODS = ("day", "week", "month")
THRESHOLDS = (0.8, 1.0)  # soft alerts: 80% and 100% of the limit
NAME_CHARS = 200

# The condition that puts an exchange (e, joined to its run r) in a budget's scope.
_SCOPE_SQL = {
    "gateway": "1 = 1",
    "run": "r.name = ?",
    "agent": "r.agent_id = ?",
    "user": 'r."user" = ?',
    "key": "e.key_fingerprint = ?",
    "model": "(e.model = ? OR e.request_model = ?)",
    "provider": "e.provider = ?",
}
_RUN_KINDS = frozenset({"run", "agent", "user"})


class BudgetError(UserError):
    """A budget that cannot be: names the field that is wrong."""


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str  # one of KINDS
    value: str | None  # None for "gateway"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True, slots=True)
class Budget:
    id: int
    name: str
    scope: Scope
    period: str  # day, week, month
    limit_usd: float
    hard: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "scope": self.scope.to_json(),
            "period": self.period,
            "limit_usd": self.limit_usd,
            "hard": self.hard,
        }


def parse_budget(data: Any, where: str = "the body", budget_id: int | None = None) -> Budget:
    """A budget from its JSON/TOML form; BudgetError names the first wrong field."""
    if not isinstance(data, dict):
        raise BudgetError(f"{where} must be an object with name, scope, period and limit_usd")
    known = {"name", "scope", "period", "limit_usd", "hard"}
    extra = sorted(set(data) - known)
    if extra:
        raise BudgetError(
            f"{where}: unknown field {extra[0]!r} (known: {', '.join(sorted(known))})"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_CHARS:
        raise BudgetError(
            f"{where}: name must be a non-empty string of at most {NAME_CHARS} characters"
        )
    return Budget(
        id=budget_id if budget_id is not None else new_id(),
        name=name.strip(),
        scope=_scope(data.get("scope"), where),
        period=_period(data.get("period"), where),
        limit_usd=_limit(data.get("limit_usd"), where),
        hard=_hard(data.get("hard", False), where),
    )


class BudgetChanges(dict[str, Any]):
    """What a PATCH changes of a budget: `limit_usd` and/or `hard` (columns of `budgets`)."""


CHANGEABLE = ("limit_usd", "hard")


def parse_changes(data: Any, where: str = "the body") -> BudgetChanges:
    """`{"limit_usd"?, "hard"?}`, at least one; BudgetError names the first wrong field. Name,
    scope and period are what a budget is: a different one is another budget (delete, add)."""
    if not isinstance(data, dict):
        raise BudgetError(f"{where} must be an object with limit_usd and/or hard")
    for field in data:
        if field not in CHANGEABLE:
            raise BudgetError(
                f"{where}: {field!r} cannot change (only limit_usd and hard can; for another "
                "name, scope or period, delete the budget and add one)"
            )
    if not data:
        raise BudgetError(f"{where}: give limit_usd and/or hard")
    changes = BudgetChanges()
    if "limit_usd" in data:
        changes["limit_usd"] = _limit(data["limit_usd"], where)
    if "hard" in data:
        changes["hard"] = _hard(data["hard"], where)
    return changes


def _scope(raw: Any, where: str) -> Scope:
    if raw is None:
        raise BudgetError(f'{where}: scope is required, e.g. {{"kind": "model", "value": "..."}}')
    if not isinstance(raw, dict):
        raise BudgetError(f"{where}: scope must be an object with kind and value")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise BudgetError(f"{where}: scope.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    value = raw.get("value")
    if kind == "gateway":
        if value not in (None, ""):
            raise BudgetError(f"{where}: scope.value must be empty for kind gateway")
        return Scope(kind, None)
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_CHARS:
        raise BudgetError(f"{where}: scope.value must be a non-empty string for kind {kind}")
    if kind == "key" and not FINGERPRINT.fullmatch(value.strip()):
        raise BudgetError(
            f"{where}: scope.value for kind key must be a key fingerprint as each exchange "
            f"shows it (key_fingerprint, e.g. sha256:5aab9fe75a4b...1234), got {value!r}"
        )
    return Scope(kind, value.strip())


def _period(raw: Any, where: str) -> str:
    if raw not in PERIODS:
        raise BudgetError(f"{where}: period must be one of {', '.join(PERIODS)}, got {raw!r}")
    return str(raw)


def _limit(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise BudgetError(f"{where}: limit_usd must be a positive number, got {raw!r}")
    if raw <= 0:
        raise BudgetError(f"{where}: limit_usd must be a positive number, got {raw!r}")
    return float(raw)


def _hard(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise BudgetError(f"{where}: hard must be true or false, got {raw!r}")
    return raw


def load_file(path: str) -> list[Budget]:
    """Budgets from a TOML file: `[[budget]]` tables (or `[budgets.NAME]`, named by the key)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise BudgetError(f"--budgets: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BudgetError(f"--budgets: {path} is not TOML: {exc}") from None
    items: list[tuple[str, Any]] = []
    for index, item in enumerate(data.pop("budget", [])):
        items.append((f"{path}: [[budget]] #{index + 1}", item))
    named = data.pop("budgets", {})
    if not isinstance(named, dict):
        raise BudgetError(f"{path}: [budgets] must be a table of budgets")
    for key, item in named.items():
        if isinstance(item, dict):
            item = {"name": key, **item}
        items.append((f"{path}: [budgets.{key}]", item))
    if data:
        raise BudgetError(f"{path}: unknown table {sorted(data)[0]!r} (use [[budget]])")
    budgets = [parse_budget(item, where) for where, item in items]
    names = [b.name for b in budgets]
    for name in names:
        if names.count(name) > 1:
            raise BudgetError(f"{path}: two budgets are named {name!r}")
    return budgets


# -- periods --------------------------------------------------------------------------


def timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BudgetError(
            f"--budget-timezone: unknown time zone {name!r} (use an IANA name such as "
            "UTC or Europe/Paris)"
        ) from None


def period_start(period: str, now: datetime, zone: ZoneInfo) -> datetime:
    """When the calendar `period` holding `now` began, in `zone` (day: midnight; week: Monday
    midnight; month: the 1st at midnight), as an aware UTC time."""
    local = now.astimezone(zone)
    day = local.date()
    if period == "week":
        day -= timedelta(days=day.weekday())
    elif period == "month":
        day = day.replace(day=1)
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def period_end(period: str, now: datetime, zone: ZoneInfo) -> datetime:
    """When the period holding `now` ends (the next one's start)."""
    start = period_start(period, now, zone).astimezone(zone)
    if period == "day":
        later = start.date() + timedelta(days=1)
    elif period == "week":
        later = start.date() + timedelta(days=7)
    else:
        later = (start.date().replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(later.year, later.month, later.day, tzinfo=zone).astimezone(UTC)


def first_id(start: datetime) -> int:
    """The smallest exchange id of a call started at or after `start`."""
    return id_at(int(start.timestamp() * 1000))


# -- the table ------------------------------------------------------------------------


class BudgetStore:
    """The `budgets` rows (kept by name: a file's budget replaces the one of its name)."""

    COLUMNS = "id, name, scope_kind, scope_value, period, limit_usd, hard"

    def __init__(self, store: Store) -> None:
        self.store = store

    async def all(self) -> list[Budget]:
        rows = await self.store.rows(f"SELECT {self.COLUMNS} FROM budgets ORDER BY id")
        return [
            Budget(
                id=int(row["id"]),
                name=row["name"],
                scope=Scope(row["scope_kind"], row["scope_value"]),
                period=row["period"],
                limit_usd=float(row["limit_usd"]),
                hard=bool(row["hard"]),
            )
            for row in rows
        ]

    async def add(self, budget: Budget) -> Budget:
        """Insert; a budget of that name already there is a 400 (delete it first)."""
        found = await self.store.rows("SELECT id FROM budgets WHERE name = ?", [budget.name])
        if found:
            raise BudgetError(f"name: a budget named {budget.name!r} exists already")
        try:
            await self._insert(budget)
        except IntegrityError:  # added by someone else since the check above
            raise BudgetError(f"name: a budget named {budget.name!r} exists already") from None
        return budget

    async def put(self, budget: Budget) -> Budget:
        """Insert, or replace the budget of the same name (a file loaded at start)."""
        await self.store.rows("DELETE FROM budgets WHERE name = ?", [budget.name])
        await self._insert(budget)
        return budget

    async def _insert(self, budget: Budget) -> None:
        await self.store.rows(
            f"INSERT INTO budgets ({self.COLUMNS}, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                budget.id,
                budget.name,
                budget.scope.kind,
                budget.scope.value,
                budget.period,
                budget.limit_usd,
                budget.hard,
                self.store._time(datetime.now(UTC)),
            ],
        )

    async def update(self, budget_id: int, changes: BudgetChanges) -> None:
        """Change a budget's limit and/or hardness in place (its spend and period stay)."""
        sets = [f"{name} = ?" for name, value in changes.items() if value is not None]
        values = [value for value in changes.values() if value is not None]
        found = await self.store.rows(
            f"UPDATE budgets SET {', '.join(sets)} WHERE id = ? RETURNING id",
            [*values, budget_id],
        )
        if not found:
            raise NotFound(f"no budget with id {budget_id}")

    async def delete(self, budget_id: int) -> None:
        gone = await self.store.rows("DELETE FROM budgets WHERE id = ? RETURNING id", [budget_id])
        if not gone:
            raise NotFound(f"no budget with id {budget_id}")

    async def spend(
        self, budgets: list[Budget], firsts: list[int], until: int | None = None
    ) -> list[float]:
        """Each budget's spend over the exchanges with ids from its `firsts` entry (see
        `first_id`) up to `until` (excluded; None: no end): one scan for all budgets."""
        if not budgets:
            return []
        columns: list[str] = []
        params: list[Any] = []
        for budget, first in zip(budgets, firsts, strict=True):
            condition = _SCOPE_SQL[budget.scope.kind]
            columns.append(
                f"SUM(CASE WHEN e.id >= ? AND {condition} THEN e.cost_usd ELSE 0 END) "
                f"AS b{len(columns)}"
            )
            params.append(first)
            params += [budget.scope.value] * condition.count("?")
        join = ""
        if any(b.scope.kind in _RUN_KINDS for b in budgets):
            join = " LEFT JOIN runs r ON r.id = e.run_id"
        where = "e.id >= ?"
        params.append(min(firsts))
        if until is not None:
            where += " AND e.id < ?"
            params.append(until)
        rows = await self.store.rows(
            f"SELECT {', '.join(columns)} FROM exchanges e{join} WHERE {where}", params
        )
        row = rows[0] if rows else {}
        return [float(row.get(f"b{i}") or 0.0) for i in range(len(budgets))]

    async def stored(self, ids: list[int]) -> set[int]:
        """Which of these exchange ids are in the database now."""
        return await self.store.existing(ids)
