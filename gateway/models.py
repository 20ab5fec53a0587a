"""The database schema, as Tortoise models; migrations in gateway/migrations are made from it.

Exchanges hold the indexed, extracted columns the list and dashboards query; the bulky
headers and bodies live in exchange_bodies so list scans stay small (simonw/llm's layout).
Indexes for the list filters are composite (filter, id) and partial where a value is rare:
see migrations/0002_indexes_and_search.py.
"""

from tortoise import fields
from tortoise.models import Model


class Exchange(Model):
    id = fields.BigIntField(primary_key=True, generated=False)
    started_at = fields.DatetimeField()
    provider = fields.CharField(max_length=32, default="mistral")
    method = fields.CharField(max_length=16)
    path = fields.TextField()
    client_path = fields.TextField()
    query = fields.TextField(default="")
    status = fields.IntField(null=True)
    model = fields.CharField(max_length=200, null=True)
    request_model = fields.CharField(max_length=200, null=True)
    endpoint = fields.CharField(max_length=32)
    streamed = fields.BooleanField(default=False)
    state = fields.CharField(max_length=32)
    error = fields.TextField(null=True)
    prompt_tokens = fields.IntField(null=True)
    completion_tokens = fields.IntField(null=True)
    total_tokens = fields.IntField(null=True)
    cached_tokens = fields.IntField(null=True)
    connector_tokens = fields.IntField(null=True)
    units = fields.TextField(null=True)  # JSON: pages, audio_seconds, characters
    finish_reason = fields.CharField(max_length=64, null=True)
    output_text = fields.TextField(null=True)
    cost_usd = fields.FloatField(null=True)
    latency_ms = fields.FloatField(null=True)
    ttfb_ms = fields.FloatField(null=True)
    ttft_ms = fields.FloatField(null=True)
    correlation_id = fields.CharField(max_length=200, null=True, db_index=True)
    key_fingerprint = fields.CharField(max_length=64, null=True)
    truncated = fields.BooleanField(default=False)
    parse_error = fields.BooleanField(default=False)
    omitted = fields.BooleanField(default=False)
    run_id = fields.BigIntField(null=True)
    replay_of = fields.BigIntField(null=True)

    class Meta:
        table = "exchanges"


class ExchangeBody(Model):
    exchange_id = fields.BigIntField(primary_key=True, generated=False)
    request_headers = fields.TextField()  # JSON list of [name, value], redacted
    request_body = fields.TextField(null=True)
    request_body_encoding = fields.CharField(max_length=8)  # json, text, base64, omitted
    response_headers = fields.TextField()
    response_body = fields.TextField(null=True)
    response_body_encoding = fields.CharField(max_length=8)

    class Meta:
        table = "exchange_bodies"
