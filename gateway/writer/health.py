"""The capture pipeline's health, typed: what the writer process reports of itself
(`WriterHealth`, sent over the wire) and what the proxy's side makes of it (`Health`), which
becomes a JSON dict only at the HTTP edge (/healthz)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class WriterHealth:
    """The writer process's own counts: its queue, spool, database and integrations."""

    queue_depth: int
    queue_size: int
    spool_bytes: int  # its spool, plus hand-off files it has not replayed yet
    spooled_records: int
    dropped_records: int
    written_records: int
    database: str  # "ok", or "down" when its last write failed
    database_errors: int
    quarantined_by_writer: int
    last_database_error: str | None
    checked_at: float  # Unix time of the report
    integrations: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> stats
    # records waiting for a parent another replica's writer has not stored yet (recorder.py)
    waiting_for_parent: int = 0
    id_collisions: int = 0  # records whose id another record had: stored with a new id


@dataclass(frozen=True, slots=True)
class Health:
    """The pipeline as the proxy's process sees it: its own queue, overflow spool and journal,
    and the writer's last report (`writer` is None until a writer reports, and again after
    one is lost until its successor does)."""

    writer: WriterHealth | None
    database: str  # the writer's last word: "ok", "down", or "unknown"
    queue_depth: int  # records pending here or in transit to the writer
    queue_size: int
    spool_bytes: int  # both spools: the writer's and the proxy's overflow
    spooled_records: int
    dropped_records: int  # both, and those a lost writer process had reported
    writer_process: str  # "ok" or "down"
    writer_pid: int | None
    missing_calls: int
    recovered_records: int
    journal: str  # "ok", "off", or why journaling stopped
    writer_lag_seconds: float
    writer_lagging: bool
    dropped_recently: bool

    def to_json(self) -> dict[str, Any]:
        """The /healthz fields, in their order; the writer's own appear only once it reported."""
        data: dict[str, Any] = {
            "queue_depth": self.queue_depth,
            "queue_size": self.queue_size,
            "spool_bytes": self.spool_bytes,
            "spooled_records": self.spooled_records,
            "dropped_records": self.dropped_records,
        }
        writer = self.writer
        if writer is not None:
            data["written_records"] = writer.written_records
            data["database"] = self.database
            data["database_errors"] = writer.database_errors
            data["quarantined_by_writer"] = writer.quarantined_by_writer
            data["last_database_error"] = writer.last_database_error
            data["checked_at"] = writer.checked_at
            data["integrations"] = writer.integrations
            data["waiting_for_parent"] = writer.waiting_for_parent
            data["id_collisions"] = writer.id_collisions
        data["writer_process"] = self.writer_process
        data["writer_pid"] = self.writer_pid
        data["missing_calls"] = self.missing_calls
        data["recovered_records"] = self.recovered_records
        data["journal"] = self.journal
        data["database"] = self.database  # keeps its place when the writer's fields came first
        data["writer_lag_seconds"] = self.writer_lag_seconds
        data["writer_lagging"] = self.writer_lagging
        data["dropped_recently"] = self.dropped_recently
        return data


# `serve --workers N`: the /healthz figures that are totals over the group's processes (the
# supervisor's writer and each worker's, or on SQLite each worker's relay), and of those the
# counts that only grow: a replaced worker's last ones are kept, or a restart would lower them.
SUMMED = (
    "queue_depth",
    "queue_size",
    "spool_bytes",
    "spooled_records",
    "dropped_records",
    "written_records",
    "database_errors",
    "quarantined_by_writer",
    "waiting_for_parent",
    "id_collisions",
    "missing_calls",
    "recovered_records",
)
COUNTERS = frozenset(SUMMED) - {"queue_depth", "queue_size", "spool_bytes", "waiting_for_parent"}


def totals(
    own: dict[str, Any], workers: list[dict[str, Any]], retired: dict[str, int]
) -> dict[str, Any]:
    """The supervisor's /healthz fields (`own`) with the SUMMED figures added up over it, the
    live workers' last reports and `retired` (counters of workers since replaced); the lag is
    the longest, `writer_lagging` and `dropped_recently` hold if they hold anywhere. `own`'s
    figures are kept under `supervisor`."""
    data = dict(own)
    for key in SUMMED:
        if key in own or any(key in w for w in workers):
            parts = [own.get(key), retired.get(key), *(w.get(key) for w in workers)]
            data[key] = sum(p for p in parts if isinstance(p, int | float))
    data["writer_lag_seconds"] = max(
        [own.get("writer_lag_seconds", 0.0), *(w.get("writer_lag_seconds", 0.0) for w in workers)]
    )
    for flag in ("writer_lagging", "dropped_recently"):
        data[flag] = any(bool(d.get(flag)) for d in (own, *workers))
    integrations: dict[str, dict[str, Any]] = {}
    for source in (own, *workers):
        for name, stats in (source.get("integrations") or {}).items():
            into = integrations.setdefault(name, {})
            for stat, value in stats.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    into[stat] = into.get(stat, 0) + value
                else:
                    into.setdefault(stat, value)
    if "integrations" in data or integrations:
        data["integrations"] = integrations
    data["supervisor"] = {key: own[key] for key in SUMMED if key in own}
    return data


def retire(retired: dict[str, int], last: dict[str, Any]) -> None:
    """A worker is gone: keep the counters of its last report in `retired`."""
    for key in COUNTERS:
        value = last.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            retired[key] = retired.get(key, 0) + value
