"""Cost categories: every exchange's cost is for an `llm` call, a `tool` call (ElevenLabs)
or `fine-tuning` (Mistral's /v1/fine_tuning/jobs); the rollups count each category
(dimension `category`) so /api/stats totals carry cost_by_category. And the models the
fine-tuning loop made (`agentops-studio finetune`), for experiments to select.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

from gateway.store.rollups import backfill_sql

# Existing rows: llm for Mistral's calls, tool for ElevenLabs' (their costs are unchanged).
STATEMENTS = ("UPDATE exchanges SET category = 'tool' WHERE provider = 'elevenlabs'",)


async def forward(apps, schema_editor) -> None:
    for statement in (*STATEMENTS, *backfill_sql(dims=("category",))):
        await schema_editor.client.execute_script(statement)


async def backward(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DELETE FROM rollups WHERE dim = 'category'")


class Migration(migrations.Migration):
    dependencies = [("models", "0015_alerts")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Exchange",
            name="category",
            field=fields.CharField(default="llm", db_default="llm", max_length=16),
        ),
        ops.CreateModel(
            name="FineTunedModel",
            fields=[
                ("name", fields.CharField(primary_key=True, max_length=200)),
                ("base_model", fields.CharField(max_length=200)),
                ("job_id", fields.CharField(max_length=200)),
                ("run_id", fields.BigIntField(null=True)),
                ("trained_tokens", fields.BigIntField(null=True)),
                ("cost_usd", fields.FloatField(null=True)),
                ("examples", fields.IntField(default=0)),
                ("created_at", fields.DatetimeField()),
            ],
            options={"table": "fine_tuned_models", "app": "models", "pk_attr": "name"},
            bases=["Model"],
        ),
        ops.RunPython(forward, backward),
    ]
