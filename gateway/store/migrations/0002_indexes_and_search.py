"""List-filter indexes and full-text search, which Tortoise's model operations cannot express.

Filter indexes are (column, id) so a filtered page is one index walk in id order; rare values
(errors, faults) get partial indexes, so the common row costs no index write at all. Search is
SQLite FTS5 or a PostgreSQL tsvector with a GIN index.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

INDEXES = [
    "CREATE INDEX IF NOT EXISTS exchanges_model_id ON exchanges (model, id)",
    "CREATE INDEX IF NOT EXISTS exchanges_endpoint_id ON exchanges (endpoint, id)",
    "CREATE INDEX IF NOT EXISTS exchanges_run_id ON exchanges (run_id, id)",
    "CREATE INDEX IF NOT EXISTS exchanges_errors ON exchanges (status, id) WHERE status >= 400",
    "CREATE INDEX IF NOT EXISTS exchanges_faults ON exchanges (state, id) "
    "WHERE state <> 'complete'",
]
SQLITE = [
    # detail=none: no position lists, about 20% cheaper to write; searches AND whole words, so
    # phrase and NEAR queries (which need positions) are not offered.
    "CREATE VIRTUAL TABLE IF NOT EXISTS exchange_fts USING fts5(body, tokenize='unicode61', "
    "detail=none)",
]
POSTGRES = [
    "CREATE TABLE IF NOT EXISTS exchange_search "
    "(exchange_id BIGINT PRIMARY KEY, doc TSVECTOR NOT NULL)",
    "CREATE INDEX IF NOT EXISTS exchange_search_doc ON exchange_search USING GIN (doc)",
]
DROP = [
    "exchanges_model_id",
    "exchanges_endpoint_id",
    "exchanges_run_id",
    "exchanges_errors",
    "exchanges_faults",
]


async def forward(apps, schema_editor) -> None:
    client = schema_editor.client
    sqlite = client.capabilities.dialect == "sqlite"
    for sql in INDEXES + (SQLITE if sqlite else POSTGRES):
        await client.execute_script(sql)


async def backward(apps, schema_editor) -> None:
    client = schema_editor.client
    table = "exchange_fts" if client.capabilities.dialect == "sqlite" else "exchange_search"
    await client.execute_script(f"DROP TABLE IF EXISTS {table}")
    for name in DROP:
        await client.execute_script(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("models", "0001_initial")]

    operations = [ops.RunPython(forward, backward)]
