"""Memory after a burst of 100 KB bodies: the gateway's RSS, per process, every 5 s for a minute.

Issue 13's target: after a burst of 100 KB bodies the gateway's RSS is back within 1.5x its
idle RSS within a minute. `bench/bench.py` reports the figure once, at the end of a long run;
this script reproduces it alone, in about two minutes per database:

1. start the fake upstream and the gateway (pinned as bench.py pins them), RSS at start;
2. 1 KB calls at c=16 for 2 s, wait until stored: RSS "warm";
3. 100 KB calls at c=16 for `--burst` seconds (10, as bench.py's full run), RSS sampled every
   0.25 s for the peak;
4. RSS every `--every` seconds for `--after` seconds after the burst ended (the writer is
   usually still storing the backlog for part of that time: the row says when it was done).

Each row gives the proxy's process, the writer's, the rest (the forkserver the writer is forked
from) and the total, in MiB; "x idle" is the total over the total at start (bench.py's ratio).
`--env KEY=VALUE` sets an environment variable for the gateway (MALLOC_ARENA_MAX=2,
AGENTOPS_MALLOC_TRIM=off, ...) to compare settings; `--repeat N` runs each database N times.

    .venv/bin/python bench/rss.py [--arms sqlite,postgres] [--env MALLOC_ARENA_MAX=2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from drivers import choose_driver, make_pool
from procs import PAGE_SIZE, Pinning, cpu_of, free_port, spawn, stop_all, wait_ready

import bench

MIB = 1024 * 1024
PEAK_EVERY = 0.25


def rss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE_SIZE
    return 0


def sample(arm: bench.Arm, writer: int | None) -> dict[str, float]:
    """RSS in MiB of the proxy's process, the writer's, the others (forkserver) and all."""
    assert arm.proc is not None
    tree = arm.tree()
    proxy = rss(arm.proc.pid)
    own = rss(writer) if writer in tree and writer is not None else 0
    total = sum(rss(pid) for pid in tree)
    return {
        "proxy": proxy / MIB,
        "writer": own / MIB,
        "other": (total - proxy - own) / MIB,
        "total": total / MIB,
    }


async def one(b: bench.Bench, name: str, tmp: Path, pin: Pinning, args: Any) -> dict[str, Any]:
    arm = await bench.start_gateway(name, b.upstream, tmp, pin.sut)
    if arm.start_error or arm.proc is None:
        raise RuntimeError(arm.start_error)
    port = int(arm.base.rsplit(":", 1)[1])

    async def probe() -> bool:
        async with b.session.get(f"{arm.ui}/healthz") as resp:
            return resp.status == 200 and await bench.port_open(port)

    try:
        await wait_ready(arm.proc, probe, 45)
        h = await bench.health(b, arm)
        writer = h.get("writer_pid")
        await asyncio.sleep(2)  # let start-up settle (the writer's first health report)
        out: dict[str, Any] = {"arm": name, "env": args.env, "start": sample(arm, writer)}
        await bench.warm_up(b, arm)
        out["warm"] = sample(arm, writer)
        up0, count0, dropped0, _ = await bench.baseline(b, arm)
        cpu0 = cpu_of(arm.tree())
        peak: dict[str, float] = {}
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                now = sample(arm, writer)
                for key, value in now.items():
                    peak[key] = max(peak.get(key, 0.0), value)
                await asyncio.sleep(PEAK_EVERY)

        watcher = asyncio.create_task(watch())
        res = await bench.drive(b, arm, "100k", args.conc, args.burst)
        out["calls"] = res.ok
        out["rps"] = round(res.rps)
        samples = []
        stored_after: float | None = None
        for n in range(int(args.after / args.every) + 1):
            await asyncio.sleep(max(0.0, res.ended + n * args.every - time.monotonic()))
            row = {"after_s": round(time.monotonic() - res.ended, 1), **sample(arm, writer)}
            samples.append(row)
            if stored_after is None:
                h = await bench.health(b, arm)
                if not h.get("queue_depth") and not h.get("spool_bytes"):
                    stored = await bench.stored_count(arm) - count0
                    if stored + h.get("dropped_records", 0) - dropped0 >= res.ok:
                        stored_after = row["after_s"]
        done.set()
        await watcher
        out["peak"] = peak
        out["samples"] = samples
        out["stored_within_s"] = stored_after
        out["cpu_s"] = round(cpu_of(arm.tree()) - cpu0, 1)
        h = await bench.health(b, arm)
        out["dropped"] = h.get("dropped_records", 0) - dropped0
        out["forwarded"] = await bench.upstream_calls(b) - up0
        return out
    finally:
        if arm.pg is not None:
            await arm.pg.close()
        arm.proc.stop()


def show(result: dict[str, Any]) -> None:
    start = result["start"]["total"]

    def line(label: str, s: dict[str, float]) -> str:
        return (
            f"{label:>14} {s['proxy']:7.0f} {s['writer']:7.0f} {s['other']:6.0f} "
            f"{s['total']:7.0f} {s['total'] / start:6.2f}x"
        )

    env = " ".join(result["env"]) or "(defaults)"
    print(
        f"\n{result['arm']} {env}: {result['calls']} calls of 100 KB ({result['rps']} req/s), "
        f"stored within {result['stored_within_s']} s of the burst's end, "
        f"dropped {result['dropped']}, CPU {result['cpu_s']} s"
    )
    print(f"{'MiB':>14} {'proxy':>7} {'writer':>7} {'other':>6} {'total':>7} {'x idle':>7}")
    print(line("at start", result["start"]))
    print(line("warm (1 KB)", result["warm"]))
    print(line("peak", result["peak"]))
    for s in result["samples"]:
        print(line(f"+{s['after_s']:.0f} s", s))


async def run(args: Any, tmp: Path, pin: Pinning) -> list[dict[str, Any]]:
    driver = choose_driver(args.driver)
    pools = {
        "1k": make_pool("1k", 1024, 256, tmp, seed=1),
        "100k": make_pool("100k", 100 * 1024, 16, tmp, seed=2),
    }
    up_port = free_port()
    argv = [bench.PYTHON, str(bench.BENCH_DIR / "upstream.py"), "--port", str(up_port)]
    upstream_proc = spawn("upstream", argv, tmp, pin.load)
    upstream = f"http://{bench.HOST}:{up_port}"
    timeout = aiohttp.ClientTimeout(total=180, sock_read=60)
    results = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def ping() -> bool:
            async with session.get(f"{upstream}/bench/ping") as resp:
                return resp.status == 200

        await wait_ready(upstream_proc, ping, 20)
        params = bench.Params(1, 1, 1, args.burst, 2, args.after, 120.0, streams=False)
        b = bench.Bench(params, driver, session, upstream, upstream_proc, pools)
        for _ in range(args.repeat):
            for name in args.names:
                result = await one(b, name, tmp, pin, args)
                show(result)
                results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description="RSS of the gateway after a 100 KB burst.")
    parser.add_argument("--arms", default="sqlite,postgres")
    parser.add_argument("--burst", type=int, default=10, help="seconds of 100 KB calls")
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--after", type=float, default=60.0, help="seconds sampled after it")
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the gateway")
    parser.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--output", help="write the samples as JSON here")
    args = parser.parse_args()
    args.names = [n.strip() for n in args.arms.split(",") if n.strip()]
    for pair in args.env:
        key, _, value = pair.partition("=")
        os.environ[key] = value  # the gateway inherits it
    pin = Pinning.plan(enabled=not args.no_pin)
    if pin.load is not None:
        os.sched_setaffinity(0, pin.load)
    with tempfile.TemporaryDirectory(prefix="agentops-rss-") as tmp_name:
        try:
            results = asyncio.run(run(args, Path(tmp_name), pin))
        except KeyboardInterrupt:
            return 130
        finally:
            bench.clean_up()
            stop_all()
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
