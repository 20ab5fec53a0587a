"""Run grouping that every replica sees: open named runs by name (run_names), leases of the
node bits of exchange ids (node_leases), each run's step counter (runs.steps), and an index to find a step's parent by its thread
key from any replica (gateway/store/grouping.py)."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

# Only chat steps with a reply have a thread key: the index is partial.
INDEX = (
    "CREATE INDEX IF NOT EXISTS exchanges_thread_key ON exchanges (thread_key) "
    "WHERE thread_key IS NOT NULL"
)


async def forward(apps, schema_editor) -> None:
    await schema_editor.client.execute_script(INDEX)
    await schema_editor.client.execute_script("UPDATE runs SET steps = exchange_count")


async def backward(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DROP INDEX IF EXISTS exchanges_thread_key")


class Migration(migrations.Migration):
    dependencies = [("models", "0011_errors")]

    initial = False

    operations = [
        ops.CreateModel(
            name="RunName",
            fields=[
                ("name", fields.CharField(primary_key=True, max_length=200)),
                ("run_id", fields.BigIntField()),
                ("started_at", fields.FloatField()),
                ("last_at", fields.FloatField()),
            ],
            options={"table": "run_names", "app": "models", "pk_attr": "name"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="NodeLease",
            fields=[
                ("node", fields.IntField(primary_key=True)),
                ("holder", fields.CharField(max_length=200)),
                ("expires_at", fields.FloatField()),
            ],
            options={"table": "node_leases", "app": "models", "pk_attr": "node"},
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Run", name="steps", field=fields.IntField(default=0, db_default=0)
        ),
        ops.RunPython(forward, backward),
    ]
