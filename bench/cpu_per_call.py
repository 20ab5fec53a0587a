"""CPU per call of the gateway's proxy and writer processes: a fixed load, then a full drain.

Why: on a shared machine throughput moves with whatever else runs, but the CPU time a process
spends per call (utime + stime from /proc/PID/stat) barely does. This starts the fast fake
upstream, a bare passthrough and the gateway (SQLite or PostgreSQL), drives each with wrk
(chat bodies of --size bytes) for a fixed time, waits until every answered call is stored, and
prints microseconds of CPU per call: the proxy's process (over the load alone, `fwd`, and until
every record is stored, `all`), the writer's, and the bare passthrough's.

`--compare DIR` also starts a second gateway from another checkout (its own `.venv`, e.g. a
worktree of main) and measures it in the same rounds, arms interleaved (bare, this tree, the
other, order rotated each round), so a change is compared with its baseline on the same host
load.

    .venv/bin/python bench/cpu_per_call.py [--db sqlite|postgres] [--seconds 10] [--conc 16]
        [--size 1024] [--rounds 2] [--compare ../wt-main] [--compare-args '--journal off']
        [--py-spy writer|proxy|bare]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from drivers import Pool, WrkDriver, make_pool
from procs import HOST, Proc, answers, cpu_of, free_port, spawn, stop_all, wait_ready
from storage import PG_BASE_DSN, create_pg_db, drop_pg_db

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable


async def healthz(session: aiohttp.ClientSession, ui: str) -> dict:
    async with session.get(f"{ui}/healthz") as resp:
        return await resp.json()


async def drained(session: aiohttp.ClientSession, ui: str, written: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = await healthz(session, ui)
        if h.get("written_records", 0) >= written and not h.get("queue_depth"):
            return True
        await asyncio.sleep(0.1)
    return False


@dataclass
class Arm:
    """One gateway under test: its processes and its figures, ratios to bare per round."""

    name: str
    proc: Proc
    port: int
    ui: str
    writer_pid: int = 0
    fwd: list[float] = field(default_factory=list)  # proxy CPU per call over the load ÷ bare
    whole: list[float] = field(default_factory=list)  # ... until stored ÷ bare
    writer_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)  # forwarding req/s ÷ bare's


async def start_gateway(
    name: str, python: str, cwd: Path, db: str, upstream: str, tmp: Path, extra: list[str]
) -> Arm:
    port, ui_port = free_port(), free_port()
    argv = [python, "-m", "gateway", "serve", "--upstream", upstream, "--db", db, "--host", HOST]
    argv += ["--port", str(port), "--ui-port", str(ui_port)]
    argv += ["--spool-dir", str(tmp / f"spool-{name}"), *extra]
    proc = spawn(name, argv, tmp, None, cwd=cwd)
    return Arm(name, proc, port, f"http://{HOST}:{ui_port}")


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cpu-per-call-"))
    pool = make_pool(f"{args.size}", args.size, 200 if args.size < 65536 else 20, tmp, seed=7)
    up_port, bare_port = free_port(), free_port()
    upstream = f"http://{HOST}:{up_port}"
    procs = [
        spawn(
            "upstream", [PYTHON, str(BENCH_DIR / "upstream.py"), "--port", str(up_port)], tmp, None
        )
    ]
    bare = spawn(
        "bare",
        [
            PYTHON,
            str(BENCH_DIR / "passthrough.py"),
            "--port",
            str(bare_port),
            "--upstream",
            upstream,
        ],
        tmp,
        None,
    )
    trees: list[tuple[str, str, Path, list[str]]] = [("gateway", PYTHON, BENCH_DIR.parent, [])]
    if args.compare:
        other = Path(args.compare).resolve()
        python = str(other / ".venv" / "bin" / "python")
        trees.append(("compare", python, other, shlex.split(args.compare_args)))
    db_names: list[str] = []
    arms: list[Arm] = []
    for name, python, cwd, extra in trees:
        if args.db == "sqlite":
            db = f"sqlite://{tmp / f'{name}.db'}"
        else:
            db_name = f"agentops_cpu_{os.getpid()}_{secrets.token_hex(3)}"
            await create_pg_db(db_name)
            db_names.append(db_name)
            db = f"{PG_BASE_DSN}/{db_name}"
        arms.append(await start_gateway(name, python, cwd, db, upstream, tmp, extra))
    driver = WrkDriver()
    number = 0
    bare_us_all: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(procs[0], lambda: answers(session, f"{upstream}/bench/ping"), 30)
            for arm in arms:
                await wait_ready(
                    arm.proc, lambda arm=arm: answers(session, f"{arm.ui}/healthz"), 60
                )
            await asyncio.sleep(1)
            bare_url = f"http://{HOST}:{bare_port}/v1/chat/completions"
            for arm in arms:
                arm.writer_pid = (await healthz(session, arm.ui))["writer_pid"]
                await driver.run(gateway_url(arm), pool, args.conc, 2, number)  # warm up
                number += 10**6
                await drained(session, arm.ui, 0, 120)
            await driver.run(bare_url, pool, args.conc, 2, number)
            number += 10**6
            for rnd in range(args.rounds):
                order: list[Arm | None] = [None, *arms]
                shift = rnd % len(order)
                order = order[shift:] + order[:shift]
                results: dict[str, tuple[float, float, float, float]] = {}
                bare_us = bare_rps = 0.0
                for arm in order:
                    if arm is None:
                        b0 = cpu_of([bare.pid])
                        spy = None
                        if args.py_spy == "bare":
                            spy = py_spy(bare.pid, f"bare-{rnd}", args.seconds)
                        res = await driver.run(bare_url, pool, args.conc, args.seconds, number)
                        if spy is not None:
                            spy.send_signal(signal.SIGINT)
                            spy.wait()
                        number += 10**6
                        bare_us = (cpu_of([bare.pid]) - b0) / max(res.ok, 1) * 1e6
                        bare_rps = res.rps
                        continue
                    results[arm.name] = await measure(arm, args, session, driver, pool, number, rnd)
                    number += 10**6
                bare_us_all.append(bare_us)
                for arm in arms:
                    fwd_us, all_us, writer_us, rps = results[arm.name]
                    arm.fwd.append(fwd_us / bare_us)
                    arm.whole.append(all_us / bare_us)
                    arm.writer_us.append(writer_us)
                    arm.rps.append(rps / bare_rps)
                    print(
                        f"{args.db} {args.size} B round {rnd} {arm.name}: bare "
                        f"{bare_us:.0f} us/call ({bare_rps:.0f} req/s); proxy fwd "
                        f"{fwd_us:.0f} us/call "
                        f"({fwd_us / bare_us:.2f}x bare), until stored {all_us:.0f} "
                        f"({all_us / bare_us:.2f}x); writer {writer_us:.0f} us/call; "
                        f"{rps:.0f} req/s ({rps / bare_rps:.2f}x bare)",
                        flush=True,
                    )
            for arm in arms:
                print(
                    f"SUMMARY {args.db} {args.size} B c={args.conc} {arm.name}: proxy CPU/call "
                    f"÷ bare median {statistics.median(arm.fwd):.2f}x over the load "
                    f"({', '.join(f'{x:.2f}' for x in arm.fwd)}), "
                    f"{statistics.median(arm.whole):.2f}x until stored; writer "
                    f"{statistics.median(arm.writer_us):.0f} us/call; req/s ÷ bare "
                    f"{statistics.median(arm.rps):.2f}x; bare "
                    f"{statistics.median(bare_us_all):.0f} us/call",
                    flush=True,
                )
    finally:
        stop_all()
        for db_name in db_names:
            await drop_pg_db(db_name)


def gateway_url(arm: Arm) -> str:
    return f"http://{HOST}:{arm.port}/v1/chat/completions"


async def measure(
    arm: Arm,
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    driver: WrkDriver,
    pool: Pool,
    number: int,
    rnd: int,
) -> tuple[float, float, float, float]:
    """(proxy us/call over the load, proxy us/call until stored, writer us/call, req/s)."""
    h0 = await healthz(session, arm.ui)
    p0, w0 = cpu_of([arm.proc.pid]), cpu_of([arm.writer_pid])
    spy = None
    if args.py_spy in ("writer", "proxy") and arm.name == "gateway":
        pid = arm.writer_pid if args.py_spy == "writer" else arm.proc.pid
        spy = py_spy(pid, f"{args.db}-{args.py_spy}-{rnd}", args.seconds)
    res = await driver.run(gateway_url(arm), pool, args.conc, args.seconds, number)
    p_fwd = cpu_of([arm.proc.pid])
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy.wait()
    ok = await drained(session, arm.ui, h0["written_records"] + res.ok, 300)
    p1, w1 = cpu_of([arm.proc.pid]), cpu_of([arm.writer_pid])
    if not ok:
        print(f"{arm.name}: NOT DRAINED", flush=True)
    calls = max(res.ok, 1)
    return (
        (p_fwd - p0) / calls * 1e6,
        (p1 - p0) / calls * 1e6,
        (w1 - w0) / calls * 1e6,
        res.rps,
    )


def py_spy(pid: int, name: str, seconds: int) -> subprocess.Popen[bytes]:
    """A py-spy recording of one process (raw collapsed stacks), stopped by SIGINT."""
    out = Path(tempfile.gettempdir()) / f"profile-{name}.txt"
    argv = [str(Path(PYTHON).parent / "py-spy"), "record", "-o", str(out), "--pid", str(pid)]
    argv += ["--nonblocking", "-f", "raw", "-r", "200", "-d", str(seconds + 20)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024, help="request body bytes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", help="another checkout (with its .venv) to measure beside")
    parser.add_argument(
        "--compare-args",
        default="",
        help="more `serve` arguments for the --compare arm: `--compare . --compare-args "
        "'--journal off'` measures this tree without its journal beside it",
    )
    parser.add_argument("--py-spy", choices=("writer", "proxy", "bare"))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
