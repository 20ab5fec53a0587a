"""Campaigns (a judge over a saved search of recorded calls) and their progress: the only
place that builds their queries. What they do is gateway/replay/campaigns.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

import orjson

from gateway.capture.exchange import new_id
from gateway.errors import NotFound
from gateway.store.exchanges import Store
from gateway.store.records import iso_time

COLUMNS = (
    "id, name, description, judge, search, max_nb_events, mode, status, seen_id, selected, "
    "scored, failed, score_sum, error, created_at"
)


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: int
    name: str
    description: str
    judge: dict[str, Any]  # a scorer spec (gateway/replay/scorers.py)
    search: dict[str, str]  # /api/exchanges parameters, plus agent
    max_nb_events: int
    mode: str  # batch, live
    status: str  # running, done, failed
    seen_id: int
    selected: int
    scored: int
    failed: int
    score_sum: float
    error: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        created = row["created_at"]
        if isinstance(created, str):
            created = datetime.fromisoformat(created)
        return cls(
            id=int(row["id"]),
            name=str(row["name"]),
            description=str(row["description"] or ""),
            judge=orjson.loads(row["judge"]),
            search=orjson.loads(row["search"]),
            max_nb_events=int(row["max_nb_events"]),
            mode=str(row["mode"]),
            status=str(row["status"]),
            seen_id=int(row["seen_id"] or 0),
            selected=int(row["selected"] or 0),
            scored=int(row["scored"] or 0),
            failed=int(row["failed"] or 0),
            score_sum=float(row["score_sum"] or 0),
            error=row["error"],
            created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "judge": self.judge,
            "filter": self.search,
            "max_nb_events": self.max_nb_events,
            "mode": self.mode,
            "status": self.status,
            "error": self.error,
            "created_at": iso_time(self.created_at),
            "progress": {
                "selected": self.selected,
                "scored": self.scored,
                "failed": self.failed,
                "mean_score": round(self.score_sum / self.scored, 6) if self.scored else None,
            },
        }


class CampaignStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _run(self, text: str, params: list[Any]) -> None:
        await self.store.conn.execute_query(self.store.sql(text), params)

    async def add(
        self,
        name: str,
        description: str,
        judge: dict[str, Any],
        search: dict[str, str],
        max_nb_events: int,
        mode: str,
        seen_id: int,
    ) -> CampaignRow:
        campaign_id = new_id()
        values = [
            campaign_id,
            name,
            description,
            orjson.dumps(judge).decode(),
            orjson.dumps(search).decode(),
            max_nb_events,
            mode,
            "running",
            seen_id,
            self.store._value(datetime.now(UTC)),
        ]
        await self._run(
            "INSERT INTO campaigns (id, name, description, judge, search, max_nb_events, mode, "
            "status, seen_id, selected, scored, failed, score_sum, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, ?)",
            values,
        )
        return await self.get(campaign_id)

    async def get(self, campaign_id: int) -> CampaignRow:
        rows = await self.store.rows(f"SELECT {COLUMNS} FROM campaigns WHERE id = ?", [campaign_id])
        if not rows:
            raise NotFound(f"campaign {campaign_id} not found")
        return CampaignRow.from_row(rows[0])

    async def exists(self, campaign_id: int) -> bool:
        return bool(await self.store.rows("SELECT id FROM campaigns WHERE id = ?", [campaign_id]))

    async def all(self) -> list[CampaignRow]:
        rows = await self.store.rows(f"SELECT {COLUMNS} FROM campaigns ORDER BY id DESC")
        return [CampaignRow.from_row(r) for r in rows]

    async def running(self) -> list[CampaignRow]:
        rows = await self.store.rows(
            f"SELECT {COLUMNS} FROM campaigns WHERE status = 'running' ORDER BY id"
        )
        return [CampaignRow.from_row(r) for r in rows]

    async def delete(self, campaign_id: int) -> None:
        await self.get(campaign_id)  # 404 first
        await self._run("DELETE FROM campaigns WHERE id = ?", [campaign_id])
        await self._run("DELETE FROM campaign_calls WHERE campaign_id = ?", [campaign_id])

    async def taken(self, campaign_id: int, exchange_ids: list[int]) -> set[int]:
        """Which of these calls the campaign took already (a live campaign's claims)."""
        found: set[int] = set()
        for start in range(0, len(exchange_ids), 500):
            keys = [f"{campaign_id}:{i}" for i in exchange_ids[start : start + 500]]
            marks = ", ".join("?" * len(keys))
            rows = await self.store.rows(
                f"SELECT key FROM campaign_calls WHERE key IN ({marks})", keys
            )
            found.update(int(str(r["key"]).split(":")[1]) for r in rows)
        return found

    async def take(self, campaign: CampaignRow, exchange_id: int) -> bool:
        """Claim one call for a live campaign: False when it was taken already (by another
        replica) or the campaign has its `max_nb_events`."""
        key = f"{campaign.id}:{exchange_id}"
        claimed = await self.store.rows(
            "INSERT INTO campaign_calls (key, campaign_id) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING RETURNING key",
            [key, campaign.id],
        )
        if not claimed:
            return False
        counted = await self.store.rows(
            "UPDATE campaigns SET selected = selected + 1 "
            "WHERE id = ? AND selected < max_nb_events RETURNING id",
            [campaign.id],
        )
        if not counted:
            await self._run("DELETE FROM campaign_calls WHERE key = ?", [key])
        return bool(counted)

    async def claim(self, campaign: CampaignRow, count: int, seen_id: int) -> bool:
        """Count `count` more selected calls, up to `seen_id`, if nobody did since this
        campaign row was read: replicas sharing the database judge each call once."""
        claimed = await self.store.rows(
            "UPDATE campaigns SET selected = selected + ?, seen_id = ? "
            "WHERE id = ? AND selected = ? AND seen_id = ? RETURNING id",
            [count, seen_id, campaign.id, campaign.selected, campaign.seen_id],
        )
        return bool(claimed)

    async def count_score(self, campaign_id: int, value: float | None) -> None:
        """One judged call: scored (with its value) or failed (None)."""
        if value is None:
            await self._run("UPDATE campaigns SET failed = failed + 1 WHERE id = ?", [campaign_id])
        else:
            await self._run(
                "UPDATE campaigns SET scored = scored + 1, score_sum = score_sum + ? WHERE id = ?",
                [value, campaign_id],
            )

    async def finish(self, campaign_id: int, status: str, error: str | None = None) -> None:
        await self._run(
            "UPDATE campaigns SET status = ?, error = ? WHERE id = ?", [status, error, campaign_id]
        )

    async def score_series(self, since: datetime) -> list[dict[str, Any]]:
        """Evaluations of recorded calls since a time, with the call's model and its run's
        agent: what the dashboard's score-over-time chart averages."""
        return await self.store.rows(
            "SELECT v.created_at, v.metric_name, v.metric_value, e.model, r.agent_id "
            "FROM evaluations v JOIN exchanges e ON e.id = v.exchange_id "
            "LEFT JOIN runs r ON r.id = e.run_id WHERE v.created_at >= ? "
            "ORDER BY v.created_at DESC LIMIT 50000",  # the newest, if more
            [self.store._value(since)],
        )
