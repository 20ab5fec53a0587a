"""The models the fine-tuning loop made (`fine_tuned_models`), for experiments to select as a
variant beside their base model, and the job's creation call, whose cost the job settles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.store.records import iso_z

if TYPE_CHECKING:
    from gateway.store.exchanges import Store

JOBS = "/v1/fine_tuning/jobs"


@dataclass(frozen=True, slots=True)
class FineTuned:
    name: str
    base_model: str
    job_id: str
    run_id: int | None
    trained_tokens: int | None
    cost_usd: float | None
    examples: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FineTuned:
        created = row["created_at"]
        if isinstance(created, str):
            created = datetime.fromisoformat(created)
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return cls(
            name=str(row["name"]),
            base_model=str(row["base_model"]),
            job_id=str(row["job_id"]),
            run_id=None if row["run_id"] is None else int(row["run_id"]),
            trained_tokens=None if row["trained_tokens"] is None else int(row["trained_tokens"]),
            cost_usd=None if row["cost_usd"] is None else float(row["cost_usd"]),
            examples=int(row["examples"] or 0),
            created_at=created,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_model": self.base_model,
            "type": "fine-tuned",
            "job_id": self.job_id,
            "run_id": None if self.run_id is None else str(self.run_id),
            "trained_tokens": self.trained_tokens,
            "cost_usd": self.cost_usd,
            "examples": self.examples,
            "created_at": iso_z(self.created_at),
        }


async def register(store: Store, model: FineTuned) -> None:
    """Record a fine-tuned model (again: its latest job's facts win)."""
    await store.rows("DELETE FROM fine_tuned_models WHERE name = ?", [model.name])
    await store.rows(
        "INSERT INTO fine_tuned_models (name, base_model, job_id, run_id, trained_tokens, "
        "cost_usd, examples, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            model.name,
            model.base_model,
            model.job_id,
            model.run_id,
            model.trained_tokens,
            model.cost_usd,
            model.examples,
            store._time(model.created_at),
        ],
    )


async def fine_tuned_models(store: Store) -> list[FineTuned]:
    rows = await store.rows("SELECT * FROM fine_tuned_models ORDER BY created_at DESC, name")
    return [FineTuned.from_row(row) for row in rows]


async def job_call(store: Store, run_name: str) -> tuple[int, int] | None:
    """(exchange id, run id) of the call that created the job of the finetune run `run_name`,
    once the gateway has stored it."""
    rows = await store.rows(
        "SELECT e.id, e.run_id FROM exchanges e JOIN runs r ON r.id = e.run_id "
        "WHERE r.name = ? AND r.source = 'finetune' AND e.method = 'POST' AND e.path = ? "
        "AND e.status < 400 ORDER BY e.id DESC LIMIT 1",
        [run_name, JOBS],
    )
    return (int(rows[0]["id"]), int(rows[0]["run_id"])) if rows else None


MONTH_SECONDS = 365.25 / 12 * 86400  # a storage month: the mean calendar month, 30.4375 days


def storage_usd(
    models: list[FineTuned],
    per_month: Callable[[str], float | None],
    since: datetime | None,
    until: datetime,
) -> float:
    """The storage fee the fine-tuned `models` accrued in [since, until]: each model's
    `per_month` price (by its base model; None: no price, no fee) times the months, or the
    fraction of one, it was registered within the range (a month being MONTH_SECONDS)."""
    total = 0.0
    for model in models:
        price = per_month(model.base_model)
        start = model.created_at if since is None else max(since, model.created_at)
        if not price or start >= until:
            continue
        total += price * (until - start).total_seconds() / MONTH_SECONDS
    return round(total, 10)
