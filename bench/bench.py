"""Benchmark of the gateway, measured the hard way and reported as ratios to a bare passthrough.

Why ratios: on a small, shared (2-core) machine absolute numbers move from run to run; what the
gateway is answerable for is what recording costs on top of the least a Python proxy must do.
Every proxy arm forwards to the same fast fake upstream (bench/upstream.py), each in its own
process:

1. direct: load generator -> fake upstream, the floor.
2. bare: -> bench/passthrough.py -> upstream, the reference.
3. gateway-sqlite, 4. gateway-postgres: -> `python -m gateway serve` (proxy + writer process)
   -> upstream, each on a fresh database (a temporary SQLite file; a throwaway PostgreSQL
   database dropped afterwards). `sqlite-nojournal`/`postgres-nojournal` add `--journal off`.

The method (see bench/drivers.py and bench/procs.py for why):

- Load comes from wrk (`-t1`, fixed-duration steps, bench/load.lua posting 1 KB and 100 KB
  chat bodies, each unique); where wrk is not on PATH an aiohttp client in this process.
- With 2+ cores, the upstream and the load generator run on one half of them and the system
  under test (the gateway's proxy and writer, or the bare passthrough) on the other; on a
  2-core host one core each. PostgreSQL's server is not pinned.
- Arms run interleaved over several rounds, their order rotated each round, and every ratio
  is the median over rounds of that round's ratio (gateway / bare, gateway / direct).
- "Until stored" is the calls answered over the time from the first request until every
  record is in the database (the proxy's queue, polled on /healthz, is empty and the
  database's row count has grown by the calls answered): what a gateway under that load for
  good sustains. No fixed sleeps; each step starts once the one before is wholly stored.

Measured per step and arm: req/s forwarding and until stored (1 KB bodies at c=64, 100 KB
at c=16), latency at c=1; CPU per call from /proc/PID/stat (proxy process, writer process,
all the gateway's processes; PostgreSQL's backends beside them) over the same interval;
database growth per call stored; RSS of the gateway's processes idle, right after load and a
while later; records dropped (/healthz). In full mode also streams (TTFT, chunk gap) and the
proxy's memory with 1,000 open streams.

Every step runs for a fixed time, so the run always ends by itself. All traffic stays on
127.0.0.1. Child processes are stopped on exit, Ctrl-C and SIGTERM (and get SIGTERM should
this process die). This is a script, not a test:

    .venv/bin/python bench/bench.py [--quick] [--arms direct,bare,sqlite,postgres]

It prints a table and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import report
import streams
from drivers import HEADERS, PLACEHOLDER, Driver, LoadResult, Pool, choose_driver, make_pool
from procs import (
    HOST,
    ROOT,
    Pinning,
    Proc,
    cpu_of,
    free_port,
    port_open,
    proc_tree,
    rss_of,
    spawn,
    stop_all,
    wait_ready,
)
from storage import (
    PG_BASE_DSN,
    PgProbe,
    create_pg_db,
    drop_pg_db,
    sqlite_bytes,
    sqlite_count,
)

BENCH_DIR = ROOT / "bench"
PYTHON = sys.executable
CHAT_PATH = "/v1/chat/completions"
POLL_SECONDS = 0.05  # /healthz
COUNT_SECONDS = 0.5  # the database's row count, once nothing is in transit
NUDGE_SECONDS = 2.0  # records in the spool, none in transit, nothing stored meanwhile
STALL_SECONDS = 10.0
STREAM_GAP_MS = 5
ARM_NAMES = ("direct", "bare", "sqlite", "postgres", "sqlite-nojournal", "postgres-nojournal")
# `serve --workers N`: sqlite-w2, postgres-w4, ... (any N)
WORKERS_ARM = re.compile(r"^(sqlite|postgres)-w([1-9][0-9]*)$")
PG_DATABASES: list[str] = []  # created by this run; dropped on exit whatever happens


@dataclass(frozen=True)
class Step:
    key: str  # names its metrics: rps_1k, stored_rps_1k, proxy_cpu_1k, ...
    pool: str
    conc: int
    seconds: int


@dataclass(frozen=True)
class Params:
    rounds: int
    lat_seconds: int
    fwd_seconds: int
    big_seconds: int
    warmup_seconds: int
    rss_later_seconds: float
    stored_timeout: float
    streams: bool

    def steps(self) -> list[Step]:
        return [
            Step("c1", "1k", 1, self.lat_seconds),
            Step("1k", "1k", 64, self.fwd_seconds),
            Step("100k", "100k", 16, self.big_seconds),
        ]


QUICK = Params(3, 1, 2, 1, 1, 10.0, 60.0, streams=False)
FULL = Params(3, 3, 10, 10, 2, 60.0, 300.0, streams=True)


@dataclass
class Arm:
    name: str
    kind: str  # direct | bare | gateway
    base: str
    proc: Proc | None = None
    ui: str | None = None
    sqlite_path: Path | None = None
    pg: PgProbe | None = None
    forwarded: int = 0  # calls the upstream received through this arm
    answered: int = 0  # calls answered with a 2xx (wrk does not count those it cut off)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    rounds: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> round -> value
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # trouble seen while measuring
    start_error: str | None = None
    failed: str | None = None
    last_load_end: float = 0.0

    @property
    def url(self) -> str:
        return self.base + CHAT_PATH

    @property
    def label(self) -> str:
        return self.name.removeprefix("gateway-")

    def put(self, key: str, rnd: int, value: float | None) -> None:
        if value is not None:
            self.rounds.setdefault(key, {})[rnd] = value

    def error(self, text: str) -> None:
        if text and len(self.error_samples) < 5:
            self.error_samples.append(text)

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(text)

    def tree(self) -> list[int]:
        return proc_tree(self.proc.pid) if self.proc else []


@dataclass
class Bench:
    params: Params
    driver: Driver
    session: aiohttp.ClientSession
    upstream: str
    upstream_proc: Proc
    pools: dict[str, Pool]
    number: int = 0  # call numbers: each load starts a fresh range of them

    def next_number(self) -> int:
        self.number += 10_000_000
        return self.number


@dataclass(frozen=True)
class Cpu:
    proxy: float
    writer: float
    tree: float
    pg: float


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- what the bench reads -------------------------------------------------------------------


WORKER_SUMS = ("queue_depth", "spool_bytes", "written_records", "dropped_records")


async def health(b: Bench, arm: Arm) -> dict[str, Any]:
    """/healthz, with `--workers N`'s per-worker writers (PostgreSQL) and queues added in."""
    async with b.session.get(f"{arm.ui}/healthz") as resp:
        h: dict[str, Any] = await resp.json()
    for worker in h.get("workers", []):
        own = worker.get("health") or {}
        for key in WORKER_SUMS:
            h[key] = h.get(key, 0) + own.get(key, 0)
    return h


async def upstream_calls(b: Bench) -> int:
    async with b.session.get(f"{b.upstream}/bench/count") as resp:
        return int((await resp.json())["count"])


async def stored_count(arm: Arm) -> int:
    if arm.pg is not None:
        return await arm.pg.count()
    assert arm.sqlite_path is not None
    return await asyncio.to_thread(sqlite_count, arm.sqlite_path)


async def db_bytes(arm: Arm) -> int:
    if arm.pg is not None:
        return await arm.pg.size()
    assert arm.sqlite_path is not None
    return await asyncio.to_thread(sqlite_bytes, arm.sqlite_path)


def roles(arm: Arm, h: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(proxy pids, writer pids): with --workers N the workers are the proxy processes and
    their writers (PostgreSQL) write beside the supervisor's (the supervisor serves the UI)."""
    assert arm.proc is not None
    writers = [h["writer_pid"]] if h.get("writer_pid") else []
    workers = h.get("workers") or []
    if not workers:
        return [arm.proc.pid], writers
    own = [(w.get("health") or {}).get("writer_pid") for w in workers]
    return [w["pid"] for w in workers if w.get("pid")], writers + [p for p in own if p]


def cpu_now(arm: Arm, h: dict[str, Any], pg_pids: list[int]) -> Cpu | None:
    if arm.proc is None:
        return None
    proxies, writers = roles(arm, h)
    return Cpu(
        proxy=cpu_of(proxies),
        writer=cpu_of(writers) if writers else 0.0,
        tree=cpu_of(arm.tree()),
        pg=cpu_of(pg_pids),
    )


# -- load and waiting for the writer --------------------------------------------------------


async def drive(b: Bench, arm: Arm, pool: str, conc: int, seconds: int) -> LoadResult:
    res = await b.driver.run(arm.url, b.pools[pool], conc, seconds, b.next_number())
    arm.last_load_end = res.ended
    arm.answered += res.ok
    if res.errors:
        arm.errors += res.errors
        arm.error(res.error_text)
    return res


async def nudge(b: Bench, arm: Arm) -> None:
    """One call through the gateway: the proxy hands its spool to the writer on a call."""
    body = b.pools["1k"].bodies[0].replace(PLACEHOLDER.encode(), b"0" * len(PLACEHOLDER))
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with b.session.post(arm.url, data=body, headers=HEADERS) as resp:
            await resp.read()


async def until_stored(
    b: Bench, arm: Arm, answered: int, count0: int, dropped0: int
) -> float | None:
    """When the database holds a record of each of `answered` calls beyond the `count0` rows
    it had (monotonic time); None if that did not happen (noted on the arm). Calls the load
    generator cut off at its deadline are not waited for.

    Polls /healthz every 50 ms: its queue depth is the proxy's own, up to date, count of
    records not yet stored or spooled. Only when that is 0 is the database's row count read
    (at most every 0.5 s), so the count, a scan on PostgreSQL, does not compete with the
    writer. Tracks the peak RSS of the gateway's processes in arm.metrics["rss_peak"]."""
    start = last_change = time.monotonic()
    last: tuple[int, int, int] | None = None
    target, next_count, done = answered, 0.0, 0
    while True:
        h = await health(b, arm)
        now = time.monotonic()
        arm.metrics["rss_peak"] = max(arm.metrics.get("rss_peak", 0), rss_of(arm.tree()))
        queue, spool = h.get("queue_depth", 0), h.get("spool_bytes", 0)
        if queue == 0 and now >= next_count:
            dropped = h.get("dropped_records", 0) - dropped0
            done = await stored_count(arm) - count0 + dropped
            if done >= target:
                return time.monotonic()
            next_count = now + COUNT_SECONDS
        state = (h.get("written_records", 0), queue, spool)
        if state != last:
            last, last_change = state, now
        elif spool and not queue and now - last_change > NUDGE_SECONDS:
            arm.note(
                f"{target - done} records waited in the spool ({spool:,} bytes) with no "
                f"traffic for {NUDGE_SECONDS:.0f}s; one call was sent to hand them over"
            )
            await nudge(b, arm)
            target, last_change, next_count = target + 1, now, 0.0
            continue
        elif now - last_change > STALL_SECONDS:
            arm.note(
                f"stored {done} of {target} calls; nothing moved for {STALL_SECONDS:.0f}s "
                f"(queue {queue}, spool {spool:,} bytes, written {h.get('written_records')})"
            )
            return None
        if now - start > b.params.stored_timeout:
            arm.note(f"stored {done} of {target} calls after {b.params.stored_timeout:.0f}s")
            return None
        await asyncio.sleep(POLL_SECONDS)


async def settle(b: Bench, arm: Arm, up0: int, count0: int, dropped0: int, answered: int) -> None:
    """Wait until the answered calls are stored, and count the calls forwarded meanwhile."""
    if arm.kind == "gateway":
        await until_stored(b, arm, answered, count0, dropped0)
    arm.forwarded += await upstream_calls(b) - up0


async def baseline(b: Bench, arm: Arm) -> tuple[int, int, int, dict[str, Any]]:
    """(upstream calls, stored rows, dropped records, healthz) before a load."""
    if arm.kind != "gateway":
        return await upstream_calls(b), 0, 0, {}
    h = await health(b, arm)
    return await upstream_calls(b), await stored_count(arm), h.get("dropped_records", 0), h


# -- one step of one arm --------------------------------------------------------------------


async def run_step(b: Bench, arm: Arm, step: Step, rnd: int) -> None:
    gateway = arm.kind == "gateway"
    up0, count0, dropped0, h0 = await baseline(b, arm)
    pg_pids = await arm.pg.backend_pids() if arm.pg is not None else []
    size0 = await db_bytes(arm) if gateway else 0
    cpu0 = cpu_now(arm, h0, pg_pids)
    pg0 = await arm.pg.work() if arm.pg is not None else None
    res = await drive(b, arm, step.pool, step.conc, step.seconds)
    stored_at: float | None = res.ended
    if gateway:
        rss_after_load = rss_of(arm.tree())
        stored_at = await until_stored(b, arm, res.ok, count0, dropped0)
    cpu1 = cpu_now(arm, h0, pg_pids)
    calls = await upstream_calls(b) - up0
    arm.forwarded += calls

    k = step.key
    arm.put(f"rps_{k}", rnd, res.rps)
    if stored_at is not None:
        arm.put(f"stored_rps_{k}", rnd, res.ok / (stored_at - res.started))
        arm.put(f"catchup_{k}", rnd, stored_at - res.ended)
    if step.conc == 1:
        arm.put("lat_p50", rnd, res.p50_ms)
        arm.put("lat_p99", rnd, res.p99_ms)
    if cpu0 is not None and cpu1 is not None and calls:
        per_call = 1e6 / calls  # seconds of CPU -> microseconds per call
        arm.put(f"proxy_cpu_{k}", rnd, (cpu1.proxy - cpu0.proxy) * per_call)
        arm.put(f"all_cpu_{k}", rnd, (cpu1.tree - cpu0.tree) * per_call)
        if gateway:
            arm.put(f"writer_cpu_{k}", rnd, (cpu1.writer - cpu0.writer) * per_call)
        if pg_pids:
            arm.put(f"pg_cpu_{k}", rnd, (cpu1.pg - cpu0.pg) * per_call)
    if gateway:
        stored = await stored_count(arm) - count0
        if arm.pg is not None and pg0 is not None and stored:
            pg1 = await arm.pg.work()
            arm.put(f"pg_xact_{k}", rnd, (pg1[0] - pg0[0]) / stored)
            arm.put(f"pg_rows_{k}", rnd, (pg1[1] - pg0[1]) / stored)
        arm.put(f"bytes_{k}", rnd, (await db_bytes(arm) - size0) / stored if stored else None)
        if step.key == "100k":
            arm.metrics["rss_after_load"] = rss_after_load


async def run_rounds(b: Bench, arms: list[Arm]) -> None:
    """Every step of every arm, round after round, arms in an order rotated each round; stops
    early should the fake upstream die (nothing measured after that would mean anything)."""
    for rnd in range(b.params.rounds):
        shift = rnd % len(arms)
        order = arms[shift:] + arms[:shift]
        log(f"round {rnd + 1}/{b.params.rounds}: {', '.join(a.label for a in order)}")
        for step in b.params.steps():
            for arm in order:
                if arm.failed:
                    continue
                try:
                    await run_step(b, arm, step, rnd)
                except Exception as exc:  # a crashed arm: the others go on
                    if not b.upstream_proc.alive():
                        raise RuntimeError(
                            f"the fake upstream exited ({b.upstream_proc.popen.returncode}) "
                            f"during round {rnd + 1}; its output:\n{b.upstream_proc.output()}"
                        ) from exc
                    arm.failed = f"{step.key} step of round {rnd + 1}: {exc!r}"
                    log(f"!! {arm.name} failed: {arm.failed}")


# -- phases around the rounds ---------------------------------------------------------------


async def warm_up(b: Bench, arm: Arm) -> None:
    if arm.proc is not None:
        arm.metrics["rss_start"] = rss_of(arm.tree())
    up0, count0, dropped0, _ = await baseline(b, arm)
    res = await drive(b, arm, "1k", 16, b.params.warmup_seconds)
    await settle(b, arm, up0, count0, dropped0, res.ok)
    if arm.proc is not None:
        arm.metrics["rss_warm"] = rss_of(arm.tree())


async def rss_later(b: Bench, arms: list[Arm]) -> None:
    """RSS of each gateway a while after its last load (the 100 KB step)."""
    gateways = [a for a in arms if a.kind == "gateway" and not a.failed]
    if not gateways:
        return
    wake = max(a.last_load_end for a in gateways) + b.params.rss_later_seconds
    log(f"RSS {b.params.rss_later_seconds:.0f}s after load")
    await asyncio.sleep(max(0.0, wake - time.monotonic()))
    for arm in gateways:
        arm.metrics["rss_later"] = rss_of(arm.tree())
        arm.metrics["rss_later_after_s"] = time.monotonic() - arm.last_load_end


async def stream_phase(b: Bench, arms: list[Arm]) -> None:
    """Full mode: TTFT and chunk gap at c=1, and the proxy's RSS with 1,000 open streams."""
    log("streams: TTFT, chunk gap, 1,000 open streams")
    for arm in arms:
        if arm.failed:
            continue
        up0, count0, dropped0, _ = await baseline(b, arm)
        answered0 = arm.answered
        got: list[tuple[float, float]] = []
        for _ in range(2):
            part, _elapsed = await streams.streams(
                b.session, arm.url, 30, 1, STREAM_GAP_MS, arm.error
            )
            got += part
            arm.answered += len(part)
        if got:
            arm.metrics["ttft_p50_ms"] = 1000 * statistics.median(g[0] for g in got)
            arm.metrics["gap_mean_ms"] = 1000 * statistics.fmean(g[1] for g in got)
        if arm.proc is not None:
            held = await streams.open_streams(
                b.session, arm.url, b.upstream, 1000, lambda a=arm: rss_of(a.tree()), arm.error
            )
            arm.metrics["open_streams"] = held
            arm.metrics["rss_streams_delta"] = held["delta_rss"]
            arm.answered += held["completed"]
        await settle(b, arm, up0, count0, dropped0, arm.answered - answered0)


async def final_check(b: Bench, arm: Arm) -> None:
    h = await health(b, arm)
    async with b.session.get(f"{arm.ui}/api/stats") as resp:
        stats = await resp.json()
    arm.metrics["health"] = h
    arm.metrics["dropped"] = h.get("dropped_records", 0)
    arm.metrics["recorded_calls"] = await stored_count(arm)
    arm.metrics["recorded_errors"] = stats["totals"].get("errors")


# -- starting the arms ----------------------------------------------------------------------


def gateway_argv(
    name: str, upstream: str, db: str, port: int, ui_port: int, tmp: Path
) -> list[str]:
    extra = ["--journal", "off"] if name.endswith("-nojournal") else []
    workers = WORKERS_ARM.match(name)
    if workers:
        extra += ["--workers", workers.group(2)]
    return [
        *(PYTHON, "-m", "gateway", "serve", "--upstream", upstream, "--db", db),
        *("--host", HOST, "--port", str(port), "--ui-port", str(ui_port)),
        *("--spool-dir", str(tmp / f"spool-{name}"), "--shutdown-grace", "5", *extra),
    ]


async def start_gateway(name: str, upstream: str, tmp: Path, cpus: frozenset[int] | None) -> Arm:
    port, ui_port = free_port(), free_port()
    arm = Arm(f"gateway-{name}", "gateway", f"http://{HOST}:{port}", ui=f"http://{HOST}:{ui_port}")
    if name.startswith("sqlite"):
        arm.sqlite_path = tmp / f"bench-{name}.db"
        db = f"sqlite://{arm.sqlite_path}"
    else:
        db_name = f"agentops_bench_{os.getpid()}_{secrets.token_hex(3)}"
        try:
            await create_pg_db(db_name)
        except Exception as exc:
            arm.start_error = f"cannot create PostgreSQL database: {exc!r}"
            return arm
        PG_DATABASES.append(db_name)
        arm.pg = PgProbe(db_name)
        db = f"{PG_BASE_DSN}/{db_name}"
    argv = gateway_argv(name, upstream, db, port, ui_port, tmp)
    arm.proc = spawn(arm.name, argv, tmp, cpus)
    return arm


async def start_arms(
    names: list[str], tmp: Path, upstream: str, session: aiohttp.ClientSession, pin: Pinning
) -> list[Arm]:
    arms: list[Arm] = []
    for name in names:
        if name == "direct":
            arms.append(Arm("direct", "direct", upstream))
        elif name == "bare":
            port = free_port()
            arm = Arm("bare", "bare", f"http://{HOST}:{port}")
            argv = [PYTHON, str(BENCH_DIR / "passthrough.py"), "--port", str(port)]
            arm.proc = spawn("bare", [*argv, "--upstream", upstream], tmp, pin.sut)
            arms.append(arm)
        else:
            arms.append(await start_gateway(name, upstream, tmp, pin.sut))
    for arm in arms:
        if arm.proc is None:
            continue
        port = int(arm.base.rsplit(":", 1)[1])

        async def probe(ui: str | None = arm.ui, port: int = port) -> bool:
            if ui is not None:
                async with session.get(f"{ui}/healthz") as resp:
                    if resp.status != 200:
                        return False
            return await port_open(port)

        try:
            await wait_ready(arm.proc, probe, 45)
        except RuntimeError as exc:
            arm.start_error = str(exc)
    return arms


async def measure(
    params: Params, names: list[str], tmp: Path, driver: Driver, pin: Pinning, meta: dict[str, Any]
) -> list[Arm]:
    pools = {
        "1k": make_pool("1k", 1024, 256, tmp, seed=1),
        "100k": make_pool("100k", 100 * 1024, 16, tmp, seed=2),
    }
    up_port = free_port()
    up_argv = [PYTHON, str(BENCH_DIR / "upstream.py"), "--port", str(up_port)]
    upstream_proc = spawn("upstream", up_argv, tmp, pin.load)
    upstream = f"http://{HOST}:{up_port}"
    timeout = aiohttp.ClientTimeout(total=180, sock_read=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def up_ping() -> bool:
            async with session.get(f"{upstream}/bench/ping") as resp:
                return resp.status == 200

        await wait_ready(upstream_proc, up_ping, 20)
        log(f"starting arms: {', '.join(names)}")
        arms = await start_arms(names, tmp, upstream, session, pin)
        for arm in arms:
            if arm.start_error:
                log(f"!! {arm.name} did not start: {arm.start_error}")
        live = [a for a in arms if not a.start_error]
        b = Bench(params, driver, session, upstream, upstream_proc, pools)
        try:
            log("warm-up")
            for arm in live:
                await warm_up(b, arm)
            await run_rounds(b, live)
            await rss_later(b, live)
            if params.streams:
                await stream_phase(b, live)
            for arm in live:
                if arm.kind == "gateway" and not arm.failed:
                    await final_check(b, arm)
        finally:
            for arm in arms:
                if arm.pg is not None:
                    await arm.pg.close()
        meta["upstream_cpu_s"] = cpu_of([upstream_proc.pid])
    return arms


# -- the command ----------------------------------------------------------------------------


def clean_up() -> None:
    """Stop every child process and drop the throwaway PostgreSQL databases."""
    stop_all()
    for name in PG_DATABASES:
        try:
            asyncio.run(drop_pg_db(name))
        except Exception as exc:
            log(f"could not drop PostgreSQL database {name}: {exc!r}")


def keep_logs(tmp: Path) -> str:
    """Copy the child processes' logs out of the temporary folder, for a run with problems."""
    kept = Path(tempfile.mkdtemp(prefix="agentops-bench-logs-"))
    for path in tmp.glob("*.log"):
        shutil.copy(path, kept / path.name)
    return str(kept)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gateway benchmark (ratios to bare).")
    parser.add_argument("--quick", action="store_true", help="short steps (under 3 minutes)")
    parser.add_argument(
        "--arms",
        default="direct,bare,sqlite,postgres",
        help="comma list of direct, bare, sqlite, postgres, sqlite-nojournal, "
        "postgres-nojournal (--journal off), sqlite-wN, postgres-wN (--workers N)",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--driver",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when on PATH (auto), or the Python fallback",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--output", default=str(BENCH_DIR / "results.json"))
    args = parser.parse_args()
    args.names = [n.strip() for n in args.arms.split(",") if n.strip()]
    unknown = {n for n in args.names if n not in ARM_NAMES and not WORKERS_ARM.match(n)}
    if unknown:
        parser.error(f"unknown arms: {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_args()
    params = QUICK if args.quick else FULL
    if args.rounds:
        params = Params(**{**params.__dict__, "rounds": args.rounds})
    driver = choose_driver(args.driver)
    pin = Pinning.plan(enabled=not args.no_pin)
    if pin.load is not None:
        os.sched_setaffinity(0, pin.load)  # this process and wrk, which inherits it
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "driver": driver.name,
        "pinning": pin.describe(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "params": params.__dict__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    why = " (wrk is not on PATH)" if args.driver == "auto" and driver.name != "wrk" else ""
    print(f"load generator: {driver.name}{why}\npinning: {pin.describe()}", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentops-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            arms = asyncio.run(measure(params, args.names, tmp, driver, pin, meta))
        except KeyboardInterrupt:
            log("interrupted; stopping child processes")
            return 130
        except RuntimeError as exc:  # the fake upstream died
            stop_all()
            log(f"{exc}\nchild logs kept in {keep_logs(tmp)}")
            return 1
        finally:
            clean_up()
        meta["wall_s"] = time.monotonic() - start
        for arm in arms:
            report.summarize(arm)
        table, verdicts = report.table(arms, meta)
        found = report.problems(arms)
        if found:
            meta["logs"] = keep_logs(tmp)
    print(table)
    if found:
        print("\nproblems seen:")
        for line in found:
            print(f"- {line}")
    results = {
        "meta": meta,
        "arms": {a.name: {"start_error": a.start_error, **a.metrics} for a in arms},
        "rounds": {a.name: a.rounds for a in arms},
        "verdicts": verdicts,
        "problems": found,
    }
    Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    if found:
        print(f"\nchild logs kept in {meta['logs']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
