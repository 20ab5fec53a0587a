"""Spend as the dashboard shows it: cost by category over a range (the calls' cost plus the
storage fee fine-tuned models accrue, gateway/store/finetuned.py) and the month to date with
a projection for the whole month.

The month is the calendar month of --budget-timezone (as budgets' periods are). The
projection is linear: month-to-date spend divided by the elapsed fraction of the month
(so $10 spent a quarter of the way in projects $40). Storage accrues at a constant rate, so
it projects exactly; calls' cost assumes the rest of the month spends at the pace so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from gateway.store.budgets import period_end, period_start
from gateway.store.finetuned import fine_tuned_models, storage_usd
from gateway.store.stats import read_stats

if TYPE_CHECKING:
    from gateway.store.exchanges import Store

PerMonth = Callable[[str], float | None]  # a base model's storage fee per month


@dataclass(frozen=True, slots=True)
class MonthSpend:
    start: datetime
    end: datetime
    now: datetime
    calls_usd: float  # the calls' cost since the month began
    storage_usd: float  # fine-tuned models' storage accrued since the month began
    by_category: dict[str, float]  # calls' cost per category, storage in fine-tuning

    @property
    def spent_usd(self) -> float:
        return self.calls_usd + self.storage_usd

    @property
    def elapsed(self) -> float:
        """The fraction of the month gone by (0-1)."""
        whole = (self.end - self.start).total_seconds()
        return min(1.0, max(0.0, (self.now - self.start).total_seconds() / whole))

    @property
    def projected_usd(self) -> float | None:
        """The month's spend at the pace so far; None in its first minute (too early)."""
        if (self.now - self.start).total_seconds() < 60:
            return None
        return self.spent_usd / self.elapsed


async def storage_between(
    store: Store, per_month: PerMonth, since: datetime | None, until: datetime
) -> float:
    """Storage fees fine-tuned models accrued in [since, until]."""
    return storage_usd(await fine_tuned_models(store), per_month, since, until)


async def month_spend(
    store: Store, per_month: PerMonth, zone: ZoneInfo, now: datetime
) -> MonthSpend:
    """The calendar month of `now` in `zone`, spent so far (exact: /api/stats' counting)."""
    start = period_start("month", now, zone)
    stats = await read_stats(store, start, now)
    storage = await storage_between(store, per_month, start, now)
    costs = dict(stats["totals"]["cost_by_category"])
    costs["fine-tuning"] = costs.get("fine-tuning", 0.0) + storage
    return MonthSpend(
        start,
        period_end("month", now, zone),
        now,
        float(stats["totals"]["cost_usd"]),
        storage,
        costs,
    )
