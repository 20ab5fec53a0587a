"""Per-hour rollups for the dashboard (see gateway/store/rollups.py). The exchanges already
stored are counted by 0009, which rebuilds every rollup row: the backfill speaks the current
rollups schema, which has columns this migration does not create."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


async def backfill(apps, schema_editor) -> None:
    """Nothing: 0009_stats_rollups rebuilds the rollups of existing exchanges."""


async def forget(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DELETE FROM rollups")


class Migration(migrations.Migration):
    dependencies = [("models", "0003_runs")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Rollup",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("dim", fields.CharField(max_length=8)),
                ("hour", fields.BigIntField()),
                ("value", fields.CharField(max_length=200)),
                ("calls", fields.BigIntField(default=0)),
                ("errors", fields.BigIntField(default=0)),
                ("unpriced", fields.BigIntField(default=0)),
                ("prompt_tokens", fields.BigIntField(default=0)),
                ("completion_tokens", fields.BigIntField(default=0)),
                ("total_tokens", fields.BigIntField(default=0)),
                ("cost_usd", fields.FloatField(default=0)),
                ("latency_count", fields.BigIntField(default=0)),
                ("latency_sum", fields.FloatField(default=0)),
                ("h00", fields.BigIntField(default=0)),
                ("h01", fields.BigIntField(default=0)),
                ("h02", fields.BigIntField(default=0)),
                ("h03", fields.BigIntField(default=0)),
                ("h04", fields.BigIntField(default=0)),
                ("h05", fields.BigIntField(default=0)),
                ("h06", fields.BigIntField(default=0)),
                ("h07", fields.BigIntField(default=0)),
                ("h08", fields.BigIntField(default=0)),
                ("h09", fields.BigIntField(default=0)),
                ("h10", fields.BigIntField(default=0)),
                ("h11", fields.BigIntField(default=0)),
                ("h12", fields.BigIntField(default=0)),
                ("h13", fields.BigIntField(default=0)),
                ("h14", fields.BigIntField(default=0)),
                ("h15", fields.BigIntField(default=0)),
                ("h16", fields.BigIntField(default=0)),
                ("h17", fields.BigIntField(default=0)),
                ("h18", fields.BigIntField(default=0)),
                ("h19", fields.BigIntField(default=0)),
            ],
            options={
                "table": "rollups",
                "app": "models",
                "unique_together": (("dim", "hour", "value"),),
                "pk_attr": "id",
                "table_description": "Per-hour totals for the dashboard, kept by the writer: see gateway/store/rollups.py.",
            },
            bases=["Model"],
        ),
        ops.RunPython(backfill, forget),
    ]
