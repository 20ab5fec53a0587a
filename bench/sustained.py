"""Sustained load at the gateway's maximum rate: does storage keep up, does the spool grow,
is anything dropped, how long until every record is stored after the load?

wrk (one connection pool of 64, bench/load.lua bodies) and the fake upstream on CPU 0, the
gateway (proxy and writer) on CPU 1, like bench/bench.py. Prints /healthz every 10 s: records
stored in those 10 s, and the backlog (in transit to the writer, waiting in the spool).

`--writer-core` gives the writer a core of its own instead: the writer process alone on CPU 1,
the proxy beside wrk and the upstream on CPU 0 (on a 2-core host that is the only way to give
it one). The forwarding rate is then the proxy's share of CPU 0; the question is whether the
stored rate equals it, that is whether the backlog stays flat. `--conc` sets wrk's connections.

    .venv/bin/python bench/sustained.py [SECONDS=300] [DB=sqlite:///tmp/...] [BODY_BYTES=1024]
        [--writer-core] [--conc 64]
"""

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from drivers import make_pool  # noqa: E402 (a sibling module of this script)
from procs import cpu_of, free_port, pin_process  # noqa: E402

ROOT = str(BENCH.parent)
PY = sys.executable
_ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_ARGS.add_argument("seconds", nargs="?", type=int, default=300, help="load duration (300)")
_ARGS.add_argument("db", nargs="?", help="database URL (a new SQLite file)")
_ARGS.add_argument("body_bytes", nargs="?", type=int, default=1024, help="body size (1024)")
_ARGS.add_argument("--writer-core", action="store_true", help="the writer alone on CPU 1")
_ARGS.add_argument("--conc", type=int, default=64, help="wrk connections (64)")
ARGS = _ARGS.parse_args()
SECONDS = ARGS.seconds
TMP = Path(tempfile.mkdtemp(prefix="agentops-sustained-"))
DB = ARGS.db or f"sqlite://{TMP}/s.db"
SIZE = ARGS.body_bytes


async def main():
    tmp = TMP
    pool = make_pool("p", SIZE, 256, tmp, 7)
    up, gp, ui = free_port(), free_port(), free_port()
    upp = subprocess.Popen(
        ["taskset", "-c", "0", PY, str(BENCH / "upstream.py"), "--port", str(up)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = (tmp / "gw.log").open("w")
    gw = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0" if ARGS.writer_core else "1",
            PY,
            "-m",
            "gateway",
            "serve",
            "--upstream",
            f"http://127.0.0.1:{up}",
            "--db",
            DB,
            "--port",
            str(gp),
            "--ui-port",
            str(ui),
            "--spool-dir",
            str(tmp / "spool"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession() as s:

            async def health():
                async with s.get(f"http://127.0.0.1:{ui}/healthz") as r:
                    return await r.json()

            for _ in range(300):
                try:
                    await health()
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            if ARGS.writer_core:
                writer = (await health())["writer_pid"]
                pin_process(writer, {1})
                print(f"writer {writer} alone on CPU 1; proxy, wrk and upstream on CPU 0")
            h0 = await health()
            writer_cpu = cpu_of([h0["writer_pid"]])
            wrk = await asyncio.create_subprocess_exec(
                "taskset",
                "-c",
                "0",
                "wrk",
                "-t1",
                f"-c{ARGS.conc}",
                f"-d{SECONDS}s",
                "--timeout",
                "30s",
                "-s",
                str(BENCH / "load.lua"),
                f"http://127.0.0.1:{gp}/v1/chat/completions",
                "--",
                str(pool.path),
                "1",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            t0 = tick = time.time()
            before = h0["written_records"]
            while wrk.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wrk.wait(), 10)
                h = await health()
                now = time.time()
                rate = (h["written_records"] - before) / (now - tick)
                before, tick = h["written_records"], now
                print(
                    f"t={now - t0:5.0f}s written {h['written_records']:7} ({rate:5.0f}/s) "
                    f"spool {h['spool_bytes'] >> 20:5} MiB spooled {h['spooled_records']:7} "
                    f"dropped {h['dropped_records']} lag {h['writer_lag_seconds']:.1f}s "
                    f"in transit {h['queue_depth']}",
                    flush=True,
                )
            out = (await wrk.stdout.read()).decode()
            summary = [line for line in out.splitlines() if line.startswith("BENCH-JSON ")]
            if not summary:
                raise SystemExit(f"wrk said: {out[-500:]}")
            sent = json.loads(summary[-1].removeprefix("BENCH-JSON "))["requests"]
            print(f"wrk: {sent} calls in {SECONDS} s, {sent / SECONDS:.0f} req/s")
            stored = h["written_records"] - h0["written_records"]
            busy = (cpu_of([h0["writer_pid"]]) - writer_cpu) / (tick - t0)
            print(
                f"stored while the load ran: {stored} ({stored / (tick - t0):.0f}/s), "
                f"{stored / max(sent, 1):.1%} of the calls answered; the writer's process "
                f"used {busy:.0%} of a core"
            )
            t1 = time.time()
            while True:
                h = await health()
                if h["queue_depth"] == 0 and h["spool_bytes"] == 0 and h["writer_lag_seconds"] == 0:
                    break
                if time.time() - t1 > 600:
                    print("not drained")
                    break
                await asyncio.sleep(1)
            print(
                f"drained {time.time() - t1:.0f} s after load; written {h['written_records']} "
                f"of {sent} answered; dropped {h['dropped_records']}"
            )
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        log.close()
        upp.kill()


asyncio.run(main())
