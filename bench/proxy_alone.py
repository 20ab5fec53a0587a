"""CPU per call of the proxy handler alone: `Proxy` in a process of its own with a no-op
`submit` and `begin` (no writer, no journal, no UI), beside the bare passthrough, in the same
rounds (order rotated), driven by wrk. Isolates what the handler adds from the hand-off and
from what shares the gateway's process.

    .venv/bin/python bench/proxy_alone.py [--seconds 8] [--conc 64] [--size 1024] [--rounds 3]
        [--compare ../wt-main]   # a second tree's handler (its own .venv) in the same rounds
    (run with --serve PORT UPSTREAM, it is the handler's process itself)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent


async def serve(port: int, upstream: str) -> None:
    from aiohttp import web

    from gateway.proxy import forward
    from gateway.proxy.forward import Proxy, client_session
    from gateway.writer.memory import tune_gc

    session = client_session()
    # the upstream client the gateway uses (trees from before it have none)
    extra: dict[str, Any] = {}
    if hasattr(forward, "upstream_pool"):
        extra["pool"] = forward.upstream_pool()
    proxy = Proxy(
        upstream, session, lambda exchange: None, timeout=300, max_body_bytes=10**7, **extra
    )
    runner = web.ServerRunner(web.Server(proxy, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    tune_gc()  # as the gateway's process does after its start
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


async def run(args: argparse.Namespace) -> None:
    import aiohttp
    from drivers import WrkDriver, make_pool
    from procs import HOST, answers, cpu_of, free_port, spawn, stop_all, wait_ready

    tmp = Path(tempfile.mkdtemp(prefix="proxy-alone-"))
    pool = make_pool(f"{args.size}", args.size, 200, tmp, seed=7)
    up_port = free_port()
    upstream = f"http://{HOST}:{up_port}"
    up = spawn(
        "upstream",
        [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(up_port)],
        tmp,
        None,
    )
    arms: dict[str, tuple[Any, int]] = {}
    bare_port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "passthrough.py"), "--port", str(bare_port)]
    arms["bare"] = (spawn("bare", [*argv, "--upstream", upstream], tmp, None), bare_port)
    trees = [("handler", sys.executable, BENCH_DIR.parent)]
    if args.compare:
        other = Path(args.compare).resolve()
        trees.append(("compare", str(other / ".venv" / "bin" / "python"), other))
    for name, python, cwd in trees:
        port = free_port()
        argv = [python, str(BENCH_DIR / "proxy_alone.py"), "--serve", str(port), upstream]
        arms[name] = (spawn(name, argv, tmp, None, cwd=cwd), port)
    ratios: dict[str, list[float]] = {name: [] for name in arms if name != "bare"}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(up, lambda: answers(session, f"{upstream}/bench/ping"), 30)

            def probe(port: int) -> Callable[[], Awaitable[bool]]:
                return lambda: answers(session, f"http://{HOST}:{port}/bench/ping")

            for proc, port in arms.values():
                await wait_ready(proc, probe(port), 30)
            driver, number, names = WrkDriver(), 0, list(arms)
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                us = {}
                for name in order:
                    proc, port = arms[name]
                    before = cpu_of([proc.pid])
                    url = f"http://{HOST}:{port}/v1/chat/completions"
                    res = await driver.run(url, pool, args.conc, args.seconds, number)
                    number += 10**6
                    us[name] = (cpu_of([proc.pid]) - before) / max(res.ok, 1) * 1e6
                line = ", ".join(
                    f"{n} {us[n]:.0f} us ({us[n] / us['bare']:.2f}x)" for n in names if n != "bare"
                )
                print(f"round {rnd}: bare {us['bare']:.0f} us/call; {line}", flush=True)
                for name in ratios:
                    ratios[name].append(us[name] / us["bare"])
    finally:
        stop_all()
    for name, values in ratios.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"SUMMARY {name}: CPU/call ÷ bare median {statistics.median(values):.2f}x ({shown})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "UPSTREAM"))
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--conc", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(int(args.serve[0]), args.serve[1]))
    else:
        sys.path.insert(0, str(BENCH_DIR))
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
