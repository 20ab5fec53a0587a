"""Fewer index entries written per call.

- `exchanges.correlation_id` loses its index: no query filters on the column (a correlation
  id is found through the search index, which holds it).
- The runs' `name`, `agent_id` and `user` indexes become partial (`WHERE x IS NOT NULL`):
  most runs have none of them, and `x = ?` (the list filters, budgets, alerts, fine-tune
  jobs) implies `x IS NOT NULL`, so both SQLite's and PostgreSQL's planners still use them.
"""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

RUN_COLUMNS = ("name", "agent_id", "user")


class DropFieldIndex(ops.AlterField):
    """AlterField that only drops (or, backward, adds) the column's index: on SQLite the
    stock operation copies the whole table to change a column."""

    async def database_forward(self, app_label, old_state, new_state, state_editor=None):
        if state_editor:
            model = old_state.apps.get_model(f"{app_label}.{self.model_name}")
            await state_editor.remove_index(model, Index(fields=(self.name,)))

    async def database_backward(self, app_label, old_state, new_state, state_editor=None):
        if state_editor:
            model = new_state.apps.get_model(f"{app_label}.{self.model_name}")
            await state_editor.add_index(model, Index(fields=(self.name,)))


async def forward(apps, schema_editor) -> None:
    client = schema_editor.client
    for column in RUN_COLUMNS:
        await client.execute_script(
            f'CREATE INDEX IF NOT EXISTS runs_{column}_id ON runs ("{column}", id) '
            f'WHERE "{column}" IS NOT NULL'
        )


async def backward(apps, schema_editor) -> None:
    client = schema_editor.client
    for column in RUN_COLUMNS:
        await client.execute_script(f"DROP INDEX IF EXISTS runs_{column}_id")


class Migration(migrations.Migration):
    dependencies = [("models", "0020_fewer_rows")]

    initial = False

    operations = [
        DropFieldIndex(
            model_name="Exchange",
            name="correlation_id",
            field=fields.CharField(null=True, max_length=200),
        ),
        *(ops.RemoveIndex(model_name="Run", fields=[column, "id"]) for column in RUN_COLUMNS),
        ops.RunPython(forward, backward),
    ]
