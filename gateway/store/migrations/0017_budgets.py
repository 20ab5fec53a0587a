"""Budgets: spend limits per scope and calendar period (gateway/store/budgets.py)."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0016_cost_category")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Budget",
            fields=[
                ("id", fields.BigIntField(primary_key=True)),
                ("name", fields.CharField(max_length=200, unique=True)),
                ("scope_kind", fields.CharField(max_length=16)),
                ("scope_value", fields.CharField(max_length=200, null=True)),
                ("period", fields.CharField(max_length=8)),
                ("limit_usd", fields.FloatField()),
                ("hard", fields.BooleanField(default=False)),
                ("created_at", fields.DatetimeField()),
            ],
            options={"table": "budgets", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
    ]
