"""Replay and diff: the diffs table, experiments and their rows, and an index to find an
exchange's replays.

Depends on 0003_runs for now: 0004_rollups is being added on another branch, and this
migration is re-chained after it when both land.
"""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

# Replays are rare among exchanges: a partial index costs the common row nothing.
REPLAY_INDEX = (
    "CREATE INDEX IF NOT EXISTS exchanges_replay_of ON exchanges (replay_of) "
    "WHERE replay_of IS NOT NULL"
)


async def forward(apps, schema_editor) -> None:
    await schema_editor.client.execute_script(REPLAY_INDEX)


async def backward(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DROP INDEX IF EXISTS exchanges_replay_of")


class Migration(migrations.Migration):
    dependencies = [("models", "0004_rollups")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Diff",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("a", fields.BigIntField(db_index=True)),
                ("b", fields.BigIntField(db_index=True)),
                ("run_id", fields.BigIntField(null=True, db_index=True)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("identical", fields.BooleanField()),
                ("similarity", fields.FloatField()),
                ("parameter_changed", fields.TextField(unique=False)),
                ("before_output", fields.TextField(null=True, unique=False)),
                ("after_output", fields.TextField(null=True, unique=False)),
                ("diff_json", fields.TextField(unique=False)),
            ],
            options={
                "table": "diffs",
                "app": "models",
                "pk_attr": "id",
                "table_description": "Two exchanges compared (a replay and its original, or any two): the plan's Diffs table.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Experiment",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                (
                    "finished_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("status", fields.CharField(max_length=16)),
                ("selection", fields.TextField(unique=False)),
                ("overrides", fields.TextField(unique=False)),
                ("repeat", fields.IntField(default=1)),
                ("concurrency", fields.IntField(default=4)),
                ("total", fields.IntField(default=0)),
            ],
            options={
                "table": "experiments",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A set of exchanges replayed with one set of overrides, in the background.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ExperimentRow",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("experiment_id", fields.BigIntField()),
                ("position", fields.IntField()),
                ("repeat_index", fields.IntField(default=0)),
                ("exchange_id", fields.BigIntField()),
                ("replay_id", fields.BigIntField(null=True)),
                ("diff_id", fields.BigIntField(null=True)),
                ("status", fields.CharField(max_length=16)),
                ("error", fields.TextField(null=True, unique=False)),
                ("similarity", fields.FloatField(null=True)),
                ("identical", fields.BooleanField(null=True)),
                ("tool_calls_before", fields.IntField(null=True)),
                ("tool_calls_differing", fields.IntField(null=True)),
                ("tokens_before", fields.IntField(null=True)),
                ("tokens_after", fields.IntField(null=True)),
                ("cost_before", fields.FloatField(null=True)),
                ("cost_after", fields.FloatField(null=True)),
                ("latency_before", fields.FloatField(null=True)),
                ("latency_after", fields.FloatField(null=True)),
                ("output_hash", fields.CharField(null=True, max_length=64)),
            ],
            options={
                "table": "experiment_rows",
                "app": "models",
                "indexes": [Index(fields=["experiment_id", "position", "repeat_index"])],
                "pk_attr": "id",
                "table_description": "One replay of an experiment: the original, its replay, their diff and the deltas.",
            },
            bases=["Model"],
        ),
        ops.RunPython(forward, backward),
    ]
