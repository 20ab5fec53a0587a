"""Steps stored before their parent (gateway/store/merging.py): `run_orphans` remembers what a
step placed without its parent waited for (the thread key of the call it continues), so the
writer that stores that call later merges the step's run into the parent's; `run_merges`
says where a merged run went (a writer whose memory still names it is sent on)."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0018_campaigns")]

    initial = False

    operations = [
        ops.CreateModel(
            name="RunOrphan",
            fields=[
                ("exchange_id", fields.BigIntField(primary_key=True)),
                ("parent_key", fields.CharField(max_length=32, db_index=True)),
                ("carried", fields.IntField(default=0)),
                ("results", fields.TextField(null=True)),
                ("at", fields.FloatField(db_index=True)),
            ],
            options={"table": "run_orphans", "app": "models", "pk_attr": "exchange_id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RunMerge",
            fields=[
                ("run_id", fields.BigIntField(primary_key=True)),
                ("into_run_id", fields.BigIntField()),
                ("at", fields.FloatField()),
            ],
            options={"table": "run_merges", "app": "models", "pk_attr": "run_id"},
            bases=["Model"],
        ),
    ]
