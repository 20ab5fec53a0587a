"""Chaos benchmark: capture that never stops. Load at c=32 on PostgreSQL while things break.

The gateway (`python -m gateway serve`, its own process) forwards small chat calls to the fast
fake upstream (bench/upstream.py) and reaches a throwaway PostgreSQL database through a TCP
relay in this process (tests/tcp_relay.py), so "the database is down" is real (connections
dropped, new ones refused) without stopping the server others share. During the load:

- the database is cut for 12 s and restored;
- the writer process is killed (SIGKILL): the gateway must re-spool what it held and restart it;
- 1% of calls are poison: over-long run, agent, user and model names, a 40-character message
  role, NUL in message content, and header bytes that are not UTF-8 (sent over a raw socket,
  since aiohttp's client will not send them);
- the database is cut again while calls carry ~16 KB of padding, until the small spool
  (`--spool-max-bytes`) is full and records are dropped (and counted) or a deadline passes;
- the gateway gets SIGTERM (it drains), and is started again at once on the same ports,
  database and spool folder; calls made in the gap fail to connect (sent, not answered).

Why 300 calls/s by default (`--rate`, 0 = as fast as the clients go): at full speed on this
2-core machine the idle-priority writer falls behind the proxy for good, and the spool fills
for that reason alone; at 300/s it keeps up, so what is dropped is what the events cause.

Times are fractions of `--duration` (65 s: events at 8, 20, 25, 35, 50 s). Each call carries
a unique marker in its user message, so records are matched to calls by reading the database
directly at the end. Accounting: sent, answered (any HTTP status), stored (answered calls whose
record is in `exchanges`), quarantined (rows in `quarantine`; poison among them), dropped and
counted (/healthz `dropped_records`, the last value seen of each gateway process, plus what a
killed writer's count held), and unaccounted = answered - stored - quarantined - dropped. The
script exits 1 when a record is unaccounted, duplicated, or a poison record was quarantined.

    .venv/bin/python bench/chaos.py [--quick] [--duration 65] [--rate 300]

It prints a table and writes bench/chaos-results.json. A script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

# This folder is sys.path[0] when run as a script, so `bench` is bench/bench.py; the project
# root gives `tests` (the relay) and `gateway` (the quarantine record decoder).
sys.path.append(str(Path(__file__).resolve().parent.parent))

from procs import HOST, Proc, free_port, port_open, proc_tree, wait_ready
from procs import spawn as spawn_on
from storage import PG_ADMIN_DSN, PG_BASE_DSN, create_pg_db

from bench import BENCH_DIR, CHAT_PATH, PG_DATABASES, PYTHON, clean_up
from gateway.store.bodies import BODY_SELECT, read_bodies
from gateway.writer.quarantine import decode
from tests.tcp_relay import TcpRelay


def spawn(name: str, argv: list[str], log_dir: Path) -> Proc:
    """A child process on whatever core the OS picks (the chaos run pins nothing)."""
    return spawn_on(name, argv, log_dir, None)


CONCURRENCY = 32
SAMPLED = (
    "dropped_records",
    "spool_bytes",
    "queue_depth",
    "written_records",
    "database",
    "writer_process",
)
POISON_EVERY = 100  # 1% of calls
FILL_PADDING = 16 * 1024  # bytes of padding per call while the spool is being filled
SPOOL_MAX = "8MB"
SHUTDOWN_GRACE = 5
STOP_TIMEOUT = 120.0  # a gateway still running this long after SIGTERM is killed (and said)
POLL_SECONDS = 0.25
DRAIN_TIMEOUT = 240.0
PG_HOST, PG_PORT = "127.0.0.1", 5432
AUTH = b"Bearer chaos-not-a-real-key"
POISON_KINDS = (
    "long_run",
    "long_agent",
    "long_user_tags",
    "long_model",
    "long_role",
    "nul_content",
    "non_utf8_headers",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the timeline --------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Event times in seconds from the start of the load: the 65 s plan scaled to `duration`."""

    duration: float

    def at(self, seconds_of_65: float) -> float:
        return self.duration * seconds_of_65 / 65

    @property
    def cut1(self) -> tuple[float, float]:
        return self.at(8), self.at(20)

    @property
    def kill_writer(self) -> float:
        return self.at(25)

    @property
    def cut2(self) -> tuple[float, float]:
        return self.at(35), self.at(47)  # restored earlier once the spool drops

    @property
    def sigterm(self) -> float:
        return self.at(50)


def timeline_plan(plan: Timeline) -> dict[str, Any]:
    return {
        "cut_database": plan.cut1,
        "kill_writer": plan.kill_writer,
        "cut_database_fill_spool": plan.cut2,
        "sigterm_restart": plan.sigterm,
        "stop_load": plan.duration,
    }


# -- what was sent -------------------------------------------------------------------------


@dataclass
class Tally:
    """Every call the load made, by marker number."""

    token: str
    sent: int = 0
    answered: set[int] = field(default_factory=set)
    unanswered: set[int] = field(default_factory=set)
    poison: dict[int, str] = field(default_factory=dict)  # marker -> kind
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent_at: dict[int, float] = field(default_factory=dict)  # marker -> seconds into the load

    def marker(self, n: int) -> str:
        return f"chaos {self.token} #{n:07d}"

    @property
    def pattern(self) -> re.Pattern[bytes]:
        return re.compile(rb"chaos " + self.token.encode() + rb" #(\d{7})")


@dataclass
class Call:
    """One request: body and headers (bytes, so non-UTF-8 values can be written raw)."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    raw: bool = False  # must go over a raw socket


def make_call(tally: Tally, n: int, filling: bool) -> Call:
    """A small chat call carrying marker n; every POISON_EVERY-th is poison (by kind in turn)."""
    text = f"{tally.marker(n)}: what is the capital of France, and since when?"
    message: dict[str, str] = {"role": "user", "content": text}
    body: dict[str, Any] = {
        "model": "mistral-small-latest",
        "messages": [{"role": "system", "content": "You are a concise assistant."}, message],
    }
    headers = [(b"X-AgentOps-Run", f"chaos-worker-{n % CONCURRENCY:02d}".encode())]
    if filling:
        body["messages"].append({"role": "user", "content": "padding " * (FILL_PADDING // 8)})
    kind = POISON_KINDS[(n // POISON_EVERY) % len(POISON_KINDS)] if n % POISON_EVERY == 7 else None
    raw = False
    if kind == "long_run":
        headers = [(b"X-AgentOps-Run", f"chaos-long-run-{n}-".ljust(260, "r").encode())]
    elif kind == "long_agent":
        headers.append((b"X-AgentOps-Agent", f"chaos-agent-{n}-".ljust(300, "a").encode()))
    elif kind == "long_user_tags":
        headers.append((b"X-AgentOps-User", ("u" * 500).encode()))
        headers.append((b"X-AgentOps-Tags", ("k=" + "v" * 5000).encode()))
    elif kind == "long_model":
        body["model"] = "mistral-" + "m" * 300
    elif kind == "long_role":
        message["role"] = "r" * 40
    elif kind == "nul_content":
        message["content"] = text + " \u0000 nul \u0000\u0000 end"
    elif kind == "non_utf8_headers":
        raw = True
        headers.append((b"X-AgentOps-Agent", b"agent-\xff\xfe-\xc3\x28-" + str(n).encode()))
        headers.append((b"X-AgentOps-Tags", b"team=\xe9quipe,city=K\xf6ln"))
        headers.append((b"X-Chaos-Bytes", b"\x80\x81\x82 latin-1 \xa9"))
    if kind is not None:
        tally.poison[n] = kind
    return Call(json.dumps(body).encode(), headers, raw)


# -- the load ------------------------------------------------------------------------------


@dataclass
class Chaos:
    """Shared state of one run: the load switches, the gateway of the moment, the events."""

    tally: Tally
    port: int
    ui_port: int
    rate: float  # calls per second over all clients; 0 = as fast as they go
    started: float = 0.0
    stop: bool = False
    filling: bool = False
    next_slot: float = 0.0
    counter: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    watchers: list[asyncio.Task[None]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def event(self, what: str, **details: Any) -> None:
        t = self.now()
        self.events.append({"t": round(t, 2), "event": what, **details})
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        log(f"[t={t:6.2f}s] {what} {extra}".rstrip())

    async def pace(self) -> None:
        """Spread calls evenly at `rate` per second in total (none when rate is 0)."""
        if not self.rate:
            return
        now = time.monotonic()
        self.next_slot = max(self.next_slot + 1 / self.rate, now)
        if self.next_slot > now:
            await asyncio.sleep(self.next_slot - now)


async def send_aiohttp(session: aiohttp.ClientSession, url: str, call: Call) -> int:
    headers = {k.decode(): v.decode() for k, v in call.headers}
    headers["Content-Type"] = "application/json"
    headers["Authorization"] = AUTH.decode()
    async with session.post(url, data=call.body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def send_raw(port: int, call: Call, timeout: float = 30.0) -> int:
    """POST over a plain socket, header bytes as given (aiohttp's client refuses non-UTF-8)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = [
            b"POST " + CHAT_PATH.encode() + b" HTTP/1.1",
            b"Host: %s:%d" % (HOST.encode(), port),
            b"Content-Type: application/json",
            b"Authorization: " + AUTH,
            b"Content-Length: %d" % len(call.body),
            b"Connection: close",
        ]
        head += [name + b": " + value for name, value in call.headers]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + call.body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionError(f"no HTTP response: {status_line[:80]!r}")
        await asyncio.wait_for(reader.read(), timeout)
        return int(parts[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def client(chaos: Chaos, session: aiohttp.ClientSession) -> None:
    """One of the CONCURRENCY clients: a call at a time until told to stop. A call that gets
    no HTTP response (the gateway restarting) is counted and not retried."""
    tally, url = chaos.tally, f"http://{HOST}:{chaos.port}{CHAT_PATH}"
    while not chaos.stop:
        await chaos.pace()
        n = chaos.counter
        chaos.counter += 1
        call = make_call(tally, n, chaos.filling)
        tally.sent += 1
        tally.sent_at[n] = chaos.now()
        try:
            if call.raw:
                status = await send_raw(chaos.port, call)
            else:
                status = await send_aiohttp(session, url, call)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            tally.unanswered.add(n)
            tally.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.1)  # the gateway is restarting: do not spin
            continue
        tally.answered.add(n)
        tally.statuses[status] += 1


# -- the gateway ---------------------------------------------------------------------------


@dataclass
class GatewayRun:
    """One gateway process, and what its /healthz said while it ran."""

    index: int
    proc: Proc
    dropped_last: int = 0
    dropped_lost: int = 0  # counts a killed writer took with it (/healthz went down by this)
    dropping: list[float] = field(default_factory=list)  # first and last time drops grew
    spool_peak: int = 0
    samples: list[list[Any]] = field(default_factory=list)  # [t, *SAMPLED] per /healthz
    health: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    stop_seconds: float | None = None

    @property
    def dropped(self) -> int:
        return self.dropped_last + self.dropped_lost

    def seen(self, health: dict[str, Any], t: float) -> None:
        dropped = int(health.get("dropped_records", 0))
        if dropped < self.dropped_last:  # a new writer process counts from 0 again
            self.dropped_lost += self.dropped_last - dropped
        elif dropped > self.dropped_last:
            self.dropping[1:] = [t] if self.dropping else [t, t]
        self.dropped_last = dropped
        self.spool_peak = max(self.spool_peak, int(health.get("spool_bytes", 0)))
        self.health = health
        self.samples.append([round(t, 2), *(health.get(key) for key in SAMPLED)])


def gateway_argv(
    chaos: Chaos,
    db_url: str,
    spool: Path,
    upstream: str,
    spool_max: str,
) -> list[str]:
    return [
        PYTHON,
        "-m",
        "gateway",
        "serve",
        "--upstream",
        upstream,
        "--db",
        db_url,
        "--host",
        HOST,
        "--port",
        str(chaos.port),
        "--ui-port",
        str(chaos.ui_port),
        "--spool-dir",
        str(spool),
        "--spool-max-bytes",
        spool_max,
        "--shutdown-grace",
        str(SHUTDOWN_GRACE),
    ]


async def start_gateway(
    index: int, argv: list[str], tmp: Path, chaos: Chaos, session: aiohttp.ClientSession
) -> GatewayRun:
    proc = spawn(f"gateway-{index}", argv, tmp)

    async def probe() -> bool:
        async with session.get(f"http://{HOST}:{chaos.ui_port}/healthz") as resp:
            if resp.status != 200:
                return False
        return await port_open(chaos.port)

    await wait_ready(proc, probe, 60)
    return GatewayRun(index, proc)


async def health(session: aiohttp.ClientSession, ui_port: int) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with session.get(f"http://{HOST}:{ui_port}/healthz", timeout=timeout) as resp:
        return await resp.json()


async def poll_health(
    chaos: Chaos,
    runs: list[GatewayRun],
    session: aiohttp.ClientSession,
) -> None:
    """Keep the last /healthz of each gateway process (its counters reset with it)."""
    while True:
        run = runs[-1]
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
            h = await health(session, chaos.ui_port)
            if run is runs[-1] and run.proc.alive():  # not a successor's answer
                run.seen(h, chaos.now())
        await asyncio.sleep(POLL_SECONDS)


def writer_pid(gateway_pid: int) -> int | None:
    """The writer: a child of the gateway's forkserver (both run the forkserver's command)."""
    parents: dict[int, int] = {}
    for pid in proc_tree(gateway_pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    for child in fh.read().split():
                        parents[int(child)] = pid

    def cmdline(pid: int) -> bytes:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
        return b""

    for pid, parent in parents.items():
        if b"forkserver" in cmdline(pid) and b"forkserver" in cmdline(parent):
            return pid
    return None


# -- the events ----------------------------------------------------------------------------


async def until(chaos: Chaos, t: float) -> None:
    delay = t - chaos.now()
    if delay > 0:
        await asyncio.sleep(delay)


async def kill_writer(chaos: Chaos, run: GatewayRun) -> None:
    pid = writer_pid(run.proc.pid)
    if pid is None:
        chaos.event("writer not found: not killed")
        return
    os.kill(pid, signal.SIGKILL)
    chaos.event("SIGKILL writer", pid=pid)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = writer_pid(run.proc.pid)
        if new is not None and new != pid:
            chaos.event("writer process started again", pid=new)
            break
        await asyncio.sleep(0.1)
    else:
        chaos.event("writer NOT started again within 30 s")
        return
    # Until the new writer says it is ready, the proxy spools every record itself.
    chaos.watchers.append(asyncio.create_task(writer_ready(chaos, run, chaos.now())))


async def writer_ready(chaos: Chaos, run: GatewayRun, since: float) -> None:
    """Say when /healthz reports the restarted writer as up (checked by the proxy, live)."""
    while run.proc.alive():
        if run.health.get("writer_process") == "ok" and run.samples[-1][0] > since:
            chaos.event("writer ready", after_s=round(chaos.now() - since, 2))
            return
        await asyncio.sleep(POLL_SECONDS)


async def fill_spool(
    chaos: Chaos, relay: TcpRelay, runs: list[GatewayRun], start: float, latest: float
) -> None:
    """Cut the database and pad the calls until the gateway drops records, then restore."""
    await until(chaos, start)
    before = runs[-1].dropped
    await relay.cut()
    chaos.filling = True
    chaos.event("database cut (filling the spool)", dropped_before=before)
    while chaos.now() < latest and runs[-1].dropped <= before:
        await asyncio.sleep(POLL_SECONDS)
    if runs[-1].dropped > before:
        chaos.event("spool full: records dropping", dropped=runs[-1].dropped)
        await asyncio.sleep(min(1.0, max(0.0, latest - chaos.now())))
    else:
        chaos.event("no drops before the deadline", spool_bytes=runs[-1].health.get("spool_bytes"))
    chaos.filling = False
    await relay.restore()
    chaos.event(
        "database restored",
        dropped=runs[-1].dropped,
        spool_bytes=runs[-1].health.get("spool_bytes"),
    )


async def restart_gateway(
    chaos: Chaos, runs: list[GatewayRun], argv: list[str], tmp: Path, session: aiohttp.ClientSession
) -> None:
    """SIGTERM the gateway, wait for it to drain and exit, start it again at once."""
    old = runs[-1]
    chaos.event(
        "SIGTERM gateway",
        pid=old.proc.pid,
        dropped=old.dropped,
        spool_bytes=old.health.get("spool_bytes"),
    )
    await asyncio.to_thread(old.proc.stop, STOP_TIMEOUT)
    old.exit_code, old.stop_seconds = old.proc.exit_code, old.proc.stop_seconds
    chaos.event("gateway exited", code=old.exit_code, seconds=round(old.stop_seconds or 0, 2))
    runs.append(await start_gateway(old.index + 1, argv, tmp, chaos, session))
    chaos.event("gateway restarted", pid=runs[-1].proc.pid)


async def timeline(
    chaos: Chaos,
    plan: Timeline,
    relay: TcpRelay,
    runs: list[GatewayRun],
    argv: list[str],
    tmp: Path,
    session: aiohttp.ClientSession,
) -> None:
    await until(chaos, plan.cut1[0])
    await relay.cut()
    chaos.event("database cut")
    await until(chaos, plan.cut1[1])
    await relay.restore()
    chaos.event(
        "database restored",
        dropped=runs[-1].dropped,
        spool_bytes=runs[-1].health.get("spool_bytes"),
    )
    await until(chaos, plan.kill_writer)
    await kill_writer(chaos, runs[-1])
    await fill_spool(chaos, relay, runs, *plan.cut2)
    await until(chaos, plan.sigterm)
    await restart_gateway(chaos, runs, argv, tmp, session)
    await until(chaos, plan.duration)


async def drain(chaos: Chaos, runs: list[GatewayRun]) -> bool:
    """Wait until the gateway has stored everything: queue and spool empty, twice in a row."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    calm = 0
    while time.monotonic() < deadline:
        h = runs[-1].health
        if h.get("queue_depth") == 0 and h.get("spool_bytes") == 0 and h.get("checked_at"):
            calm += 1
            if calm >= 3:
                return True
        else:
            calm = 0
        await asyncio.sleep(POLL_SECONDS * 2)
    return False


# -- the count -----------------------------------------------------------------------------


@dataclass
class Stored:
    markers: Counter[int] = field(default_factory=Counter)  # marker -> exchanges
    unmarked: int = 0
    clipped: set[int] = field(default_factory=set)  # markers whose exchange records a clip
    states: Counter[str] = field(default_factory=Counter)
    quarantined: dict[int, str] = field(default_factory=dict)  # marker (or -id) -> error
    runs_longest_name: int = 0


async def _fetch(conn: Any, text: str, params: Any) -> list[dict[str, Any]]:
    """Rows of a store query written with `?` marks, on an asyncpg connection."""
    marks = iter(range(1, len(params) + 1))
    rows = await conn.fetch(re.sub(r"\?", lambda _: f"${next(marks)}", text), *params)
    return [dict(row) for row in rows]


async def read_database(dsn: str, tally: Tally, lose: int = 0) -> Stored:
    """Match stored exchanges and quarantined records to calls by their markers. `lose`
    deletes that many stored exchanges first: a way to see the check fail."""
    stored = Stored()
    pattern = tally.pattern
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        if lose:
            await conn.execute(
                "DELETE FROM exchanges WHERE id IN "
                "(SELECT id FROM exchanges ORDER BY random() LIMIT $1)",
                lose,
            )
        rows = await read_bodies(
            [
                dict(row)
                for row in await conn.fetch(
                    f"SELECT e.id, e.state, e.clipped, {BODY_SELECT} FROM exchanges e "
                    "LEFT JOIN exchange_bodies b ON b.exchange_id = e.id"
                )
            ],
            partial(_fetch, conn),
        )
        for row in rows:
            stored.states[row["state"]] += 1
            found = pattern.search((row["request_body"] or "").encode("utf-8", "replace"))
            if found is None:
                stored.unmarked += 1
                continue
            n = int(found.group(1))
            stored.markers[n] += 1
            if row["clipped"]:
                stored.clipped.add(n)
        for row in await conn.fetch("SELECT id, error, record FROM quarantine"):
            try:
                found = pattern.search(decode(row["record"]).request_body)
            except Exception:  # an undecodable row is still a quarantined record
                found = None
            key = int(found.group(1)) if found else -int(row["id"])
            stored.quarantined[key] = row["error"][:300]
        stored.runs_longest_name = (
            await conn.fetchval("SELECT COALESCE(MAX(LENGTH(name)), 0) FROM runs") or 0
        )
    finally:
        await conn.close()
    return stored


DROP_START = re.compile(r"spool (\S+) cannot take records")
DROP_TOTAL = re.compile(r"spool (\S+): [^;]+; (\d+) records dropped in")
BATCH_FAILED = re.compile(r"writer failed on a batch of (\d+)")


def logged_drops(text: str) -> int:
    """Records a gateway's log says it dropped: per spool episode, the last total it gave (an
    episode of one drop has only its first line); plus batches the writer failed on. A
    cross-check of /healthz, which cannot show what a process drops after its last answer."""
    episodes: dict[str, int] = {}  # spool folder -> drops in its current episode
    total = 0
    for line in text.splitlines():
        if started := DROP_START.search(line):
            total += episodes.pop(started.group(1), 0)
            episodes[started.group(1)] = 1
        elif summary := DROP_TOTAL.search(line):
            episodes[summary.group(1)] = int(summary.group(2))
        elif failed := BATCH_FAILED.search(line):
            total += int(failed.group(1))
    return total + sum(episodes.values())


def window(times: list[float]) -> list[float] | None:
    return [round(min(times), 2), round(max(times), 2)] if times else None


def per_second(times: list[float]) -> dict[int, int]:
    return dict(sorted(Counter(int(t) for t in times).items()))


def account(tally: Tally, stored: Stored, runs: list[GatewayRun]) -> dict[str, Any]:
    answered = tally.answered
    stored_answered = answered & set(stored.markers)
    quarantined_answered = answered & set(stored.quarantined)
    missing = sorted(answered - stored_answered - quarantined_answered)
    dropped = sum(run.dropped for run in runs)
    unaccounted = max(0, len(missing) - dropped)
    dropped_logged = sum(logged_drops(run.proc.output(limit=10**9)) for run in runs)
    poison_sent = Counter(tally.poison.values())
    poison_stored = Counter(k for n, k in tally.poison.items() if n in stored.markers)
    return {
        "sent": tally.sent,
        "answered": len(answered),
        "stored": len(stored_answered),
        "quarantined": len(stored.quarantined),
        "quarantined_answered": len(quarantined_answered),
        "quarantined_poison": sum(1 for n in stored.quarantined if n in tally.poison),
        "dropped_and_counted": dropped,
        "missing_answered": len(missing),
        "unaccounted": unaccounted,
        "drops_beyond_missing": max(0, dropped - len(missing)),
        "dropped_per_logs": dropped_logged,
        "unaccounted_per_logs": max(0, len(missing) - dropped_logged),
        "stored_unanswered": len(tally.unanswered & set(stored.markers)),
        "duplicates": sum(c - 1 for c in stored.markers.values() if c > 1),
        "stored_unmarked": stored.unmarked,
        "poison_sent": dict(poison_sent),
        "poison_stored": dict(poison_stored),
        "poison_answered": sum(1 for n in tally.poison if n in answered),
        "poison_clipped": sum(1 for n in tally.poison if n in stored.clipped),
        "runs_longest_name": stored.runs_longest_name,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "client_errors": dict(tally.errors),
        "states": dict(stored.states),
        "quarantine_errors": sorted(set(stored.quarantined.values()))[:5],
        "missing_sent_window_s": window([tally.sent_at[n] for n in missing]),
        "poison_missing": sum(1 for n in missing if n in tally.poison),
        "missing_per_second": per_second([tally.sent_at[n] for n in missing]),
        "missing_sample": [
            {"marker": n, "sent_at_s": round(tally.sent_at[n], 2), "poison": tally.poison.get(n)}
            for n in missing[:50]
        ],
        "gateways": [
            {
                "pid": r.proc.pid,
                "dropped": r.dropped,
                "dropped_lost_by_writer": r.dropped_lost,
                "dropping_window_s": window(r.dropping),
                "health_samples": [["t", *SAMPLED], *r.samples],
                "spool_peak_bytes": r.spool_peak,
                "exit_code": r.exit_code,
                "stop_seconds": r.stop_seconds,
            }
            for r in runs
        ],
    }


def report(result: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = [
        ("sent (calls attempted)", result["sent"]),
        ("answered (an HTTP response)", result["answered"]),
        ("stored (answered, in exchanges)", result["stored"]),
        ("quarantined (rows)", result["quarantined"]),
        ("  of them poison", result["quarantined_poison"]),
        ("dropped and counted", result["dropped_and_counted"]),
        ("unaccounted", result["unaccounted"]),
        ("duplicates", result["duplicates"]),
        ("(dropped per the gateways' logs)", result["dropped_per_logs"]),
        ("(unaccounted per those logs)", result["unaccounted_per_logs"]),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [
        f"chaos: {meta['duration_s']:.0f} s at c={CONCURRENCY}, rate {meta['rate']} req/s, "
        f"PostgreSQL, spool max {meta['spool_max']}",
        "",
    ]
    lines += [f"{label:<{width}}  {value:>8}" for label, value in rows]
    lines += [
        "",
        f"answered calls neither stored nor quarantined: {result['missing_answered']} "
        f"(drops beyond them: {result['drops_beyond_missing']}); stored calls the client saw "
        f"no answer to: {result['stored_unanswered']}",
        f"those calls were sent at t={result['missing_sent_window_s']} s (poison among them: "
        f"{result['poison_missing']}); drops seen at t="
        + ", ".join(str(g["dropping_window_s"]) for g in result["gateways"])
        + " s",
        f"poison: sent {sum(result['poison_sent'].values())} {result['poison_sent']}, stored "
        f"{sum(result['poison_stored'].values())}, answered {result['poison_answered']}, "
        f"with clipped values {result['poison_clipped']}; longest run name stored "
        f"{result['runs_longest_name']} chars",
        f"HTTP statuses {result['statuses']}; client errors {result['client_errors']}",
        f"stored states {result['states']}",
        "gateways: "
        + "; ".join(
            f"pid {g['pid']} dropped {g['dropped']} (writer-held {g['dropped_lost_by_writer']}) "
            f"spool peak {g['spool_peak_bytes']} B exit {g['exit_code']} after "
            f"{(g['stop_seconds'] or 0):.1f} s"
            for g in result["gateways"]
        ),
    ]
    return "\n".join(lines)


def verdict(result: dict[str, Any], drained: bool) -> list[str]:
    problems = []
    if result["unaccounted"]:
        problems.append(
            f"{result['unaccounted']} answered calls unaccounted for by /healthz "
            f"({result['unaccounted_per_logs']} by the gateways' logs)"
        )
    if result["quarantined_poison"]:
        problems.append(f"{result['quarantined_poison']} poison records quarantined")
    if result["duplicates"]:
        problems.append(f"{result['duplicates']} calls stored twice")
    if not drained:
        problems.append("the gateway did not drain (queue or spool not empty) in time")
    return problems


# -- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    plan = Timeline(args.duration)
    tally = Tally(secrets.token_hex(4))
    chaos = Chaos(tally, free_port(), free_port(), args.rate)
    db_name = f"agentops_chaos_{os.getpid()}_{secrets.token_hex(3)}"
    await create_pg_db(db_name)
    PG_DATABASES.append(db_name)
    relay = TcpRelay(PG_HOST, PG_PORT)
    await relay.start()
    up_port = free_port()
    upstream = spawn(
        "upstream", [PYTHON, str(BENCH_DIR / "upstream.py"), "--port", str(up_port)], tmp
    )
    await wait_ready(upstream, lambda: port_open(up_port), 20)
    argv = gateway_argv(
        chaos,
        f"postgres://postgres@{HOST}:{relay.port}/{db_name}",
        tmp / "spool",
        f"http://{HOST}:{up_port}",
        args.spool_max,
    )
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        runs = [await start_gateway(1, argv, tmp, chaos, session)]
        chaos.started = time.monotonic()
        chaos.event("load starts", concurrency=CONCURRENCY, rate=args.rate, duration=args.duration)
        poller = asyncio.create_task(poll_health(chaos, runs, session))
        clients = [asyncio.create_task(client(chaos, session)) for _ in range(CONCURRENCY)]
        try:
            await timeline(chaos, plan, relay, runs, argv, tmp, session)
        finally:
            chaos.stop = True
            await asyncio.gather(*clients, return_exceptions=True)
        chaos.event("load stopped", sent=tally.sent, answered=len(tally.answered))
        drained = await drain(chaos, runs)
        chaos.event(
            "drained" if drained else "NOT drained",
            **{
                k: runs[-1].health.get(k) for k in ("queue_depth", "spool_bytes", "written_records")
            },
        )
        poller.cancel()
        for task in chaos.watchers:
            task.cancel()
        last = runs[-1]
        last.seen(await health(session, chaos.ui_port), chaos.now())
        await asyncio.to_thread(last.proc.stop, STOP_TIMEOUT)
        last.exit_code, last.stop_seconds = last.proc.exit_code, last.proc.stop_seconds
        chaos.event("gateway stopped", code=last.exit_code)
    await relay.close()
    stored = await read_database(f"{PG_BASE_DSN}/{db_name}", tally, args.lose)
    result = account(tally, stored, runs)
    result["events"] = chaos.events
    result["drained"] = drained
    return result, verdict(result, drained)


def main() -> int:
    parser = argparse.ArgumentParser(description="Chaos benchmark: nothing captured is lost.")
    parser.add_argument("--duration", type=float, default=65.0, help="seconds of load (65)")
    parser.add_argument("--quick", action="store_true", help="25 s, the same events compressed")
    parser.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="calls per second over all 32 clients (0: as fast as they go)",
    )
    parser.add_argument("--spool-max", default=SPOOL_MAX, help=f"gateway spool limit ({SPOOL_MAX})")
    parser.add_argument(
        "--lose",
        type=int,
        default=0,
        help="delete this many stored exchanges before counting (to see the check fail)",
    )
    parser.add_argument("--output", default=str(BENCH_DIR / "chaos-results.json"))
    args = parser.parse_args()
    if args.quick:
        args.duration = 25.0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    meta = {
        "duration_s": args.duration,
        "rate": args.rate,
        "spool_max": args.spool_max,
        "concurrency": CONCURRENCY,
        "poison_every": POISON_EVERY,
        "pg_admin": PG_ADMIN_DSN,
        "timeline_s": timeline_plan(Timeline(args.duration)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with tempfile.TemporaryDirectory(prefix="agentops-chaos-") as tmp_name:
        try:
            result, problems = asyncio.run(run(args, Path(tmp_name)))
            if problems:  # the gateways' logs say what happened
                logs = Path(tempfile.mkdtemp(prefix="agentops-chaos-logs-"))
                for path in Path(tmp_name).glob("*.log"):
                    shutil.copy(path, logs)
                result["logs"] = str(logs)
        except KeyboardInterrupt:
            log("interrupted; stopping child processes")
            return 130
        finally:
            clean_up()
    print(report(result, meta))
    print("\n" + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    Path(args.output).write_text(
        json.dumps({"meta": meta, "result": result, "problems": problems}, indent=2, default=str)
        + "\n"
    )
    if "logs" in result:
        print(f"gateway logs kept in {result['logs']}")
    print(f"wrote {args.output}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
