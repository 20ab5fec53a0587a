"""What checking budgets costs a call: a microbenchmark of the proxy's check, and a real
gateway (fake upstream, SQLite) answering sequential calls with budgets off, then with 10
budgets on (none used up, so every call is checked, forwarded and counted locally).

Run: `python bench/budgets.py [--calls 2000]`; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import Gateway
from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.proxy.budgets import BudgetGuard, Standing
from gateway.settings import Settings
from gateway.store.budgets import Budget, Scope
from tests.fake_mistral import start_fake

BODY = b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}'
SCOPES = [
    Scope("gateway", None),
    Scope("model", "mistral-large-latest"),
    Scope("model", "codestral-latest"),
    Scope("user", "ann"),
    Scope("user", "bob"),
    Scope("agent", "planner"),
    Scope("run", "nightly"),
    Scope("key", "sk-...abcd"),
    Scope("provider", "elevenlabs"),
    Scope("model", "mistral-medium-latest"),
]


def budgets(hard: bool, every: int = 1) -> list[Budget]:
    """Ten budgets; with `hard`, every `every`-th one is hard."""
    return [
        Budget(new_id(), f"b{i}", s, "day", 1e6, hard and i % every == 0)
        for i, s in enumerate(SCOPES)
    ]


def micro(number: int = 200_000) -> dict[str, float]:
    """ns per check: the hot path's `guard.blocked` test, then `refusing` with used-up hard
    budgets that do not match the call (the worst case: the body is searched for its model)."""
    guard = BudgetGuard(None, ZoneInfo("UTC"), PriceTable.load(None), announce=False)  # type: ignore[arg-type]
    exchange = Exchange(
        new_id(), 0.0, "POST", "/v1/chat/completions", "/v1/chat/completions", "", [], BODY
    )

    def check() -> None:
        if guard.blocked:
            guard.refusing(exchange, BODY)

    guard.standings = [Standing(b, *_period()) for b in budgets(True)]
    guard._settle()
    none_used_up = timeit.timeit(check, number=number) / number * 1e9
    for standing in guard.standings[1:]:  # all but the gateway-wide one: none matches
        standing.stored_usd = 2e6
    guard._settle()
    assert len(guard.blocked) == 9
    worst = timeit.timeit(check, number=number) / number * 1e9
    response = [b'{"id": "x", "usage": {"prompt_tokens": 12, "completion_tokens": 30}}']
    exchange.response_chunks, exchange.status = response, 200
    count = timeit.timeit(lambda: guard._priced(exchange), number=number // 10) / (number // 10)
    return {
        "check_10_budgets_none_used_up_ns": round(none_used_up, 1),
        "check_9_used_up_none_matching_ns": round(worst, 1),
        "local_cost_estimate_after_the_response_ns": round(count * 1e9, 1),
    }


async def timed(gw: Gateway, calls: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(calls):
            started = time.perf_counter()
            async with http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                data=BODY,
                headers={
                    "Authorization": "Bearer bench-key-000011112222",
                    "Content-Type": "application/json",
                },
            ) as resp:
                await resp.read()
            times.append(time.perf_counter() - started)
    await gw.recorder.drained(timeout=60)
    return [t * 1e6 for t in times]


async def end_to_end(calls: int, rounds: int) -> dict[str, Any]:
    runner, url, _ = await start_fake()
    results: dict[str, list[float]] = {"off": [], "soft": [], "hard": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                upstream=url,
                db=f"sqlite://{tmp}/b.db",
                port=0,
                ui_port=0,
                spool_dir=f"{tmp}/spool",
                metrics="off",
            )
            gw = Gateway(settings)
            await gw.start()
            try:
                await timed(gw, 200)  # warm up
                for index in range(rounds):  # arms alternate: the machine's noise hits all
                    for budget in await gw.guard.store.all():
                        await gw.guard.store.delete(budget.id)
                    await gw.guard.refresh()
                    results["off"] += await timed(gw, calls)
                    arms = [("soft", False), ("hard", True)]
                    for arm, strict in arms if index % 2 else arms[::-1]:
                        for budget in budgets(strict, every=2):
                            await gw.guard.store.put(budget)
                        await gw.guard.refresh()
                        assert len(gw.guard.standings) == 10
                        results[arm] += await timed(gw, calls)
            finally:
                await gw.stop()
    finally:
        await runner.cleanup()
    off, soft, with_hard = (statistics.median(results[a]) for a in ("off", "soft", "hard"))
    return {
        "calls_per_arm_round": calls,  # arms alternate each round; p50 over all its calls
        "rounds": rounds,
        "p50_us_budgets_off": round(off, 1),
        "p50_us_10_soft_budgets": round(soft, 1),
        "p50_us_10_budgets_5_hard": round(with_hard, 1),
        "p50_added_us_soft": round(soft - off, 1),
        "p50_added_us_hard": round(with_hard - off, 1),
        "p90_us": {arm: round(statistics.quantiles(v, n=10)[-1], 1) for arm, v in results.items()},
    }


def _period() -> tuple[Any, Any]:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return now, now + timedelta(days=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    out = {"micro": micro(), "end_to_end": asyncio.run(end_to_end(args.calls, args.rounds))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
