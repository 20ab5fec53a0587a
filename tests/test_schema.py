"""One source for the schema: the Tortoise models in gateway/store/models.py. The committed
migrations must build exactly what the models describe (the check `makemigrations --check`
would make), on SQLite and PostgreSQL alike; the store's column lists and the capture's rows
are read from, or checked against, the same models."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from gateway.capture import storable
from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.capture.rows import build_rows
from gateway.providers import make_providers
from gateway.settings import Settings
from gateway.store import models
from gateway.store.exchanges import BODY_COLUMNS, EXCHANGE_COLUMNS, Store


def model_classes() -> list[type[Model]]:
    return [
        v
        for v in vars(models).values()
        if isinstance(v, type) and issubclass(v, Model) and v.__module__ == models.__name__
    ]


def described(model: type[Model]) -> dict[str, tuple[bool, int | None]]:
    """column -> (nullable, max length) as the model says."""
    out = {}
    for name, field in model._meta.fields_map.items():
        length = int(field.max_length) if isinstance(field, fields.CharField) else None
        out[field.source_field or name] = (bool(field.null), length)
    return out


async def built(store: Store, table: str) -> dict[str, tuple[bool, int | None]]:
    """column -> (nullable, max length) as the migrations built it."""
    if store.dialect == "sqlite":
        rows = await store.rows(f"PRAGMA table_info({table})")
        # SQLite keeps the declared type (VARCHAR(200)) but enforces no length
        return {r["name"]: (not r["notnull"] and not r["pk"], _length(r["type"])) for r in rows}
    rows = await store.rows(
        "SELECT column_name, is_nullable, character_maximum_length FROM "
        "information_schema.columns WHERE table_name = ? AND table_schema = 'public'",
        [table],
    )
    return {
        r["column_name"]: (r["is_nullable"] == "YES", r["character_maximum_length"]) for r in rows
    }


def _length(declared: str) -> int | None:
    if declared.upper().startswith("VARCHAR("):
        return int(declared[8:-1])
    return None


async def test_migrations_build_what_the_models_describe(blank_db_url: str):
    store = Store(blank_db_url)
    await store.open()
    try:
        tables = model_classes()
        assert len(tables) >= 12
        for model in tables:
            table = model._meta.db_table
            assert await built(store, table) == described(model), table
    finally:
        await store.close()


def test_the_store_and_capture_use_the_models_columns():
    assert set(EXCHANGE_COLUMNS) == set(described(models.Exchange))
    assert set(BODY_COLUMNS) == set(described(models.ExchangeBody))
    assert set(storable.SCHEMA) == {m._meta.db_table for m in model_classes()}
    record = Exchange(
        id=new_id(),
        started_at=1.8e9,
        method="POST",
        client_path="/v1/x",
        path="/v1/x",
        query="",
        request_headers=[],
        request_body=b"{}",
    )
    rows = build_rows(record, make_providers(Settings())["mistral"], PriceTable.load(None), 1000)
    assert set(rows.exchange) == set(EXCHANGE_COLUMNS)
    # the store keeps the bodies (and the output text) as one frame: gateway/store/bodies.py
    encoded = {"data", "data_base"}
    assert set(rows.bodies) | encoded == set(BODY_COLUMNS)
