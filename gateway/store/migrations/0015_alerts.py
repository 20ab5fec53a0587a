"""Alert rules and the alerts they raised (gateway/store/alerts.py)."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0013_datasets")]

    initial = False

    operations = [
        ops.CreateModel(
            name="AlertRule",
            fields=[
                (
                    "id",
                    fields.IntField(generated=True, primary_key=True, unique=True, db_index=True),
                ),
                ("name", fields.CharField(max_length=200)),
                ("kind", fields.CharField(max_length=32)),
                ("scope_kind", fields.CharField(default="gateway", max_length=16)),
                ("scope_value", fields.CharField(null=True, max_length=200)),
                ("window_seconds", fields.IntField()),
                ("threshold", fields.FloatField()),
                ("baseline_windows", fields.IntField(default=24)),
                ("min_calls", fields.IntField(default=1)),
                ("webhook_url", fields.TextField(null=True, unique=False)),
                ("webhook_format", fields.CharField(default="json", max_length=8)),
                ("enabled", fields.BooleanField(default=True)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={"table": "alert_rules", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Alert",
            fields=[
                (
                    "id",
                    fields.IntField(generated=True, primary_key=True, unique=True, db_index=True),
                ),
                ("rule_id", fields.IntField(db_index=True)),
                ("state", fields.CharField(max_length=16)),
                ("started_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                (
                    "resolved_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("value", fields.FloatField()),
                ("threshold", fields.FloatField()),
                ("detail", fields.TextField(null=True, unique=False)),
                ("open_rule", fields.IntField(null=True, unique=True)),
            ],
            options={"table": "alerts", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
    ]
