"""Fewer rows and bytes per call.

- A chat step's new input messages that are exactly its request's messages from `carried`
  on, and a plain answer's output message, are not stored as rows; its memory snapshot says
  so (`inputs_from`) and reading a run derives them (gateway/store/run_refs.py). Existing
  rows keep their message rows (`inputs_from` null) and are read as they are.
- PostgreSQL: the search index's GIN pending list is cut from the server's default (4 MB)
  to 128 kB. New entries wait there unsorted, several times larger than in the index
  proper, until it fills; a smaller list is merged sooner, for the same server CPU.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

PENDING = "ALTER INDEX exchange_search_doc SET (gin_pending_list_limit = 128)"


async def forward(apps, schema_editor) -> None:
    client = schema_editor.client
    if client.capabilities.dialect == "postgres":
        await client.execute_script(PENDING)


async def backward(apps, schema_editor) -> None:
    client = schema_editor.client
    if client.capabilities.dialect == "postgres":
        await client.execute_script(
            "ALTER INDEX exchange_search_doc RESET (gin_pending_list_limit)"
        )


class Migration(migrations.Migration):
    dependencies = [("models", "0019_late_parents")]

    initial = False

    operations = [
        ops.AddField(
            model_name="MemorySnapshot",
            name="inputs_from",
            field=fields.CharField(null=True, max_length=8),
        ),
        ops.RunPython(forward, backward),
    ]
