"""Datasets and judges. Datasets: named, versioned sets of items (input, expected output, metadata). An item is
stored once with the version it was added in and the one it was removed in, so every
version stays readable without copying the items it shares with the others. Judges: LLM
judge definitions in Mistral's Observability shape, kept as given; an evaluation's detail
(a judge's analysis, answer and cost).
"""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops


def _id() -> fields.BigIntField:
    return fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)


def _time() -> fields.DatetimeField:
    return fields.DatetimeField(auto_now=False, auto_now_add=False)


class Migration(migrations.Migration):
    dependencies = [("models", "0012_shared_grouping")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Dataset",
            fields=[
                ("id", _id()),
                ("name", fields.CharField(unique=True, max_length=200)),
                ("description", fields.TextField(default="", unique=False)),
                ("version", fields.IntField(default=0)),
                ("created_at", _time()),
                ("updated_at", _time()),
            ],
            options={
                "table": "datasets",
                "app": "models",
                "pk_attr": "id",
                "table_description": "A named, versioned set of items (see gateway/store/datasets.py): `version` is the",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="DatasetVersion",
            fields=[
                ("id", _id()),
                ("dataset_id", fields.BigIntField()),
                ("version", fields.IntField()),
                ("created_at", _time()),
                ("source", fields.CharField(max_length=16)),
                ("added", fields.IntField(default=0)),
                ("removed", fields.IntField(default=0)),
                ("item_count", fields.IntField(default=0)),
            ],
            options={
                "table": "dataset_versions",
                "app": "models",
                "unique_together": (("dataset_id", "version"),),
                "pk_attr": "id",
                "table_description": "What made each version of a dataset: its source and how many items came and went.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="DatasetItem",
            fields=[
                ("id", _id()),
                ("dataset_id", fields.BigIntField()),
                ("added_in", fields.IntField()),
                ("removed_in", fields.IntField(null=True)),
                ("input", fields.TextField(unique=False)),
                ("expected_output", fields.TextField(null=True, unique=False)),
                ("metadata", fields.TextField(unique=False)),
                ("source_exchange_id", fields.BigIntField(null=True)),
                ("source_run_id", fields.BigIntField(null=True)),
            ],
            options={
                "table": "dataset_items",
                "app": "models",
                "indexes": [Index(fields=["dataset_id", "id"])],
                "pk_attr": "id",
                "table_description": "One item, stored once: in every version from `added_in` up to (not including)",
            },
            bases=["Model"],
        ),
        ops.AddField(model_name="Evaluation", name="detail", field=fields.TextField(null=True)),
        ops.CreateModel(
            name="Judge",
            fields=[
                ("id", _id()),
                ("name", fields.CharField(unique=True, max_length=50)),
                ("definition", fields.TextField(unique=False)),
                ("created_at", _time()),
            ],
            options={
                "table": "judges",
                "app": "models",
                "pk_attr": "id",
                "table_description": "An LLM judge, kept as defined: Mistral's Observability judge shape (see",
            },
            bases=["Model"],
        ),
    ]
