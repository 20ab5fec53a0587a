"""Records the database refuses: set aside with the error, never retried forever.

The writer stores records in batches. When a batch fails it asks one question first: is the
database down (a connection-level error: refused, reset, timed out, shutting down, out of
disk), or did it refuse something in the data? Down means spool everything and retry later.
A refusal means the batch is split in halves until the record(s) it refuses are found; those
go to the `quarantine` table (in the same database, so every replica and the CLI see them)
with the error, and every other record of the batch is stored. `storable.py` makes every
known kind of value fit first, so the quarantine is for what nobody foresaw.

A quarantined record is the capture record itself (raw bytes and all), so `agentops-studio
quarantine retry` can store it again once the cause is fixed.
"""

from __future__ import annotations

import pickle
import sqlite3
import zlib
from dataclasses import dataclass
from typing import Any

from gateway.capture.exchange import Exchange

# PostgreSQL SQLSTATE classes that say the database (not the record) is the problem:
# 08 connection, 3D no such database, 40 transaction rollback (deadlock, serialization:
# retry later), 42 syntax or access (a schema or privilege problem affects every record),
# 53 insufficient resources (disk full, out of memory), 57 operator intervention (shutdown,
# cannot connect now), 58 system error, XX internal error.
DOWN_SQLSTATE_CLASSES = frozenset({"08", "3D", "40", "42", "53", "57", "58", "XX"})


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (Tortoise re-raises driver errors as its own)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen) or len(seen) > 10:
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
        todo += [arg for arg in item.args if isinstance(arg, BaseException)]
    return seen


def database_down(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be used now, not that it refused a value."""
    import asyncpg

    for item in _chain(exc):
        if isinstance(item, (OSError, TimeoutError, ConnectionError)):
            return True
        if isinstance(item, asyncpg.PostgresError):
            state = getattr(item, "sqlstate", None) or ""
            if state[:2] in DOWN_SQLSTATE_CLASSES:
                return True
        elif isinstance(item, asyncpg.InterfaceError) and not isinstance(item, asyncpg.DataError):
            return True  # connection closed or in a bad state (the client-side DataError is data)
        if isinstance(item, sqlite3.OperationalError):
            return True  # locked, disk I/O, disk full, read-only, no such table
        if isinstance(item, sqlite3.DatabaseError) and not isinstance(
            item,
            (
                sqlite3.IntegrityError,
                sqlite3.DataError,
                sqlite3.ProgrammingError,
                sqlite3.InterfaceError,
            ),
        ):
            return True  # a malformed database file, "file is not a database"
        if type(item).__name__ == "DBConnectionError":  # tortoise.exceptions
            return True
    return False


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


# -- the stored form of a record -------------------------------------------------------------


def encode(exchange: Exchange) -> bytes:
    """A record as bytes: a pickle of plain values (str, bytes, numbers, lists, tuples,
    dicts), compressed. Lone surrogates and any byte survive, which JSON would not allow."""
    return zlib.compress(pickle.dumps(exchange.to_dict(), protocol=pickle.HIGHEST_PROTOCOL), 1)


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every class and function: a quarantined row cannot run code when read back,
    whoever wrote it into the database."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"quarantined records hold plain values only: {module}.{name}")


def decode(data: bytes) -> Exchange:
    import io

    values = _PlainUnpickler(io.BytesIO(zlib.decompress(bytes(data)))).load()
    return Exchange.from_dict(values)


# -- retry and drop (the CLI and the API) ----------------------------------------------------


RETRY_CHUNK = 500


@dataclass(frozen=True, slots=True)
class RetryResult:
    retried: int
    stored: int
    refused_again: int
    unknown: list[int]  # ids asked for that are not in quarantine


async def retry(store: Any, recorder: Any, ids: list[int] | None) -> RetryResult:
    """Hand quarantined records (all when `ids` is None) to the writer again. Those it
    stores leave the quarantine; those refused again stay, with the new error. A record is
    deleted from quarantine only once it is stored, so a crash midway loses nothing."""
    found = await store.quarantine_records(ids)
    unknown = sorted(set(ids or ()) - {exchange_id for exchange_id, _ in found})
    records = sorted((decode(data) for _, data in found), key=lambda r: (r.started_at, r.id))
    stored = 0
    for start in range(0, len(records), RETRY_CHUNK):
        chunk = records[start : start + RETRY_CHUNK]
        for record in chunk:
            recorder.submit(record)
        await recorder.drained()
        done = await store.existing([r.id for r in chunk])
        stored += await store.quarantine_delete(sorted(done))
    return RetryResult(len(records), stored, len(records) - stored, unknown)
