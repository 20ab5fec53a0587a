from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="Exchange",
            fields=[
                ("id", fields.BigIntField(primary_key=True, unique=True, db_index=True)),
                ("started_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("provider", fields.CharField(default="mistral", max_length=32)),
                ("method", fields.CharField(max_length=16)),
                ("path", fields.TextField(unique=False)),
                ("client_path", fields.TextField(unique=False)),
                ("query", fields.TextField(default="", unique=False)),
                ("status", fields.IntField(null=True)),
                ("model", fields.CharField(null=True, max_length=200)),
                ("request_model", fields.CharField(null=True, max_length=200)),
                ("endpoint", fields.CharField(max_length=32)),
                ("streamed", fields.BooleanField(default=False)),
                ("state", fields.CharField(max_length=32)),
                ("error", fields.TextField(null=True, unique=False)),
                ("prompt_tokens", fields.IntField(null=True)),
                ("completion_tokens", fields.IntField(null=True)),
                ("total_tokens", fields.IntField(null=True)),
                ("cached_tokens", fields.IntField(null=True)),
                ("connector_tokens", fields.IntField(null=True)),
                ("units", fields.TextField(null=True, unique=False)),
                ("finish_reason", fields.CharField(null=True, max_length=64)),
                ("output_text", fields.TextField(null=True, unique=False)),
                ("cost_usd", fields.FloatField(null=True)),
                ("latency_ms", fields.FloatField(null=True)),
                ("ttfb_ms", fields.FloatField(null=True)),
                ("ttft_ms", fields.FloatField(null=True)),
                ("correlation_id", fields.CharField(null=True, db_index=True, max_length=200)),
                ("key_fingerprint", fields.CharField(null=True, max_length=64)),
                ("truncated", fields.BooleanField(default=False)),
                ("parse_error", fields.BooleanField(default=False)),
                ("omitted", fields.BooleanField(default=False)),
                ("run_id", fields.BigIntField(null=True)),
                ("replay_of", fields.BigIntField(null=True)),
            ],
            options={"table": "exchanges", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="ExchangeBody",
            fields=[
                ("exchange_id", fields.BigIntField(primary_key=True, unique=True, db_index=True)),
                ("request_headers", fields.TextField(unique=False)),
                ("request_body", fields.TextField(null=True, unique=False)),
                ("request_body_encoding", fields.CharField(max_length=8)),
                ("response_headers", fields.TextField(unique=False)),
                ("response_body", fields.TextField(null=True, unique=False)),
                ("response_body_encoding", fields.CharField(max_length=8)),
            ],
            options={"table": "exchange_bodies", "app": "models", "pk_attr": "exchange_id"},
            bases=["Model"],
        ),
    ]
