"""The store: the only module that builds queries. SQLite or PostgreSQL, chosen by URL.

Tortoise owns the connection and the committed migrations; the queries here are plain SQL
so that batch inserts stay one executemany per table and pagination stays one index walk.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import operator
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient, ConnectionWrapper
from tortoise.migrations.api import migrate
from tortoise.models import Model
from tortoise.transactions import in_transaction

from gateway.capture import storable
from gateway.capture.exchange import id_at
from gateway.capture.rows import Rows
from gateway.errors import Unavailable
from gateway.store import models, repricing
from gateway.store.bodies import (
    BODY_SELECT,
    BodyChains,
    Frame,
    Frames,
    Parts,
    Tip,
    compress,
    read_bodies,
)
from gateway.store.bulk import Bulk
from gateway.store.migration_lock import migration_lock
from gateway.store.records import LIST_COLUMNS, ExchangeSummary, StoredExchange, iso_time
from gateway.store.rollups import Rollups
from gateway.store.search import fts5_query, pg_document, pg_query
from gateway.store.sqlite_batch import sqlite_batch
from gateway.store.stats import read_stats
from gateway.store.urls import describe_url, sqlite_path, tortoise_config

log = logging.getLogger("agentops.store")


DELETE_CHUNK = 500


def chunks(ids: list[int], size: int = DELETE_CHUNK) -> list[list[int]]:
    """`ids` in lists of at most `size` (each list's ids are bound in one statement)."""
    return [ids[start : start + size] for start in range(0, len(ids), size)]


class StoreError(Unavailable, RuntimeError):
    """The database cannot be used (unreachable, refused, bad URL); says which and why."""


def columns_of(model: type[Model]) -> tuple[str, ...]:
    """A table's columns, in the model's order: the models are the one description of the
    schema (the migrations are checked against them: tests/test_schema.py)."""
    return tuple(field.source_field or name for name, field in model._meta.fields_map.items())


EXCHANGE_COLUMNS = columns_of(models.Exchange)
# A run's failed and unpriced calls, recounted from its exchanges (as the grouper counts them).
FAILED_SQL = "(e.status >= 400 OR e.state <> 'complete' OR e.error IS NOT NULL)"
UNPRICED_SQL = "(e.cost_usd IS NULL AND e.model IS NOT NULL AND e.status < 400)"
RUN_COUNTS = (
    f"error_count = (SELECT COUNT(*) FROM exchanges e WHERE e.run_id = runs.id AND {FAILED_SQL}), "
    "unpriced_calls = (SELECT COUNT(*) FROM exchanges e WHERE e.run_id = runs.id "
    f"AND {UNPRICED_SQL})"
)
BODY_COLUMNS = columns_of(models.ExchangeBody)
SEARCH_WALK_MS = 30  # PostgreSQL search: how long to walk ids before asking the GIN index
_OUTPUT = EXCHANGE_COLUMNS.index("output_text")
_EXCHANGE_ITEMS = operator.itemgetter(*EXCHANGE_COLUMNS)
_CONVERTED = tuple(
    EXCHANGE_COLUMNS.index(c)
    for c in ("started_at", "streamed", "truncated", "parse_error", "omitted")
)


@dataclass(frozen=True)
class ExchangeFilter:
    """The /api/exchanges query, already validated."""

    q: str | None = None
    model: str | None = None
    status: int | None = None  # exact status
    status_class: int | None = None  # 4 for "4xx"
    state: str | None = None
    endpoint: str | None = None
    run: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    errors: bool = False  # only failed calls


def micros(value: datetime | str) -> int:
    """A stored time (SQLite: text, naive means UTC) as microseconds since the epoch."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp() * 1_000_000)


@functools.lru_cache(maxsize=1024)
def _numbered(text: str) -> str:
    """A query written with `?` as PostgreSQL wants it ($1, $2, ...): the writer sends the
    same few texts every batch, so each is rewritten once."""
    counter = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(counter)}", text)


async def _enter_releasing_lock(self: ConnectionWrapper) -> Any:
    """tortoise's ConnectionWrapper.__aenter__, but a failed connect releases the lock.

    tortoise (1.1) takes the client's lock and then connects; when the connect fails (a
    SQLite file that cannot be opened) the lock is never released. Its migration loader
    swallows that first error ("no migrations applied yet"), so the next query waits for the
    lock forever: `serve` hung at start with no output. With the lock released the next
    query fails too, and the error reaches `Store.open`.
    """
    await self._lock.acquire()
    try:
        await self.ensure_connection()
    except BaseException:
        self._lock.release()
        raise
    return self.connection


ConnectionWrapper.__aenter__ = _enter_releasing_lock  # type: ignore[method-assign]


# A new SQLite database gets 8 KB pages (PostgreSQL's size) instead of 4 KB: bodies and search
# text rows are a few KB each, and a 4 KB page holds only one row over 2 KB, leaving up to half
# of each page empty (three 30-step loops of tests/clients.py: 1.58x their unique content with
# 4 KB pages, 1.27x with 8 KB).
SQLITE_PAGE_SIZE = 8192


def prepare_sqlite(path: str) -> None:
    """Create the database's folder (parents too) and check the file can be opened, so that
    a bad path fails at once with the reason, before tortoise and the writer process try."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {folder} for the SQLite database {path}: {_why(exc)}"
        ) from None
    if os.path.isdir(path):
        raise StoreError(f"cannot open the SQLite database {path}: it is a folder")
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.execute("PRAGMA schema_version").fetchone()  # reads the header
            if os.path.getsize(path) == 0:  # a new database: choose its page size first
                conn.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
                conn.execute("VACUUM")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the SQLite database {path}: {exc}{_hint(folder)}") from None
    if not os.access(path, os.W_OK) or not os.access(folder, os.W_OK | os.X_OK):
        where = path if not os.access(path, os.W_OK) else folder
        raise StoreError(f"cannot write the SQLite database {path}: {where} is read-only")


def _hint(folder: str) -> str:
    """Why SQLite could not open a file, where its own words do not say: "disk I/O error"
    (it cannot create the -shm or -wal file on a full disk), "unable to open database file"
    (a new file in a read-only folder)."""
    try:
        full = os.statvfs(folder).f_bavail == 0
    except OSError:
        return ""
    if full:
        return f" (the disk is full: no space left in {folder})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f" ({folder} is read-only)"
    return ""


def _why(exc: OSError) -> str:
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return f"{exc.filename or 'a part of the path'} is a file, not a folder"
    return exc.strerror or str(exc)


def _current_connection() -> BaseDBAsyncClient | None:
    """Tortoise's connection of the store opened last in this process, if any."""
    try:
        return Tortoise.get_connection("default")
    except Exception:  # none configured
        return None


class Store:
    def __init__(self, url: str) -> None:
        if url.startswith("postgresql://"):
            url = "postgres://" + url[len("postgresql://") :]
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite://") else "postgres"
        self._conn: BaseDBAsyncClient | None = None
        self.rollups = Rollups(self)
        self.bulk = Bulk(self.dialect)
        self.chains = BodyChains()  # the writer's memory of each run's last request

    # -- life cycle ---------------------------------------------------------------------

    async def open(self, migrate_schema: bool = True, *, create: bool = True) -> None:
        """Connect and bring the schema up to date with the committed migrations. Without
        `create`, a SQLite file that is not there is an error (a mistyped --db), not a new
        empty database."""
        path = sqlite_path(self.url)
        if path is not None and not create and not os.path.exists(path):
            raise StoreError(
                f"no SQLite database at {os.path.abspath(path)}: check --db (or AGENTOPS_DB); "
                "`serve` creates it"
            )
        if path is not None:
            await asyncio.to_thread(prepare_sqlite, path)
        try:
            if migrate_schema:
                async with migration_lock(self.url):
                    await migrate(config=tortoise_config(self.url))
            await Tortoise.init(config=tortoise_config(self.url))
            self._conn = Tortoise.get_connection("default")
            if self.dialect == "sqlite":
                for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
                    await self._conn.execute_script(f"PRAGMA {pragma}")
        except Exception as exc:
            await self.close()
            raise StoreError(
                f"cannot open database {describe_url(self.url)}: "
                f"{type(exc).__name__}: {exc}".strip()
            ) from exc

    async def close(self) -> None:
        """Close this store's connection. Tortoise keeps one set of connections per process:
        its `close_connections` closes the newest store's, so a store opened before another
        (a test's two databases, a CLI command beside a store) closes its own first."""
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await conn.close()
            if conn is None or _current_connection() is conn:
                await Tortoise.close_connections()
        except Exception:  # closing a half-open pool must not mask the real error
            log.debug("error while closing the database", exc_info=True)

    @property
    def conn(self) -> BaseDBAsyncClient:
        if self._conn is None:
            raise StoreError("the store is not open")
        return self._conn

    async def ping(self) -> bool:
        try:
            await self.conn.execute_query("SELECT 1")
            return True
        except Exception:
            return False

    # -- SQL helpers ----------------------------------------------------------------------

    def sql(self, text: str) -> str:
        """Write queries with `?`; PostgreSQL wants $1, $2, ..."""
        if self.dialect == "sqlite":
            return text
        return _numbered(text)

    async def rows(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of any statement, including UPDATE/DELETE ... RETURNING."""
        return await self.conn.execute_query_dict(self.sql(text), list(params))

    def id_list(self, ids: Sequence[int]) -> tuple[str, list[int]]:
        """`IN (...)` of integer ids, and its parameters, for a look-up the writer makes every
        batch. PostgreSQL gets the numbers written out: a text it sees once is planned for
        the table as it is, where one repeated every batch (as many marks each time) keeps
        the generic plan made while the table was small, a sequential scan, until an
        ANALYZE (none, with autovacuum off). Measured: 4 ms a batch of 100 at 2,000 calls
        stored, 45 ms at 20,000; an index walk, 0.3 ms."""
        if self.dialect == "postgres":
            return ", ".join([str(int(i)) for i in ids]), []
        return ", ".join("?" * len(ids)), list(ids)

    def _time(self, value: datetime) -> Any:
        return value.isoformat(sep=" ") if self.dialect == "sqlite" else value

    # -- writing --------------------------------------------------------------------------

    async def existing(self, ids: list[int]) -> set[int]:
        """Which of these exchange ids are stored already (a spool replay after a crash)."""
        if not ids:
            return set()
        marks, params = self.id_list(ids)
        found = await self.rows(f"SELECT id FROM exchanges WHERE id IN ({marks})", params)
        return {row["id"] for row in found}

    async def identities(self, ids: list[int]) -> dict[int, tuple[int, str]]:
        """Of these exchange ids, those stored already, each with what tells a record written
        again (a spool replay) from another with the same id: its start, in microseconds,
        and its path."""
        if not ids:
            return {}
        marks, params = self.id_list(ids)
        found = await self.rows(
            f"SELECT id, started_at, client_path FROM exchanges WHERE id IN ({marks})", params
        )
        return {row["id"]: (micros(row["started_at"]), row["client_path"]) for row in found}

    async def insert(
        self,
        batch: Iterable[Rows],
        also: Callable[[BaseDBAsyncClient], Awaitable[None]] | None = None,
    ) -> None:
        """Insert a batch in one transaction (with `also`, first, the runs' rows); rows
        already present (spool replays) are skipped."""
        batch = list(batch)
        if not batch:
            return
        pending: dict[int, Tip] = {}
        frames = [
            self.chains.encode(
                r.exchange["id"], r.exchange["run_id"], _parts(r), r.repeats > 0, pending
            )
            for r in batch
        ]
        search = [[r.exchange["id"], r.search_text()] for r in batch]
        conflict = " ON CONFLICT DO NOTHING"
        self.rollups.returned.clear()  # none from a batch that failed
        async with self._batch() as tx:
            if also is not None:  # first: it numbers the steps the exchanges rows hold
                await also(tx)
            exchanges = [
                self._exchange_values(r.exchange, in_frame=f.data is not None)
                for r, f in zip(batch, frames, strict=True)
            ]
            # A row at a time too: as 42 arrays, ~10 us more of the writer's CPU a call for
            # as much less of the server's (measured)
            await tx.execute_many(
                self.sql(
                    f"INSERT INTO exchanges ({', '.join(EXCHANGE_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(EXCHANGE_COLUMNS))}){conflict}"
                ),
                exchanges,
            )
            await self._keep_bases(tx, frames)
            # A row at a time: as arrays, a batch's bodies (100 KB calls: 3 MB) are copied
            # into ever larger buffers by asyncpg, 40 us of the writer's CPU a call for 5 of
            # the server's (measured)
            await tx.execute_many(
                self.sql(
                    f"INSERT INTO exchange_bodies ({', '.join(BODY_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(BODY_COLUMNS))}){conflict}"
                ),
                storable.rows(
                    "exchange_bodies",
                    BODY_COLUMNS,
                    [_body_values(r, f) for r, f in zip(batch, frames, strict=True)],
                ),
            )
            if self.dialect == "sqlite":
                # OR REPLACE keeps spool replays idempotent; a NOT EXISTS probe costs 4x more.
                await tx.execute_many(
                    "INSERT OR REPLACE INTO exchange_fts (rowid, body) VALUES (?, ?)", search
                )
            else:
                # Words cut here, in the writer, not by to_tsvector in the server: search.py
                await self.bulk.insert(
                    tx,
                    "exchange_search",
                    ("exchange_id", "doc"),
                    [[exchange_id, pg_document(text)] for exchange_id, text in search],
                    conflict,
                )
            await self.rollups.add_rows(tx, batch)  # after the runs they name exist
        self.chains.commit(pending)

    def _batch(self) -> AbstractAsyncContextManager[BaseDBAsyncClient]:
        """The writer's transaction: on SQLite its statements reach the connection's thread
        together (sqlite_batch.py), on PostgreSQL asyncpg pipelines them already."""
        if self.dialect == "sqlite":
            return sqlite_batch(self.conn)
        return in_transaction("default")

    async def _keep_bases(self, tx: BaseDBAsyncClient, frames: list[Frame]) -> None:
        """Deltas whose base is gone (deleted since the writer remembered it) are stored
        whole instead. Asked after this transaction's first write: on SQLite it then holds
        the write lock, on PostgreSQL FOR SHARE holds the bases until it commits, so a
        delete (which locks them FOR UPDATE first) cannot slip in between."""
        inside = {f.exchange_id for f in frames}
        bases = sorted({f.base for f in frames if f.base is not None} - inside)
        if not bases:
            return
        marks, params = self.id_list(bases)
        lock = " FOR SHARE" if self.dialect == "postgres" else ""
        _, found = await tx.execute_query(
            self.sql(f"SELECT exchange_id FROM exchange_bodies WHERE exchange_id IN ({marks})")
            + lock,
            params,
        )
        kept = inside | {row["exchange_id"] for row in found}
        for frame in frames:
            if frame.base is not None and frame.base not in kept:
                frame.full()

    async def _rebase(self, tx: BaseDBAsyncClient, ids: list[int]) -> None:
        """Before deleting these exchanges: the frames stored as deltas against them (and not
        deleted with them) are stored whole, so they stay readable."""
        marks = ", ".join("?" * len(ids))
        fetch = self._fetch(tx)
        deleted = set(ids)
        dependants = [
            row
            for row in await fetch(
                "SELECT exchange_id, data, data_base FROM exchange_bodies "
                f"WHERE data_base IN ({marks}) AND data_base IS NOT NULL",
                ids,
            )
            if row["exchange_id"] not in deleted
        ]
        if not dependants:
            return
        frames = Frames()
        frames.add(dependants)
        await frames.complete(fetch)
        updates = []
        for row in dependants:
            payload = frames.payload(row["exchange_id"])
            if payload is not None:
                updates.append([compress(payload), row["exchange_id"]])
        if updates:
            await tx.execute_many(
                self.sql(
                    "UPDATE exchange_bodies SET data = ?, data_base = NULL WHERE exchange_id = ?"
                ),
                updates,
            )

    def _fetch(
        self, conn: BaseDBAsyncClient | None = None
    ) -> Callable[[str, Sequence[Any]], Awaitable[list[dict[str, Any]]]]:
        """Rows of a query written with `?`, on `conn` (a transaction) or the store's."""

        async def fetch(text: str, params: Sequence[Any]) -> list[dict[str, Any]]:
            return await (conn or self.conn).execute_query_dict(self.sql(text), list(params))

        return fetch

    async def read_bodies(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows selected with `bodies.BODY_SELECT`, bodies as the API's texts."""
        return await read_bodies(rows, self._fetch())

    def _exchange_values(self, row: dict[str, Any], in_frame: bool = False) -> list[Any]:
        """Column values in order; only the few typed columns need converting, and only on
        SQLite (asyncpg takes datetimes and bools). An output text kept in the exchange's
        frame (bodies.py) is not copied here."""
        values = list(_EXCHANGE_ITEMS(row))
        if self.dialect == "sqlite":
            for index in _CONVERTED:
                item = values[index]
                if item is True or item is False:
                    values[index] = int(item)
                elif isinstance(item, datetime):
                    values[index] = item.isoformat(sep=" ")
        if in_frame:
            values[_OUTPUT] = None
        return values

    def _value(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return self._time(value)
        if isinstance(value, bool) and self.dialect == "sqlite":
            return int(value)
        return value

    async def with_calls_about(self, ids: list[int]) -> list[int]:
        """The ids and, transitively, the calls the gateway made about them (`replay_of`:
        replays, judge and embedding calls, experiments' replays), which quote them."""
        found, frontier = dict.fromkeys(ids), list(ids)
        while frontier and len(found) < 100_000:
            rows = []
            for chunk in chunks(frontier):
                marks = ", ".join("?" * len(chunk))
                rows += await self.rows(
                    f"SELECT id FROM exchanges WHERE replay_of IN ({marks})", chunk
                )
            frontier = [int(row["id"]) for row in rows if int(row["id"]) not in found]
            found.update(dict.fromkeys(frontier))
        return list(found)

    async def delete_exchanges(self, ids: list[int]) -> int:
        """Delete these exchanges and all that is theirs, DELETE_CHUNK ids a transaction (a
        statement binds at most about 32k values)."""
        deleted = 0
        for chunk in chunks(ids):
            deleted += await self._delete_chunk(chunk)
        return deleted

    async def _delete_chunk(self, ids: list[int]) -> int:
        marks = ", ".join("?" * len(ids))
        async with in_transaction("default") as tx:
            # First a write (SQLite: the write lock from here on) or a lock on the bodies
            # (PostgreSQL): no writer can add a delta against them until this commits.
            if self.dialect == "sqlite":
                await tx.execute_query(f"DELETE FROM exchange_fts WHERE rowid IN ({marks})", ids)
            else:
                await tx.execute_query(
                    self.sql(
                        f"SELECT exchange_id FROM exchange_bodies WHERE exchange_id IN ({marks}) "
                        "FOR UPDATE"
                    ),
                    ids,
                )
                await tx.execute_query(
                    self.sql(f"DELETE FROM exchange_search WHERE exchange_id IN ({marks})"), ids
                )
            await self._rebase(tx, ids)
            await self.rollups.remove(tx, ids)
            for table in (
                "exchange_bodies",
                "messages",
                "tool_calls",
                "memory_snapshots",
                "evaluations",
            ):
                await tx.execute_query(
                    self.sql(f"DELETE FROM {table} WHERE exchange_id IN ({marks})"), ids
                )
            # Diffs quote both outputs: they go with either exchange.
            await tx.execute_query(
                self.sql(f"DELETE FROM diffs WHERE a IN ({marks}) OR b IN ({marks})"), ids + ids
            )
            runs = [
                row["run_id"]
                for row in (
                    await tx.execute_query(
                        self.sql(
                            f"SELECT DISTINCT run_id FROM exchanges WHERE id IN ({marks}) "
                            "AND run_id IS NOT NULL"
                        ),
                        ids,
                    )
                )[1]
            ]
            deleted, _ = await tx.execute_query(
                self.sql(f"DELETE FROM exchanges WHERE id IN ({marks})"), ids
            )
            if runs:
                await self._recount_runs(tx, runs)
        return int(deleted or 0)

    async def _recount_runs(self, tx: BaseDBAsyncClient, run_ids: list[int]) -> None:
        """Keep run totals true after exchanges are deleted; a run left empty goes too."""
        marks = ", ".join("?" * len(run_ids))
        sums = ", ".join(
            f"{column} = (SELECT COALESCE(SUM(e.{source}), 0) FROM exchanges e "
            "WHERE e.run_id = runs.id)"
            for column, source in (
                ("prompt_tokens", "prompt_tokens"),
                ("completion_tokens", "completion_tokens"),
                ("total_tokens", "total_tokens"),
                ("total_cost_usd", "cost_usd"),
            )
        )
        await tx.execute_query(
            self.sql(
                "UPDATE runs SET exchange_count = (SELECT COUNT(*) FROM exchanges e "
                f"WHERE e.run_id = runs.id), {sums}, {RUN_COUNTS} WHERE id IN ({marks})"
            ),
            run_ids,
        )
        empty = [
            row["id"]
            for row in (
                await tx.execute_query(
                    self.sql(f"SELECT id FROM runs WHERE id IN ({marks}) AND exchange_count = 0"),
                    run_ids,
                )
            )[1]
        ]
        if empty:
            emarks = ", ".join("?" * len(empty))
            for table in (
                "messages",
                "tool_calls",
                "memory_snapshots",
                "evaluations",
                "run_conversations",
            ):
                await tx.execute_query(
                    self.sql(f"DELETE FROM {table} WHERE run_id IN ({emarks})"), empty
                )
            await tx.execute_query(self.sql(f"DELETE FROM runs WHERE id IN ({emarks})"), empty)

    async def purge(self, older_than: datetime, batch_size: int = 1000) -> int:
        """Delete exchanges started before `older_than`, in batches so writers are not blocked."""
        bound = id_at(int(older_than.timestamp() * 1000))
        total = 0
        while True:
            found = await self.rows(
                "SELECT id FROM exchanges WHERE id < ? ORDER BY id LIMIT ?", [bound, batch_size]
            )
            if not found:
                return total
            total += await self.delete_exchanges([row["id"] for row in found])

    async def fill_costs(self, model: str, price_of: Any) -> int:
        """Price exchanges of a newly priced model whose cost is still null (set costs stay),
        and what is summed from them: run totals, rollups (see repricing.py)."""
        done = await repricing.reprice(self, price_of, model=model, only_unpriced=True)
        return done.changed

    # -- quarantine (records the database refused: see quarantine.py) ----------------------

    async def quarantine_add(self, items: list[tuple[int, float, str, bytes]]) -> None:
        """Set records aside: (id, captured at, error, encoded record). A record refused
        again (a retry) replaces its earlier row."""
        now = datetime.now(UTC)
        values = storable.rows(
            "quarantine",
            ("id", "captured_at", "quarantined_at", "error", "size_bytes", "record"),
            [
                [
                    exchange_id,
                    self._value(datetime.fromtimestamp(at, UTC)),
                    self._value(now),
                    error,
                    len(record),
                    record,
                ]
                for exchange_id, at, error, record in items
            ],
        )
        async with in_transaction("default") as tx:
            await tx.execute_many(
                self.sql(
                    "INSERT INTO quarantine (id, captured_at, quarantined_at, error, size_bytes, "
                    "record) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "quarantined_at = excluded.quarantined_at, error = excluded.error, "
                    "size_bytes = excluded.size_bytes, record = excluded.record"
                ),
                values,
            )

    async def quarantine_list(
        self, limit: int, before: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        where, params = ("WHERE id < ?", [before]) if before is not None else ("", [])
        found = await self.rows(
            "SELECT id, captured_at, quarantined_at, error, size_bytes FROM quarantine "
            f"{where} ORDER BY id DESC LIMIT ?",
            [*params, limit + 1],
        )
        more = len(found) > limit
        items = [
            {
                "id": str(row["id"]),
                "captured_at": iso_time(row["captured_at"]),
                "quarantined_at": iso_time(row["quarantined_at"]),
                "error": row["error"],
                "size_bytes": int(row["size_bytes"]),
            }
            for row in found[:limit]
        ]
        return items, (found[limit - 1]["id"] if more else None)

    async def quarantine_records(self, ids: list[int] | None) -> list[tuple[int, bytes]]:
        """(id, encoded record) of these ids, or of all when `ids` is None, oldest first."""
        if ids is None:
            found = await self.rows("SELECT id, record FROM quarantine ORDER BY id")
        elif not ids:
            return []
        else:
            marks = ", ".join("?" * len(ids))
            found = await self.rows(
                f"SELECT id, record FROM quarantine WHERE id IN ({marks}) ORDER BY id", ids
            )
        return [(row["id"], bytes(row["record"])) for row in found]

    async def quarantine_delete(self, ids: list[int]) -> int:
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        found = await self.rows(f"DELETE FROM quarantine WHERE id IN ({marks}) RETURNING id", ids)
        return len(found)

    async def quarantine_count(self) -> int:
        return int((await self.rows("SELECT COUNT(*) AS n FROM quarantine"))[0]["n"])

    # -- reading --------------------------------------------------------------------------

    def _where(self, f: ExchangeFilter, key: str = "e.id") -> tuple[list[str], list[Any]]:
        """WHERE terms of a filter; `key` is the id column that time bounds apply to (the
        search index's own id when a search drives the query)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("model", f.model),
            ("status", f.status),
            ("state", f.state),
            ("endpoint", f.endpoint),
            ("run_id", f.run),
        ):
            if value is not None:
                clauses.append(f"e.{column} = ?")
                params.append(value)
        # Literal copies of the partial indexes' conditions let the planner pick them.
        if (f.status or 0) >= 400 or (f.status_class or 0) >= 4:
            clauses.append("e.status >= 400")
        if f.state is not None and f.state != "complete":
            clauses.append("e.state <> 'complete'")
        if f.errors:  # every failed call has an error (capture/failure.py, migration 0011)
            clauses.append("e.error IS NOT NULL")
        if f.status_class is not None:
            clauses.append("e.status >= ? AND e.status < ?")
            params += [f.status_class * 100, f.status_class * 100 + 100]
        time_bounds(key, f.since, f.until, clauses, params)
        if f.q and key == "e.id":  # list_exchanges joins the search index instead
            if self.dialect == "sqlite":
                clauses.append(
                    "e.id IN (SELECT rowid FROM exchange_fts WHERE exchange_fts MATCH ?)"
                )
                params.append(fts5_query(f.q))
            else:
                clauses.append(
                    "e.id IN (SELECT exchange_id FROM exchange_search WHERE doc @@ ?::tsquery)"
                )
                params.append(pg_query(f.q))
        return clauses, params

    def _page_ids(self, f: ExchangeFilter) -> tuple[str, str, list[str], list[Any]]:
        """(FROM clause, id column, WHERE terms, params) for one page's ids. A search walks
        the search index in id order, newest first, so a word found in most rows costs no
        more than a rare one (FTS5 reads its rowids backwards; on PostgreSQL see
        _postgres_search)."""
        if not f.q:
            return ("exchanges e", "e.id", *self._where(f))
        if self.dialect == "sqlite":
            source, key = "exchange_fts f JOIN exchanges e ON e.id = f.rowid", "f.rowid"
            match, term = "exchange_fts MATCH ?", fts5_query(f.q)
        else:
            source, key = (
                "exchange_search s JOIN exchanges e ON e.id = s.exchange_id",
                "s.exchange_id",
            )
            match, term = "s.doc @@ ?::tsquery", pg_query(f.q)
        clauses, params = self._where(f, key)
        return source, key, [match, *clauses], [term, *params]

    async def list_exchanges(
        self, f: ExchangeFilter, limit: int, before: int | None, after: int | None = None
    ) -> tuple[list[ExchangeSummary], int | None]:
        """Newest first, keyset-paged. The page's ids come from one index walk (covering
        where an index has the filter column), then only those rows are read: sorting ids
        of a rare status is cheap, sorting whole rows is not."""
        source, key, clauses, params = self._page_ids(f)
        if before is not None:
            clauses.append(f"{key} < ?")
            params.append(before)
        if after is not None:  # the live list asks for what arrived since its newest row
            clauses.append(f"{key} > ?")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        page = f"SELECT {key} FROM {source} {where} ORDER BY {key} DESC LIMIT ?"
        args = [*params, limit + 1]
        columns = ", ".join(f"e.{c}" for c in LIST_COLUMNS)
        if f.q and self.dialect == "postgres":
            # The same page, with the matches collected through the GIN index first.
            gin = page.replace(
                source,
                "(SELECT exchange_id FROM exchange_search WHERE doc @@ "
                "?::tsquery OFFSET 0) s JOIN exchanges e "
                "ON e.id = s.exchange_id",
                1,
            ).replace(f"WHERE {clauses[0]}", "WHERE TRUE", 1)
            ids = await self._postgres_search(gin, page, args)
            found = (
                await self.rows(
                    f"SELECT {columns} FROM exchanges e WHERE e.id = ANY(?) ORDER BY e.id DESC",
                    [ids],
                )
                if ids
                else []
            )
        else:
            found = await self.rows(
                f"SELECT {columns} FROM exchanges e WHERE e.id IN ({page}) ORDER BY e.id DESC", args
            )
        more = len(found) > limit
        found = found[:limit]
        return [ExchangeSummary.from_row(row) for row in found], (found[-1]["id"] if more else None)

    async def _postgres_search(self, gin: str, walk: str, args: list[Any]) -> list[int]:
        """PostgreSQL cannot walk a GIN index in id order, and its planner guesses a word's
        frequency badly when the word is rare or unknown (it then walks the whole table:
        seconds). So: walk ids newest first, which finds a page at once when the word is
        common, under a short time limit; if that runs out, the word is rare and the GIN
        index gives its few matches quickly."""
        try:
            async with in_transaction("default") as tx:
                await tx.execute_script(f"SET LOCAL statement_timeout = {SEARCH_WALK_MS}")
                _, rows = await tx.execute_query(self.sql(walk), args)
            return [row[0] for row in rows]
        except Exception as exc:  # only the time limit means "a rare word"
            if "statement timeout" not in str(exc):
                raise
        async with in_transaction("default") as tx:
            # Few matches: look each one up. A merge or hash join would read the whole
            # exchanges index to meet them (the planner cannot know how few there are).
            await tx.execute_script(
                "SET LOCAL enable_mergejoin = off; SET LOCAL enable_hashjoin = off"
            )
            _, rows = await tx.execute_query(self.sql(gin), args)
        return [row[0] for row in rows]

    async def get_exchange(self, exchange_id: int) -> StoredExchange | None:
        found = await self.rows(
            f"SELECT e.*, {BODY_SELECT} FROM exchanges e "
            "LEFT JOIN exchange_bodies b ON b.exchange_id = e.id WHERE e.id = ?",
            [exchange_id],
        )
        return StoredExchange.from_row((await self.read_bodies(found))[0]) if found else None

    async def request_bodies(
        self, ids: list[int], max_chars: int = 512 * 1024
    ) -> dict[int, tuple[str | None, str]]:
        """Request bodies (text, encoding) of a page of exchanges, for the list's previews;
        bodies above `max_chars` come back as None so a huge prompt never slows a page."""
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        found = await self.rows(
            "SELECT exchange_id, request_body_encoding AS encoding, CASE WHEN "
            "LENGTH(request_body) <= ? THEN request_body END AS body FROM exchange_bodies "
            f"WHERE exchange_id IN ({marks})",
            [max_chars, *ids],
        )
        return {row["exchange_id"]: (row["body"], row["encoding"]) for row in found}

    async def neighbours(self, run_id: int, exchange_id: int) -> tuple[int | None, int | None]:
        """The previous and next exchange of the same run (one index probe each)."""
        before = await self.rows(
            "SELECT MAX(id) AS id FROM exchanges WHERE run_id = ? AND id < ?", [run_id, exchange_id]
        )
        after = await self.rows(
            "SELECT MIN(id) AS id FROM exchanges WHERE run_id = ? AND id > ?", [run_id, exchange_id]
        )
        return before[0]["id"], after[0]["id"]

    async def stats(self, since: datetime | None, until: datetime | None) -> dict[str, Any]:
        """Totals, per model and per provider: rollups for whole hours, rows at the edges."""
        return await read_stats(self, since, until)

    async def unpriced(self, known: Iterable[str]) -> list[dict[str, Any]]:
        """Models with successful calls but no cost, and how many: read from the rollups,
        which count exactly that, instead of scanning every exchange."""
        known = set(known)
        return [row for row in await self.rollups.unpriced() if row["model"] not in known]

    async def count(self) -> int:
        return int((await self.rows("SELECT COUNT(*) AS n FROM exchanges"))[0]["n"])


def _parts(rows: Rows) -> Parts:
    """What an exchange's frame holds: headers, bodies (the bytes kept) and output text."""
    bodies, output = rows.bodies, rows.exchange["output_text"]
    return Parts(
        bodies["request_headers"],
        bodies["request_body"],
        bodies["response_headers"],
        bodies["response_body"],
        None if output is None else output.encode("utf-8", "surrogatepass"),
    )


def _body_values(rows: Rows, frame: Frame) -> list[Any]:
    """An exchange_bodies row, in BODY_COLUMNS order: the frame, or (bodies omitted) the
    headers alone."""
    bodies = rows.bodies
    framed = frame.data is not None
    values = {
        "exchange_id": bodies["exchange_id"],
        "request_headers": "" if framed else bodies["request_headers"].decode(),
        "request_body": None,
        "request_body_encoding": bodies["request_body_encoding"],
        "response_headers": "" if framed else bodies["response_headers"].decode(),
        "response_body": None,
        "response_body_encoding": bodies["response_body_encoding"],
        "data": frame.data,
        "data_base": frame.base,
    }
    return [values[c] for c in BODY_COLUMNS]


def time_bounds(
    column: str,
    since: datetime | None,
    until: datetime | None,
    clauses: list[str],
    params: list[Any],
) -> None:
    """A time window as an id range: ids are time-sortable, so this is one index walk."""
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(id_at(int(since.timestamp() * 1000)))
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(id_at(int(until.timestamp() * 1000) + 1))
