"""Database rows as the two drivers return them (SQLite: times as text, booleans as 0/1;
PostgreSQL: datetimes and booleans), for tests of the records the store builds from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

AT = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)


def _time(value: datetime | None, dialect: str) -> Any:
    if value is None or dialect == "postgres":
        return value
    return value.isoformat(sep=" ")  # what Store._time writes, and SQLite gives back


def _flag(value: bool, dialect: str) -> Any:
    return value if dialect == "postgres" else int(value)


def exchange_row(dialect: str = "sqlite", **values: Any) -> dict[str, Any]:
    """A row of `exchanges e LEFT JOIN exchange_bodies b`, in the table's column order."""
    row: dict[str, Any] = {
        "id": 387356712376254464,
        "started_at": _time(values.pop("started_at", AT), dialect),
        "provider": "mistral",
        "method": "POST",
        "path": "/v1/chat/completions",
        "client_path": "/v1/chat/completions",
        "query": "",
        "status": 200,
        "model": "mistral-small-latest",
        "request_model": "mistral-small-latest",
        "endpoint": "chat",
        "streamed": _flag(values.pop("streamed", False), dialect),
        "state": "complete",
        "error": None,
        "error_type": None,
        "error_code": None,
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "total_tokens": 10,
        "cached_tokens": None,
        "connector_tokens": None,
        "units": None,
        "finish_reason": "stop",
        "output_text": "hello",
        "cost_usd": 0.5,
        "latency_ms": 100.0,
        "ttfb_ms": 90.0,
        "ttft_ms": None,
        "correlation_id": None,
        "key_fingerprint": None,
        "truncated": _flag(values.pop("truncated", False), dialect),
        "parse_error": _flag(values.pop("parse_error", False), dialect),
        "omitted": _flag(values.pop("omitted", False), dialect),
        "run_id": None,
        "replay_of": None,
        "parent_id": None,
        "run_source": None,
        "step": None,
        "thread_key": None,
        "clipped": None,
        "preview": None,
        "request_headers": orjson.dumps([["Content-Type", "application/json"]]).decode(),
        "request_body": '{"model": "mistral-small-latest", "messages": []}',
        "request_body_encoding": "json",
        "response_headers": "[]",
        "response_body": None,
        "response_body_encoding": "json",
    }
    unknown = set(values) - set(row)
    assert not unknown, f"not exchange columns: {unknown}"
    row.update(values)
    return row


def run_row(dialect: str = "sqlite", **values: Any) -> dict[str, Any]:
    """A row of `runs` as the store selects it (RUN_SELECT, then config)."""
    row: dict[str, Any] = {
        "id": 387356712848797697,
        "name": "nightly-eval",
        "agent_id": None,
        "user": None,
        "tags": None,
        "source": "prefix",
        "started_at": _time(values.pop("started_at", AT), dialect),
        "last_seen_at": _time(values.pop("last_seen_at", AT), dialect),
        "ended_at": _time(values.pop("ended_at", None), dialect),
        "status": "running",
        "exchange_count": 2,
        "prompt_tokens": 8,
        "completion_tokens": 12,
        "total_tokens": 20,
        "total_cost_usd": 1.0,
        "config": None,
    }
    unknown = set(values) - set(row)
    assert not unknown, f"not run columns: {unknown}"
    row.update(values)
    return row
