"""Fewer index entries written per call.

- `exchanges.correlation_id` loses its index: no query filters on the column (a correlation
  id is found through the search index, which holds it).
- The runs' `name`, `agent_id` and `user` indexes become partial (`WHERE x IS NOT NULL`):
  most runs have none of them, and `x = ?` (the list filters, budgets, alerts, fine-tune
  jobs) implies `x IS NOT NULL`, so both SQLite's and PostgreSQL's planners still use them.
- SQLite: the search table gets `columnsize=0`: no row per call in `exchange_fts_docsize`
  (each document's token count), which only bm25 ranking and `fts5_column_size()` read, and
  search uses neither (it lists newest first). Its other tables are byte for byte what they
  would be either way (tests/test_store.py checks it), so the change is the table's
  definition and dropping the sizes: instant on a database of any size, where copying the
  rows into a new table re-indexes every call (about 30 us each). Back: a copy.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

RUN_COLUMNS = ("name", "agent_id", "user")
# The indexes Tortoise made (0001, 0003) and named, on both databases alike
FULL = {
    "idx_exchanges_correla_5e55b1": 'exchanges ("correlation_id")',
    "idx_runs_name_64b9d7": 'runs ("name", "id")',
    "idx_runs_agent_i_56b238": 'runs ("agent_id", "id")',
    "idx_runs_user_983a5f": 'runs ("user", "id")',
}
SIZES = ", columnsize=0"
FTS_DEFINITION = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'exchange_fts'"


class StateOnly:
    """The model state's half of an operation; forward() and backward() change the database,
    with IF EXISTS: a SQLite table that an earlier migration copied (going back past it and
    forward again) lost its Tortoise-made indexes. The stock AlterField would also copy the
    whole exchanges table on SQLite to drop a column's index."""

    async def database_forward(self, *args: object, **kwargs: object) -> None:
        return None

    async def database_backward(self, *args: object, **kwargs: object) -> None:
        return None


class AlterFieldState(StateOnly, ops.AlterField):
    pass


class RemoveIndexState(StateOnly, ops.RemoveIndex):
    pass


async def _drop_sizes(client) -> None:
    """columnsize=0 in the search table's definition, read again by every connection (a new
    schema version), then its size table dropped: the procedure SQLite documents for a
    schema change that leaves what is stored as it is (lang_altertable.html, section 7)."""
    (row,) = await client.execute_query_dict(FTS_DEFINITION)
    if SIZES in row["sql"]:
        return
    definition = row["sql"].replace("detail=none)", f"detail=none{SIZES})")
    if definition == row["sql"]:
        raise RuntimeError(f"unexpected search table: {definition}")
    (version,) = await client.execute_query_dict("PRAGMA schema_version")
    await client.execute_script("PRAGMA writable_schema = ON")
    await client.execute_query(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'exchange_fts'",
        [definition],
    )
    await client.execute_script(f"PRAGMA schema_version = {version['schema_version'] + 1}")
    await client.execute_script("PRAGMA writable_schema = OFF")
    await client.execute_script("DROP TABLE exchange_fts_docsize")


async def _copy_with_sizes(client) -> None:
    await client.execute_script(
        "CREATE VIRTUAL TABLE exchange_fts_sized USING fts5(body, tokenize='unicode61', "
        "detail=none)"
    )
    await client.execute_script(
        "INSERT INTO exchange_fts_sized (rowid, body) SELECT rowid, body FROM exchange_fts"
    )
    await client.execute_script("DROP TABLE exchange_fts")
    await client.execute_script("ALTER TABLE exchange_fts_sized RENAME TO exchange_fts")


async def forward(apps, schema_editor) -> None:
    client = schema_editor.client
    for name in FULL:
        await client.execute_script(f'DROP INDEX IF EXISTS "{name}"')
    for column in RUN_COLUMNS:
        await client.execute_script(
            f'CREATE INDEX IF NOT EXISTS runs_{column}_id ON runs ("{column}", id) '
            f'WHERE "{column}" IS NOT NULL'
        )
    if client.capabilities.dialect == "sqlite":
        await _drop_sizes(client)


async def backward(apps, schema_editor) -> None:
    client = schema_editor.client
    for column in RUN_COLUMNS:
        await client.execute_script(f"DROP INDEX IF EXISTS runs_{column}_id")
    for name, on in FULL.items():
        await client.execute_script(f'CREATE INDEX IF NOT EXISTS "{name}" ON {on}')
    if client.capabilities.dialect == "sqlite":
        await _copy_with_sizes(client)


class Migration(migrations.Migration):
    dependencies = [("models", "0020_fewer_rows")]

    initial = False

    operations = [
        AlterFieldState(
            model_name="Exchange",
            name="correlation_id",
            field=fields.CharField(null=True, max_length=200),
        ),
        *(RemoveIndexState(model_name="Run", fields=[column, "id"]) for column in RUN_COLUMNS),
        ops.RunPython(forward, backward),
    ]
