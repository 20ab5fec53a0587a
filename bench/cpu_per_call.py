"""CPU per call of the gateway's proxy and writer processes: a fixed load, then a full drain.

Why: on a shared machine throughput moves with whatever else runs, but the CPU time a process
spends per call (utime + stime from /proc/PID/stat) barely does. This starts the fast fake
upstream, a bare passthrough and the gateway (SQLite or PostgreSQL), drives each with wrk
(1 KB chat bodies) for a fixed time, waits until every answered call is stored, and prints
microseconds of CPU per call: the proxy's process, the writer's, and the bare passthrough's.

    .venv/bin/python bench/cpu_per_call.py [--db sqlite|postgres] [--seconds 10] [--conc 16]
        [--rounds 2] [--py-spy writer|proxy]   # --py-spy records a flame graph of one process
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from drivers import WrkDriver, make_pool
from procs import HOST, cpu_of, free_port, spawn, stop_all, wait_ready
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


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cpu-per-call-"))
    pool = make_pool("1k", 1024, 200, tmp, seed=7)
    up_port, bare_port, port, ui_port = (free_port() for _ in range(4))
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
    db_name = None
    if args.db == "sqlite":
        db = f"sqlite://{tmp / 'bench.db'}"
    else:
        db_name = f"agentops_cpu_{os.getpid()}_{secrets.token_hex(3)}"
        await create_pg_db(db_name)
        db = f"{PG_BASE_DSN}/{db_name}"
    argv = [PYTHON, "-m", "gateway", "serve", "--upstream", upstream, "--db", db, "--host", HOST]
    argv += ["--port", str(port), "--ui-port", str(ui_port), "--spool-dir", str(tmp / "spool")]
    gw = spawn("gateway", argv, tmp, None)
    driver = WrkDriver()
    ui = f"http://{HOST}:{ui_port}"
    number = 0
    try:
        async with aiohttp.ClientSession() as session:

            async def ping(url: str) -> bool:
                try:
                    async with session.get(url) as resp:
                        return resp.status < 500
                except aiohttp.ClientError:
                    return False

            await wait_ready(procs[0], lambda: ping(f"{upstream}/bench/ping"), 30)
            await wait_ready(gw, lambda: ping(f"{ui}/healthz"), 60)
            await asyncio.sleep(1)
            writer_pid = (await healthz(session, ui))["writer_pid"]
            url = f"http://{HOST}:{port}/v1/chat/completions"
            bare_url = f"http://{HOST}:{bare_port}/v1/chat/completions"
            await driver.run(url, pool, args.conc, 2, number)  # warm up
            number += 10**6
            await drained(session, ui, 0, 120)
            for rnd in range(args.rounds):
                b0 = cpu_of([bare.pid])
                res = await driver.run(bare_url, pool, args.conc, args.seconds, number)
                number += 10**6
                bare_us = (cpu_of([bare.pid]) - b0) / max(res.ok, 1) * 1e6
                h0 = await healthz(session, ui)
                p0, w0 = cpu_of([gw.pid]), cpu_of([writer_pid])
                spy = None
                if args.py_spy:
                    pid = writer_pid if args.py_spy == "writer" else gw.pid
                    out = Path(tempfile.gettempdir()) / f"profile-{args.db}-{args.py_spy}-{rnd}.txt"
                    spy = subprocess.Popen(
                        [
                            str(Path(PYTHON).parent / "py-spy"),
                            "record",
                            "-o",
                            str(out),
                            "--pid",
                            str(pid),
                            "--nonblocking",
                            "-f",
                            "raw",
                            "-r",
                            "200",
                            "-d",
                            str(args.seconds + 20),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                t0 = time.monotonic()
                res = await driver.run(url, pool, args.conc, args.seconds, number)
                number += 10**6
                t_fwd = time.monotonic() - t0
                ok = await drained(session, ui, h0["written_records"] + res.ok, 300)
                t_all = time.monotonic() - t0
                p1, w1 = cpu_of([gw.pid]), cpu_of([writer_pid])
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
                    spy.wait()
                calls = max(res.ok, 1)
                print(
                    f"{args.db} round {rnd}: {res.ok} calls ({res.rps:.0f} req/s fwd, bare "
                    f"{bare_us:.0f} us/call) proxy {(p1 - p0) / calls * 1e6:.0f} us/call "
                    f"({(p1 - p0) / calls * 1e6 / bare_us:.2f}x bare), writer "
                    f"{(w1 - w0) / calls * 1e6:.0f} us/call; stored in {t_all:.1f}s "
                    f"(load {t_fwd:.1f}s){'' if ok else ' NOT DRAINED'}",
                    flush=True,
                )
    finally:
        stop_all()
        if db_name:
            await drop_pg_db(db_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--py-spy", choices=("writer", "proxy"))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
