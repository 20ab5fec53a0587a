"""Rollups that /api/stats can read (see gateway/store/stats.py): a count of interrupted calls,
and the `provider` and `nomodel` dimensions. Every rollup row is rebuilt from the exchanges
already stored (one GROUP BY over the table: about ten seconds a million exchanges), so an
upgraded database answers /api/stats from its first request. 0004 left the backfill to here.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops

from gateway.store.rollups import backfill_sql


async def rebuild(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("DELETE FROM rollups")
    for statement in backfill_sql():
        await schema_editor.client.execute_script(statement)


async def forget(apps, schema_editor) -> None:
    await schema_editor.client.execute_script(
        "DELETE FROM rollups WHERE dim IN ('provider', 'nomodel')"
    )


class Migration(migrations.Migration):
    dependencies = [("models", "0008_preview")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Rollup",
            name="interrupted",
            field=fields.BigIntField(default=0, db_default=0),
        ),
        ops.RunPython(rebuild, forget),
    ]
