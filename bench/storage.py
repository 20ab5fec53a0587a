"""What the benchmark reads from the gateway's databases: their size, and PostgreSQL's backends.

Size is database growth with indexes: for SQLite the file plus its `-wal` after a checkpoint
(TRUNCATE, so the WAL's pages are counted once, in the file); for PostgreSQL
`pg_total_relation_size` (table, indexes, TOAST) summed over the project's tables.
"""

from __future__ import annotations

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
