"""gateway/store/bulk.py: a batch inserted in one statement stores what an executemany of
its rows stores, value for value, on both databases; and the writer's id look-ups."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.bulk import unnest_insert
from gateway.store.exchanges import Store

COLUMNS = ("id", "code", "note", "amount", "flag", "at", "ratio", "blob")
TABLE = (
    "{} (id BIGINT PRIMARY KEY, code VARCHAR(8), note TEXT, amount INTEGER, flag BOOLEAN, "
    "at TIMESTAMPTZ, ratio DOUBLE PRECISION, blob BYTEA)"
)
CONFLICT = " ON CONFLICT DO NOTHING"


def nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
ROW = st.tuples(
    st.integers(1, 40),  # repeats: ON CONFLICT DO NOTHING inside one batch
    nullable(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)
    ),
    nullable(TEXT),
    nullable(st.integers(-(2**31), 2**31 - 1)),
    nullable(st.booleans()),
    nullable(
        st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1)).map(
            lambda d: d.replace(tzinfo=UTC)
        )
    ),
    nullable(st.floats(allow_nan=False) | st.integers(-(2**50), 2**50)),
    nullable(st.binary()),
)


def batches() -> list[list[tuple[Any, ...]]]:
    """Hypothesis' batches, drawn first: the database half runs once per database."""
    found: list[list[tuple[Any, ...]]] = []

    @settings(max_examples=60, database=None, deadline=None)
    @given(st.lists(ROW, max_size=12))
    def draw(rows: list[tuple[Any, ...]]) -> None:
        found.append(rows)

    draw()
    return found


def as_sqlite(row: tuple[Any, ...]) -> list[Any]:
    return [v.isoformat(sep=" ") if isinstance(v, datetime) else v for v in row]


async def test_one_statement_stores_what_a_row_at_a_time_stores(db_url: str):
    store = Store(db_url)
    await store.open()
    try:
        for name in ("one", "each"):
            await store.conn.execute_script(f"CREATE TABLE {TABLE.format(name)}")
        for rows in batches():
            values = [as_sqlite(r) for r in rows] if store.dialect == "sqlite" else rows
            async with store._batch() as tx:
                await store.bulk.insert(tx, "one", COLUMNS, values, CONFLICT)
                marks = ", ".join("?" * len(COLUMNS))
                for row in values:  # as the writer did before, one execution a row
                    await tx.execute_query(
                        store.sql(f"INSERT INTO each VALUES ({marks}){CONFLICT}"), list(row)
                    )
            one = await store.rows("SELECT * FROM one ORDER BY id")
            each = await store.rows("SELECT * FROM each ORDER BY id")
            assert one == each
            await store.conn.execute_script("DELETE FROM one; DELETE FROM each")
    finally:
        await store.close()


async def test_a_value_too_long_for_its_column_is_refused_as_before(pg_url: str):
    store = Store(pg_url)
    await store.open()
    try:
        await store.conn.execute_script(f"CREATE TABLE {TABLE.format('one')}")
        row = (1, "123456789", None, None, None, None, None, None)
        with pytest.raises(Exception, match="too long"):
            async with store._batch() as tx:
                await store.bulk.insert(tx, "one", COLUMNS, [row])
    finally:
        await store.close()


def test_the_statement_casts_each_array_as_its_column():
    types = {"exchange_id": "bigint", "doc": "tsvector", "code": "character varying"}
    assert unnest_insert("s", ("exchange_id", "doc", "code"), types, CONFLICT) == (
        "INSERT INTO s (exchange_id, doc, code) SELECT c1, c2::tsvector, c3 "
        "FROM unnest($1::bigint[], $2::text[], $3::character varying[]) AS t(c1, c2, c3)"
        " ON CONFLICT DO NOTHING"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [("sqlite:///x.db", ("?, ?, ?", [3, 1, 2])), ("postgres://h/d", ("3, 1, 2", []))],
)
def test_id_look_ups_write_postgresql_ids_out(url: str, expected: tuple[str, list[int]]):
    """A prepared `IN ($1, ...)` sent every batch keeps the plan made for the table when it
    was small (a sequential scan) on PostgreSQL; numbers written out are planned each time."""
    assert Store(url).id_list([3, 1, 2]) == expected
    with pytest.raises(ValueError):
        Store("postgres://h/d").id_list(["1) OR (1=1"])  # type: ignore[list-item]


async def test_the_writers_look_up_walks_the_index_once_the_table_grew(pg_url: str):
    """The run labels look-up, every batch: however many times it ran while `runs` was
    empty (past PostgreSQL's 5 custom plans of a prepared statement), on 20,000 runs it
    reads no table through."""
    store = Store(pg_url)
    await store.open()
    try:
        async with store._batch() as tx:
            for batch in range(8):
                ids = set(range(batch * 10 + 1, batch * 10 + 11))
                assert await store.rollups.labels(tx, ids) == {}
            await tx.execute_query(
                "INSERT INTO runs (id, name, source, started_at, last_seen_at, status, "
                "last_failed, exchange_count, prompt_tokens, completion_tokens, total_tokens, "
                "total_cost_usd) SELECT i, 'run ' || i, 'single', now(), now(), 'running', "
                "false, 1, 0, 0, 0, 0 FROM generate_series(1, 20000) i"
            )
            scans = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'runs'"
            (before,) = await tx.execute_query_dict(scans)
            found = await store.rollups.labels(tx, set(range(9001, 9011)))
            (after,) = await tx.execute_query_dict(scans)
        assert found[9005] == ("run 9005", None) and len(found) == 10
        assert after["seq_scan"] == before["seq_scan"]
    finally:
        await store.close()
