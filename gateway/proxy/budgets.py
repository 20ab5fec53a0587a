"""Budget enforcement in the proxy's process: each budget's spend held in memory, so the hot
path's check is a look at a tuple that is empty unless a hard budget is used up.

Spend comes from the shared database every `interval` seconds (every worker and replica sees
the same totals) plus, between refreshes, this process's own finished calls, priced here as
the writer will price them. A local call is counted until the database holds its row, so it
is never counted twice. Soft thresholds (80% and 100%) are announced once per period as a
`Crossing`: a WARNING line and each callback in `on_crossing`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.capture.exchange import Exchange, id_at
from gateway.store.budgets import (
    THRESHOLDS,
    Budget,
    BudgetStore,
    first_id,
    period_end,
    period_start,
)

if TYPE_CHECKING:
    from gateway.capture.pricing import PriceTable

log = logging.getLogger("agentops.budgets")

REFRESH_SECONDS = 1.0
SETTLED_SECONDS = 5.0  # calls older than this are summed once, not at every refresh
FULL_SECONDS = 60.0  # then everything is summed again (late rows, re-pricing, deletions)
PENDING_SECONDS = 120.0  # a local call the database never showed (dropped) stops counting


@dataclass(frozen=True, slots=True)
class Crossing:
    """A budget's spend reached `threshold` (0.8 or 1.0) of its limit in this period."""

    budget: Budget
    threshold: float
    spent_usd: float
    period_start: datetime


@dataclass(frozen=True, slots=True)
class Call:
    """What a budget's scope is matched against; the field names are the scope kinds."""

    run: str | None = None
    agent: str | None = None
    user: str | None = None
    key: str | None = None
    model: str | None = None
    provider: str = "mistral"


def next_threshold(crossed: float) -> float:
    """The next threshold after `crossed` (past the last: the limit again)."""
    return next((t for t in THRESHOLDS if t > crossed), THRESHOLDS[-1])


def matches(budget: Budget, call: Call) -> bool:
    scope = budget.scope
    return scope.kind == "gateway" or getattr(call, scope.kind) == scope.value


@dataclass(slots=True)
class Standing:
    """One budget as this process sees it now."""

    budget: Budget
    start: datetime
    end: datetime
    stored_usd: float = 0.0  # from the database
    local_usd: float = 0.0  # this process's calls the database does not hold yet
    crossed: float = 0.0  # the highest threshold reached this period

    @property
    def spent_usd(self) -> float:
        return self.stored_usd + self.local_usd

    def state(self) -> str:
        ratio = self.spent_usd / self.budget.limit_usd
        return "exceeded" if ratio >= 1.0 else "warning" if ratio >= 0.8 else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            **self.budget.to_json(),
            "spent_usd": round(self.spent_usd, 9),
            "period_start": self.start.isoformat(),
            "period_end": self.end.isoformat(),
            "state": self.state(),
            "crossed": [t for t in THRESHOLDS if t <= self.crossed],
        }


@dataclass(slots=True)
class Pending:
    cost: float
    call: Call
    at: float = field(default_factory=time.monotonic)


class BudgetGuard:
    """Budgets and their spend in this process; `refusing` is the proxy's check."""

    def __init__(
        self,
        store: BudgetStore,
        zone: ZoneInfo,
        prices: PriceTable,
        *,
        announce: bool = True,
        interval: float = REFRESH_SECONDS,
    ) -> None:
        """`announce`: log and call back on crossings (one process per gateway does; a
        worker only enforces)."""
        self.store = store
        self.zone = zone
        self.prices = prices
        self.announce = announce
        self.interval = interval
        self.standings: list[Standing] = []
        self.blocked: tuple[Budget, ...] = ()  # hard budgets used up: all the hot path reads
        self._blocked_kinds: frozenset[str] = frozenset()
        self._count_locally = False  # only hard budgets need spend faster than the refresh
        self.on_crossing: list[Callable[[Crossing], None]] = []
        self._pending: dict[int, Pending] = {}
        self._lock = asyncio.Lock()
        self._settled: dict[tuple[int, int], float] = {}  # (budget, first id) -> spend to _mark
        self._mark = 0  # settled sums cover ids below this
        self._full_at = -FULL_SECONDS
        self._failing = False

    # -- the hot path -------------------------------------------------------------------

    def refusing(self, exchange: Exchange, body: bytes) -> Budget | None:
        """The used-up hard budget this call falls under, if any. Costs one attribute read
        while no hard budget is used up."""
        blocked = self.blocked
        if not blocked:
            return None
        call = call_of(exchange, body, self._blocked_kinds)
        for budget in blocked:
            if matches(budget, call):
                return budget
        return None

    def completed(self, exchange: Exchange) -> None:
        """A call finished: while there are hard budgets, count its cost (after the response
        went out) until the database has it; soft budgets wait for the next refresh."""
        if self._count_locally and exchange.status is not None and exchange.status < 400:
            asyncio.get_running_loop().call_soon(self._count, exchange)

    def _count(self, exchange: Exchange) -> None:
        try:
            found = self._priced(exchange)
        except Exception:  # an estimate: the database total corrects it within a second
            log.debug("could not price exchange %s for budgets", exchange.id, exc_info=True)
            return
        if found is None:
            return
        cost, call = found
        self._pending[exchange.id] = Pending(cost, call)
        changed = False
        for standing in self.standings:
            if matches(standing.budget, call):
                standing.local_usd += cost
                # only a threshold newly reached changes what is blocked or announced
                changed |= standing.spent_usd >= standing.budget.limit_usd * next_threshold(
                    standing.crossed
                )
        if changed:
            self._settle()

    def _priced(self, exchange: Exchange) -> tuple[float, Call] | None:
        """An estimate of the call's cost from its `usage` object alone (the writer parses
        the whole call later; the database total replaces this estimate within a second).
        None when it cannot tell cheaply: another provider, a compressed body, no usage."""
        if exchange.provider != "mistral" or exchange.response_decoded:
            return None
        tail = b"".join(exchange.response_chunks[-2:])
        usage = usage_of(tail)
        if usage is None:
            return None
        model = body_string(exchange.request_body, b'"model"')
        cost = self.prices.cost(
            model, usage["prompt_tokens"], usage["completion_tokens"], usage.get("cached_tokens")
        )
        if not cost:
            return None
        hints = exchange.hints
        call = Call(
            run=hints.get("run_prefix") or hints.get("run"),
            agent=hints.get("agent") or body_string(exchange.request_body, b'"agent_id"'),
            user=hints.get("user"),
            key=exchange.key_fingerprint,
            model=model,
            provider=exchange.provider,
        )
        return cost, call

    # -- refreshing -----------------------------------------------------------------------

    async def refresh(self, now: datetime | None = None) -> list[Standing]:
        """Read the budgets and their spend from the database (shared by every process)."""
        async with self._lock:
            now = now or datetime.now(UTC)
            budgets = await self.store.all()
            await self._forget_stored()
            starts = [period_start(b.period, now, self.zone) for b in budgets]
            stored = await self._stored_spend(budgets, starts, now)
            before = {(s.budget.id, s.start): s.crossed for s in self.standings}
            pending = self._pending
            standings = []
            for budget, start, spent in zip(budgets, starts, stored, strict=True):
                standing = Standing(budget, start, period_end(budget.period, now, self.zone))
                standing.stored_usd = spent
                standing.local_usd = sum(
                    p.cost for p in pending.values() if matches(budget, p.call)
                )
                standing.crossed = before.get((budget.id, start), 0.0)
                standings.append(standing)
            self.standings = standings
            self._settle()
            return standings

    async def _forget_stored(self) -> None:
        """Local counts of the calls the database holds now (or never will) stop counting."""
        pending = self._pending
        if not pending:
            return
        for exchange_id in await self.store.stored(list(pending)):
            pending.pop(exchange_id, None)
        stale = time.monotonic() - PENDING_SECONDS
        for exchange_id in [i for i, p in pending.items() if p.at < stale]:
            pending.pop(exchange_id)

    async def _stored_spend(
        self, budgets: list[Budget], starts: list[datetime], now: datetime
    ) -> list[float]:
        """Spend since each start: calls older than SETTLED_SECONDS are summed once (and
        again in full every FULL_SECONDS, for late rows and re-pricing), so a refresh scans
        only the last seconds of calls, whatever the period's length."""
        firsts = [first_id(start) for start in starts]
        mark = id_at(int((now.timestamp() - SETTLED_SECONDS) * 1000))
        keys = [(b.id, f) for b, f in zip(budgets, firsts, strict=True)]
        settled = self._settled
        full = time.monotonic() - self._full_at >= FULL_SECONDS or any(
            k not in settled for k in keys
        )
        if full:
            old = await self.store.spend(budgets, firsts, mark)
            settled = dict(zip(keys, old, strict=True))
            self._full_at = time.monotonic()
        elif mark > self._mark:
            since = [max(first, self._mark) for first in firsts]
            added = await self.store.spend(budgets, since, mark)
            settled = {k: settled[k] + a for k, a in zip(keys, added, strict=True)}
        else:
            settled = {k: settled[k] for k in keys}
        self._settled, self._mark = settled, mark if full else max(mark, self._mark)
        recent = await self.store.spend(budgets, [max(f, self._mark) for f in firsts])
        return [settled[k] + r for k, r in zip(keys, recent, strict=True)]

    def _settle(self) -> None:
        """Recompute what is blocked; announce thresholds newly reached."""
        blocked = tuple(
            s.budget for s in self.standings if s.budget.hard and s.spent_usd >= s.budget.limit_usd
        )
        self._blocked_kinds = frozenset(b.scope.kind for b in blocked)
        self._count_locally = any(s.budget.hard for s in self.standings)
        self.blocked = blocked
        for standing in self.standings:
            ratio = standing.spent_usd / standing.budget.limit_usd
            for threshold in THRESHOLDS:
                if standing.crossed < threshold <= ratio:
                    standing.crossed = threshold
                    if self.announce:
                        self._announce(
                            Crossing(standing.budget, threshold, standing.spent_usd, standing.start)
                        )

    def _announce(self, crossing: Crossing) -> None:
        budget = crossing.budget
        log.warning(
            "budget %r (%s %s, %s): spent $%s of $%s, %d%% reached%s",
            budget.name,
            budget.scope.kind,
            budget.scope.value or "",
            budget.period,
            _dollars(crossing.spent_usd),
            _dollars(budget.limit_usd),
            round(crossing.threshold * 100),
            "; calls in its scope are refused" if budget.hard and crossing.threshold >= 1 else "",
        )
        for callback in self.on_crossing:
            try:
                callback(crossing)
            except Exception:  # a listener's bug must not stop the others, nor the refresh
                log.exception("budget crossing callback failed")

    async def run(self) -> None:
        """Refresh every `interval` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
                if self._failing:
                    log.info("budgets: reading spend from the database again")
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning(
                        "budgets: cannot read spend from the database (%s); "
                        "enforcing the last totals",
                        exc,
                    )
                self._failing = True
            await asyncio.sleep(self.interval)


def call_of(exchange: Exchange, body: bytes, kinds: frozenset[str]) -> Call:
    """The call's scope values, reading the body only when a model or agent budget needs it."""
    hints = exchange.hints
    agent = hints.get("agent")
    if agent is None and "agent" in kinds:
        agent = body_string(body, b'"agent_id"')
    return Call(
        run=hints.get("run_prefix") or hints.get("run"),
        agent=agent,
        user=hints.get("user"),
        key=exchange.key_fingerprint,
        model=body_string(body, b'"model"') if "model" in kinds else None,
        provider=exchange.provider,
    )


_TOKENS = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens)"\s*:\s*(\d+)')


def usage_of(tail: bytes) -> dict[str, int] | None:
    """The token counts of the last `"usage"` object in the end of a response (a JSON body,
    or the last events of a stream), read with one regular expression, not a JSON parse."""
    at = tail.rfind(b'"usage"')
    if at < 0:
        return None
    counts = {m[1].decode(): int(m[2]) for m in _TOKENS.finditer(tail, at, at + 600)}
    if "prompt_tokens" not in counts or "completion_tokens" not in counts:
        return None
    return counts


def body_string(body: bytes, key: bytes) -> str | None:
    """The first string value of `key` in a JSON body, found without parsing the body (a
    quoted key cannot occur inside a JSON string, where its quotes would be escaped)."""
    at = body.find(key)
    while at >= 0:
        rest = body[at + len(key) : at + len(key) + 400].lstrip()
        if rest.startswith(b":"):
            rest = rest[1:].lstrip()
            if rest.startswith(b'"'):
                end = rest.find(b'"', 1)
                if end > 0:
                    return rest[1:end].decode("utf-8", "replace")
        at = body.find(key, at + 1)
    return None


def _dollars(value: float) -> str:
    """An amount for the log: plain decimals, never 3.21e-05 (to a millionth of a dollar, or
    to 1e-12 for smaller amounts, so that a tiny limit does not read $0)."""
    places = 6 if abs(value) >= 1e-6 or value == 0 else 12
    return f"{value:.{places}f}".rstrip("0").rstrip(".") or "0"
