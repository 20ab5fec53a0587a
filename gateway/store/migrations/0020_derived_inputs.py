"""Fewer rows per call: a chat step's new input messages that are exactly its request's
messages from `carried` on are not stored as rows; its memory snapshot says so
(`inputs_from = "request"`) and reading a run derives them (gateway/store/run_refs.py).

Existing rows keep their message rows (`inputs_from` null) and are read as they are.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0018_campaigns")]

    initial = False

    operations = [
        ops.AddField(
            model_name="MemorySnapshot",
            name="inputs_from",
            field=fields.CharField(null=True, max_length=8),
        ),
    ]
