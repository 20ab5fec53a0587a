"""Failures and missing prices that show: an exchange's `error_type` and `error_code` beside
its `error`, and a run's `error_count` and `unpriced_calls` (a missing price is never $0).

Existing runs are counted from their exchanges; existing failed calls without an error get
"HTTP <status>" or "call ended <state>" (their bodies are not parsed again), so `error IS NOT
NULL` is the list's "errors only" filter, on a partial index.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

FAILED = "(e.status >= 400 OR e.state <> 'complete' OR e.error IS NOT NULL)"
UNPRICED = "(e.cost_usd IS NULL AND e.model IS NOT NULL AND e.status < 400)"
STATEMENTS = (
    "UPDATE exchanges SET error = 'HTTP ' || CAST(status AS TEXT), error_type = 'http_error' "
    "WHERE status >= 400 AND error IS NULL",
    "UPDATE exchanges SET error = 'call ended ' || REPLACE(state, '_', ' '), error_type = state "
    "WHERE state <> 'complete' AND error IS NULL",
    # the list's "errors only": failed calls are rare, so the index is partial
    "CREATE INDEX IF NOT EXISTS exchanges_failed ON exchanges (id) WHERE error IS NOT NULL",
    f"UPDATE runs SET error_count = (SELECT COUNT(*) FROM exchanges e WHERE e.run_id = runs.id "
    f"AND {FAILED}), unpriced_calls = (SELECT COUNT(*) FROM exchanges e "
    f"WHERE e.run_id = runs.id AND {UNPRICED})",
)


async def forward(apps, schema_editor) -> None:
    for statement in STATEMENTS:
        await schema_editor.client.execute_script(statement)


async def backward(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DROP INDEX IF EXISTS exchanges_failed")


class Migration(migrations.Migration):
    dependencies = [("models", "0010_body_deltas")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Exchange",
            name="error_type",
            field=fields.CharField(null=True, max_length=64),
        ),
        ops.AddField(
            model_name="Exchange",
            name="error_code",
            field=fields.CharField(null=True, max_length=64),
        ),
        ops.AddField(
            model_name="Run", name="error_count", field=fields.IntField(default=0, db_default=0)
        ),
        ops.AddField(
            model_name="Run", name="unpriced_calls", field=fields.IntField(default=0, db_default=0)
        ),
        ops.RunPython(forward, backward),
    ]
