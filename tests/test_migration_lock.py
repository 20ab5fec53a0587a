"""Processes started together on a new database: one migrates, the others wait for it and
find the schema current (before the lock, two of three failed with "table exchanges already
exists", on both databases)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.store import migrations
from gateway.store.exchanges import Store
from tests.conftest import MIGRATE

MIGRATIONS = Path(migrations.__file__).parent


async def test_processes_opening_a_new_database_together_all_succeed(blank_db_url: str):
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE,
            blank_db_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    failed = [
        out.decode()[-500:] for p, (out, _) in zip(procs, outputs, strict=True) if p.returncode
    ]
    assert not failed, failed
    store = Store(blank_db_url)
    await store.open(migrate_schema=False)
    try:
        applied = await store.rows("SELECT name FROM tortoise_migrations")
        names = sorted(row["name"] for row in applied)  # each once, all of them
        assert names == sorted(path.stem for path in MIGRATIONS.glob("0*.py"))
    finally:
        await store.close()
