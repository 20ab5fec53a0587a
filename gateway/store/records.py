"""Stored records as the store reads them back: one frozen dataclass per kind of row.

Each is built in one place from a database row (`from_row`: SQLite's text times and 0/1
booleans, PostgreSQL's datetimes and booleans, JSON columns decoded) and turned into the
API's JSON in one place (`to_json`: ids as strings, times as ISO-8601 with a Z). Everything
between the two (pages, replay, export) reads typed attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal, Self

import orjson

Side = Literal["request", "response"]
Row = Mapping[str, Any]  # one database row, as the driver returns it
Headers = tuple[tuple[str, str], ...]


# -- values as the two databases return them ------------------------------------------------------


def iso_z(value: datetime) -> str:
    """ISO-8601 UTC with a Z, millisecond precision."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_time(value: Any) -> str | None:
    """A stored time (a datetime, or SQLite's text) as ISO-8601 UTC with a Z."""
    at = _opt_time(value)
    return None if at is None else iso_z(at)


def _opt_time(value: Any) -> datetime | None:
    """A time column: PostgreSQL gives a datetime, SQLite its text."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"not a stored time: {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _time(value: Any) -> datetime:
    at = _opt_time(value)
    if at is None:
        raise TypeError("a required time column is null")
    return at


def _opt_iso(value: datetime | None) -> str | None:
    return None if value is None else iso_z(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _id_text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _json(text: Any) -> Any:
    """A JSON column, parsed (None stays None)."""
    return None if text is None else orjson.loads(text)


def _headers(text: Any) -> Headers:
    """Stored headers (a JSON list of [name, value]); a missing or unreadable list is empty."""
    try:
        pairs = orjson.loads(text) if text else []
    except orjson.JSONDecodeError:
        pairs = []
    return tuple((str(name), str(value)) for name, value in pairs)


def decode_body(text: str | None, encoding: str | None) -> Any:
    """A stored body as the API shows it: JSON (and audio digests) parsed, the rest as text."""
    if text is None:
        return None
    if encoding in ("json", "digest"):  # digest: an audio body's type, size and SHA-256
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


# -- exchanges ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExchangeSummary:
    """One exchange as lists show it (/api/exchanges, a run's steps): no bodies, no headers."""

    preview: str | None  # null in rows older than previews
    omitted: bool
    id: int
    started_at: datetime
    method: str
    path: str
    status: int | None
    model: str | None
    endpoint: str
    streamed: bool
    state: str
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cost_usd: float | None
    latency_ms: float | None
    ttfb_ms: float | None
    ttft_ms: float | None
    run_id: int | None
    error: str | None
    replay_of: int | None
    provider: str

    @classmethod
    def from_row(cls, row: Row) -> Self:
        return cls(
            preview=_opt_str(row["preview"]),
            omitted=bool(row["omitted"]),
            id=int(row["id"]),
            started_at=_time(row["started_at"]),
            method=str(row["method"]),
            path=str(row["path"]),
            status=_opt_int(row["status"]),
            model=_opt_str(row["model"]),
            endpoint=str(row["endpoint"]),
            streamed=bool(row["streamed"]),
            state=str(row["state"]),
            prompt_tokens=_opt_int(row["prompt_tokens"]),
            completion_tokens=_opt_int(row["completion_tokens"]),
            total_tokens=_opt_int(row["total_tokens"]),
            cost_usd=_opt_float(row["cost_usd"]),
            latency_ms=_opt_float(row["latency_ms"]),
            ttfb_ms=_opt_float(row["ttfb_ms"]),
            ttft_ms=_opt_float(row["ttft_ms"]),
            run_id=_opt_int(row["run_id"]),
            error=_opt_str(row["error"]),
            replay_of=_opt_int(row["replay_of"]),
            provider=str(row["provider"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "preview": self.preview,
            "omitted": self.omitted,
            "id": str(self.id),
            "started_at": iso_z(self.started_at),
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "model": self.model,
            "endpoint": self.endpoint,
            "streamed": self.streamed,
            "state": self.state,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "ttfb_ms": self.ttfb_ms,
            "ttft_ms": self.ttft_ms,
            "run_id": _id_text(self.run_id),
            "error": self.error,
            "replay_of": _id_text(self.replay_of),
            "provider": self.provider,
        }


LIST_COLUMNS = tuple(f.name for f in fields(ExchangeSummary))  # what the list reads of a row


@dataclass(frozen=True, slots=True)
class StoredExchange:
    """One exchange with every column, its headers and its bodies as stored (the body text is
    kept as stored: `decoded_body` gives what the API shows, `stored.stored_body` the bytes
    to parse again)."""

    id: int
    started_at: datetime
    provider: str
    method: str
    path: str
    client_path: str
    query: str
    status: int | None
    model: str | None
    request_model: str | None
    endpoint: str
    streamed: bool
    state: str
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    connector_tokens: int | None
    units: Any  # parsed JSON: pages, audio_seconds, characters, credits
    finish_reason: str | None
    output_text: str | None
    cost_usd: float | None
    latency_ms: float | None
    ttfb_ms: float | None
    ttft_ms: float | None
    correlation_id: str | None
    key_fingerprint: str | None
    truncated: bool
    parse_error: bool
    omitted: bool
    run_id: int | None
    replay_of: int | None
    parent_id: int | None
    run_source: str | None
    step: int | None
    thread_key: str | None
    clipped: dict[str, int]  # {"field": original length} of values clipped to fit
    preview: str | None
    request_headers: Headers
    request_body: str | None
    request_body_encoding: str | None
    response_headers: Headers
    response_body: str | None
    response_body_encoding: str | None

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """A row of `exchanges e LEFT JOIN exchange_bodies b` (e.* and b's six columns)."""
        units = row["units"]
        return cls(
            id=int(row["id"]),
            started_at=_time(row["started_at"]),
            provider=str(row["provider"]),
            method=str(row["method"]),
            path=str(row["path"]),
            client_path=str(row["client_path"]),
            query=str(row["query"]),
            status=_opt_int(row["status"]),
            model=_opt_str(row["model"]),
            request_model=_opt_str(row["request_model"]),
            endpoint=str(row["endpoint"]),
            streamed=bool(row["streamed"]),
            state=str(row["state"]),
            error=_opt_str(row["error"]),
            prompt_tokens=_opt_int(row["prompt_tokens"]),
            completion_tokens=_opt_int(row["completion_tokens"]),
            total_tokens=_opt_int(row["total_tokens"]),
            cached_tokens=_opt_int(row["cached_tokens"]),
            connector_tokens=_opt_int(row["connector_tokens"]),
            units=orjson.loads(units) if units else units,
            finish_reason=_opt_str(row["finish_reason"]),
            output_text=_opt_str(row["output_text"]),
            cost_usd=_opt_float(row["cost_usd"]),
            latency_ms=_opt_float(row["latency_ms"]),
            ttfb_ms=_opt_float(row["ttfb_ms"]),
            ttft_ms=_opt_float(row["ttft_ms"]),
            correlation_id=_opt_str(row["correlation_id"]),
            key_fingerprint=_opt_str(row["key_fingerprint"]),
            truncated=bool(row["truncated"]),
            parse_error=bool(row["parse_error"]),
            omitted=bool(row["omitted"]),
            run_id=_opt_int(row["run_id"]),
            replay_of=_opt_int(row["replay_of"]),
            parent_id=_opt_int(row["parent_id"]),
            run_source=_opt_str(row["run_source"]),
            step=_opt_int(row["step"]),
            thread_key=_opt_str(row["thread_key"]),
            clipped=orjson.loads(row["clipped"]) if row["clipped"] else {},
            preview=_opt_str(row["preview"]),
            request_headers=_headers(row["request_headers"]),
            request_body=_opt_str(row["request_body"]),
            request_body_encoding=_opt_str(row["request_body_encoding"]),
            response_headers=_headers(row["response_headers"]),
            response_body=_opt_str(row["response_body"]),
            response_body_encoding=_opt_str(row["response_body_encoding"]),
        )

    def headers(self, side: Side) -> Headers:
        return self.request_headers if side == "request" else self.response_headers

    def body(self, side: Side) -> tuple[str | None, str | None]:
        """`side`'s stored body text and its encoding (json, text, base64, digest, omitted)."""
        if side == "request":
            return self.request_body, self.request_body_encoding
        return self.response_body, self.response_body_encoding

    def decoded_body(self, side: Side) -> Any:
        """`side`'s body as the API shows it: JSON parsed, the rest as text."""
        return decode_body(*self.body(side))

    def summary(self) -> ExchangeSummary:
        """The exchange as the list shows it."""
        return ExchangeSummary(**{name: getattr(self, name) for name in LIST_COLUMNS})

    def columns_json(self) -> dict[str, Any]:
        """The exchange's own columns as the API shows them (without headers and bodies)."""
        return {
            "id": str(self.id),
            "started_at": iso_z(self.started_at),
            "provider": self.provider,
            "method": self.method,
            "path": self.path,
            "client_path": self.client_path,
            "query": self.query,
            "status": self.status,
            "model": self.model,
            "request_model": self.request_model,
            "endpoint": self.endpoint,
            "streamed": self.streamed,
            "state": self.state,
            "error": self.error,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "connector_tokens": self.connector_tokens,
            "units": self.units,
            "finish_reason": self.finish_reason,
            "output_text": self.output_text,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "ttfb_ms": self.ttfb_ms,
            "ttft_ms": self.ttft_ms,
            "correlation_id": self.correlation_id,
            "key_fingerprint": self.key_fingerprint,
            "truncated": self.truncated,
            "parse_error": self.parse_error,
            "omitted": self.omitted,
            "run_id": _id_text(self.run_id),
            "replay_of": _id_text(self.replay_of),
            "parent_id": self.parent_id,
            "run_source": self.run_source,
            "step": self.step,
            "thread_key": self.thread_key,
            "clipped": self.clipped,
            "preview": self.preview,
        }

    def to_json(self) -> dict[str, Any]:
        """/api/exchanges/{id} (without `messages`, which the provider parses)."""
        out = self.columns_json()
        for side in ("request", "response"):
            out[f"{side}_headers"] = [list(pair) for pair in self.headers(side)]
            out[f"{side}_body"] = self.decoded_body(side)
            out[f"{side}_body_encoding"] = self.body(side)[1]
        return out
