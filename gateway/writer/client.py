"""The proxy's side of the writer: submit, hand-off frames, the journal, the overflow spool,
health, calls into the child, restarts, stop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import multiprocessing
import os
import shutil
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.capture.exchange import Exchange
from gateway.errors import Unavailable
from gateway.settings import Settings
from gateway.writer.child import child_main
from gateway.writer.health import Health, WriterHealth
from gateway.writer.journal import Journal
from gateway.writer.priority import WRITER_NICE, set_group_nice
from gateway.writer.protocol import (
    DROPPED_WINDOW,
    FLUSH_SECONDS,
    LAG_CHECK_SECONDS,
    LAG_SECONDS,
    RESTART_SECONDS,
    START_TIMEOUT,
    Call,
    CallFailed,
    Failed,
    HealthReport,
    Message,
    Overflow,
    Ready,
    Records,
    Reply,
    Settled,
    Stop,
    Stopped,
    _socket,
    body_bytes,
    frame,
    frame_parts,
    pack,
    read_frame,
)
from gateway.writer.spool import Spool

log = logging.getLogger("agentops.writer")


def overflow_dir(settings: Settings) -> Path:
    return Path(settings.spool_dir) / "proxy"


def journal_dir(settings: Settings) -> Path:
    return Path(settings.spool_dir) / "journal"


_context: Any = None


def process_context() -> Any:
    """A forkserver that has imported the writer's code once: each writer forks from it in
    milliseconds, without inheriting the caller's event loop, threads or sockets."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(
            [
                "gateway.writer",
                "gateway.writer.recorder",
                "gateway.providers",
                "gateway.integrations.host",
                "tortoise.backends.sqlite",
                "tortoise.backends.asyncpg",
                "prometheus_client",
            ]
        )
    return _context


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """multiprocessing re-runs the caller's __main__ script in the child unless it is a
    module's __main__; the writer needs nothing from it, and a script that embeds a Gateway
    without an `if __name__ == "__main__"` guard would start itself again. So the child is
    started while __main__ looks like an empty module."""
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


class WriterError(Unavailable, RuntimeError):
    """The writer process could not start (its database, most often); says why."""


class WriterProcess:
    """What the proxy and the API see of the recorder: submit, drained, health, call, stop."""

    def __init__(
        self,
        settings: Settings,
        log_level: int = logging.INFO,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.log_level = log_level
        # Forked from a forkserver started earlier, the child would see that server's
        # environment: give it ours (integrations read WANDB_*, OTEL_* from it).
        self.environ = dict(os.environ) if environ is None else environ
        self.queue_size = settings.queue_size
        self.overflow = Spool(overflow_dir(settings), settings.spool_max_bytes)
        self._unsettled: dict[int, Exchange] = {}  # sent, not yet stored or spooled there
        self._unsettled_bytes = 0  # their bodies' bytes: at most --queue-max-bytes
        self.queue_max_bytes = settings.queue_max_bytes
        self._pending: list[Exchange] = []
        self._starts: list[Exchange] = []  # calls begun since the last flush (journal)
        self.journal = Journal(journal_dir(settings))
        self.missing_calls = 0  # calls a previous process was killed in the middle of
        self.recovered_records = 0  # records it left in its journal
        self._flush_timer: asyncio.TimerHandle | None = None
        self._overflowing = False
        self._writer: asyncio.StreamWriter | None = None
        self._up: asyncio.StreamWriter | None = None
        self._process: Any = None
        self._reader_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._settle_waiters: dict[int, asyncio.Future[None]] = {}
        self._tokens = itertools.count(1)
        self._report: WriterHealth | None = None  # the writer's last, None since it was lost
        self._database = "unknown"  # how its last write went, kept when it is lost
        self._ready: asyncio.Future[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self.lag_seconds = LAG_SECONDS
        self.lag_check_seconds = LAG_CHECK_SECONDS
        self._boosted = False
        self._lag_task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None  # our hold on the spool folder (see _lock_spool)
        self._dropped_by_lost = 0  # drops reported by writer processes that died since
        self._dropped_seen = 0  # dropped_records when last seen to grow, and when
        self._dropped_at: float | None = None

    def _lock_spool(self, own_if_busy: bool) -> None:
        """One process per spool folder: two would replay, and delete, each other's files
        (spool, hand-off, journal). The lock (flock) dies with its process, kill -9 too."""
        folder = Path(self.settings.spool_dir)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError | NotADirectoryError):  # "File exists"
                files = [p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()]
                why = f"{files[-1] if files else 'a part of the path'} is a file, not a folder"
            raise WriterError(f"--spool-dir {folder}: {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if not own_if_busy:
                raise WriterError(
                    f"--spool-dir {folder} is in use by another gateway process (pid "
                    f"{holder}): give each gateway its own --spool-dir"
                ) from None
            private = folder / f"oneshot-{os.getpid()}"
            log.info(
                "--spool-dir %s is in use by pid %s: this command spools to %s",
                folder,
                holder,
                private,
            )
            self.settings = self.settings.replace(spool_dir=str(private))
            self.overflow = Spool(overflow_dir(self.settings), self.settings.spool_max_bytes)
            self.journal = Journal(journal_dir(self.settings))
            self._lock_spool(own_if_busy=False)
            return
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Let go of the spool folder (at stop, or after a failed start); a command's private
        folder goes too when nothing is left in it."""
        if self._lock_fd is None:
            return
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = None
        folder = Path(self.settings.spool_dir)
        if folder.name.startswith("oneshot-") and not any(
            p.is_file() and p.name != "lock" for p in folder.rglob("*")
        ):
            shutil.rmtree(folder, ignore_errors=True)

    def recover(self) -> None:
        """Before the first start: what a killed predecessor left in the journal goes to the
        overflow spool (records, and placeholders of the calls it cut), which the child takes
        over first; then a fresh journal begins (unless --journal off)."""
        found = self.journal.recover()
        if found.records or found.interrupted:
            kept = self.overflow.append(found.records + found.interrupted)
            if kept < len(found.records) + len(found.interrupted):
                log.error("could not spool everything the journal held")
            self.recovered_records = len(found.records)
            self.missing_calls = len(found.interrupted)
            log.warning(
                "the previous gateway process stopped without a clean shutdown: %d records "
                "recovered from its journal; %d calls were in flight and are missing (recorded "
                "with state `interrupted`)",
                self.recovered_records,
                self.missing_calls,
            )
        self.overflow.close()
        self.journal.discard()
        if self.settings.journal == "on":
            self.journal.open()

    async def start(self, own_spool_if_busy: bool = False) -> None:
        """Start the child and wait until its database is open and its grouper rebuilt."""
        if self._process is None:
            self._lock_spool(own_spool_if_busy)
            self.recover()
        ctx = process_context()
        # Two one-way channels, not one duplex socket: when the proxy's process is killed,
        # the child's next reply fails (EPIPE) and asyncio closes that socket at once, with
        # any records still unread in it. With the records on a socket of their own, the
        # child reads every one of them up to the end of the stream, then stores them.
        down_ours, down_theirs = ctx.Pipe(duplex=True)  # records and calls: us -> child
        up_ours, up_theirs = ctx.Pipe(duplex=True)  # settled, health, replies: child -> us
        handoff = [str(p) for p in self.overflow.release(everything=True)]
        self._process = ctx.Process(
            target=child_main,
            args=(self.settings, (down_theirs, up_theirs), self.log_level, handoff, self.environ),
            name="agentops-writer",
            daemon=True,
        )
        with _main_module_hidden():
            self._process.start()
        down_theirs.close()
        up_theirs.close()
        _, writer = await asyncio.open_unix_connection(sock=_socket(down_ours))
        # self._up: the unused half, kept (a StreamWriter closes its transport when collected)
        reader, self._up = await asyncio.open_unix_connection(sock=_socket(up_ours))
        self._ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader), name="agentops-writer-rx")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except TimeoutError:
            self._process.kill()
            raise WriterError("the writer process did not start in time") from None
        except asyncio.CancelledError:  # a Ctrl-C during the start: no writer to wait for
            self._process.kill()
            raise
        self._writer = writer
        self._stopped.clear()
        self._boosted = False  # a new child starts at idle priority
        if self._lag_task is None:
            self._lag_task = asyncio.create_task(self._watch_lag(), name="agentops-writer-lag")
        self._schedule_flush()  # what arrived while it was starting

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while self._receive(await read_frame(reader)):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if not self._start_failed("the writer process exited at start") and not self._stopping:
                self._child_lost()
        finally:
            self._disconnected()

    def _receive(self, message: Message) -> bool:
        """Act on one message from the child; False after its last (failed, stopped)."""
        match message:
            case Settled(ids):
                self._settled(ids)
            case HealthReport(health):
                self._reported(health)
            case Ready(health):
                self._reported(health)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            case Reply(token, value):
                self._answered(token, value, None)
            case CallFailed(token, error):
                self._answered(token, None, WriterError(error))
            case Failed(error):
                self._start_failed(error)
                return False
            case Stopped(health):
                self._reported(health)
                self._stopped.set()
                return False
        return True

    def _settled(self, ids: list[int]) -> None:
        self.journal.settled(ids)
        for exchange_id in ids:
            settled = self._unsettled.pop(exchange_id, None)
            if settled is not None:
                self._unsettled_bytes -= body_bytes(settled)
            waiter = self._settle_waiters.pop(exchange_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _reported(self, health: WriterHealth) -> None:
        self._report = health
        self._database = health.database

    def _answered(self, token: int, value: Any, error: WriterError | None) -> None:
        waiter = self._replies.pop(token, None)
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(value)
        else:
            waiter.set_exception(error)

    def _start_failed(self, why: str) -> bool:
        """Fail a start still waiting for the child's `Ready`; False when none waits."""
        if self._ready is None or self._ready.done():
            return False
        self._ready.set_exception(WriterError(why))
        return True

    def _disconnected(self) -> None:
        """The child's channel closed: nothing more can be sent, no reply will come."""
        if self._writer is not None and not self._stopping:
            self._writer.close()  # the child is gone: nothing more can be sent to it
        self._writer = None
        if self._up is not None:
            self._up.close()
            self._up = None
        for waiter in self._replies.values():
            if not waiter.done():
                waiter.set_exception(WriterError("the writer process went away"))
        self._replies.clear()

    def _child_lost(self) -> None:
        """The child died (killed, out of memory). This process still holds every record the
        child had not stored or spooled: they go to the overflow spool first, then new ones,
        until a new child takes the files over (ids it already stored are skipped)."""
        held = self._release_unsettled()
        # Its counts die with it: keep the drops it reported, or /healthz would forget them.
        if self._report is not None:
            self._dropped_by_lost += self._report.dropped_records
        self._report = None
        log.error("the writer process exited; spooling %d records it held; restarting", len(held))
        if held:
            self._spill(held)
        self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        await asyncio.sleep(RESTART_SECONDS)
        while not self._stopping:
            try:
                await self.start()
                return
            except Exception as exc:
                log.error("the writer process did not restart: %s", exc)
                await asyncio.sleep(5)

    def _release_unsettled(self) -> list[Exchange]:
        """Forget what was in transit (the child is gone or stopped) and return it."""
        held = list(self._unsettled.values())
        self._unsettled.clear()
        self._unsettled_bytes = 0
        return held

    def lag(self) -> float:
        """Seconds the oldest record in transit has waited for the writer since the proxy
        finished it (0 when none waits)."""
        oldest = next(iter(self._unsettled.values()), None)
        if oldest is None:
            return 0.0
        return time.time() - oldest.started_at - (oldest.latency_ms or 0) / 1000

    async def _watch_lag(self) -> None:
        """Once a LAG_CHECK_SECONDS: hand over what waits in the overflow spool even when no
        call comes to flush it (records used to stay there, and /healthz `degraded`, until
        the next call), and give a writer left behind an ordinary CPU share."""
        while True:
            await asyncio.sleep(self.lag_check_seconds)
            if self._overflowing and self._flush_timer is None:
                self._flush()
            lag, pid = self.lag(), self.pid
            if pid is None:
                continue
            if not self._boosted and lag > self.lag_seconds:
                log.info(  # routine under sustained load since the guard fires at 2 s
                    "records have waited %.0f s for the writer: giving it an ordinary "
                    "CPU share until it catches up",
                    lag,
                )
                self._boosted = set_group_nice(pid, 0)
            elif self._boosted and lag < self.lag_seconds / 10:
                log.info("the writer has caught up: back to idle priority")
                self._boosted = not set_group_nice(pid, WRITER_NICE)

    # -- the hot path -------------------------------------------------------------------------

    def begin(self, exchange: Exchange) -> None:
        """A call started: the journal notes it at the next flush (see journal.py)."""
        self._starts.append(exchange)
        if self._flush_timer is None:
            self._schedule_flush()

    def submit(self, exchange: Exchange) -> None:
        self._pending.append(exchange)
        if self._flush_timer is None:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        """Send what the proxy finished in the last few ms as one frame, or spool it. The
        journal gets the same frame first; a batch that goes to the spool is on disk there,
        so the journal notes only its calls' ends (writing 100 KB bodies twice cost a sixth
        of the proxy's time)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()  # when called directly (a call, stop)
            self._flush_timer = None
        batch, self._pending = self._pending, []
        starts, self._starts = self._starts, []
        ids = [exchange.id for exchange in batch]
        writer = self._writer
        size = sum(map(body_bytes, batch))
        if (
            writer is None
            or writer.is_closing()
            or len(self._unsettled) + len(batch) > self.queue_size
            or self._unsettled_bytes + size > self.queue_max_bytes
        ):
            if batch:
                self._spill(batch)  # the spool first: an end noted means a record kept
            self.journal.write(None, [], starts, ids)
            return
        message = frame_parts(Records([pack(e) for e in batch])) if batch else None
        self.journal.write(message, ids, starts, ids)
        if self._overflowing:
            self._hand_over()
        if message is not None:
            for exchange in batch:
                self._unsettled[exchange.id] = exchange
            self._unsettled_bytes += size
            if writer.transport.get_write_buffer_size():
                # backed up (the writer is behind): queue the parts, no futile send
                for part in message:
                    writer.write(part)
            else:
                writer.writelines(message)  # one sendmsg of the parts

    def _spill(self, batch: list[Exchange]) -> None:
        self._overflowing = True
        self.overflow.append(batch)
        self.journal.settled([exchange.id for exchange in batch])  # on disk in the spool

    def _hand_over(self) -> None:
        """The child caught up: close the overflow file and tell the child to replay it, before
        any newer record, so records are stored in the order they were captured."""
        assert self._writer is not None
        self._overflowing = False
        for path in self.overflow.release():
            self._writer.write(frame(Overflow(str(path))))

    # -- requests to the child -----------------------------------------------------------------

    async def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Run a named child operation (see CHILD_CALLS) and return its result."""
        self._flush()
        if self._overflowing and self._writer is not None:
            self._hand_over()
        writer = self._writer
        if writer is None:
            raise WriterError("the writer process is not running")
        token = next(self._tokens)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[token] = waiter
        writer.write(frame(Call(token, name, args)))
        return await asyncio.wait_for(waiter, timeout)

    async def wait_settled(self, exchange_id: int, timeout: float) -> None:
        """Wait until the writer has stored (or spooled) one record, as replay does for its
        own call. Register before yielding to the loop after submitting it."""
        waiter = self._settle_waiters.get(exchange_id)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._settle_waiters[exchange_id] = waiter
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        finally:
            self._settle_waiters.pop(exchange_id, None)

    async def drained(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is stored (or spooled and replayed)."""
        report: WriterHealth = await self.call("drained", timeout=timeout)
        self._reported(report)

    @property
    def db_ok(self) -> bool:
        return self._database == "ok"

    def health(self) -> Health:
        """Both processes' queue, spools and counts (`Health.to_json` is /healthz)."""
        report, lag = self._report, self.lag()
        dropped = self.overflow.dropped + self._dropped_by_lost
        if report is not None:
            dropped += report.dropped_records
        if dropped > self._dropped_seen:
            self._dropped_seen, self._dropped_at = dropped, time.monotonic()
        return Health(
            writer=report,
            database=self._database,
            queue_depth=len(self._unsettled) + len(self._pending),
            queue_size=self.queue_size,
            spool_bytes=self.overflow.size + (report.spool_bytes if report else 0),
            spooled_records=self.overflow.spooled + (report.spooled_records if report else 0),
            dropped_records=dropped,
            writer_process="ok" if self._writer is not None else "down",
            writer_pid=self.pid,
            missing_calls=self.missing_calls,
            recovered_records=self.recovered_records,
            journal=self._journal_state(),
            writer_lag_seconds=round(lag, 3),
            writer_lagging=lag > self.lag_seconds,
            dropped_recently=(
                self._dropped_at is not None
                and time.monotonic() - self._dropped_at < DROPPED_WINDOW
            ),
        )

    def _journal_state(self) -> str:
        if self.settings.journal == "off":
            return "off"
        self.journal.retry()
        return "ok" if self.journal.failed is None else self.journal.failed

    async def stop(self, timeout: float) -> None:
        """Flush to the child and let it finish; whatever it cannot store in time it spools."""
        self._stopping = True
        for task in (self._restart_task, self._lag_task):
            if task is not None:
                task.cancel()
        self._flush()
        if self._overflowing and self._writer is not None:
            self._hand_over()
        writer = self._writer
        if writer is not None:
            writer.write(frame(Stop(timeout)))
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(self._stopped.wait(), timeout + 10)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if self._process is not None:
            await asyncio.to_thread(self._process.join, 10)
            if self._process.is_alive():
                self._process.kill()
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._up is not None:
            self._up.close()
            self._up = None
        leftover = [*self._release_unsettled(), *self._pending]  # only if the child failed us
        self._pending = []
        kept = self.overflow.append(leftover) if leftover else 0
        self.overflow.close()
        final = self.health()  # the last word on this process's counts, for the log
        if final.writer is not None:  # a writer ran (a failed start says why, elsewhere)
            log.info(
                "writer stopped: %s records stored, %s spooled, %s dropped and "
                "counted, %s quarantined",
                final.writer.written_records,
                final.spooled_records,
                final.dropped_records,
                final.writer.quarantined_by_writer,
            )
        # Everything is stored or spooled: the journal has nothing more to keep (unless the
        # spool refused some, which then stay in the journal for the next start).
        self.journal.close(clean=kept == len(leftover))
        self.unlock()
