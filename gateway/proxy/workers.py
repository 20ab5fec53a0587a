"""`serve --workers N`: N proxy processes on one port, one supervisor with the UI/API.

    supervisor (UI/API, retention, its own writer)       worker 1..N (proxy only)
      reserves host:port (SO_REUSEPORT, never listens)     listen on host:port (SO_REUSEPORT)
      spawns, watches, restarts, stops the workers   <==   ready, stats, relayed records

The kernel spreads new connections over the workers' listening sockets (SO_REUSEPORT hashes
each connection's addresses), so a keep-alive connection stays on one worker and many
connections use every worker. The supervisor's socket is bound but never listening: it keeps
the port (an ephemeral one too) across worker restarts and takes no connection itself.

Each worker talks to the supervisor over one pipe: ("ready", pid), ("stats", {...}) once a
second, ("records", starts, finished) on SQLite (gateway/writer/relay.py), ("metrics", text)
when asked. The pipe's end is the worker's stop signal too: if the supervisor dies (kill -9)
its workers stop gracefully. Workers ignore SIGINT (a Ctrl-C reaches the whole process group;
the supervisor forwards it once as SIGTERM, a second Ctrl-C as a second SIGTERM, which cuts).

A worker that exits on its own is restarted after RESTART_SECONDS (a restart that fails, say
while the database is down, is tried again with a growing delay, up to 30 s). A worker that
fails the group's first start (a bad database, the port) stops the whole group, since every
restart would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Unavailable
from gateway.writer import health

log = logging.getLogger("agentops.workers")

START_TIMEOUT = 60.0
RESTART_SECONDS = 1.0
STATS_EVERY = 0.25


class WorkerError(Unavailable, RuntimeError):
    """A worker could not start; says why."""


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind host:port with SO_REUSEPORT without listening: the port is ours (or the bind
    fails as it would for one process), and the workers bind it beside this socket."""
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux, BSD and macOS have it
        raise WorkerError("--workers above 1 needs SO_REUSEPORT, which this system lacks")
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Worker:
    index: int
    process: Any
    conn: Any
    ready: asyncio.Future[None]
    started: float = field(default_factory=time.monotonic)
    pid: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    # relayed calls it started and has not sent the record of yet (id -> the start)
    open: dict[int, Any] = field(default_factory=dict)


Spawn = Callable[[int, Any], tuple[Callable[..., None], tuple[Any, ...]]]
OnRecords = Callable[[list[Any], list[Any]], None]
OnLost = Callable[[int, list[Any]], None]


class WorkerGroup:
    """Starts N workers (`spawn(index, conn)` gives each its target and arguments), relays
    their records to `on_records`, restarts the ones that die, stops them all. A relaying
    worker that dies (a SIGKILL, an OOM kill) leaves calls it started and never sent the
    record of: they go to `on_lost(index, starts)`, as a killed gateway's journal does."""

    def __init__(
        self,
        count: int,
        spawn: Spawn,
        on_records: OnRecords | None = None,
        on_lost: OnLost | None = None,
    ) -> None:
        self.count = count
        self.spawn = spawn
        self.on_records = on_records
        self.on_lost = on_lost
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.gave_up = asyncio.Event()  # a worker failed its start: the group stops
        self.why: str | None = None
        self._metrics: dict[int, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.restarted = 0
        self.retired: dict[str, int] = {}  # the last counters of workers that exited
        self.started = False  # every worker was ready once: failures now mean restarts

    async def start(self) -> None:
        for index in range(1, self.count + 1):
            self._start_one(index)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.ready for w in self.workers.values())), START_TIMEOUT
            )
        except TimeoutError:
            raise WorkerError("the worker processes did not start in time") from None
        self.started = True

    def _start_one(self, index: int, restarts: int = 0) -> Worker:
        from gateway.writer.client import _main_module_hidden

        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe(duplex=True)
        target, args = self.spawn(index, theirs)
        process = ctx.Process(target=target, args=args, name=f"agentops-worker-{index}")
        with _main_module_hidden():
            process.start()
        theirs.close()
        loop = asyncio.get_running_loop()
        worker = Worker(index, process, ours, loop.create_future(), restarts=restarts)
        self.workers[index] = worker
        loop.add_reader(ours.fileno(), self._readable, worker)
        return worker

    def _readable(self, worker: Worker) -> None:
        try:
            while worker.conn.poll():
                self._receive(worker, worker.conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())
            worker.conn.close()
            task = asyncio.create_task(self._exited(worker))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _receive(self, worker: Worker, message: tuple[Any, ...]) -> None:
        match message:
            case ("records", starts, finished):
                if self.on_records is not None:
                    open_calls = worker.open
                    for exchange in starts:
                        open_calls[exchange.id] = exchange
                    for exchange in finished:
                        open_calls.pop(exchange.id, None)
                    self.on_records(starts, finished)
            case ("stats", stats):
                worker.stats = stats
            case ("ready", pid):
                worker.pid = pid
                if not worker.ready.done():
                    worker.ready.set_result(None)
            case ("failed", why):
                if not worker.ready.done():
                    worker.ready.set_exception(WorkerError(f"worker {worker.index}: {why}"))
            case ("metrics", text):
                waiter = self._metrics.pop(worker.index, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(text)

    async def _exited(self, worker: Worker) -> None:
        """The worker's pipe closed: it is gone (or going). Restart it unless stopping."""
        await asyncio.to_thread(worker.process.join, 30)
        worker.exited.set()  # its counts now live on in `retired`, its gauges end
        health.retire(self.retired, worker.stats.get("health") or {})
        if worker.open and self.on_lost is not None:  # it died with calls in flight
            lost, worker.open = list(worker.open.values()), {}
            self.on_lost(worker.index, lost)
        waiter = self._metrics.pop(worker.index, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(b"")
        if self.stopping:
            return
        code = worker.process.exitcode
        failed_start = not worker.ready.done() or worker.ready.exception() is not None
        if not worker.ready.done():
            worker.ready.set_exception(
                WorkerError(f"worker {worker.index} exited at start (status {code})")
            )
        if failed_start and not self.started:
            self.why = self.why or f"worker {worker.index} could not start"
            self.gave_up.set()
            return
        # A restart that fails (the database is down, say) is tried again, less often.
        delay = min(30.0, RESTART_SECONDS * 2 ** min(worker.restarts, 5)) if failed_start else 0
        log.error(
            "worker %d (pid %s) exited with status %s; restarting it",
            worker.index,
            worker.pid,
            code,
        )
        await asyncio.sleep(RESTART_SECONDS + delay)
        if not self.stopping:
            self.restarted += 1
            self._start_one(worker.index, worker.restarts + 1)

    def signal_all(self, sig: int = signal.SIGTERM) -> None:
        for worker in self.workers.values():
            if worker.pid is not None and not worker.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)
            elif worker.process.pid is not None and not worker.exited.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, sig)

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker; each stops as `serve` does (in-flight calls get the grace,
        its writer flushes); wait for all, killing what is still there after `timeout`."""
        self.stopping = True
        self.signal_all()
        waits = [w.exited.wait() for w in self.workers.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            log.error("workers still running after %.0f s: killing them", timeout)
            self.signal_all(signal.SIGKILL)
            await asyncio.gather(*waits)

    def cut(self) -> int:
        """A second signal: pass it on (each worker cuts its calls in flight)."""
        count = self.in_flight()
        self.signal_all()
        return count

    def in_flight(self) -> int:
        return sum(int(w.stats.get("in_flight", 0)) for w in self.workers.values())

    def report(self) -> list[dict[str, Any]]:
        """Each worker's state for /healthz: pid, calls served, its writer's health."""
        return [
            {
                "index": w.index,
                "pid": w.pid,
                "state": "up" if w.ready.done() and not w.exited.is_set() else "down",
                "restarts": w.restarts,
                **w.stats,
            }
            for w in sorted(self.workers.values(), key=lambda w: w.index)
        ]

    def totals(self, own: dict[str, Any]) -> dict[str, Any]:
        """The supervisor's pipeline figures (`own`, /healthz's) as totals over the group:
        its writer's, each live worker's last report, and the counters of exited ones."""
        live = [w.stats.get("health") or {} for w in self.workers.values() if not w.exited.is_set()]
        return health.totals(own, live, self.retired)

    async def metrics(self, timeout: float) -> list[bytes]:
        """Each live worker's writer metrics (PostgreSQL: a writer per worker)."""
        loop = asyncio.get_running_loop()
        waiters = []
        for worker in self.workers.values():
            if worker.exited.is_set() or worker.conn.closed:
                continue
            waiter: asyncio.Future[bytes] = loop.create_future()
            self._metrics[worker.index] = waiter
            with contextlib.suppress(OSError):
                worker.conn.send(("metrics",))
                waiters.append(waiter)
        done, _ = await asyncio.wait(waiters, timeout=timeout) if waiters else (set(), set())
        return [w.result() for w in done if not w.exception()]
