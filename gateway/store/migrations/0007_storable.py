"""Every value storable: exchanges record what was clipped to fit, and a quarantine table
holds the records the database still refused (see gateway/storable.py, gateway/quarantine.py).
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0006_lz4")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Exchange",
            name="clipped",
            field=fields.TextField(null=True, unique=False),
        ),
        ops.CreateModel(
            name="Quarantine",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("captured_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("quarantined_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("error", fields.TextField(unique=False)),
                ("size_bytes", fields.BigIntField()),
                ("record", fields.BinaryField()),
            ],
            options={
                "table": "quarantine",
                "app": "models",
                "pk_attr": "id",
                "table_description": "Capture records the database refused.",
            },
            bases=["Model"],
        ),
    ]
