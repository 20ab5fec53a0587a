"""What the benchmark reads from the gateway's databases: their size, and PostgreSQL's backends;
run as a script, bytes stored per call and per run (see the end of this file).

Size is database growth with indexes: for SQLite the file plus its `-wal` after a checkpoint
(TRUNCATE, so the WAL's pages are counted once, in the file); for PostgreSQL
`pg_total_relation_size` (table, indexes, TOAST) summed over the project's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

PG_ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN", "postgres://postgres@127.0.0.1:5432/postgres")
PG_BASE_DSN = PG_ADMIN_DSN.rsplit("/", 1)[0]
PG_SIZE = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
"""


def sqlite_bytes(path: Path) -> int:
    """File + `-wal` after a TRUNCATE checkpoint (best effort: a busy WAL is counted as is)."""
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(f"{path}{suffix}")
    return total


def sqlite_free_bytes(path: Path) -> int:
    """Free pages inside the file: SQLite reuses them before growing it (FTS5 frees a run of
    them each time it merges its index segments)."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def sqlite_count(path: Path) -> int:
    """Exchanges stored so far (what a reader sees: committed rows only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM exchanges").fetchone()[0])
    finally:
        conn.close()


class PgProbe:
    """One connection to a gateway arm's PostgreSQL database, for its size and backends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn: Any = None

    async def _connection(self) -> Any:
        import asyncpg

        if self.conn is None:
            self.conn = await asyncpg.connect(f"{PG_BASE_DSN}/{self.name}", timeout=10)
        return self.conn

    async def size(self) -> int:
        return int(await (await self._connection()).fetchval(PG_SIZE))

    async def count(self) -> int:
        return int(await (await self._connection()).fetchval("SELECT count(*) FROM exchanges"))

    async def work(self) -> tuple[int, int]:
        """(transactions, rows inserted/updated/deleted) so far in this database, from
        pg_stat_database (round trips per call without pg_stat_statements, which needs a
        server restart to load; each writer transaction is a few statements). Includes this
        probe's own queries: a handful per step."""
        row = await (await self._connection()).fetchrow(
            "SELECT xact_commit + xact_rollback AS x, tup_inserted + tup_updated + tup_deleted "
            "AS w FROM pg_stat_database WHERE datname = $1",
            self.name,
        )
        return int(row["x"]), int(row["w"])

    async def backend_pids(self) -> list[int]:
        """The server processes serving the gateway (every connection to its database but ours)."""
        rows = await (await self._connection()).fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )
        return [int(r["pid"]) for r in rows]

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


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


# -- bytes stored per call and per run (run as a script) -------------------------------------
#
#   python bench/storage.py [--db sqlite,postgres]
#
# A real gateway (in this process, its writer in its own) in front of the fake upstream, on a
# fresh database each: single 1 KB calls, single 100 KB calls (the benchmark's bodies), and
# the 30-step tool loop whose context grows by ~1.7 KB of incompressible tool output a step
# (tests/clients.py: growing_loop). Each is measured after a warm-up that allocates the first
# pages of every table and index, as database growth with indexes (see the top of this file).

SINGLE_CALLS = {"1 KB": (1024, 200), "100 KB": (100 * 1024, 20)}  # body size, calls
LOOP_STEPS, LOOP_RUNS = 30, 3


async def _growth(gateway: Any, size: Any, work: Any) -> tuple[int, int, int]:
    """(bytes the database grew by while `work` ran and was stored, the same without free
    pages, unique content bytes)."""
    await gateway.recorder.drained(timeout=120)
    before = await size()
    unique = await work()
    await gateway.recorder.drained(timeout=120)
    after = await size()
    return after[0] - before[0], after[1] - before[1], unique


async def _singles(proxy_url: str, body_size: int, calls: int, seed: int) -> int:
    import random

    import aiohttp
    from drivers import HEADERS, PLACEHOLDER, chat_body

    rng = random.Random(seed)
    sent = 0
    async with aiohttp.ClientSession() as http:
        for n in range(calls):
            body = chat_body(rng, body_size).replace(PLACEHOLDER.encode(), b"%012d" % n)
            async with http.post(
                f"{proxy_url}/v1/chat/completions", data=body, headers=HEADERS
            ) as resp:
                sent += len(body) + len(await resp.read())
    return sent


async def _measure_db(
    kind: str, folder: Path, loop_runs: int = LOOP_RUNS
) -> list[tuple[str, int, int, int, int]]:
    """(scenario, units, bytes grown, the same without free pages, unique content bytes) on
    one fresh database."""
    import uuid

    from gateway.app import Gateway
    from gateway.settings import Settings
    from gateway.store.exchanges import Store
    from tests.clients import growing_loop
    from tests.fake_mistral import start_fake

    probe: PgProbe | None = None
    if kind == "sqlite":
        db = f"sqlite://{folder / 'storage.db'}"

        async def size() -> tuple[int, int]:
            grown = await asyncio.to_thread(sqlite_bytes, folder / "storage.db")
            return grown, grown - await asyncio.to_thread(sqlite_free_bytes, folder / "storage.db")
    else:
        name = f"agentops_storage_{uuid.uuid4().hex[:8]}"
        await create_pg_db(name)
        db = f"{PG_BASE_DSN}/{name}"
        probe = PgProbe(name)

        async def size() -> tuple[int, int]:
            assert probe is not None
            await (await probe._connection()).execute("CHECKPOINT")
            grown = await probe.size()
            return grown, grown

    runner, upstream, _ = await start_fake()
    store = Store(db)
    await store.open()  # migrated here, as `serve` does before its writer starts
    await store.close()
    settings = Settings(
        upstream=upstream, db=db, port=0, ui_port=0, spool_dir=str(folder / "spool")
    )
    gateway = Gateway(settings)
    results = []
    try:
        await gateway.start()
        url = gateway.proxy_url
        await _singles(url, 1024, 20, seed=99)  # warm-up: first pages of every table
        await growing_loop(url, steps=5, seed=98)
        for label, (body_size, calls) in SINGLE_CALLS.items():
            grown, used, unique = await _growth(
                gateway, size, lambda b=body_size, c=calls: _singles(url, b, c, seed=b)
            )
            results.append((f"single {label} calls", calls, grown, used, unique))

        async def loops() -> int:
            done = [await growing_loop(url, steps=LOOP_STEPS, seed=s) for s in range(loop_runs)]
            return sum(loop.unique_bytes for loop in done)

        grown, used, unique = await _growth(gateway, size, loops)
        label = f"{LOOP_STEPS}-step growing tool loop (runs)"
        results.append((label, loop_runs, grown, used, unique))
    finally:
        await gateway.stop()
        await runner.cleanup()
        if probe is not None:
            await probe.close()
            await drop_pg_db(probe.name)
    return results


def main() -> None:
    import argparse
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    parser = argparse.ArgumentParser(description="Bytes the database stores per call and run.")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument(
        "--loop-runs",
        type=int,
        default=LOOP_RUNS,
        help="loop runs measured (more: less of what merges at the window's ends, such as "
        "PostgreSQL's GIN pending list or an FTS5 segment merge, in the figure)",
    )
    args = parser.parse_args()
    print(
        f"{'database':<10} {'scenario':<38} {'bytes/unit':>10} {'unique/unit':>11} "
        f"{'ratio':>6} {'used ratio':>10}"
    )
    for kind in args.db.split(","):
        with tempfile.TemporaryDirectory(prefix="agentops-storage-") as tmp:
            measured = asyncio.run(_measure_db(kind, Path(tmp), args.loop_runs))
            for label, units, grown, used, unique in measured:
                print(
                    f"{kind:<10} {label:<38} {grown / units:>10,.0f} {unique / units:>11,.0f} "
                    f"{grown / unique:>6.2f} {used / unique:>10.2f}"
                )
    print(
        "ratio: database growth / unique content; used ratio: the same without the free pages\n"
        "left in the SQLite file (FTS5 frees a run of pages each time it merges its index\n"
        "segments; later writes reuse them). PostgreSQL: pg_total_relation_size, both alike."
    )


if __name__ == "__main__":
    main()
