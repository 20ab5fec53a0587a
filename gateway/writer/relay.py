"""A worker's writer on SQLite: it hands its records to the supervisor's writer.

SQLite takes one writer at a time, and the run grouper lives in its writer's memory: N
writers on one SQLite file would queue on its lock and each group only the calls it saw. So
with `serve --workers N` on SQLite every worker relays what its proxy captured (call starts
and finished records, batched every FLUSH_SECONDS as the writer's client does) over its pipe
to the supervisor, whose one WriterProcess journals, spools, groups and stores them exactly as
a single process's would. On PostgreSQL each worker runs a WriterProcess of its own instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.settings import Settings
from gateway.writer.client import WriterProcess, overflow_dir
from gateway.writer.health import Health
from gateway.writer.protocol import FLUSH_SECONDS
from gateway.writer.spool import Spool

log = logging.getLogger("agentops.writer")

Send = Callable[[tuple[Any, ...]], None]


class RelayWriter(WriterProcess):
    """WriterProcess's proxy-side interface (submit, begin, start, stop, health), with the
    records sent through `send` as ("records", starts, finished) instead of to a child."""

    def __init__(self, settings: Settings, send: Send, supervisor_spool_dir: str) -> None:
        super().__init__(settings)
        # Where records go when the supervisor is gone: its overflow spool folder (files of
        # this process's own), which the next `serve` on it replays.
        self.overflow = Spool(
            overflow_dir(settings.replace(spool_dir=supervisor_spool_dir)),
            settings.spool_max_bytes,
        )
        self._send = send
        self._sent = 0
        self.lost = 0  # records the supervisor was no longer there to take

    async def start(self, own_spool_if_busy: bool = False) -> None:
        """Nothing to start: the supervisor's writer is running before any worker."""

    def unlock(self) -> None:
        """No spool folder of its own to let go of."""

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._pending = self._pending, []
        starts, self._starts = self._starts, []
        if not batch and not starts:
            return
        try:
            self._send(("records", starts, batch))
        except OSError as exc:  # the supervisor is gone (killed)
            self._keep(batch, exc)
            return
        self._sent += len(batch)

    def _keep(self, batch: list[Any], exc: OSError) -> None:
        """The supervisor is gone (killed), so nothing here can store the records: they go to
        the supervisor's overflow spool folder (a file of this process's own), which the next
        `serve` on it replays first, before the placeholders its journal makes of the same
        calls (a record already stored is not stored again)."""
        kept = self.overflow.append(batch) if batch else 0
        self.overflow.close()
        self.lost += len(batch) - kept
        if kept:
            log.warning(
                "the supervisor is gone (%s): %d records spooled to %s for the next start",
                exc,
                kept,
                self.overflow.folder,
            )
        if kept < len(batch):
            log.error("the supervisor is gone (%s): %d records lost", exc, len(batch) - kept)

    def _schedule_flush(self) -> None:
        self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)

    async def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        self._flush()
        return None

    async def stop(self, timeout: float) -> None:
        """Everything captured so far goes to the supervisor before the worker exits."""
        self._flush()

    @property
    def db_ok(self) -> bool:
        return True

    def health(self) -> Health:
        return Health(
            writer=None,
            database="relayed",
            queue_depth=len(self._pending),
            queue_size=self.queue_size,
            spool_bytes=0,
            spooled_records=0,
            dropped_records=self.lost,
            writer_process="relayed",
            writer_pid=None,
            missing_calls=0,
            recovered_records=0,
            journal="supervisor",
            writer_lag_seconds=0.0,
            writer_lagging=False,
            dropped_recently=False,
        )
