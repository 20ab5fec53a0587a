"""Stored records as the store reads them back: one frozen dataclass per kind of row.

Each is built in one place from a database row (`from_row`: SQLite's text times and 0/1
booleans, PostgreSQL's datetimes and booleans, JSON columns decoded) and turned into the
API's JSON in one place (`to_json`: ids as strings, times as ISO-8601 with a Z). Everything
between the two (pages, replay, export) reads typed attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self

import orjson

Side = Literal["request", "response"]
Row = Mapping[str, Any]  # one database row, as the driver returns it
Headers = tuple[tuple[str, str], ...]
ACTIVE_SECONDS = 30  # a run with a call this recent is `active` (its `activity`)


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
    error_type: str | None
    error_code: str | None
    replay_of: int | None
    provider: str
    category: str  # what the cost is for: llm, tool, fine-tuning

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
            error_type=_opt_str(row["error_type"]),
            error_code=_opt_str(row["error_code"]),
            replay_of=_opt_int(row["replay_of"]),
            provider=str(row["provider"]),
            category=str(row.get("category") or "llm"),
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
            "error_type": self.error_type,
            "error_code": self.error_code,
            "replay_of": _id_text(self.replay_of),
            "provider": self.provider,
            "category": self.category,
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
    error_type: str | None
    error_code: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    connector_tokens: int | None
    units: Any  # parsed JSON: pages, audio_seconds, characters, credits
    finish_reason: str | None
    output_text: str | None
    cost_usd: float | None
    category: str
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
            error_type=_opt_str(row["error_type"]),
            error_code=_opt_str(row["error_code"]),
            prompt_tokens=_opt_int(row["prompt_tokens"]),
            completion_tokens=_opt_int(row["completion_tokens"]),
            total_tokens=_opt_int(row["total_tokens"]),
            cached_tokens=_opt_int(row["cached_tokens"]),
            connector_tokens=_opt_int(row["connector_tokens"]),
            units=orjson.loads(units) if units else units,
            finish_reason=_opt_str(row["finish_reason"]),
            output_text=_opt_str(row["output_text"]),
            cost_usd=_opt_float(row["cost_usd"]),
            category=str(row.get("category") or "llm"),
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
            "error_type": self.error_type,
            "error_code": self.error_code,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "connector_tokens": self.connector_tokens,
            "units": self.units,
            "finish_reason": self.finish_reason,
            "output_text": self.output_text,
            "cost_usd": self.cost_usd,
            "category": self.category,
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


# -- runs -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A message as it first appeared in a run: a step's new inputs, and its output."""

    exchange_id: int
    step: int
    position: int
    direction: str  # in, out
    role: str | None
    content: Any  # parsed JSON: a string, or a list of chunks
    tool_calls: Any
    tool_call_id: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None

    @classmethod
    def from_row(cls, row: Row) -> Self:
        return cls(
            exchange_id=int(row["exchange_id"]),
            step=int(row["step"]),
            position=int(row["position"]),
            direction=str(row["direction"]),
            role=_opt_str(row["role"]),
            content=_json(row["content"]),
            tool_calls=_json(row["tool_calls"]),
            tool_call_id=_opt_str(row["tool_call_id"]),
            finish_reason=_opt_str(row["finish_reason"]),
            prompt_tokens=_opt_int(row["prompt_tokens"]),
            completion_tokens=_opt_int(row["completion_tokens"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "exchange_id": str(self.exchange_id),
            "step": self.step,
            "position": self.position,
            "direction": self.direction,
            "role": self.role,
            "content": self.content,
            "tool_calls": self.tool_calls,
            "tool_call_id": self.tool_call_id,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call a step asked for, with its result once a later call delivered it."""

    tool_name: str | None
    args: Any  # parsed arguments, or the raw string
    return_value: str | None
    call_id: str | None
    exchange_id: int
    step: int
    result_exchange_id: int | None
    latency_ms: float | None
    kind: str  # function, builtin, handoff

    @classmethod
    def from_row(cls, row: Row) -> Self:
        latency = row["latency_ms"]
        return cls(
            tool_name=_opt_str(row["tool_name"]),
            args=_json(row["args"]),
            return_value=_opt_str(row["return_value"]),
            call_id=_opt_str(row["call_id"]),
            exchange_id=int(row["exchange_id"]),
            step=int(row["step"]),
            result_exchange_id=_opt_int(row["result_exchange_id"]),
            # never negative: rows paired with a later ask of a reused id before 0011 say none
            latency_ms=None if latency is None or latency < 0 else round(latency, 3),
            kind=str(row["kind"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tool_name": self.tool_name,
            "args": self.args,
            "return_value": self.return_value,
            "call_id": self.call_id,
            "exchange_id": str(self.exchange_id),
            "step": self.step,
            "result_exchange_id": _id_text(self.result_exchange_id),
            "latency_ms": self.latency_ms,
            "kind": self.kind,
        }


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """The state a run carried after a step, rebuilt from the stored delta."""

    exchange_id: int
    step: int
    taken_at: datetime
    carried: int  # how many items of the previous state were kept
    state: tuple[Any, ...]

    @classmethod
    def from_row(cls, row: Row, previous: Sequence[Any] = ()) -> Self:
        """A stored delta applied to the previous step's state: its first `carried` items,
        then the appended ones."""
        carried = int(row["carried"])
        return cls(
            exchange_id=int(row["exchange_id"]),
            step=int(row["step"]),
            taken_at=_time(row["taken_at"]),
            carried=carried,
            state=(*previous[:carried], *(_json(row["appended"]) or ())),
        )

    @classmethod
    def rebuild(cls, rows: Iterable[Row]) -> tuple[Self, ...]:
        """Each step's full state from the deltas, in step order."""
        out: list[Self] = []
        for row in rows:
            out.append(cls.from_row(row, out[-1].state if out else ()))
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "exchange_id": str(self.exchange_id),
            "step": self.step,
            "taken_at": iso_z(self.taken_at),
            "carried": self.carried,
            "state": list(self.state),
        }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A score attached to a run, or to one of its exchanges."""

    id: int
    metric_name: str
    metric_value: float
    run_id: int | None
    exchange_id: int | None
    created_at: datetime
    detail: dict[str, Any] | None = None  # what an evaluator said beside the number

    @classmethod
    def from_row(cls, row: Row) -> Self:
        detail = row.get("detail")
        return cls(
            id=int(row["id"]),
            metric_name=str(row["metric_name"]),
            metric_value=float(row["metric_value"]),
            run_id=_opt_int(row["run_id"]),
            exchange_id=_opt_int(row["exchange_id"]),
            created_at=_time(row["created_at"]),
            detail=orjson.loads(detail) if isinstance(detail, str | bytes) else detail,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "metric_name": self.metric_name,
            "metric_value": self.metric_value,
            "run_id": _id_text(self.run_id),
            "exchange_id": _id_text(self.exchange_id),
            "created_at": iso_z(self.created_at),
            # only an evaluator's scores have one: a hand-posted score's JSON is unchanged
            **({"detail": self.detail} if self.detail is not None else {}),
        }


@dataclass(frozen=True, slots=True)
class ProviderCost:
    """A run's calls and cost at one provider (the LLM's beside the tools')."""

    provider: str
    calls: int
    cost_usd: float

    @classmethod
    def from_row(cls, row: Row) -> Self:
        return cls(
            provider=str(row["provider"]),
            calls=int(row["calls"]),
            cost_usd=round(float(row["cost_usd"] or 0), 10),
        )

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "calls": self.calls, "cost_usd": self.cost_usd}


@dataclass(frozen=True, slots=True)
class CategoryCost:
    """A run's calls and cost in one category (llm, tool, fine-tuning) at one provider."""

    category: str
    provider: str
    calls: int
    cost_usd: float

    @classmethod
    def from_row(cls, row: Row) -> Self:
        return cls(
            category=str(row["category"] or "llm"),
            provider=str(row["provider"]),
            calls=int(row["calls"]),
            cost_usd=round(float(row["cost_usd"] or 0), 10),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "provider": self.provider,
            "calls": self.calls,
            "cost_usd": self.cost_usd,
        }


@dataclass(frozen=True, slots=True)
class Run:
    """One agent run's row: what lists show. `conversation_ids` is None where it was not
    read (the dashboard's costliest runs, exports)."""

    id: int
    name: str | None
    agent_id: str | None
    user: str | None
    tags: Mapping[str, str]
    source: str  # prefix, header, conversation, thread, single
    started_at: datetime
    last_seen_at: datetime
    ended_at: datetime | None
    status: str  # running, ok, error
    exchange_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    total_cost_usd: float  # the priced calls' costs; unpriced_calls says how many are not
    conversation_ids: tuple[str, ...] | None = None
    error_count: int = 0  # failed calls
    unpriced_calls: int = 0  # calls of a model with no price: never counted as $0
    title: str | None = None  # what it was about (first user message, else the agent), if read

    @classmethod
    def from_row(cls, row: Row, conversation_ids: Sequence[str] | None = None) -> Self:
        return cls(
            id=int(row["id"]),
            name=_opt_str(row["name"]),
            agent_id=_opt_str(row["agent_id"]),
            user=_opt_str(row["user"]),
            tags=_json(row["tags"]) or {},
            source=str(row["source"]),
            started_at=_time(row["started_at"]),
            last_seen_at=_time(row["last_seen_at"]),
            ended_at=_opt_time(row["ended_at"]),
            status=str(row["status"]),
            exchange_count=int(row["exchange_count"]),
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            total_tokens=int(row["total_tokens"]),
            total_cost_usd=round(float(row["total_cost_usd"] or 0), 10),
            conversation_ids=None if conversation_ids is None else tuple(conversation_ids),
            error_count=int(row.get("error_count") or 0),
            unpriced_calls=int(row.get("unpriced_calls") or 0),
        )

    @property
    def activity(self) -> str:
        """`active` when a call ran in the last ACTIVE_SECONDS, else `idle`."""
        if self.ended_at is not None:
            return "idle"
        recent = datetime.now(UTC) - self.last_seen_at <= timedelta(seconds=ACTIVE_SECONDS)
        return "active" if recent else "idle"

    def columns_json(self) -> dict[str, Any]:
        """The run's own columns as the API shows them."""
        return {
            "id": str(self.id),
            "name": self.name,
            "agent_id": self.agent_id,
            "user": self.user,
            "tags": dict(self.tags),
            "source": self.source,
            "started_at": iso_z(self.started_at),
            "last_seen_at": iso_z(self.last_seen_at),
            "ended_at": _opt_iso(self.ended_at),
            "status": self.status,
            "exchange_count": self.exchange_count,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "total_cost_usd": self.total_cost_usd,
            "error_count": self.error_count,
            "unpriced_calls": self.unpriced_calls,
            "activity": self.activity,
        }

    def to_json(self) -> dict[str, Any]:
        out = self.columns_json()
        if self.title is not None:
            out["title"] = self.title
        if self.conversation_ids is not None:
            out["conversation_ids"] = list(self.conversation_ids)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary(Run):
    """A run for exporters: with `ends_at`, when its last call ended (ended_at is when that
    call started)."""

    ends_at: datetime | None = None

    @classmethod
    def read(cls, row: Row, last_call: Row | None) -> Self:
        """A run row with its last call's start and latency, if it has one."""
        run = cls.from_row(row)
        ends_at = run.ended_at or run.last_seen_at
        if last_call is not None:
            latency = timedelta(milliseconds=last_call["latency_ms"] or 0)
            ends_at = _time(last_call["started_at"]) + latency
        return replace(run, ends_at=ends_at)

    def to_json(self) -> dict[str, Any]:
        return {**Run.to_json(self), "ends_at": _opt_iso(self.ends_at)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunDetail(Run):
    """One run with everything in it: its calls, messages, tool calls, memory, scores."""

    config: Any = None  # parsed JSON: model and sampling parameters of the first call
    exchanges: tuple[ExchangeSummary, ...] = ()
    messages: tuple[Message, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    memory_snapshots: tuple[MemorySnapshot, ...] = ()
    evaluations: tuple[Evaluation, ...] = ()
    cost_by_provider: tuple[ProviderCost, ...] = ()
    cost_by_category: tuple[CategoryCost, ...] = ()

    @classmethod
    def read(
        cls,
        row: Row,
        conversation_ids: Sequence[str],
        *,
        exchanges: Iterable[ExchangeSummary],
        messages: Iterable[Message],
        tool_calls: Iterable[ToolCall],
        memory_snapshots: Iterable[MemorySnapshot],
        evaluations: Iterable[Evaluation],
        cost_by_provider: Iterable[ProviderCost],
        cost_by_category: Iterable[CategoryCost] = (),
    ) -> Self:
        """A run row (with its `config` column) and what the store read of its children."""
        return replace(
            cls.from_row(row, conversation_ids),
            config=_json(row["config"]),
            exchanges=tuple(exchanges),
            messages=tuple(messages),
            tool_calls=tuple(tool_calls),
            memory_snapshots=tuple(memory_snapshots),
            evaluations=tuple(evaluations),
            cost_by_provider=tuple(cost_by_provider),
            cost_by_category=tuple(cost_by_category),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **self.columns_json(),
            "config": self.config,
            "conversation_ids": list(self.conversation_ids or ()),
            "exchanges": [e.to_json() for e in self.exchanges],
            "messages": [m.to_json() for m in self.messages],
            "tool_calls": [t.to_json() for t in self.tool_calls],
            "memory_snapshots": [s.to_json() for s in self.memory_snapshots],
            "evaluations": [e.to_json() for e in self.evaluations],
            "cost_by_provider": [c.to_json() for c in self.cost_by_provider],
            "cost_by_category": [c.to_json() for c in self.cost_by_category],
        }
