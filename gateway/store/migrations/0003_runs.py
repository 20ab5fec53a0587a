from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0002_indexes_and_search")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Evaluation",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("run_id", fields.BigIntField(null=True, db_index=True)),
                ("exchange_id", fields.BigIntField(null=True, db_index=True)),
                ("metric_name", fields.CharField(max_length=200)),
                ("metric_value", fields.FloatField()),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={"table": "evaluations", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="MemorySnapshot",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("run_id", fields.BigIntField()),
                ("exchange_id", fields.BigIntField(db_index=True)),
                ("step", fields.IntField()),
                ("taken_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("carried", fields.IntField()),
                ("appended", fields.TextField(unique=False)),
            ],
            options={
                "table": "memory_snapshots",
                "app": "models",
                "indexes": [Index(fields=["run_id", "step"])],
                "pk_attr": "id",
                "table_description": "The state carried forward after a step, stored as a delta: the first `carried` items of",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Message",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("run_id", fields.BigIntField()),
                ("exchange_id", fields.BigIntField(db_index=True)),
                ("step", fields.IntField()),
                ("position", fields.IntField()),
                ("direction", fields.CharField(max_length=4)),
                ("role", fields.CharField(null=True, max_length=32)),
                ("content", fields.TextField(null=True, unique=False)),
                ("tool_calls", fields.TextField(null=True, unique=False)),
                ("tool_call_id", fields.CharField(null=True, max_length=200)),
                ("finish_reason", fields.CharField(null=True, max_length=64)),
                ("prompt_tokens", fields.IntField(null=True)),
                ("completion_tokens", fields.IntField(null=True)),
            ],
            options={
                "table": "messages",
                "app": "models",
                "indexes": [Index(fields=["run_id", "step", "position"])],
                "pk_attr": "id",
                "table_description": "A message as it first appeared in a run (inputs new at that step, and the output).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Run",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("name", fields.CharField(null=True, max_length=200)),
                ("agent_id", fields.CharField(null=True, max_length=200)),
                ("user", fields.CharField(null=True, max_length=200)),
                ("tags", fields.TextField(null=True, unique=False)),
                ("source", fields.CharField(max_length=16)),
                ("started_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("last_seen_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("ended_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("status", fields.CharField(default="running", max_length=16)),
                ("last_failed", fields.BooleanField(default=False)),
                ("exchange_count", fields.IntField(default=0)),
                ("prompt_tokens", fields.BigIntField(default=0)),
                ("completion_tokens", fields.BigIntField(default=0)),
                ("total_tokens", fields.BigIntField(default=0)),
                ("total_cost_usd", fields.FloatField(default=0)),
                ("config", fields.TextField(null=True, unique=False)),
            ],
            options={
                "table": "runs",
                "app": "models",
                "indexes": [
                    Index(fields=["name", "id"]),
                    Index(fields=["agent_id", "id"]),
                    Index(fields=["user", "id"]),
                    Index(fields=["ended_at", "id"]),
                ],
                "pk_attr": "id",
                "table_description": "One agent task: the exchanges that belong together, assembled from the traffic.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RunConversation",
            fields=[
                (
                    "conversation_id",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=200),
                ),
                ("run_id", fields.BigIntField(db_index=True)),
            ],
            options={"table": "run_conversations", "app": "models", "pk_attr": "conversation_id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ToolCall",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("run_id", fields.BigIntField()),
                ("exchange_id", fields.BigIntField(db_index=True)),
                ("step", fields.IntField()),
                ("call_id", fields.CharField(null=True, max_length=200)),
                ("tool_name", fields.CharField(null=True, max_length=200)),
                ("kind", fields.CharField(max_length=16)),
                ("args", fields.TextField(null=True, unique=False)),
                ("return_value", fields.TextField(null=True, unique=False)),
                ("result_exchange_id", fields.BigIntField(null=True)),
                ("asked_at_ms", fields.FloatField(null=True)),
                ("latency_ms", fields.FloatField(null=True)),
            ],
            options={
                "table": "tool_calls",
                "app": "models",
                "indexes": [Index(fields=["run_id", "call_id"])],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Exchange",
            name="parent_id",
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name="Exchange",
            name="run_source",
            field=fields.CharField(null=True, max_length=16),
        ),
        ops.AddField(
            model_name="Exchange",
            name="step",
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name="Exchange",
            name="thread_key",
            field=fields.CharField(null=True, max_length=32),
        ),
    ]
