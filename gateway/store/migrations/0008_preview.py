"""The list's preview of each call, made once by the writer (older rows keep null: the list
parses their request body as before)."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0007_storable")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Exchange",
            name="preview",
            field=fields.TextField(null=True, unique=False),
        ),
    ]
