"""PostgreSQL: compress large text values with LZ4 instead of the default pglz.

Bodies, answers and messages are stored as text; PostgreSQL compresses values over about
2 KB. pglz costs the database server about 450 us of CPU per 100 KB body, LZ4 about 60 us
(measured here), and the server does it at full priority on the gateway's machine when they
share one. New values use LZ4; stored ones keep pglz until rewritten. Skipped where the server
has no LZ4 (before PostgreSQL 14, or built without it). SQLite compresses nothing.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

COLUMNS = {
    "exchange_bodies": ("request_headers", "request_body", "response_headers", "response_body"),
    "exchanges": ("output_text",),
    "messages": ("content", "tool_calls"),
    "memory_snapshots": ("appended",),
    "tool_calls": ("args", "return_value"),
}
HAS_LZ4 = (
    "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
)


async def _set(schema_editor, method: str) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        return
    _, rows = await client.execute_query(HAS_LZ4)
    if not rows:
        return
    for table, columns in COLUMNS.items():
        alters = ", ".join(f"ALTER COLUMN {c} SET COMPRESSION {method}" for c in columns)
        await client.execute_script(f"ALTER TABLE {table} {alters}")


async def forward(apps, schema_editor) -> None:
    await _set(schema_editor, "lz4")


async def backward(apps, schema_editor) -> None:
    await _set(schema_editor, "pglz")


class Migration(migrations.Migration):
    dependencies = [("models", "0005_replay")]

    operations = [ops.RunPython(forward, backward)]
