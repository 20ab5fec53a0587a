"""Benchmark of the gateway's overhead, reported as ratios to a bare aiohttp passthrough.

Why ratios: on a small, shared (2-core) machine absolute numbers move from run to run; what the
gateway is answerable for is what recording costs on top of the least a Python proxy must do.
So every proxy arm forwards to the same fast fake upstream, and the gateway's numbers are
compared with the bare passthrough measured in the same run, interleaved step by step (direct,
bare, gateway-sqlite, gateway-postgres, then the next step) so that drift hits all arms alike.

Arms, each in its own process so none shares a GIL with the load generator (this process):

1. direct: load generator -> fake upstream (bench/upstream.py), the floor.
2. bare: -> bench/passthrough.py -> upstream, the reference.
3. gateway-sqlite, 4. gateway-postgres: -> `python -m gateway serve` -> upstream, each on a fresh
   database (a temporary SQLite file; a throwaway PostgreSQL database dropped afterwards).

Measured: latency p50/p99 at concurrency 1; req/s at concurrency 1, 16, 64, 256 (small
non-stream chat calls), and at c=64 also "until stored" (calls over the time until the writer
has stored them all: what a gateway saturated for good would sustain, since its writer runs
on the CPU the calls leave); streaming TTFT and mean gap between chunks (5 ms upstream gap);
CPU time per request (at c=64: all the gateway's processes until its writer has drained, and
the proxy's process alone); proxy RSS with 1,000 open streams; req/s with 100 KB request
bodies; and for gateway arms the records written per call made (after the writer drained:
/healthz queue empty and spool empty).

Every step sends a fixed number of requests, so the run always ends by itself. All traffic stays
on 127.0.0.1. Child processes are stopped on exit, Ctrl-C and SIGTERM (and get SIGTERM should
this process die). This is a script, not a test:

    .venv/bin/python bench/bench.py [--quick] [--arms direct,bare,sqlite,postgres]

It prints a table and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
PYTHON = sys.executable
HOST = "127.0.0.1"
PG_ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN", "postgres://postgres@127.0.0.1:5432/postgres")
PG_BASE_DSN = PG_ADMIN_DSN.rsplit("/", 1)[0]
CHAT_PATH = "/v1/chat/completions"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CONCURRENCIES = (1, 16, 64, 256)
STREAM_GAP_MS = 5
HELD_CHUNK_MS = 1000
OPEN_TIMEOUT = 60.0
STALL_SECONDS = 5.0

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-not-a-real-key"}

SMALL_BODY = json.dumps(
    {
        "model": "mistral-small-latest",
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
            {"role": "user", "content": "What is the capital of France, and since when?"},
        ],
        "temperature": 0.3,
        "max_tokens": 128,
    }
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "What is the capital of France, and since when?"}],
        "stream": True,
    }
).encode()
assert b'"stream": true' in STREAM_BODY


def big_body(size: int = 100 * 1024) -> bytes:
    """A chat request of `size` bytes whose user message is plausible prose-like text."""
    words = (
        "agent",
        "tool",
        "call",
        "context",
        "retrieval",
        "document",
        "summary",
        "the",
        "of",
        "and",
        "result",
        "paragraph",
        "section",
        "invoice",
        "customer",
        "order",
    )
    empty = len(
        json.dumps({"model": "mistral-small-latest", "messages": [{"role": "user", "content": ""}]})
    )
    text: list[str] = []
    n, i = 0, 0
    while n < size - empty:
        word = words[(i * 7 + i // 5) % len(words)]
        text.append(word)
        n += len(word) + 1
        i += 1
    content = " ".join(text)[: size - empty]
    return json.dumps(
        {"model": "mistral-small-latest", "messages": [{"role": "user", "content": content}]}
    ).encode()


BIG_BODY = big_body()


@dataclass(frozen=True)
class Params:
    warmup: int
    lat_rounds: int
    lat_per_round: int
    tput_rounds: int
    tput_n: dict[int, int]
    stream_n: int
    stream_rps_n: int
    open_streams: int
    big_n: int
    big_conc: int = 16
    stream_conc: int = 16


QUICK = Params(
    warmup=300,
    lat_rounds=4,
    lat_per_round=250,
    tput_rounds=3,
    tput_n={1: 300, 16: 1500, 64: 2000, 256: 3000},
    stream_n=30,
    stream_rps_n=400,
    open_streams=1000,
    big_n=200,
)
FULL = Params(
    warmup=1000,
    lat_rounds=10,
    lat_per_round=500,
    tput_rounds=5,
    tput_n={1: 1000, 16: 4000, 64: 6000, 256: 8000},
    stream_n=120,
    stream_rps_n=1500,
    open_streams=1000,
    big_n=800,
)


# -- processes -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the bench dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (via /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(x) for x in fh.read().split())
    return out


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime + stime of the process tree (all threads), or of `pid` alone, in seconds."""
    try:
        import psutil  # optional
    except ImportError:
        psutil = None
    total = 0.0
    for p in proc_tree(pid) if tree else [pid]:
        try:
            if psutil is not None:
                times = psutil.Process(p).cpu_times()
                total += times.user + times.system
                continue
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        except (OSError, ValueError):
            continue
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{p}/statm") as fh:
            total += int(fh.read().split()[1]) * PAGE_SIZE
    return total


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.popen.pid
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, limit: int = 4000) -> str:
        if not self.log.closed:
            self.log.flush()
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""

    def stop(self, grace: float = 15.0) -> None:
        if self.alive():
            start = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
            self.stop_seconds = time.monotonic() - start
        self.exit_code = self.popen.returncode
        self.log.close()


PROCS: list[Proc] = []
PG_DATABASES: list[str] = []  # created by this run; dropped on exit whatever happens


def spawn(name: str, argv: list[str], log_dir: Path) -> Proc:
    proc = Proc(name, argv, log_dir)
    PROCS.append(proc)
    return proc


async def wait_ready(proc: Proc, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with status {proc.popen.returncode} before "
                f"it was ready; its output:\n{proc.output()}"
            )
        with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
            if await probe():
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s; its output:\n{proc.output()}")


async def port_open(port: int) -> bool:
    _, writer = await asyncio.open_connection(HOST, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# -- arms ------------------------------------------------------------------------------------


@dataclass
class Arm:
    name: str
    kind: str  # direct | bare | gateway
    base: str
    proc: Proc | None = None
    ui: str | None = None
    calls: int = 0  # requests sent through this arm
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    start_error: str | None = None
    db_name: str | None = None

    @property
    def url(self) -> str:
        return self.base + CHAT_PATH

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)


async def health(session: aiohttp.ClientSession, arm: Arm) -> dict[str, Any]:
    async with session.get(f"{arm.ui}/healthz") as resp:
        return await resp.json()


async def drain(session: aiohttp.ClientSession, arm: Arm, timeout: float = 120.0) -> float:
    """Wait until the gateway's writer has stored everything sent so far; returns seconds.

    Done when the queue and spool are empty and written + dropped records reach the number of
    calls made. Gives up (and counts a stall) when nothing moves for STALL_SECONDS: records
    lost, or parked in the spool with no replay running; the final check reports which.
    """
    if arm.kind != "gateway":
        return 0.0
    start = time.perf_counter()
    last: tuple[int, int, int] | None = None
    last_change = start
    while True:
        now = time.perf_counter()
        try:
            h = await health(session, arm)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            arm.metrics.setdefault("health_errors", []).append(repr(exc))
            h = None
        if h is not None:
            done = h.get("written_records", 0) + h.get("dropped_records", 0)
            queue, spool = h.get("queue_depth", 1), h.get("spool_bytes", 1)
            if queue == 0 and spool == 0 and done >= arm.calls:
                return now - start
            state = (done, queue, spool)
            if state != last:
                last, last_change = state, now
            elif now - last_change > STALL_SECONDS:
                arm.metrics["drain_stalls"] = arm.metrics.get("drain_stalls", 0) + 1
                arm.metrics.setdefault("stalled_health", h)
                return now - start
        if now - start > timeout:
            arm.metrics["drain_timeouts"] = arm.metrics.get("drain_timeouts", 0) + 1
            return now - start
        await asyncio.sleep(0.05)


# -- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    n_ok: int
    errors: int
    elapsed: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.n_ok / self.elapsed if self.elapsed else 0.0


async def load(
    session: aiohttp.ClientSession,
    arm: Arm,
    n: int,
    conc: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> Load:
    """Send exactly n requests with conc workers; returns latencies of the good ones."""
    hdrs = headers or HEADERS
    latencies: list[float] = []
    remaining = n
    errors = 0
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            t0 = clock()
            try:
                async with session.post(arm.url, data=body, headers=hdrs) as resp:
                    data = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors += 1
                arm.error(f"{type(exc).__name__}: {exc}")
                continue
            t1 = clock()
            if status == 200:
                latencies.append(t1 - t0)
            else:
                errors += 1
                arm.error(f"HTTP {status}: {data[:200]!r}")

    start = clock()
    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    elapsed = clock() - start
    arm.calls += n
    return Load(len(latencies), errors, elapsed, latencies)


async def one_stream(
    session: aiohttp.ClientSession, arm: Arm, headers: dict[str, str]
) -> tuple[float, float, int] | None:
    """One SSE call: (ttft seconds, mean gap between events seconds, events) or None."""
    clock = time.perf_counter
    arm.calls += 1
    t0 = clock()
    first = last = None
    events = 0
    tail = b""
    try:
        async with session.post(arm.url, data=STREAM_BODY, headers=headers) as resp:
            if resp.status != 200:
                arm.error(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                return None
            async for chunk in resp.content.iter_any():
                now = clock()
                count = chunk.count(b"data: ")
                if count:
                    if first is None:
                        first = now
                    last = now
                    events += count
                tail = (tail + chunk)[-32:]
    except (aiohttp.ClientError, TimeoutError) as exc:
        arm.error(f"stream {type(exc).__name__}: {exc}")
        return None
    if first is None or last is None or b"[DONE]" not in tail:
        arm.error(f"stream incomplete: {events} events, tail {tail!r}")
        return None
    gap = (last - first) / (events - 1) if events > 1 else 0.0
    return first - t0, gap, events


async def streams(
    session: aiohttp.ClientSession, arm: Arm, n: int, conc: int, gap_ms: float
) -> tuple[list[tuple[float, float, int]], float]:
    headers = {**HEADERS, "x-bench-chunk-delay-ms": str(gap_ms)}
    results: list[tuple[float, float, int]] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            got = await one_stream(session, arm, headers)
            if got is not None:
                results.append(got)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    return results, time.perf_counter() - start


async def open_streams(
    session: aiohttp.ClientSession, arm: Arm, upstream: str, n: int
) -> dict[str, Any]:
    """Hold n streams open through the arm and sample the proxy's RSS while they are open."""
    assert arm.proc is not None
    headers = {**HEADERS, "x-bench-hold": "1", "x-bench-chunk-delay-ms": str(HELD_CHUNK_MS)}
    base_rss = rss_bytes(arm.proc.pid)
    opened = 0
    all_open = asyncio.Event()
    ok = 0

    async def one() -> None:
        nonlocal opened, ok
        counted = False
        tail = b""
        try:
            async with session.post(arm.url, data=STREAM_BODY, headers=headers) as resp:
                async for chunk in resp.content.iter_any():
                    if not counted:
                        counted = True
                        opened += 1
                        if opened == n:
                            all_open.set()
                    tail = (tail + chunk)[-32:]
                if resp.status == 200 and b"[DONE]" in tail:
                    ok += 1
                else:
                    arm.error(f"held stream: HTTP {resp.status}, tail {tail!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            arm.error(f"held stream {type(exc).__name__}: {exc}")
        finally:
            if not counted:
                opened += 1
                if opened == n:
                    all_open.set()

    arm.calls += n
    start = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    peak = base_rss
    sampled = False
    try:
        while not all_open.is_set() and time.perf_counter() - start < OPEN_TIMEOUT:
            peak = max(peak, rss_bytes(arm.proc.pid))  # sample while they open too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), 0.1)
        open_seconds = time.perf_counter() - start
        async with session.get(f"{upstream}/bench/held") as resp:
            held = (await resp.json())["held"]
        for _ in range(15):  # 1.5 s of samples with all streams open
            peak = max(peak, rss_bytes(arm.proc.pid))
            await asyncio.sleep(0.1)
        sampled = True
    finally:
        async with session.get(f"{upstream}/bench/release") as resp:
            await resp.read()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "requested": n,
        "base_rss": base_rss,
        "peak_rss": peak,
        "delta_rss": peak - base_rss,
        "open_seconds": open_seconds,
        "held_at_upstream": held,
        "completed": ok,
        "sampled": sampled,
    }


# -- the run ---------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def create_pg_db(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_pg_db(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def start_arms(
    names: list[str], tmp: Path, upstream: str, session: aiohttp.ClientSession
) -> list[Arm]:
    arms: list[Arm] = []
    for name in names:
        if name == "direct":
            arms.append(Arm("direct", "direct", upstream))
            continue
        port = free_port()
        if name == "bare":
            arm = Arm("bare", "bare", f"http://{HOST}:{port}")
            arm.proc = spawn(
                "bare",
                [
                    PYTHON,
                    str(BENCH_DIR / "passthrough.py"),
                    "--port",
                    str(port),
                    "--upstream",
                    upstream,
                ],
                tmp,
            )
            arms.append(arm)
            continue
        ui_port = free_port()
        arm = Arm(
            f"gateway-{name}", "gateway", f"http://{HOST}:{port}", ui=f"http://{HOST}:{ui_port}"
        )
        arms.append(arm)
        extra = ["--journal", "off"] if name.endswith("-nojournal") else []
        if name.startswith("sqlite"):
            db = f"sqlite://{tmp / f'bench-{name}.db'}"
        else:
            arm.db_name = f"agentops_bench_{os.getpid()}_{secrets.token_hex(3)}"
            try:
                await create_pg_db(arm.db_name)
                PG_DATABASES.append(arm.db_name)
            except Exception as exc:
                arm.start_error = f"cannot create PostgreSQL database: {exc!r}"
                arm.db_name = None
                continue
            db = f"{PG_BASE_DSN}/{arm.db_name}"
        arm.proc = spawn(
            arm.name,
            [
                PYTHON,
                "-m",
                "gateway",
                "serve",
                "--upstream",
                upstream,
                "--db",
                db,
                "--host",
                HOST,
                "--port",
                str(port),
                "--ui-port",
                str(ui_port),
                "--spool-dir",
                str(tmp / f"spool-{name}"),
                "--shutdown-grace",
                "5",
                *extra,
            ],
            tmp,
        )

    for arm in arms:
        if arm.proc is None:
            continue
        try:
            if arm.kind == "gateway":
                ui = arm.ui

                async def probe(
                    ui: str | None = ui,
                    port: int = int(arm.base.rsplit(":", 1)[1]),
                ) -> bool:
                    async with session.get(f"{ui}/healthz") as resp:
                        if resp.status != 200:
                            return False
                    return await port_open(port)

                await wait_ready(arm.proc, probe, 45)
            else:
                port = int(arm.base.rsplit(":", 1)[1])
                await wait_ready(arm.proc, lambda port=port: port_open(port), 20)
        except RuntimeError as exc:
            arm.start_error = str(exc)
    return arms


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def measure(params: Params, names: list[str], tmp: Path, meta: dict[str, Any]) -> list[Arm]:
    up_port = free_port()
    upstream_proc = spawn(
        "upstream", [PYTHON, str(BENCH_DIR / "upstream.py"), "--port", str(up_port)], tmp
    )
    upstream = f"http://{HOST}:{up_port}"
    timeout = aiohttp.ClientTimeout(total=180, sock_read=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def up_ping() -> bool:
            async with session.get(f"{upstream}/bench/ping") as resp:
                return resp.status == 200

        await wait_ready(upstream_proc, up_ping, 20)
        log(f"starting arms: {', '.join(names)}")
        all_arms = await start_arms(names, tmp, upstream, session)
        for arm in all_arms:
            if arm.start_error:
                log(f"!! {arm.name} did not start: {arm.start_error}")
        arms = [a for a in all_arms if not a.start_error]
        proxies = [a for a in arms if a.proc is not None]

        async def drain_all() -> None:
            for arm in arms:
                await drain(session, arm)

        log("warm-up")
        for arm in arms:
            await load(session, arm, params.warmup, 16, SMALL_BODY)
            await streams(session, arm, 20, 4, 0)
            await load(session, arm, 20, 4, BIG_BODY)
        await drain_all()

        log(f"{params.open_streams} open streams (proxy RSS)")
        for arm in proxies:
            got = await open_streams(session, arm, upstream, params.open_streams)
            arm.metrics["open_streams"] = got
            await drain(session, arm)

        log("latency at concurrency 1")
        for _ in range(params.lat_rounds):
            for arm in arms:
                got = await load(session, arm, params.lat_per_round, 1, SMALL_BODY)
                arm.samples.setdefault("lat", []).extend(got.latencies)
                await drain(session, arm)

        for rnd in range(params.tput_rounds):
            log(f"throughput round {rnd + 1}/{params.tput_rounds}")
            for conc in CONCURRENCIES:
                for arm in arms:
                    pid = arm.proc.pid if arm.proc else None
                    cpu0 = cpu_seconds(pid) if pid else 0.0
                    own0 = cpu_seconds(pid, tree=False) if pid else 0.0
                    me0 = time.process_time()
                    got = await load(session, arm, params.tput_n[conc], conc, SMALL_BODY)
                    me1 = time.process_time()
                    arm.add(f"rps_c{conc}", got.rps)
                    arm.add(f"client_cpu_c{conc}", (me1 - me0) / got.elapsed)
                    own1 = cpu_seconds(pid, tree=False) if pid else 0.0
                    drained = await drain(session, arm)
                    arm.add(f"drain_s_c{conc}", drained)
                    # What a saturated gateway sustains: calls until their records are stored.
                    arm.add(f"stored_rps_c{conc}", got.n_ok / (got.elapsed + drained))
                    if pid:
                        arm.add(
                            f"cpu_us_c{conc}", (cpu_seconds(pid) - cpu0) / params.tput_n[conc] * 1e6
                        )
                        arm.add(f"proxy_cpu_us_c{conc}", (own1 - own0) / params.tput_n[conc] * 1e6)

        log("streams: TTFT and chunk gap")
        per_round = max(1, params.stream_n // 2)
        for _ in range(2):
            for arm in arms:
                got, _elapsed = await streams(session, arm, per_round, 1, STREAM_GAP_MS)
                arm.samples.setdefault("ttft", []).extend(r[0] for r in got)
                arm.samples.setdefault("gap", []).extend(r[1] for r in got)
                await drain(session, arm)

        log("streams: throughput")
        for _ in range(params.tput_rounds):
            for arm in arms:
                got, elapsed = await streams(
                    session, arm, params.stream_rps_n, params.stream_conc, 0
                )
                arm.add("stream_rps", len(got) / elapsed)
                await drain(session, arm)

        log("100 KB request bodies")
        for _ in range(params.tput_rounds):
            for arm in arms:
                got = await load(session, arm, params.big_n, params.big_conc, BIG_BODY)
                arm.add("big_rps", got.rps)
                await drain(session, arm)

        log("records written")
        for arm in arms:
            if arm.kind != "gateway":
                continue
            arm.metrics["final_drain_s"] = await drain(session, arm, timeout=180)
            h = await health(session, arm)
            async with session.get(f"{arm.ui}/api/stats") as resp:
                stats = await resp.json()
            arm.metrics["health"] = h
            arm.metrics["recorded_calls"] = int(stats["totals"]["calls"])
            arm.metrics["recorded_errors"] = stats["totals"].get("errors")

        meta["upstream_cpu_s"] = cpu_seconds(upstream_proc.pid)
    return all_arms


def summarize(arm: Arm) -> None:
    m = arm.metrics
    s = arm.samples
    lat = s.get("lat", [])
    m["lat_p50_ms"] = 1000 * pct(lat, 0.50) if lat else None
    m["lat_p99_ms"] = 1000 * pct(lat, 0.99) if lat else None
    m["lat_n"] = len(lat)
    for conc in CONCURRENCIES:
        m[f"rps_c{conc}"] = median(s.get(f"rps_c{conc}", []))
        m[f"client_cpu_c{conc}"] = median(s.get(f"client_cpu_c{conc}", []))
        for key in (f"cpu_us_c{conc}", f"proxy_cpu_us_c{conc}", f"stored_rps_c{conc}"):
            if s.get(key):
                m[key] = median(s[key])
        if arm.kind == "gateway":
            m[f"drain_s_c{conc}"] = median(s.get(f"drain_s_c{conc}", []))
    ttft, gap = s.get("ttft", []), s.get("gap", [])
    m["ttft_p50_ms"] = 1000 * pct(ttft, 0.5) if ttft else None
    m["ttft_mean_ms"] = 1000 * statistics.fmean(ttft) if ttft else None
    m["gap_mean_ms"] = 1000 * statistics.fmean(gap) if gap else None
    m["stream_rps"] = median(s.get("stream_rps", []))
    m["big_rps"] = median(s.get("big_rps", []))
    if "open_streams" in m:
        m["rss_peak_mib"] = m["open_streams"]["peak_rss"] / 2**20
        m["rss_delta_mib"] = m["open_streams"]["delta_rss"] / 2**20
    m["calls_made"] = arm.calls
    m["errors"] = arm.errors
    if arm.kind == "gateway" and "recorded_calls" in m:
        m["records_ratio"] = m["recorded_calls"] / arm.calls if arm.calls else None


# -- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    mode: str  # abs_ms (added ms vs bare), ratio (x bare), mib, pct, plain
    target: str = ""
    check_sqlite: Callable[[float], bool] | None = None
    check_pg: Callable[[float], bool] | None = None
    digits: int = 0


ROWS = [
    Row(
        "latency p50, c=1 (ms)",
        "lat_p50_ms",
        "abs_ms",
        "<= +0.25 ms",
        lambda d: d <= 0.25,
        lambda d: d <= 0.25,
        3,
    ),
    Row("latency p99, c=1 (ms)", "lat_p99_ms", "abs_ms", digits=3),
    Row("req/s, c=1", "rps_c1", "ratio"),
    Row("req/s, c=16", "rps_c16", "ratio"),
    Row(
        "req/s, c=64",
        "rps_c64",
        "ratio",
        ">= 0.8x sqlite, 0.7x pg",
        lambda r: r >= 0.8,
        lambda r: r >= 0.7,
    ),
    Row("req/s, c=256", "rps_c256", "ratio"),
    Row("req/s until stored, c=64", "stored_rps_c64", "ratio"),
    Row(
        "stream TTFT p50 (ms)",
        "ttft_p50_ms",
        "abs_ms",
        "<= +0.5 ms",
        lambda d: d <= 0.5,
        lambda d: d <= 0.5,
        3,
    ),
    Row(f"stream mean chunk gap (ms, upstream {STREAM_GAP_MS})", "gap_mean_ms", "abs_ms", digits=3),
    Row("stream calls/s, c=16", "stream_rps", "ratio"),
    Row("CPU us/request, c=1 (all processes)", "cpu_us_c1", "ratio"),
    Row("CPU us/request, c=64 (all processes)", "cpu_us_c64", "ratio"),
    Row("CPU us/request, c=64 (proxy process)", "proxy_cpu_us_c64", "ratio"),
    Row(
        "req/s, 100 KB bodies, c=16",
        "big_rps",
        "ratio",
        ">= 0.6x",
        lambda r: r >= 0.6,
        lambda r: r >= 0.6,
    ),
    Row(
        "RSS growth, 1,000 open streams (MiB)",
        "rss_delta_mib",
        "mib",
        "<= 64 MiB",
        lambda v: v <= 64,
        lambda v: v <= 64,
        1,
    ),
    Row("RSS peak, 1,000 open streams (MiB)", "rss_peak_mib", "mib", digits=1),
    Row("writer drain after c=256 step (s)", "drain_s_c256", "plain", digits=2),
    Row(
        "records written / calls made",
        "records_ratio",
        "pct",
        "100%",
        lambda v: v == 1.0,
        lambda v: v == 1.0,
    ),
]


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def cell(
    row: Row,
    arm: Arm | None,
    bare: Arm | None,
    direct: Arm | None,
) -> tuple[str, float | None]:
    """Text of one cell and the value its target is checked against."""
    if arm is None:
        return "-", None
    if arm.start_error:
        return "did not start", None
    value = arm.metrics.get(row.key)
    if value is None:
        return "n/a", None
    if row.mode == "pct":
        return f"{100 * value:.2f}%", value
    if row.mode in ("mib", "plain"):
        return fmt(value, row.digits), value
    ref = None
    if arm.kind == "gateway":
        ref = bare
    elif arm.kind == "bare":
        ref = direct
    ref_value = ref.metrics.get(row.key) if ref is not None and not ref.start_error else None
    text = fmt(value, row.digits)
    if ref_value is None:
        return text, None
    if row.mode == "abs_ms":
        diff = value - ref_value
        return f"{text} ({diff:+.3f})", diff if arm.kind == "gateway" else None
    ratio = value / ref_value if ref_value else 0.0
    return f"{text} ({ratio:.2f}x)", ratio if arm.kind == "gateway" else None


def report(arms: list[Arm], meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    by_name = {a.name: a for a in arms}
    direct, bare = by_name.get("direct"), by_name.get("bare")
    sqlite, pg = by_name.get("gateway-sqlite"), by_name.get("gateway-postgres")
    header = [
        "metric",
        "direct",
        "bare",
        "gateway-sqlite",
        "gateway-postgres",
        "target",
        "sqlite",
        "postgres",
    ]
    lines: list[list[str]] = []
    verdicts: list[dict[str, Any]] = []
    for row in ROWS:
        texts = []
        checks: list[str] = []
        for arm in (direct, bare, sqlite, pg):
            text, _ = cell(row, arm, bare, direct)
            if arm is direct and row.mode in ("mib", "pct", "plain"):
                text = "-"
            if arm is bare and row.mode in ("pct", "plain"):
                text = "-"
            texts.append(text)
        verdict: dict[str, Any] = {"metric": row.label, "key": row.key, "target": row.target}
        for arm, check, col in (
            (sqlite, row.check_sqlite, "sqlite"),
            (pg, row.check_pg, "postgres"),
        ):
            if check is None:
                checks.append("")
                continue
            _, checked = cell(row, arm, bare, direct)
            if checked is None:
                checks.append("n/a")
                verdict[col] = None
            else:
                ok = check(checked)
                checks.append("PASS" if ok else "FAIL")
                verdict[col] = {"value": checked, "pass": ok}
        verdicts.append(verdict)
        lines.append([row.label, *texts, row.target, *checks])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def render(cols: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        ).rstrip()

    out = [render(header), render(["-" * w for w in widths])]
    out += [render(r) for r in lines]
    out.append("")
    out.append(
        "(x) and (+ms): bare vs direct; gateway columns vs bare. RSS growth = peak while "
        "1,000 streams are open minus RSS before opening them."
    )
    for arm in arms:  # arms beside the table's four (--journal off), each against bare
        if arm.kind != "gateway" or arm in (sqlite, pg) or bare is None:
            continue
        parts = []
        for row in ROWS:
            if row.key in ("lat_p50_ms", "rps_c64", "proxy_cpu_us_c64", "big_rps"):
                text, _ = cell(row, arm, bare, direct)
                parts.append(f"{row.label} {text}")
        out.append(f"{arm.name}: " + "; ".join(parts))
    client = [a.metrics.get("client_cpu_c64") for a in arms if a.metrics.get("client_cpu_c64")]
    if client:
        out.append(
            f"load generator CPU at c=64: {min(client):.0%}-{max(client):.0%} of one core "
            f"(near 100% means the client, not the proxy, caps req/s)."
        )
    out.append(
        f"mode {meta['mode']}, {meta['cpus']} CPUs, python {meta['python']}, "
        f"aiohttp {meta['aiohttp']}, wall {meta.get('wall_s', 0):.0f}s"
    )
    return "\n".join(out), verdicts


def log_trouble(text: str) -> tuple[list[str], list[str]]:
    """Warning/error entries of a child's log: one line each (with the exception that ended
    its traceback, if any), plus an excerpt of up to 80 raw lines for results.json."""
    lines = text.splitlines()
    entries: list[str] = []
    excerpt: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not any(w in line for w in ("ERROR", "CRITICAL", "WARNING", "Traceback")):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (
            lines[j].startswith((" ", "\t", "Traceback", "During ", "The above"))
            or not lines[j].strip()
        ):
            j += 1
        if j < len(lines) and j > i + 1 and ":" in lines[j] and not lines[j][:4].isdigit():
            j += 1  # the exception line that ends the traceback
        block = lines[i:j]
        last = block[-1].strip() if len(block) > 1 else ""
        entries.append(line.strip() + (f" -> {last}" if last else ""))
        if len(excerpt) < 80:
            excerpt.extend(block[: 80 - len(excerpt)])
        i = j
    return entries, excerpt


def problems(arms: list[Arm]) -> list[str]:
    found = []
    for arm in arms:
        if arm.start_error:
            lines = arm.start_error.strip().splitlines()
            if len(lines) > 8:
                lines = [lines[0], "...", *lines[-6:]]
            tail = "\n  ".join(lines)
            found.append(f"{arm.name}: did not start:\n  {tail}")
            continue
        m = arm.metrics
        if arm.errors:
            found.append(
                f"{arm.name}: {arm.errors} failed calls of {arm.calls}; e.g. "
                + " | ".join(arm.error_samples[:3])
            )
        if m.get("drain_stalls"):
            h = m.get("stalled_health", {})
            found.append(
                f"{arm.name}: writer stopped short of the calls made {m['drain_stalls']} "
                f"time(s) (nothing moved for {STALL_SECONDS:.0f}s); first time healthz: "
                f"written={h.get('written_records')} queue={h.get('queue_depth')} "
                f"spool_bytes={h.get('spool_bytes')} "
                f"dropped={h.get('dropped_records')}"
            )
        if m.get("drain_timeouts"):
            found.append(
                f"{arm.name}: writer did not drain within the timeout {m['drain_timeouts']} time(s)"
            )
        if arm.kind == "gateway" and "recorded_calls" in m:
            h = m.get("health", {})
            if m["recorded_calls"] != arm.calls:
                found.append(
                    f"{arm.name}: {m['recorded_calls']} calls recorded of {arm.calls} "
                    f"made; healthz: written={h.get('written_records')} "
                    f"dropped={h.get('dropped_records')} "
                    f"queue={h.get('queue_depth')} spool={h.get('spool_bytes')}"
                )
            if m.get("recorded_errors"):
                found.append(
                    f"{arm.name}: {m['recorded_errors']} recorded calls have an error "
                    f"status or an incomplete state (all calls made got HTTP 200)"
                )
            if h.get("database_errors"):
                found.append(
                    f"{arm.name}: {h['database_errors']} database errors, last: "
                    f"{h.get('last_database_error')}"
                )
        held = m.get("open_streams")
        if held and held["held_at_upstream"] < held["requested"]:
            found.append(
                f"{arm.name}: only {held['held_at_upstream']} of {held['requested']} "
                f"streams were open at the upstream at once (opening took "
                f"{held['open_seconds']:.1f}s)"
            )
        if arm.proc is not None:
            if arm.proc.exit_code not in (0, None, -signal.SIGTERM):
                found.append(f"{arm.name}: exit status {arm.proc.exit_code} after SIGTERM")
            if arm.proc.stop_seconds is not None and arm.proc.stop_seconds > 10:
                found.append(f"{arm.name}: took {arm.proc.stop_seconds:.1f}s to stop")
            bad, excerpt = log_trouble(arm.proc.output(limit=500_000))
            if bad:
                arm.metrics["log_excerpt"] = excerpt
                found.append(
                    f"{arm.name}: {len(bad)} warning/error log entries, e.g.:\n  "
                    + "\n  ".join(b[:300] for b in bad[:4])
                )
    return found


def clean_up() -> None:
    """Stop every child process and drop the throwaway PostgreSQL databases."""
    stop_all()
    for name in PG_DATABASES:
        try:
            asyncio.run(drop_pg_db(name))
        except Exception as exc:
            log(f"could not drop PostgreSQL database {name}: {exc!r}")


def stop_all() -> None:
    for proc in reversed(PROCS):
        with contextlib.suppress(Exception):
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="Gateway overhead benchmark (ratios to bare).")
    parser.add_argument("--quick", action="store_true", help="smaller counts (< 2 minutes)")
    parser.add_argument(
        "--arms",
        default="direct,bare,sqlite,postgres",
        help="comma list of direct, bare, sqlite, postgres, sqlite-nojournal, "
        "postgres-nojournal (the last two: --journal off)",
    )
    parser.add_argument("--output", default=str(BENCH_DIR / "results.json"))
    args = parser.parse_args()
    names = [n.strip() for n in args.arms.split(",") if n.strip()]
    unknown = set(names) - {
        "direct",
        "bare",
        "sqlite",
        "postgres",
        "sqlite-nojournal",
        "postgres-nojournal",
    }
    if unknown:
        parser.error(f"unknown arms: {', '.join(sorted(unknown))}")
    params = QUICK if args.quick else FULL

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "params": params.__dict__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    arms: list[Arm] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentops-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            arms = asyncio.run(measure(params, names, tmp, meta))
        except KeyboardInterrupt:
            log("interrupted; stopping child processes")
            return 130
        finally:
            clean_up()
        meta["wall_s"] = time.monotonic() - start
        for arm in arms:
            summarize(arm)
        table, verdicts = report(arms, meta)
        found = problems(arms)
    print(table)
    if found:
        print("\nproblems seen:")
        for line in found:
            print(f"- {line}")
    results = {
        "meta": meta,
        "arms": {a.name: {"start_error": a.start_error, **a.metrics} for a in arms},
        "rounds": {
            a.name: {k: v for k, v in a.samples.items() if k not in ("lat", "ttft", "gap")}
            for a in arms
        },
        "verdicts": verdicts,
        "problems": found,
    }
    Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
