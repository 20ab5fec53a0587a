"""The writer process: capture work runs beside the proxy, not inside it.

Threads do not escape the GIL, so parsing, run grouping and database writes would compete with
the proxy for one core. The proxy's process only pickles finished records in batches (one
write per event-loop tick) onto a socket; a child process owns the Recorder (queue, batching,
spool, database) and the run grouper. If the child is unreachable, records go to an overflow
spool that the next child replays, so nothing is lost while it restarts.

    proxy process                          writer process
    Proxy -> WriterClient.submit  ==pickled batches==>  Recorder -> Grouper -> Store
                                  <==health, drained===
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import pickle
import socket
import struct
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.exchange import Exchange
from gateway.spool import Spool

log = logging.getLogger("agentops.writer")
_HEADER = struct.Struct(">I")
HEALTH_EVERY = 0.2
OVERFLOW_BYTES = 256 * 1024 * 1024  # unread bytes on the socket before the proxy spools


async def read_frame(reader: asyncio.StreamReader) -> tuple[str, Any]:
    header = await reader.readexactly(_HEADER.size)
    (length,) = _HEADER.unpack(header)
    return pickle.loads(await reader.readexactly(length))


def frame(kind: str, payload: Any) -> bytes:
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def overflow_dir(settings: Any) -> Path:
    return Path(settings.spool_dir) / "overflow"


# -- the proxy's side ------------------------------------------------------------------------


class WriterClient:
    """What the proxy and the API see of the recorder: submit, drained, health, stop."""

    def __init__(self, settings: Any, log_level: int) -> None:
        self.settings = settings
        self.log_level = log_level
        self.overflow = Spool(overflow_dir(settings), settings.spool_max_bytes)
        self.submitted = 0
        self._pending: list[Exchange] = []
        self._flush_scheduled = False
        self._writer: asyncio.StreamWriter | None = None
        self._process: Any = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tokens = itertools.count(1)
        self._health: dict[str, Any] = {}
        self._ready = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe(duplex=True)
        self._process = ctx.Process(target=child_main, args=(self.settings, theirs,
                                                             self.log_level),
                                    name="agentops-writer", daemon=True)
        self.overflow.close()  # the child replays what is there; we stop appending to it
        self._process.start()
        theirs.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(ours.fileno()))
        ours.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        self._reader_task = asyncio.create_task(self._read(reader), name="agentops-writer-rx")
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._reader_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            raise RuntimeError(self._health.get("start_error") or "the writer process exited")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind == "health":
                    self._health = payload
                    self._ready.set()
                elif kind == "drained":
                    token, self._health = payload
                    waiter = self._waiters.pop(token, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(self._health)
                elif kind == "failed":
                    self._health = {"start_error": payload}
                    return
                elif kind == "stopped":
                    self._stopped.set()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if not self._stopping:
                log.error("the writer process went away; spooling until it is back")
                asyncio.get_running_loop().create_task(self._restart())
        finally:
            self._writer = None
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(RuntimeError("the writer process went away"))
            self._waiters.clear()

    async def _restart(self) -> None:
        await asyncio.sleep(0.5)
        if self._stopping:
            return
        with contextlib.suppress(Exception):
            self._ready.clear()
            await self.start()

    # -- the hot path -------------------------------------------------------------------------

    def submit(self, exchange: Exchange) -> None:
        self.submitted += 1
        self._pending.append(exchange)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        writer = self._writer
        if (writer is None or writer.is_closing()
                or writer.transport.get_write_buffer_size() > OVERFLOW_BYTES):
            self.overflow.append(batch)
            return
        writer.write(frame("records", [e.to_dict() for e in batch]))

    # -- the recorder's interface ----------------------------------------------------------

    async def drained(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until everything submitted so far is stored (or spooled by the writer)."""
        self._flush()
        if self._writer is None:
            return self.health()
        token = next(self._tokens)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[token] = waiter
        self._writer.write(frame("drain", token))
        return await asyncio.wait_for(waiter, timeout)

    def health(self) -> dict[str, Any]:
        health = dict(self._health)
        health.pop("start_error", None)
        health["spool_bytes"] = health.get("spool_bytes", 0) + self.overflow.size
        health["dropped_records"] = health.get("dropped_records", 0) + self.overflow.dropped
        health["writer_process"] = "ok" if self._writer is not None else "down"
        if self._writer is None:
            health["database"] = health.get("database", "unknown")
        return health

    @property
    def db_ok(self) -> bool:
        return self._health.get("database") == "ok"

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self._flush()
        writer = self._writer
        if writer is not None:
            writer.write(frame("stop", timeout))
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
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
        leftover, self._pending = self._pending, []
        if leftover:
            self.overflow.append(leftover)
        self.overflow.close()


# -- the writer's side -----------------------------------------------------------------------


def child_main(settings: Any, conn: Connection, log_level: int) -> None:
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s[writer]: %(message)s")
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_child(settings, conn))


async def _child(settings: Any, conn: Connection) -> None:
    from gateway.pricing import PriceTable
    from gateway.providers.mistral import MistralProvider
    from gateway.recorder import Recorder
    from gateway.run_store import RunStore
    from gateway.runs import Grouper
    from gateway.store import Store

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    store = Store(settings.db)
    try:
        await store.open()
    except Exception as exc:
        writer.write(frame("failed", str(exc)))
        await writer.drain()
        return
    provider = MistralProvider()
    run_store = RunStore(store)
    grouper = Grouper(settings.run_idle)
    await rebuild_grouper(grouper, run_store)
    recorder = Recorder(store, Spool(settings.spool_dir, settings.spool_max_bytes),
                        lambda name: provider, PriceTable.load(settings.prices),
                        max_body_bytes=settings.max_body_bytes, queue_size=settings.queue_size,
                        grouper=grouper, run_store=run_store)
    overflow = Spool(overflow_dir(settings), settings.spool_max_bytes)
    for path, records in overflow.drain():  # what the proxy spooled while we were away
        for record in records:
            recorder.submit(record)
        overflow.done(path)
    recorder.start()
    tasks = [asyncio.create_task(_push_health(writer, recorder)),
             asyncio.create_task(_finish_runs(settings, run_store, grouper))]
    try:
        while True:
            try:
                kind, payload = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                kind, payload = "stop", settings.shutdown_grace  # the proxy is gone: flush
            if kind == "records":
                for n, data in enumerate(payload):
                    recorder.submit(Exchange.from_dict(data))
                    if n % 100 == 99:
                        await asyncio.sleep(0)
            elif kind == "drain":
                await recorder.drained()
                writer.write(frame("drained", (payload, recorder.health())))
            elif kind == "stop":
                await recorder.stop(timeout=max(5.0, float(payload)))
                with contextlib.suppress(ConnectionError):
                    writer.write(frame("stopped", None))
                    await writer.drain()
                return
    finally:
        for task in tasks:
            task.cancel()
        await store.close()


async def _push_health(writer: asyncio.StreamWriter, recorder: Any) -> None:
    while True:
        health = recorder.health()
        health["database"] = "ok" if recorder.db_ok else "down"
        with contextlib.suppress(ConnectionError):
            writer.write(frame("health", health))
        await asyncio.sleep(HEALTH_EVERY)


async def _finish_runs(settings: Any, run_store: Any, grouper: Any) -> None:
    """Settle runs that saw no exchange for --run-idle seconds (here, beside the grouper)."""
    every = max(0.05, min(30.0, settings.run_idle / 4))
    while True:
        await asyncio.sleep(every)
        try:
            cutoff = datetime.now(UTC) - timedelta(seconds=settings.run_idle)
            for run_id in await run_store.finish_idle(cutoff):
                grouper.forget_run(run_id)
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
            grouper.remember_thread(row["thread_key"], row["id"], row["run_id"],
                                    _time(row["started_at"]).timestamp())
    for row in await run_store.open_named_runs():
        grouper.names[row["name"]] = (row["id"], _time(row["last_seen_at"]).timestamp())
    for row in reversed(await run_store.conversation_links(THREAD_LIMIT)):
        grouper.remember_conversation(row["conversation_id"], row["run_id"])


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
