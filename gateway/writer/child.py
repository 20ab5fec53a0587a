"""The writer process itself: reads frames in order, feeds the recorder, answers calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.capture.exchange import Exchange
from gateway.settings import Settings
from gateway.writer.health import WriterHealth
from gateway.writer.memory import give_back, limit_arenas, tune_gc
from gateway.writer.priority import step_aside
from gateway.writer.protocol import (
    HEALTH_EVERY,
    Call,
    CallFailed,
    Failed,
    Frames,
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
    unpack,
)
from gateway.writer.spool import Spool

log = logging.getLogger("agentops.writer")
REPLAY_BATCHES = 4  # of the recorder's batches (by bytes) in its queue while a file replays


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
    limit_arenas()
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
        self.trimmer: asyncio.Task[None] | None = None
        self.calls: dict[str, Callable[..., Any]] = {
            "drained": self._drained,
            "finish_idle_runs": self._finish_idle_runs,
            # integrations (gateway/integrations/host.py)
            "metrics": lambda: self.host.exposition(),
            "log_experiment": lambda experiment: self.host.log_experiment(experiment),
            "log_evaluation": lambda evaluation: self.host.log_evaluation(evaluation),
            "integrations_drained": lambda: self.host.drained(),
        }

    async def run(self) -> None:
        down, up = self.conn
        # Records come through `Frames` (split as they arrive); keep the unused half of the
        # other way: a StreamWriter closes its transport when collected.
        self._down, reader = await asyncio.get_running_loop().create_unix_connection(
            Frames, sock=_socket(down)
        )
        _, self.out = await asyncio.open_unix_connection(sock=_socket(up))
        try:
            await self._open()
        except Exception as exc:
            log.error("writer could not start: %s", exc)
            self.out.write(frame(Failed(f"{type(exc).__name__}: {exc}")))
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
            await self.lease.release()
            await self.store.close()

    async def _open(self) -> None:
        from gateway.capture.pricing import PriceTable
        from gateway.providers import make_providers, provider_named
        from gateway.runs.grouper import Grouper
        from gateway.store.exchanges import Store
        from gateway.store.grouping import WRITER, NodeLease
        from gateway.store.runs import RunStore
        from gateway.writer.recorder import Recorder

        self.store = Store(self.settings.db)
        await self.store.open(migrate_schema=False)  # the proxy's process migrated it
        providers = make_providers(self.settings)
        self.run_store = RunStore(self.store)
        # Run ids this writer makes use a node of its own; the lease also says whether other
        # writers share the database (then a step may wait for its parent: recorder.py).
        self.lease = NodeLease(self.store, WRITER)
        await self.lease.claim()
        self.lease.start()
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
        self.recorder.lease = self.lease
        self.recorder.start()
        from gateway.integrations.host import IntegrationHost

        self.host = IntegrationHost(self.settings, os.environ)
        self.host.attach(self.recorder)
        step_aside()  # ready to store: from here on, calls come first
        tune_gc()
        self.trimmer = asyncio.create_task(
            give_back(self.settings.malloc_trim == "on"), name="agentops-writer-trim"
        )
        # Ready before replaying what the proxy spooled while no writer ran (that can take
        # a while at idle priority): the proxy can hand over and get health reports at once;
        # records it sends meanwhile wait in the socket, so the order is kept.
        self.out.write(frame(Ready(self._health())))

    async def _serve(self, reader: Frames) -> None:
        while await self._handle(await self._next(reader)):
            pass

    async def _next(self, reader: Frames) -> Message:
        try:
            return await reader.next()
        except (asyncio.IncompleteReadError, ConnectionError):
            return Stop(self.settings.shutdown_grace)  # the proxy is gone

    async def _handle(self, message: Message) -> bool:
        """Act on one frame; False after the last. (A method of its own, so that no frame
        stays referenced while the loop waits for the next one.)"""
        match message:
            case Records(records):
                self._take([unpack(values) for values in records])
            case Overflow(path):
                await self._replay_overflow(Path(path))
            case Call(token, name, args):
                task = asyncio.create_task(self._answer(token, name, args))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            case Stop(timeout):
                await self._stop(timeout)
                return False
        return True

    async def _stop(self, timeout: float) -> None:
        if self.trimmer is not None:
            self.trimmer.cancel()
        await self.recorder.stop(timeout=max(5.0, timeout))
        await self.host.stop()
        with contextlib.suppress(ConnectionError):
            self.out.write(frame(Stopped(self._health())))
            await self.out.drain()

    def _take(self, records: list[Exchange]) -> None:
        spooled = [record.id for record in records if not self.recorder.submit(record)]
        if spooled:
            self._settled(spooled)

    async def _replay_overflow(self, path: Path) -> None:
        """Feed a file the proxy spooled into the pipeline, in order, then delete it once the
        recorder has stored or spooled every record in it. Read a few batches at a time, not
        whole (a file holds up to 64 MiB of bodies): memory stays bounded while it replays."""
        from gateway.writer.recorder import BATCH_BYTES
        from gateway.writer.spool import read_records

        held = 0
        # No frame is read until the file is stored: a batch that lingered for more records
        # would wait 50 ms for nothing, once per file (the proxy hands over many small ones).
        self.recorder.lingers = False
        try:
            for record in read_records(path):
                self.recorder.submit(record)
                held += body_bytes(record)
                if held >= REPLAY_BATCHES * BATCH_BYTES:
                    await self.recorder.queue.join()
                    held = 0
            await self.recorder.queue.join()
        except FileNotFoundError:
            return
        finally:
            self.recorder.lingers = True
        path.unlink(missing_ok=True)

    def _settled(self, ids: list[int]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.out.write(frame(Settled(ids)))

    async def _answer(self, token: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            data = frame(Reply(token, await self.calls[name](*args)))
        except Exception as exc:  # the call, or pickling what it returned
            data = frame(CallFailed(token, f"{type(exc).__name__}: {exc}"))
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.out.write(data)

    async def _drained(self) -> WriterHealth:
        await self.recorder.drained()
        return self._health()

    async def _finish_idle_runs(self) -> list[int]:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.run_idle)
        finished = await self.run_store.finish_idle(cutoff)
        for run_id in finished:
            self.grouper.forget_run(run_id)
            self.store.chains.forget(run_id)
        await self.host.runs_finished(finished, self.run_store)
        return finished

    def _health(self) -> WriterHealth:
        own = self.recorder.health()
        return replace(
            own,
            spool_bytes=own.spool_bytes + self.handoff_bytes,
            integrations=self.host.stats(),
        )

    async def _push_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY)
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.out.write(frame(HealthReport(self._health())))

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
    from gateway.runs.grouper import THREAD_LIMIT, THREAD_SECONDS

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
