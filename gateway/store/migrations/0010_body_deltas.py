"""Storage that grows with new content: an exchange's headers, bodies and output text as one
zstd frame,
a step that extends its run's previous one as a delta against it (gateway/store/bodies.py),
and messages and memory snapshots that point into their exchange instead of copying it
(run_refs.py).

Existing rows keep their text columns and are read as they are: nothing is rewritten.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

# Finding the bodies that name a deleted base: only deltas have one, so the index is partial.
INDEX = (
    "CREATE INDEX IF NOT EXISTS exchange_bodies_base ON exchange_bodies (data_base) "
    "WHERE data_base IS NOT NULL"
)
# zstd frames do not compress again: PostgreSQL need not try (and spend its CPU on it).
EXTERNAL = "ALTER TABLE exchange_bodies ALTER COLUMN data SET STORAGE EXTERNAL"


async def forward(apps, schema_editor) -> None:
    client = schema_editor.client
    await client.execute_script(INDEX)
    if client.capabilities.dialect == "postgres":
        await client.execute_script(EXTERNAL)


async def backward(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DROP INDEX IF EXISTS exchange_bodies_base")


class Migration(migrations.Migration):
    dependencies = [("models", "0009_stats_rollups")]

    initial = False

    operations = [
        ops.AddField(model_name="ExchangeBody", name="data", field=fields.BinaryField(null=True)),
        ops.AddField(
            model_name="ExchangeBody", name="data_base", field=fields.BigIntField(null=True)
        ),
        ops.AddField(
            model_name="Message",
            name="content_from",
            field=fields.CharField(null=True, max_length=8),
        ),
        ops.AddField(
            model_name="MemorySnapshot",
            name="appended_from",
            field=fields.CharField(null=True, max_length=8),
        ),
        ops.RunPython(forward, backward),
    ]
