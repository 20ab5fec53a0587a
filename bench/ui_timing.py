"""Server time of the UI's pages on a large database (seed one with bench/seed.py first).

    .venv/bin/python bench/ui_timing.py --db sqlite:///tmp/agentops-1m.db
    .venv/bin/python bench/ui_timing.py --db postgres://postgres@127.0.0.1:5432/agentops_1m

Starts the gateway on the database (ephemeral ports; the upstream is never called), waits for
its start-up work to finish, then asks each view a few times and reads the server's own
`Server-Timing` header (from the first middleware to the rendered page, so it includes the
queries, the previews and the template). Prints the median and the worst of the timed
requests per view: the exchange list unfiltered, with each single filter, paged deep, and
with full-text search (reported apart); the live poll; the dashboard per range; and the other
pages for reference, and /api/stats over no range, the last day and an odd range. `--group api`
(repeatable) measures one group only. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import Gateway
from gateway.settings import Settings


async def views(gw: Gateway) -> list[tuple[str, str, str]]:
    """(group, label, path) for every measured view, with ids taken from the data."""
    store = gw.store
    newest = (await store.rows("SELECT MAX(id) AS id FROM exchanges"))[0]["id"]
    oldest = (await store.rows("SELECT MIN(id) AS id FROM exchanges"))[0]["id"]
    middle = (newest + oldest) // 2
    run = (
        await store.rows("SELECT id FROM runs WHERE exchange_count >= 8 ORDER BY id DESC LIMIT 1")
    )[0]["id"]
    exchange = (
        await store.rows(
            "SELECT id FROM exchanges WHERE run_id = ? ORDER BY id DESC LIMIT 1", [run]
        )
    )[0]["id"]
    now = datetime.now(UTC)
    week_ago = now - timedelta(days=7)
    hour = week_ago.strftime("%Y-%m-%dT%H:00")
    hour_end = (week_ago + timedelta(hours=1)).strftime("%Y-%m-%dT%H:00")
    day_ago = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    odd_since = (now - timedelta(days=10)).replace(minute=17, second=23, microsecond=456_000)
    odd_until = (now - timedelta(days=3)).replace(minute=41, second=7, microsecond=891_000)
    odd = f"since={odd_since:%Y-%m-%dT%H:%M:%S.%fZ}&until={odd_until:%Y-%m-%dT%H:%M:%S.%fZ}"
    return [
        ("list", "unfiltered, first page", "/"),
        ("list", "model=mistral-large-latest", "/?model=mistral-large-latest"),
        ("list", "model (rare: 2%)", "/?model=ft:open-mistral-7b:acme:support"),
        ("list", "status=4xx", "/?status=4xx"),
        ("list", "status=5xx", "/?status=5xx"),
        ("list", "status=2xx", "/?status=2xx"),
        ("list", "status=429", "/?status=429"),
        ("list", "state=client_disconnected", "/?state=client_disconnected"),
        ("list", "endpoint=embeddings", "/?endpoint=embeddings"),
        ("list", "run=<id> (a 8+ step run)", f"/?run={run}"),
        ("list", "range=24h", "/?range=24h"),
        ("list", "since/until: one hour a week ago", f"/?since={hour}&until={hour_end}"),
        ("list", "unfiltered, deep page (before=middle)", f"/?before={middle}"),
        ("list", "model filter, deep page", f"/?model=mistral-large-latest&before={middle}"),
        ("list", "live poll, nothing new", f"/exchanges/live?after={newest}"),
        ("search", "q=the (in almost every row)", "/?q=the"),
        ("search", "q=invoice", "/?q=invoice"),
        ("search", "q=refund timeout (two words)", "/?q=refund+timeout"),
        (
            "search",
            "q=<correlation id> (one row)",
            "/?q="
            + (
                await store.rows(
                    "SELECT correlation_id FROM exchanges WHERE id <= ? ORDER BY id DESC LIMIT 1",
                    [middle],
                )
                or [{"correlation_id": "none"}]
            )[0]["correlation_id"],
        ),
        ("search", "q=zzzunseen (no match)", "/?q=zzzunseen"),
        ("search", "q=invoice + model filter", "/?q=invoice&model=mistral-large-latest"),
        ("dashboard", "default (7 days)", "/dashboard"),
        ("dashboard", "24h", "/dashboard?range=24h"),
        ("dashboard", "30d", "/dashboard?range=30d"),
        ("dashboard", "all time", "/dashboard?range=all"),
        ("api", "/api/stats, no range", "/api/stats"),
        ("api", "/api/stats, last 24 h", f"/api/stats?since={day_ago}"),
        ("api", "/api/stats, 10 d to 3 d ago at :17:23.456 / :41:07.891", f"/api/stats?{odd}"),
        ("other", "exchange page", f"/exchanges/{exchange}"),
        ("other", "run page (8+ steps)", f"/runs/{run}"),
        ("other", "runs list", "/runs"),
        ("other", "prices", "/prices"),
    ]


async def measure(http: aiohttp.ClientSession, path: str, repeat: int) -> dict[str, Any]:
    timings = []
    rows = 0
    for attempt in range(repeat + 2):
        async with http.get(path) as resp:
            body = await resp.text()
            if resp.status not in (200, 204):
                raise RuntimeError(f"{path}: HTTP {resp.status}: {body[:300]}")
            server = float(re.search(r"dur=([\d.]+)", resp.headers["Server-Timing"]).group(1))
        rows = body.count('class="rowlink"')
        if attempt >= 2:  # the first two warm caches and plans
            timings.append(server)
    return {"median": statistics.median(timings), "max": max(timings), "rows": rows}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument(
        "--group", action="append", help="only these groups (list, search, dashboard, api, other)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as spool:
        settings = Settings(
            upstream="http://127.0.0.1:9",
            db=args.db,
            port=0,
            ui_port=0,
            spool_dir=spool,
            shutdown_grace=1.0,
        )
        gw = Gateway(settings)
        started = time.monotonic()
        await gw.start()
        await gw.costs_filled  # start-up work that scans; not part of any page
        count = await gw.store.count()
        print(
            f"{gw.store.dialect}: {count:,} exchanges; gateway ready in "
            f"{time.monotonic() - started:.1f} s\n"
        )
        try:
            async with aiohttp.ClientSession(gw.ui_url) as http:
                print("| view | median ms | max ms | rows |\n|---|---|---|---|")
                for group, label, path in await views(gw):
                    if args.group and group not in args.group:
                        continue
                    result = await measure(http, path, args.repeat)
                    print(
                        f"| {group}: {label} | {result['median']:.1f} | "
                        f"{result['max']:.1f} | {result['rows']} |",
                        flush=True,
                    )
        finally:
            await gw.stop()


if __name__ == "__main__":
    asyncio.run(main())
