"""Full-text search over bodies: SQLite FTS5 or a PostgreSQL tsvector with a GIN index.

The two dialects need different DDL, which Tortoise's model operations cannot express, so
this migration picks by the connection's dialect.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

SQLITE = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS exchange_fts USING fts5(body, tokenize='unicode61')",
]
POSTGRES = [
    "CREATE TABLE IF NOT EXISTS exchange_search "
    "(exchange_id BIGINT PRIMARY KEY, doc TSVECTOR NOT NULL)",
    "CREATE INDEX IF NOT EXISTS exchange_search_doc ON exchange_search USING GIN (doc)",
]


async def forward(apps, schema_editor) -> None:
    client = schema_editor.client
    statements = SQLITE if client.capabilities.dialect == "sqlite" else POSTGRES
    for sql in statements:
        await client.execute_script(sql)


async def backward(apps, schema_editor) -> None:
    client = schema_editor.client
    table = "exchange_fts" if client.capabilities.dialect == "sqlite" else "exchange_search"
    await client.execute_script(f"DROP TABLE IF EXISTS {table}")


class Migration(migrations.Migration):
    dependencies = [("models", "0001_initial")]

    operations = [ops.RunPython(forward, backward)]
