"""Campaigns: a judge run over a saved search of recorded calls (gateway/store/campaigns.py)."""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("models", "0017_budgets")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Campaign",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("name", fields.CharField(max_length=200)),
                ("description", fields.TextField(default="", unique=False)),
                ("judge", fields.TextField(unique=False)),
                ("search", fields.TextField(unique=False)),
                ("max_nb_events", fields.IntField()),
                ("mode", fields.CharField(max_length=8)),
                ("status", fields.CharField(max_length=16)),
                ("seen_id", fields.BigIntField(default=0)),
                ("selected", fields.IntField(default=0)),
                ("scored", fields.IntField(default=0)),
                ("failed", fields.IntField(default=0)),
                ("score_sum", fields.FloatField(default=0)),
                ("error", fields.TextField(null=True, unique=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={"table": "campaigns", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CampaignCall",
            fields=[
                (
                    "key",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=48),
                ),
                ("campaign_id", fields.BigIntField(db_index=True)),
            ],
            options={"table": "campaign_calls", "app": "models", "pk_attr": "key"},
            bases=["Model"],
        ),
    ]
