"""Alert evaluation: every --alert-interval seconds, in the gateway's main process, each
enabled rule is measured from the database and its alert opened or resolved; a notice goes to
the rule's webhook when this process's statement took effect (gateway/store/alerts.py), so
replicas sharing a database send each notice once.

A measure returns the rule's value now (None: not enough data, which never fires) and, for
some kinds, what fired it in words. A new kind is one more entry in MEASURES.

A `budget` rule tells a budget's 80% and 100% crossings (those at or above its threshold):
its value is the spent fraction of the limit in the budget's current period (read from the
database, as every worker's BudgetGuard reads it); its alert's threshold is the level
reached. Reaching 100% while the 80% alert is open closes that one quietly and opens the
100% one (with a notice); a new period (or a raised limit) resolves it (with a notice). The
open alert is the record of what was told, so a level is told once per period, across
restarts and replicas.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.integrations.alert_rules import MAX_WINDOW, UNITS, rule_json
from gateway.integrations.webhooks import Notice, Webhooks
from gateway.store.alerts import Alert, AlertRule, AlertStore
from gateway.store.budgets import THRESHOLDS, BudgetStore, first_id, period_start

if TYPE_CHECKING:
    from gateway.writer.health import Health

log = logging.getLogger("agentops.alerts")

Measured = tuple[float | None, str | None]
Measure = Callable[["AlertEvaluator", AlertRule, int], Awaitable[Measured]]


async def spend(self: AlertEvaluator, rule: AlertRule, now_ms: int) -> Measured:
    window = await self.alerts.window(rule, now_ms - rule.window_seconds * 1000, now_ms)
    return window.cost_usd, None


async def spend_spike(self: AlertEvaluator, rule: AlertRule, now_ms: int) -> Measured:
    """This window's spend over the mean of the `baseline_windows` before it."""
    span = rule.window_seconds * 1000
    current = await self.alerts.window(rule, now_ms - span, now_ms)
    start = now_ms - span * (1 + rule.baseline_windows)
    before = await self.alerts.window(rule, start, now_ms - span)
    mean = before.cost_usd / rule.baseline_windows
    if mean <= 0:
        return None, None  # no trailing spend: no ratio to speak of
    return current.cost_usd / mean, f"${current.cost_usd:.4f} against a mean of ${mean:.4f}"


async def error_rate(self: AlertEvaluator, rule: AlertRule, now_ms: int) -> Measured:
    window = await self.alerts.window(rule, now_ms - rule.window_seconds * 1000, now_ms)
    if window.calls < rule.min_calls or window.calls == 0:
        return None, None
    return window.errors / window.calls, f"{window.errors} of {window.calls} calls failed"


async def p95_latency(self: AlertEvaluator, rule: AlertRule, now_ms: int) -> Measured:
    since = now_ms - rule.window_seconds * 1000
    window = await self.alerts.window(rule, since, now_ms)
    count = window.latency_count
    if count < rule.min_calls or count == 0:
        return None, None
    rank = 0.95 * (count - 1)  # linear between the nearest ranks, as rollups.exact_percentile
    values = await self.alerts.latency_rank(rule, since, now_ms, int(rank))
    if not values:
        return None, None
    low, high = values[0], values[-1]
    return low + (high - low) * (rank - int(rank)), f"over {count} calls"


async def unpriced_model(self: AlertEvaluator, rule: AlertRule, now_ms: int) -> Measured:
    models = await self.alerts.unpriced_models(rule, now_ms - rule.window_seconds * 1000, now_ms)
    if not models:
        return 0.0, None
    return float(sum(models.values())), "no price for " + ", ".join(sorted(models))


async def budget(self: AlertEvaluator, rule: AlertRule, now_ms: int) -> Measured:
    standing = await self.budget_standing(rule, datetime.fromtimestamp(now_ms / 1000, UTC))
    return (None, None) if standing is None else (standing.ratio, standing.detail)


async def capture_loss(self: AlertEvaluator, rule: AlertRule, now_ms: int) -> Measured:
    """Records in quarantine now, plus records dropped within the window."""
    quarantined = await self.alerts.store.quarantine_count()
    dropped = self.dropped_since(time.monotonic() - rule.window_seconds)
    return float(quarantined + dropped), f"{quarantined} quarantined, {dropped} dropped"


MEASURES: dict[str, Measure] = {
    "spend": spend,
    "spend_spike": spend_spike,
    "error_rate": error_rate,
    "p95_latency": p95_latency,
    "unpriced_model": unpriced_model,
    "capture_loss": capture_loss,
    "budget": budget,
}


@dataclass(frozen=True, slots=True)
class BudgetStanding:
    """The budget of a rule's scope with the largest spent fraction now."""

    ratio: float
    period_start: datetime
    detail: str

    def level(self, lowest: float) -> float | None:
        """The highest crossing level reached, of those at or above `lowest`."""
        reached = [t for t in THRESHOLDS if lowest <= t <= self.ratio]
        return max(reached) if reached else None


def describe(rule: AlertRule) -> str:
    scope = "gateway" if rule.scope_kind == "gateway" else f"{rule.scope_kind} {rule.scope_value}"
    if rule.kind == "budget":  # its budget's period counts: window_seconds is unused
        return f"budget of {scope}"
    return f"{rule.kind.replace('_', ' ')} of {scope} over {rule.window_seconds} s"


Current = tuple[float, str | None]  # a rule's value now, and its detail


def notice_text(rule: AlertRule, alert: Alert, now: Current | None = None) -> str:
    """The notice's line; a resolved alert's says the value that resolved it (`now`) where
    there is one, not the value it fired at (the alert keeps that)."""
    state = "FIRING" if alert.state == "firing" else "RESOLVED"
    value, detail = now if now is not None else (alert.value, alert.detail)
    text = (
        f"[{state}] {rule.name}: {describe(rule)} is {value:.6g} "
        f"(threshold {alert.threshold:g}: {UNITS.get(rule.kind, '')})"
    )
    return f"{text}. {detail}" if detail else text


def payload(rule: AlertRule, alert: Alert, now: Current | None = None) -> dict[str, object]:
    """The webhook's body: Slack's `{"text"}`, or the alert and its rule as JSON."""
    text = notice_text(rule, alert, now)
    if rule.webhook_format == "slack":
        return {"text": text}
    return {"event": alert.state, "text": text, "alert": alert.to_json(), "rule": rule_json(rule)}


class AlertEvaluator:
    def __init__(
        self,
        alerts: AlertStore,
        webhooks: Webhooks,
        interval: float,
        health: Callable[[], Health] | None = None,
        zone: ZoneInfo | None = None,
    ) -> None:
        """`zone`: the calendar of budget periods (--budget-timezone)."""
        self.alerts = alerts
        self.budgets = BudgetStore(alerts.store)
        self.zone = zone or ZoneInfo("UTC")
        self.webhooks = webhooks
        self.interval = interval
        self.health = health
        self.firing: dict[tuple[int, str], int] = {}  # (rule id, name) -> 1 firing, 0 not
        self.evaluations = 0
        self._dropped: collections.deque[tuple[float, int]] = collections.deque()

    def firing_now(self) -> dict[tuple[int, str], int]:
        return self.firing

    async def run(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:
                log.exception("alert evaluation failed")
            await asyncio.sleep(self.interval)

    def dropped_since(self, since: float) -> int:
        """Records dropped since `since` (monotonic), from the health reports sampled: the
        count then is that of the last change at or before it (or the first sample's)."""
        if not self._dropped:
            return 0
        base = self._dropped[0][1]
        for at, count in self._dropped:
            if at > since:
                break
            base = count
        return self._dropped[-1][1] - base

    def _sample_health(self) -> None:
        """Keep the dropped-records count at each change (a few samples, not one a tick)."""
        if self.health is None:
            return
        now = time.monotonic()
        count = self.health().dropped_records
        if not self._dropped or self._dropped[-1][1] != count:
            self._dropped.append((now, count))
        while len(self._dropped) > 1 and self._dropped[1][0] < now - MAX_WINDOW:
            self._dropped.popleft()

    async def evaluate(self, now: datetime | None = None) -> None:
        """Measure every enabled rule once; open and resolve alerts; send the notices."""
        self._sample_health()
        now = now or datetime.now(UTC)
        now_ms = int(now.timestamp() * 1000)
        rules = await self.alerts.rules()
        open_alerts = await self.alerts.open_alerts()
        firing: dict[tuple[int, str], int] = {}
        for rule in rules:
            alert = open_alerts.get(rule.id)
            if rule.enabled:
                try:
                    alert = await self._evaluate(rule, alert, now, now_ms)
                except Exception:  # one rule's failure leaves the others evaluated
                    log.exception("alert rule %r could not be evaluated", rule.name)
            elif alert is not None:  # paused while firing: closed, without a notice
                await self.alerts.resolve(alert, now)
                alert = None
            firing[(rule.id, rule.name)] = int(alert is not None and alert.state == "firing")
        self.firing = firing
        self.evaluations += 1

    async def budget_standing(self, rule: AlertRule, now: datetime) -> BudgetStanding | None:
        """The spent fraction of the rule's budget (scope gateway: of the budget nearest or
        furthest past its limit) in its current period; None when there is no such budget."""
        budgets = [
            b
            for b in await self.budgets.all()
            if rule.scope_kind == "gateway" or b.name == rule.scope_value
        ]
        if not budgets:
            return None
        starts = [period_start(b.period, now, self.zone) for b in budgets]
        spent = await self.budgets.spend(budgets, [first_id(start) for start in starts])
        ratio, at = max(
            (s / b.limit_usd, i) for i, (b, s) in enumerate(zip(budgets, spent, strict=True))
        )
        b = budgets[at]
        detail = f"budget {b.name!r} ({b.period}): ${spent[at]:.4f} of ${b.limit_usd:g} spent"
        return BudgetStanding(ratio, starts[at], detail)

    async def _evaluate_budget(
        self, rule: AlertRule, alert: Alert | None, now: datetime
    ) -> Alert | None:
        standing = await self.budget_standing(rule, now)
        level = None if standing is None else standing.level(rule.threshold)
        if alert is not None and (
            level is None or (standing is not None and alert.started_at < standing.period_start)
        ):  # back under (a raised limit, a deleted budget) or a new period: resolved
            closed = await self.alerts.resolve(alert, now)
            if closed is not None:
                log.info("alert %r resolved", rule.name)
                current = None if standing is None else (standing.ratio, standing.detail)
                self._notify(rule, closed, current)
            alert = None
        if standing is None or level is None:
            return alert
        if alert is not None and alert.threshold < level:  # 80% told, now 100%
            await self.alerts.resolve(alert, now)
            alert = None
        if alert is not None:
            return alert
        opened = await self.alerts.fire(rule, standing.ratio, standing.detail, now, level)
        if opened is None:
            return (await self.alerts.open_alerts()).get(rule.id)
        log.warning("alert %r firing: %s", rule.name, notice_text(rule, opened))
        self._notify(rule, opened)
        return opened

    async def _evaluate(
        self, rule: AlertRule, alert: Alert | None, now: datetime, now_ms: int
    ) -> Alert | None:
        if rule.kind == "budget":
            return await self._evaluate_budget(rule, alert, now)
        value, detail = await MEASURES[rule.kind](self, rule, now_ms)
        breached = value is not None and value > rule.threshold
        if breached and alert is None:
            assert value is not None
            opened = await self.alerts.fire(rule, value, detail, now)
            if opened is not None:
                log.warning("alert %r firing: %s", rule.name, notice_text(rule, opened))
                self._notify(rule, opened)
                return opened
            return (await self.alerts.open_alerts()).get(rule.id)
        if not breached and alert is not None:
            closed = await self.alerts.resolve(alert, now)
            if closed is not None:
                log.info("alert %r resolved", rule.name)
                self._notify(rule, closed, None if value is None else (value, detail))
            return None
        return alert

    def _notify(self, rule: AlertRule, alert: Alert, now: Current | None = None) -> None:
        if rule.webhook_url:
            self.webhooks.send(Notice(rule.webhook_url, payload(rule, alert, now), rule.name))
