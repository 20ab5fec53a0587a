"""The writer's SQLite transaction: its statements reach the connection's thread together.

aiosqlite runs every statement in the connection's own thread: each `execute_many` is a hand-off
(a queue put, a wake-up of that thread, a future back to the loop, the GIL passed twice), and
tortoise wraps each in a lock and an exception translation. A writer's batch made about a dozen
of them. Here the inserts are kept until the transaction needs an answer (a SELECT inside it)
or commits, and then run in one hand-off: BEGIN, every kept `executemany`, the query or COMMIT.
The statements, their order and the one transaction are the same; only the trips change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError, OperationalError

Statement = tuple[str, Sequence[Sequence[Any]]]


class SqliteBatch:
    """The subset of tortoise's transaction client the writer's batch uses (`execute_many`,
    `execute_query`, `execute_query_dict`), on the raw connection in aiosqlite's thread."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection  # aiosqlite.Connection
        self._pending: list[Statement] = []
        self._begun = False

    async def execute_many(self, query: str, values: Sequence[Sequence[Any]]) -> None:
        self._pending.append((query, values))

    async def execute_query(
        self, query: str, values: Sequence[Any] | None = None
    ) -> tuple[int, list[Any]]:
        return cast(tuple[int, list[Any]], await self._send(query, list(values or [])))

    async def execute_query_dict(
        self, query: str, values: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        _, rows = await self.execute_query(query, values)
        return [dict(row) for row in rows]  # sqlite3.Row, as tortoise's client sets it

    async def commit(self) -> None:
        await self._send("COMMIT", None)

    async def rollback(self) -> None:
        self._pending.clear()
        if self._begun:
            await self._connection._execute(_roll_back, self._connection._conn)

    async def _send(self, query: str, values: list[Any] | None) -> Any:
        pending, self._pending = self._pending, []
        begin, self._begun = not self._begun, True
        try:
            return await self._connection._execute(
                _run, self._connection._conn, begin, pending, query, values
            )
        except sqlite3.OperationalError as exc:  # as tortoise's client raises them
            raise OperationalError(exc) from exc
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(exc) from exc


def _run(
    raw: sqlite3.Connection,
    begin: bool,
    pending: list[Statement],
    query: str,
    values: list[Any] | None,
) -> Any:
    """In the connection's thread: BEGIN (the first time), the kept inserts, then `query`
    (COMMIT when `values` is None, else a query whose rows are returned as tortoise does)."""
    if begin:
        raw.execute("BEGIN")
    for text, rows in pending:
        raw.executemany(text, rows)
    if values is None:
        raw.execute(query)
        return None
    start = raw.total_changes
    found = raw.execute(query, values).fetchall()
    return (raw.total_changes - start) or len(found), found


def _roll_back(raw: sqlite3.Connection) -> None:
    if raw.in_transaction:
        raw.execute("ROLLBACK")


@asynccontextmanager
async def sqlite_batch(client: BaseDBAsyncClient) -> AsyncIterator[BaseDBAsyncClient]:
    """A transaction on tortoise's SQLite client (holding its lock, as its own transactions do,
    so no other statement of this process lands inside it), committed in the last hand-off."""
    lock = client._lock  # type: ignore[attr-defined]
    async with lock:
        if client._connection is None:  # type: ignore[attr-defined]
            await client.create_connection(with_db=True)
        batch = SqliteBatch(client._connection)  # type: ignore[attr-defined]
        try:
            yield cast(BaseDBAsyncClient, batch)
            await batch.commit()
        except BaseException:
            await batch.rollback()
            raise
