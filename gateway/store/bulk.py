"""The writer's batch inserts: SQLite's executemany, PostgreSQL's one statement per table.

On PostgreSQL an executemany is a Bind and an Execute per row, and the server starts and ends
an executor for each: most of a small row's cost (measured: about 12 us of server CPU per
row and table). `INSERT ... SELECT FROM unnest($1::type[], ...)` sends each column as one
array and inserts the batch in one execution, the rows in their order (a serial column
numbers them as before) and each value cast to its column's type as an INSERT does: a
`character varying[]` array, then the column's own `varchar(n)` by assignment, so a value
too long fails as it did.

Used where it helps the server without costing the writer (measured, one process
alternating): the search documents and memory snapshots, ~30 us of server CPU saved per 1 KB
call for ~2 us of the writer's. Wide rows (exchanges' 42 columns) and large values (bodies)
cost asyncpg as much to send as arrays as the server saves; they stay executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient

# Types asyncpg has no binary array codec for: sent as text[], cast in the select list
# (the same input function the single-row `$1::tsvector` ran)
AS_TEXT = frozenset({"tsvector"})
COLUMN_TYPES = (
    "SELECT attname, format_type(atttypid, NULL) AS type FROM pg_attribute "
    "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped"
)


def unnest_insert(
    table: str, columns: Sequence[str], types: dict[str, str], conflict: str = ""
) -> str:
    """The PostgreSQL statement inserting `columns` from one array each (types: the
    columns' types without modifiers, by name)."""
    arrays, selected = [], []
    for n, column in enumerate(columns, 1):
        kind = types[column.strip('"')]
        arrays.append(f"${n}::{'text' if kind in AS_TEXT else kind}[]")
        selected.append(f"c{n}::{kind}" if kind in AS_TEXT else f"c{n}")
    names = ", ".join(f"c{n}" for n in range(1, len(columns) + 1))
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(selected)} "
        f"FROM unnest({', '.join(arrays)}) AS t({names}){conflict}"
    )


class Bulk:
    """Batch inserts into append-only tables, one statement a table on PostgreSQL (made
    once per table and columns, from the catalog's column types)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._statements: dict[tuple[str, tuple[str, ...], str], str] = {}

    async def insert(
        self,
        tx: BaseDBAsyncClient,
        table: str,
        columns: Sequence[str],
        rows: list[list[Any]],
        conflict: str = "",
    ) -> None:
        """Insert `rows` (values in `columns`' order, storable already); `conflict`, e.g.
        " ON CONFLICT DO NOTHING", is appended to the statement."""
        if not rows:
            return
        if self.dialect == "sqlite":
            marks = ", ".join("?" * len(columns))
            await tx.execute_many(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}){conflict}", rows
            )
            return
        key = (table, tuple(columns), conflict)
        statement = self._statements.get(key)
        if statement is None:
            found = await tx.execute_query_dict(COLUMN_TYPES, [table])
            types = {row["attname"]: row["type"] for row in found}
            statement = self._statements[key] = unnest_insert(table, columns, types, conflict)
        await tx.execute_query(statement, [list(values) for values in zip(*rows, strict=True)])
