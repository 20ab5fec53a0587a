"""The schema comes from the committed migrations, identically on SQLite and PostgreSQL, and
re-opening a migrated database changes nothing. Retention removes old exchanges in batches.
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tortoise.migrations.api import migrate

from gateway.store.exchanges import BODY_COLUMNS, EXCHANGE_COLUMNS, Store
from gateway.store.query import ExchangeFilter
from gateway.store.urls import tortoise_config
from tests.conftest import Upstream, calls, make_settings, running

MIGRATIONS = [
    "0001_initial",
    "0002_indexes_and_search",
    "0003_runs",
    "0004_rollups",
    "0005_replay",
    "0006_lz4",
    "0007_storable",
    "0008_preview",
    "0009_stats_rollups",
    "0010_body_deltas",
    "0011_errors",
    "0012_shared_grouping",
    "0013_datasets",
    "0015_alerts",
    "0016_cost_category",
    "0017_budgets",
    "0018_campaigns",
    "0019_late_parents",
    "0020_fewer_rows",
    "0021_fewer_index_writes",
]


async def columns(store: Store, table: str) -> set[str]:
    if store.dialect == "sqlite":
        rows = await store.rows(f"PRAGMA table_info({table})")
        return {row["name"] for row in rows}
    rows = await store.rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
    )
    return {row["column_name"] for row in rows}


async def test_blank_database_migrates_to_the_exact_schema(blank_db_url: str):
    db_url = blank_db_url
    store = Store(db_url)
    await store.open()
    try:
        assert await columns(store, "exchanges") == set(EXCHANGE_COLUMNS)
        assert await columns(store, "exchange_bodies") == set(BODY_COLUMNS)
        applied = await store.rows("SELECT name FROM tortoise_migrations ORDER BY name")
        assert [row["name"] for row in applied] == MIGRATIONS
        if store.dialect == "sqlite":  # a new database gets 8 KB pages (exchanges.py)
            assert (await store.rows("PRAGMA page_size"))[0]["page_size"] == 8192
        if store.dialect == "postgres":  # this machine's server has LZ4
            found = await store.rows(
                "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = "
                "'exchange_bodies'::regclass AND attname IN ('request_body', 'response_body')"
            )
            # attcompression is a "char": 'l' for LZ4
            assert {bytes(row["attcompression"]) for row in found} == {b"l"}
            # zstd frames are not compressed again: stored out of line as they are
            found = await store.rows(
                "SELECT attname, attstorage FROM pg_attribute WHERE attrelid = "
                "'exchange_bodies'::regclass AND attname = 'data'"
            )
            assert {bytes(row["attstorage"]) for row in found} == {b"e"}
            # the search index's pending list is merged at 128 kB, not the default 4 MB
            found = await store.rows(
                "SELECT reloptions FROM pg_class WHERE relname = 'exchange_search_doc'"
            )
            assert found[0]["reloptions"] == ["gin_pending_list_limit=128"]
    finally:
        await store.close()
    again = Store(db_url)
    await again.open()  # already migrated: a no-op, not an error
    try:
        assert len(await again.rows("SELECT name FROM tortoise_migrations")) == len(MIGRATIONS)
    finally:
        await again.close()


async def indexes(store: Store, table: str) -> dict[str, str]:
    """index name -> its definition, primary keys left out."""
    if store.dialect == "sqlite":
        rows = await store.rows(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            [table],
        )
        return {row["name"]: row["sql"] for row in rows}
    rows = await store.rows(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ? "
        "AND indexname NOT LIKE '%_pkey'",
        [table],
    )
    return {row["indexname"]: row["indexdef"] for row in rows}


async def found_words(db_url: str, words: list[str]) -> dict[str, list[int]]:
    """word -> the exchange ids the search index finds for it (SQLite: after FTS5's own
    check of its index against the text it holds)."""
    store = Store(db_url)
    await store.open(migrate_schema=False)
    try:
        if store.dialect == "sqlite":
            await store.conn.execute_script(
                "INSERT INTO exchange_fts (exchange_fts) VALUES ('integrity-check')"
            )
        found = {}
        for word in words:
            page, _ = await store.list_exchanges(ExchangeFilter(q=word), 100, None)
            found[word] = [item.id for item in page]
        return found
    finally:
        await store.close()


async def test_fewer_index_writes_migrates_both_ways(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    """0021: no correlation id index; the runs' name, agent and user indexes are partial;
    SQLite's search table keeps no sizes. Migrating back restores the full indexes and the
    sizes, forward again takes them away, and the same calls are found all along."""
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await calls(gw, 3, "kiwi")
        await calls(gw, 2, "mango")
        await gw.recorder.drained(timeout=10)
    words = ["kiwi", "mango", "2", "absent"]
    found = await found_words(db_url, words)
    assert [len(found[w]) for w in words[:2]] == [3, 2]

    async def run_indexes() -> set[str]:
        store = Store(db_url)
        await store.open(migrate_schema=False)
        try:
            found = {**await indexes(store, "runs"), **await indexes(store, "exchanges")}
        finally:
            await store.close()
        return {
            name
            for name, sql in found.items()
            if any(column in sql for column in ("correlation_id", "name", "agent_id", "user"))
        }

    partial = {"runs_name_id", "runs_agent_id_id", "runs_user_id"}
    assert await run_indexes() == partial
    await migrate(config=tortoise_config(Store(db_url).url), target="models.0020_fewer_rows")
    before = await run_indexes()
    assert len(before) == 4 and not before & partial  # (name, agent, user, id) + correlation
    assert await found_words(db_url, words) == found
    store = Store(db_url)
    await store.open()  # 0021 again
    try:
        runs = await indexes(store, "runs")
    finally:
        await store.close()
    assert {name for name, sql in runs.items() if "IS NOT NULL" in sql} == partial
    assert await run_indexes() == partial
    assert await found_words(db_url, words) == found
    if store.dialect == "sqlite":
        path = Path(db_url.removeprefix("sqlite://"))
        with closing(sqlite3.connect(path)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "exchange_fts_docsize" not in tables


def test_search_sizes_are_a_table_of_their_own():
    """Why 0021 may drop `exchange_fts_docsize` and declare columnsize=0 in place: with or
    without sizes, FTS5 writes the same bytes to its other tables (inserts, replacements
    and deletes over several transactions)."""
    rng = random.Random(7)
    vocabulary = ["".join(rng.choices("abcdefgh", k=rng.randint(1, 9))) for _ in range(500)]
    docs = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 120))) for _ in range(600)]
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        for name, options in (("sized", ""), ("unsized", ", columnsize=0")):
            conn.execute(
                f"CREATE VIRTUAL TABLE {name} USING fts5(body, tokenize='unicode61', "
                f"detail=none{options})"
            )
            for start in range(0, len(docs), 50):
                conn.execute("BEGIN")
                for n, doc in enumerate(docs[start : start + 50], start):
                    conn.execute(
                        f"INSERT OR REPLACE INTO {name} (rowid, body) VALUES (?, ?)",
                        (n * 7 % 450 + 1, doc),
                    )
                conn.execute("COMMIT")
            conn.execute(f"DELETE FROM {name} WHERE rowid % 11 = 0")
        for table in ("data", "idx", "content", "config"):
            sized, unsized = (
                conn.execute(f"SELECT * FROM {name}_{table} ORDER BY 1, 2").fetchall()
                for name in ("sized", "unsized")
            )
            assert sized == unsized and sized, table


async def test_retention_purges_old_exchanges(upstream: Upstream, db_url: str, tmp_path: Path):
    async with running(make_settings(upstream.url, db_url, tmp_path, retention_days=30.0)) as gw:
        await calls(gw, 5, "young")
        await gw.recorder.drained(timeout=10)
        assert await gw.apply_retention() == 0
        assert await gw.store.purge(datetime.now(UTC) + timedelta(seconds=1), batch_size=2) == 5
        assert await gw.store.count() == 0


async def test_two_stores_in_one_process_each_close_their_own(tmp_path: Path):
    """Tortoise keeps one set of connections per process: closing the store opened first used
    to close the newer store's connection (or none) and leave its own open, with its aiosqlite
    thread keeping the process from exiting."""
    import os

    def open_files() -> set[str]:  # the database files this process holds open
        names = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
        return {Path(name).name for name in names if name.startswith(str(tmp_path.resolve()))}

    first, second = Store(f"sqlite://{tmp_path}/a.db"), Store(f"sqlite://{tmp_path}/b.db")
    await first.open()
    await second.open()
    for store in (first, second):  # both in use
        assert await store.conn.execute_query_dict("SELECT count(*) AS n FROM runs") == [{"n": 0}]
    assert {"a.db", "b.db"} <= open_files()
    await first.close()
    rows = await second.conn.execute_query_dict("SELECT count(*) AS n FROM exchanges")
    assert rows == [{"n": 0}]  # the newer store is still open
    assert "a.db" not in open_files() and "b.db" in open_files()
    await second.close()
    assert not open_files()


async def test_deleting_more_ids_than_a_statement_binds(
    db_url: str, upstream: Upstream, tmp_path: Path
):
    """SQLite binds at most 32,766 values a statement and asyncpg 32,767: a delete of a run
    or an exchange with tens of thousands of calls about it goes in chunks (the diffs'
    `a IN (...) OR b IN (...)` binds each id twice)."""
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await calls(gw, 3, "kept")
        await gw.recorder.drained(timeout=10)
        stored = [row["id"] for row in await gw.store.rows("SELECT id FROM exchanges", [])]
        assert len(stored) == 3
        many = [*range(1, 40_001), *stored]
        assert len(await gw.store.with_calls_about(many)) == len(many)
        assert await gw.store.delete_exchanges(many) == len(stored)
        assert await gw.store.count() == 0
