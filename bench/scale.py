"""Retention and list pages at scale on PostgreSQL: is time partitioning warranted?

    python bench/scale.py --rows 10000000 --days 60

Creates a scratch database (migrated by the gateway's own Store.open), fills `exchanges` and
`exchange_bodies` with generated rows spread evenly over --days days (ids are the gateway's
time-sortable ids, so "older than" is an id range), then times, on the gateway's own code:

- the first list page, a page 30 days deep, a page filtered by a rare model;
- `Store.purge` of the oldest day (what --retention-days does every hour);
- what a partition drop would cost instead: the same day copied into a table of its own,
  then `DROP TABLE` (a detached partition is exactly that).

Prints one JSON object; drops the scratch database unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import asyncpg  # noqa: E402
from storage import PG_ADMIN_DSN, PG_BASE_DSN  # noqa: E402

from gateway.capture.exchange import id_at  # noqa: E402
from gateway.store.exchanges import ExchangeFilter, Store  # noqa: E402

CHUNK = 500_000

FILL = """
INSERT INTO exchanges (id, started_at, provider, method, path, client_path, query, status,
  model, request_model, endpoint, streamed, state, prompt_tokens, completion_tokens,
  total_tokens, cost_usd, latency_ms, ttfb_ms, truncated, parse_error, omitted, preview)
SELECT $1::bigint + (g::bigint * $2::bigint), to_timestamp($3::float8 + g * $4::float8),
  'mistral', 'POST', '/v1/chat/completions', '/v1/chat/completions', '', 200,
  CASE WHEN g % 1000 = 0 THEN 'rare-model' ELSE 'mistral-small-latest' END,
  'mistral-small-latest', 'chat', false, 'complete', 120, 40, 160, 0.0001, 80.0, 20.0,
  false, false, false, 'a generated call number ' || g
FROM generate_series($5::bigint, $6::bigint) g
"""
FILL_BODIES = """
INSERT INTO exchange_bodies (exchange_id, request_headers, request_body_encoding,
  response_headers, response_body_encoding, data)
SELECT id, '', 'json', '', 'json', decode(repeat('ab', 300), 'hex') FROM exchanges
WHERE id >= $1 AND id < $2
"""


async def timed(work: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await work
    return round((time.perf_counter() - began) * 1000, 1), result


async def fill(dsn: str, rows: int, days: float) -> float:
    conn = await asyncpg.connect(dsn)
    began = time.perf_counter()
    start = datetime.now(UTC) - timedelta(days=days)
    step_s = days * 86400 / rows
    first = id_at(int(start.timestamp() * 1000))
    step_id = max(1, (id_at(int((start.timestamp() + step_s) * 1000)) - first))
    try:
        for low in range(0, rows, CHUNK):
            high = min(rows, low + CHUNK) - 1
            await conn.execute(FILL, first, step_id, start.timestamp(), step_s, low, high)
            await conn.execute(FILL_BODIES, first + low * step_id, first + (high + 1) * step_id)
            print(f"  {high + 1} rows, {time.perf_counter() - began:.0f} s", file=sys.stderr)
        await conn.execute("ANALYZE exchanges; ANALYZE exchange_bodies")
    finally:
        await conn.close()
    return round(time.perf_counter() - began, 1)


async def measure(dsn: str, days: float) -> dict[str, Any]:
    store = Store(dsn)
    await store.open()
    try:
        out: dict[str, Any] = {"rows": await store.count()}
        newest = ExchangeFilter()
        out["list_first_page_ms"], _ = await timed(store.list_exchanges(newest, 50, None))
        middle = id_at(int((datetime.now(UTC) - timedelta(days=days / 2)).timestamp() * 1000))
        out["list_deep_page_ms"], _ = await timed(store.list_exchanges(newest, 50, middle))
        rare = ExchangeFilter(model="rare-model")
        out["list_rare_model_page_ms"], _ = await timed(store.list_exchanges(rare, 50, None))
        cutoff = datetime.now(UTC) - timedelta(days=days - 1)
        bound = id_at(int(cutoff.timestamp() * 1000))
        conn = await asyncpg.connect(dsn)
        try:
            out["partition_copy_rows"] = int(
                await conn.fetchval(
                    "WITH c AS (SELECT count(*) n FROM exchanges WHERE id < $1) SELECT n FROM c",
                    bound,
                )
            )
            await conn.execute(
                "CREATE TABLE day_copy AS SELECT * FROM exchanges WHERE id < $1", bound
            )
            await conn.execute(
                "CREATE TABLE day_copy_bodies AS SELECT * FROM exchange_bodies "
                "WHERE exchange_id < $1",
                bound,
            )
            began = time.perf_counter()
            await conn.execute("DROP TABLE day_copy; DROP TABLE day_copy_bodies")
            out["partition_drop_ms"] = round((time.perf_counter() - began) * 1000, 1)
        finally:
            await conn.close()
        out["purge_one_day_ms"], out["purged_rows"] = await timed(store.purge(cutoff))
        out["list_first_page_after_purge_ms"], _ = await timed(
            store.list_exchanges(newest, 50, None)
        )
    finally:
        await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=float, default=60)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    name = f"agentops_scale_{os.getpid()}"
    dsn = f"{PG_BASE_DSN}/{name}"

    async def run() -> dict[str, Any]:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            store = Store(dsn)
            await store.open()
            await store.close()
            result = {"fill_seconds": await fill(dsn, args.rows, args.days)}
            result.update(await measure(dsn, args.days))
            return result
        finally:
            if not args.keep:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    print(json.dumps(asyncio.run(run()), indent=1))


if __name__ == "__main__":
    main()
