"""The writer process: everything after capture runs beside the proxy, at a lower CPU priority.

Parsing, run grouping, database writes and their indexes cost several times what forwarding a
call does. In the proxy's process they would share its core and its GIL, so every record
stored would be a call not served. Here the proxy's process only pickles finished records,
a few milliseconds' worth at a time, onto a socket; a child process (at idle CPU priority, so
the kernel serves calls first and capture gets the CPU they leave: see `step_aside`) owns
the recorder, the run grouper and the writes.

    proxy process                                  writer process (SCHED_IDLE)
    Proxy -> WriterProcess.submit ==records==>  Recorder -> Grouper -> Store
                                  <==settled, health, replies==

Bounded and lossless: records sent but not yet stored or spooled by the child ("in transit",
still referenced here until the child says they are settled) are at most --queue-size, and
their bodies at most --queue-max-bytes (the writer yields the CPU to calls, so under a load
that uses every core it falls behind and this is what fills); past
that the proxy's process appends to its own spool folder (`<spool-dir>/proxy`) and hands each
finished file to the child, which replays it in order. If the child dies, what it held is
spooled here and a new child takes it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import multiprocessing
import operator
import os
import pickle
import shutil
import signal
import socket
import struct
import sys
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.errors import Unavailable
from gateway.exchange import Exchange
from gateway.gc_tuning import tune_gc
from gateway.journal import Journal
from gateway.settings import Settings
from gateway.spool import Spool

log = logging.getLogger("agentops.writer")

WRITER_NICE = 19  # for the writer's autogroup, and where SCHED_IDLE is missing
# Records leave the proxy's process in one frame per FLUSH_SECONDS at most: one write and one
# wake-up of the writer for many calls instead of one per call (at concurrency 1 about a sixth
# less writer CPU per record). A call or stop flushes at once.
FLUSH_SECONDS = 0.005
HEALTH_EVERY = 0.25
# Idle priority must not mean never: when a record has waited this long for the writer (the
# machine's cores are busy with other work), its group gets an ordinary share until it has
# caught up.
LAG_SECONDS = 10.0
LAG_CHECK_SECONDS = 1.0
START_TIMEOUT = 60.0
# /healthz says `dropped` for this long after a record was last dropped.
DROPPED_WINDOW = 300.0
RESTART_SECONDS = 0.5
_HEADER = struct.Struct(">I")
_FIELDS = tuple(Exchange.__slots__)


def body_bytes(exchange: Exchange) -> int:
    """What a record holds in memory, near enough: its request and response bodies."""
    return len(exchange.request_body) + sum(map(len, exchange.response_chunks))


def frame(*message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    message: tuple[Any, ...] = pickle.loads(await reader.readexactly(length))
    return message


# A record as a bare tuple of its fields: pickles in microseconds, no field names repeated.
pack: Callable[[Exchange], tuple[Any, ...]] = operator.attrgetter(*_FIELDS)


def unpack(values: tuple[Any, ...]) -> Exchange:
    return Exchange(*values)  # the fields in declaration order, as `pack` reads them


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
                "gateway.recorder",
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


# -- the proxy's side ------------------------------------------------------------------------


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
        self._health: dict[str, Any] = {}
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
            raise WriterError(f"--spool-dir {folder}: {exc.strerror or exc}") from None
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
            while True:
                kind, *rest = await read_frame(reader)
                if kind == "settled":
                    self.journal.settled(rest[0])
                    for exchange_id in rest[0]:
                        settled = self._unsettled.pop(exchange_id, None)
                        if settled is not None:
                            self._unsettled_bytes -= body_bytes(settled)
                        waiter = self._settle_waiters.pop(exchange_id, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
                elif kind == "health":
                    self._health = rest[0]
                elif kind == "ready":
                    self._health = rest[0]
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                elif kind == "reply":
                    token, ok, value = rest
                    waiter = self._replies.pop(token, None)
                    if waiter is not None and not waiter.done():
                        if ok:
                            waiter.set_result(value)
                        else:
                            waiter.set_exception(WriterError(value))
                elif kind == "failed":
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_exception(WriterError(rest[0]))
                    return
                elif kind == "stopped":
                    self._health = rest[0]
                    self._stopped.set()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(WriterError("the writer process exited at start"))
            elif not self._stopping:
                self._child_lost()
        finally:
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
        self._dropped_by_lost += self._health.get("dropped_records", 0)
        self._health = {"database": self._health.get("database", "unknown")}
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
        while True:
            await asyncio.sleep(self.lag_check_seconds)
            lag, pid = self.lag(), self.pid
            if pid is None:
                continue
            if not self._boosted and lag > self.lag_seconds:
                log.warning(
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
        message = frame("records", [pack(e) for e in batch]) if batch else None
        self.journal.write(message, ids, starts, ids)
        if self._overflowing:
            self._hand_over()
        if message is not None:
            for exchange in batch:
                self._unsettled[exchange.id] = exchange
            self._unsettled_bytes += size
            writer.write(message)

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
            self._writer.write(frame("overflow", str(path)))

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
        writer.write(frame("call", token, name, args))
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
        self._health = await self.call("drained", timeout=timeout)

    @property
    def db_ok(self) -> bool:
        return self._health.get("database") == "ok"

    def health(self) -> dict[str, Any]:
        health = dict(self._health)
        health["queue_depth"] = len(self._unsettled) + len(self._pending)
        health["queue_size"] = self.queue_size
        health["spool_bytes"] = health.get("spool_bytes", 0) + self.overflow.size
        health["spooled_records"] = health.get("spooled_records", 0) + self.overflow.spooled
        health["dropped_records"] = (
            health.get("dropped_records", 0) + self.overflow.dropped + self._dropped_by_lost
        )
        health["writer_process"] = "ok" if self._writer is not None else "down"
        health["writer_pid"] = self.pid
        health["missing_calls"] = self.missing_calls
        health["recovered_records"] = self.recovered_records
        health["journal"] = (
            "off"
            if self.settings.journal == "off"
            else "ok"
            if self.journal.failed is None
            else self.journal.failed
        )
        health.setdefault("database", "unknown")
        lag = self.lag()
        health["writer_lag_seconds"] = round(lag, 3)
        health["writer_lagging"] = lag > self.lag_seconds
        if health["dropped_records"] > self._dropped_seen:
            self._dropped_seen, self._dropped_at = health["dropped_records"], time.monotonic()
        health["dropped_recently"] = (
            self._dropped_at is not None and time.monotonic() - self._dropped_at < DROPPED_WINDOW
        )
        return health

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
            writer.write(frame("stop", timeout))
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
        if "written_records" in final:  # a writer ran (a failed start says why, elsewhere)
            log.info(
                "writer stopped: %s records stored, %s spooled, %s dropped and "
                "counted, %s quarantined",
                final["written_records"],
                final.get("spooled_records", 0),
                final.get("dropped_records", 0),
                final.get("quarantined_by_writer", 0),
            )
        # Everything is stored or spooled: the journal has nothing more to keep (unless the
        # spool refused some, which then stay in the journal for the next start).
        self.journal.close(clean=kept == len(leftover))
        self.unlock()


# -- the writer's side -----------------------------------------------------------------------


def step_aside() -> None:
    """Let calls have the CPU first: this process gets what they leave.

    `nice` alone is not enough on Linux. With autogroup scheduling (the default on desktop
    and most server kernels) CPU is shared between sessions first and by nice only within a
    session, so a niced writer in the proxy's session takes the whole session's share
    whenever the proxy waits on a socket, and competes as an equal with the clients and
    anything else on the machine. So the writer leaves the session for one of its own, sets
    that group's nice to 19, and asks for SCHED_IDLE, under which any ordinary task that
    wakes up preempts it at once. Each step is best effort: where one is missing (another OS,
    no autogroup, a container that forbids it) the others still apply. Measured with
    bench/bench.py at c=64 on 2 cores, SQLite: 0.67x -> 0.96x the bare passthrough's req/s.
    Called once the database is open and the grouper rebuilt: that start runs at ordinary
    priority, so a gateway or a restarted writer comes up quickly on a busy machine too.
    """
    set_group_nice(os.getpid(), WRITER_NICE)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: plain nice is what there is
        with contextlib.suppress(OSError):
            os.nice(WRITER_NICE)


def set_group_nice(pid: int, nice: int) -> bool:
    """Set the nice of the autogroup `pid` leads (the writer's own session). Unlike leaving
    SCHED_IDLE, which needs CAP_SYS_NICE, any nice from 0 to 19 needs no privilege, so the
    proxy's process can raise its writer's share and lower it again. False where there is no
    autogroup or the kernel said no (it takes one change per 100 ms from unprivileged users)."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as group:
            group.write(str(nice))
        return True
    except OSError:
        return False


def _socket(conn: Connection) -> socket.socket:
    """The socket under a multiprocessing Pipe end, for asyncio (the Pipe end is closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()
    return sock


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def child_main(
    settings: Settings,
    conn: tuple[Connection, Connection],
    log_level: int,
    handoff: list[str],
    environ: dict[str, str] | None = None,
) -> None:
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    # The proxy's process decides when to stop (it flushes to us first): a Ctrl-C reaching
    # the whole process group must not kill this process with records still in memory.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setsid()  # a session (and so an autogroup) of its own: see step_aside
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s[writer]: %(message)s"
    )
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Child(settings, conn, handoff).run())


class Child:
    """The writer process's loop: read frames in order, feed the recorder, answer calls."""

    def __init__(
        self, settings: Settings, conn: tuple[Connection, Connection], handoff: list[str]
    ) -> None:
        self.settings = settings
        self.conn = conn
        self.handoff = handoff
        # Bytes of hand-off files not yet replayed: reported as spooled, so /healthz does
        # not say "drained" while they wait (the child is ready before it replays them).
        self.handoff_bytes = sum(_size(Path(p)) for p in handoff)
        self.tasks: set[asyncio.Task[None]] = set()
        self.calls: dict[str, Callable[..., Any]] = {
            "drained": self._drained,
            "finish_idle_runs": self._finish_idle_runs,
            # integrations (gateway/integrations/host.py)
            "metrics": lambda: self.host.exposition(),
            "log_experiment": lambda experiment: self.host.log_experiment(experiment),
            "integrations_drained": lambda: self.host.drained(),
        }

    async def run(self) -> None:
        down, up = self.conn
        # Keep the unused halves: a StreamWriter closes its transport when collected.
        reader, self._down = await asyncio.open_unix_connection(sock=_socket(down))
        _, self.out = await asyncio.open_unix_connection(sock=_socket(up))
        try:
            await self._open()
        except Exception as exc:
            log.error("writer could not start: %s", exc)
            self.out.write(frame("failed", f"{type(exc).__name__}: {exc}"))
            with contextlib.suppress(ConnectionError):
                await self.out.drain()
            return
        tasks = [asyncio.create_task(self._push_health()), asyncio.create_task(self._finish_runs())]
        try:
            for path in self.handoff:  # what the proxy spooled while no writer was running
                size = _size(Path(path))
                await self._replay_overflow(Path(path))
                self.handoff_bytes = max(0, self.handoff_bytes - size)
            await self._serve(reader)
        finally:
            for task in tasks:
                task.cancel()
            await self.store.close()

    async def _open(self) -> None:
        from gateway.pricing import PriceTable
        from gateway.providers import make_providers, provider_named
        from gateway.recorder import Recorder
        from gateway.run_store import RunStore
        from gateway.runs import Grouper
        from gateway.store import Store

        self.store = Store(self.settings.db)
        await self.store.open(migrate_schema=False)  # the proxy's process migrated it
        providers = make_providers(self.settings)
        self.run_store = RunStore(self.store)
        self.grouper = Grouper(self.settings.run_idle)
        await rebuild_grouper(self.grouper, self.run_store)
        self.recorder = Recorder(
            self.store,
            Spool(self.settings.spool_dir, self.settings.spool_max_bytes),
            partial(provider_named, providers),
            PriceTable.load(self.settings.prices),
            max_body_bytes=self.settings.max_body_bytes,
            queue_size=self.settings.queue_size,
            grouper=self.grouper,
            run_store=self.run_store,
        )
        self.recorder.on_settled = self._settled
        self.recorder.start()
        from gateway.integrations.host import IntegrationHost

        self.host = IntegrationHost(self.settings, os.environ)
        self.host.attach(self.recorder)
        step_aside()  # ready to store: from here on, calls come first
        tune_gc()
        # Ready before replaying what the proxy spooled while no writer ran (that can take
        # a while at idle priority): the proxy can hand over and get health reports at once;
        # records it sends meanwhile wait in the socket, so the order is kept.
        self.out.write(frame("ready", self._health()))

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                kind, *rest = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                kind, rest = "stop", [self.settings.shutdown_grace]  # the proxy is gone
            if kind == "records":
                self._take([unpack(values) for values in rest[0]])
            elif kind == "overflow":
                await self._replay_overflow(Path(rest[0]))
            elif kind == "call":
                token, name, args = rest
                task = asyncio.create_task(self._answer(token, name, args))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif kind == "stop":
                await self.recorder.stop(timeout=max(5.0, float(rest[0])))
                await self.host.stop()
                with contextlib.suppress(ConnectionError):
                    self.out.write(frame("stopped", self._health()))
                    await self.out.drain()
                return

    def _take(self, records: list[Exchange]) -> None:
        spooled = [record.id for record in records if not self.recorder.submit(record)]
        if spooled:
            self._settled(spooled)

    async def _replay_overflow(self, path: Path) -> None:
        """Feed a file the proxy spooled into the pipeline, in order, then delete it once the
        recorder has stored or spooled every record in it."""
        from gateway.spool import read_records

        try:
            records = list(read_records(path))
        except FileNotFoundError:
            return
        for record in records:
            self.recorder.submit(record)
        await self.recorder.queue.join()
        path.unlink(missing_ok=True)

    def _settled(self, ids: list[int]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.out.write(frame("settled", ids))

    async def _answer(self, token: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            value = await self.calls[name](*args)
            message = frame("reply", token, True, value)
        except Exception as exc:
            message = frame("reply", token, False, f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.out.write(message)

    async def _drained(self) -> dict[str, Any]:
        await self.recorder.drained()
        return self._health()

    async def _finish_idle_runs(self) -> list[int]:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.run_idle)
        finished = await self.run_store.finish_idle(cutoff)
        for run_id in finished:
            self.grouper.forget_run(run_id)
        await self.host.runs_finished(finished, self.run_store)
        return finished

    def _health(self) -> dict[str, Any]:
        health = {**self.recorder.health(), **self.host.health()}
        health["spool_bytes"] += self.handoff_bytes
        return health

    async def _push_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY)
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.out.write(frame("health", self._health()))

    async def _finish_runs(self) -> None:
        """Settle runs that saw no exchange for --run-idle seconds (here, beside the grouper)."""
        every = max(0.05, min(30.0, self.settings.run_idle / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self._finish_idle_runs()
            except Exception:
                log.exception("could not finish idle runs")


async def rebuild_grouper(grouper: Any, run_store: Any) -> None:
    """Give the grouper back what it knew before a restart: recent threads (24 h or 100,000
    exchanges), open named runs, and conversation links."""
    from gateway.runs import THREAD_LIMIT, THREAD_SECONDS

    since = datetime.now(UTC) - timedelta(seconds=THREAD_SECONDS)
    for row in reversed(await run_store.recent_threads(since, THREAD_LIMIT)):
        if row["parent_id"] is not None:
            grouper.extended.add(row["parent_id"])
        if row["thread_key"]:
            grouper.remember_thread(
                row["thread_key"], row["id"], row["run_id"], _time(row["started_at"]).timestamp()
            )
    for row in await run_store.open_named_runs():
        grouper.names[row["name"]] = (row["id"], _time(row["last_seen_at"]).timestamp())
    for row in reversed(await run_store.conversation_links(THREAD_LIMIT)):
        grouper.remember_conversation(row["conversation_id"], row["run_id"])


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
