"""The JSON API on the UI port: exchanges, stats, prices, health. It only reads the store.

Bad parameters get a 400 naming the parameter; unknown ids a 404; both as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.api.access import Handler, is_api
from gateway.capture import storable
from gateway.capture.exchange import MAX_ID, is_id
from gateway.capture.pricing import PriceTable
from gateway.errors import AgentOpsError, NotFound, UserError
from gateway.providers import UnknownProvider
from gateway.providers.base import Parsed, Provider
from gateway.store.exchanges import Store
from gateway.store.finetuned import fine_tuned_models, storage_usd
from gateway.store.query import exchange_filter, parse_cursor, parse_int, parse_range
from gateway.store.records import StoredExchange
from gateway.store.runs import RunStore
from gateway.store.stats import by_category
from gateway.store.stored import parse_stored
from gateway.writer import WriterProcess, quarantine

STORE = web.AppKey("store", Store)
RECORDER = web.AppKey("recorder", WriterProcess)
PRICES = web.AppKey("prices", PriceTable)
RUNS = web.AppKey("runs", RunStore)
PROVIDERS: web.AppKey[Callable[[str], Provider]] = web.AppKey("providers")
# The capture pipeline's figures (Gateway.pipeline_health): with `serve --workers N`, the
# totals over every process's writer
PIPELINE: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("pipeline")
# `serve --workers N`: each proxy process's state (gateway/proxy/workers.py)
WORKERS: web.AppKey[Callable[[], list[dict[str, Any]]]] = web.AppKey("workers")

MAX_LIMIT = 500
DEFAULT_LIMIT = 50

routes = web.RouteTableDef()


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place the JSON API turns an error raised on purpose (gateway/errors.py) into
    an answer: its status and `{"error": message}`. Pages map the same tree to HTML."""
    try:
        return await handler(request)
    except AgentOpsError as exc:
        if not is_api(request):
            raise
        return json_response({"error": str(exc)}, status=exc.status)


def json_response(data: Any, status: int = 200) -> web.Response:
    # json_bytes: a captured body may nest deeper than orjson writes (see storable.py)
    return web.Response(
        body=storable.json_bytes(data), status=status, content_type="application/json"
    )


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} not found")


def parse_id(value: str, what: str = "exchange") -> int:
    """An id in a path; anything that cannot be one (past 63 bits too) is not found."""
    if not re.fullmatch(r"\d{1,19}", value) or int(value) > MAX_ID:
        raise not_found(what)
    return int(value)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """`ok`, or `degraded` with the named `reasons` (each clears when its cause does):
    `database` (unreachable, or the writer's last write failed), `spool` (records wait on
    disk), `quarantined` (rows in the quarantine table), `writer_lag` (records have waited
    longer than the lag guard's limit), `writer` (the writer process is down), `dropped`
    (records were dropped in the last DROPPED_WINDOW seconds). With `serve --workers N` the
    figures are totals over every worker and the supervisor (`supervisor` has its own)."""
    recorder = request.app[RECORDER]
    store = request.app[STORE]
    pipeline = request.app.get(PIPELINE)
    health = pipeline() if pipeline is not None else recorder.health().to_json()
    db_up = await store.ping()
    health["database"] = "ok" if db_up and recorder.db_ok else "down"
    try:
        health["quarantined"] = await store.quarantine_count() if db_up else None
    except Exception:  # the table is read like any other: a failure is the database's
        health["quarantined"] = None
    workers = request.app.get(WORKERS)
    if workers is not None:
        health["workers"] = workers()
    health["reasons"] = health_reasons(health)
    return json_response({"status": "degraded" if health["reasons"] else "ok", **health})


def health_reasons(health: dict[str, Any]) -> list[str]:
    checks = (
        ("database", health["database"] != "ok"),
        ("spool", health.get("spool_bytes", 0) > 0),
        ("quarantined", bool(health.get("quarantined"))),
        ("writer_lag", health.get("writer_lagging", False)),
        ("writer", health.get("writer_process") == "down"),
        ("dropped", health.get("dropped_recently", False)),
        ("workers", any(_worker_degraded(w) for w in health.get("workers", ()))),
    )
    return [name for name, failing in checks if failing]


def _worker_degraded(worker: dict[str, Any]) -> bool:
    """A worker is down, or its own writer (PostgreSQL) is in trouble."""
    own = worker.get("health") or {}
    return worker.get("state") != "up" or bool(
        own.get("spool_bytes")
        or own.get("writer_lagging")
        or own.get("writer_process") == "down"
        or own.get("dropped_recently")
        or own.get("database") not in (None, "ok", "relayed")
    )


@routes.get("/api/quarantine")
async def list_quarantine(request: web.Request) -> web.Response:
    """Records the database refused, newest first (see gateway/writer/quarantine.py)."""
    limit = parse_int("limit", request.query.get("limit"), low=1, high=MAX_LIMIT) or DEFAULT_LIMIT
    before = parse_int("before", request.query.get("before"), high=2**63 - 1)
    items, cursor = await request.app[STORE].quarantine_list(limit, before)
    return json_response({"items": items, "next": None if cursor is None else str(cursor)})


@routes.post("/api/quarantine/retry")
async def retry_quarantine(request: web.Request) -> web.Response:
    """`{"ids": [...]}` (all when absent): hand them to the writer again."""
    body = await json_body(request)
    ids = body.get("ids")
    if ids is not None and (
        not isinstance(ids, list)
        or not all(isinstance(i, str | int) and is_id(str(i)) for i in ids)
    ):
        raise UserError("ids must be a list of quarantined record ids")
    result = await quarantine.retry(
        request.app[STORE], request.app[RECORDER], None if ids is None else [int(i) for i in ids]
    )
    return json_response(
        {
            "retried": result.retried,
            "stored": result.stored,
            "refused_again": result.refused_again,
            "unknown": [str(i) for i in result.unknown],
        }
    )


@routes.delete("/api/quarantine/{id}")
async def drop_quarantined(request: web.Request) -> web.Response:
    exchange_id = parse_id(request.match_info["id"], "quarantined record")
    if not await request.app[STORE].quarantine_delete([exchange_id]):
        raise not_found("quarantined record")
    return web.Response(status=204)


async def json_body(request: web.Request) -> dict[str, Any]:
    """A POST's JSON object (an empty body is {}), else 400 saying what is wrong."""
    if request.content_type != "application/json":
        raise UserError(
            "send the body as JSON with Content-Type: application/json, e.g. "
            '{"overrides": {"temperature": 0}}'
        )
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise UserError(f"the body must be JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UserError("the body must be a JSON object")
    where = _nul_at(body)
    if where is not None:
        # PostgreSQL stores no NUL in text: refused here, the same on both databases
        raise UserError(f"{where} must not contain a NUL character (\\u0000)")
    return body


def _nul_at(body: dict[str, Any]) -> str | None:
    """Where a NUL is in a parsed JSON body (a key or a string), or None. A loop, not a
    recursion: orjson parses bodies nested deeper than Python's recursion limit."""
    stack: list[tuple[str, Any]] = [("the body", body)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    return f"a key of {where}"
                stack.append((key if where == "the body" else f"{where}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{index}]", item) for index, item in enumerate(value))
    return None


@routes.get("/api/exchanges")
async def list_exchanges(request: web.Request) -> web.Response:
    query = request.query
    limit = parse_int("limit", query.get("limit"), low=1, high=MAX_LIMIT) or DEFAULT_LIMIT
    before = parse_cursor("before", query.get("before"))
    items, cursor = await request.app[STORE].list_exchanges(exchange_filter(query), limit, before)
    return json_response(
        {"items": [item.to_json() for item in items], "next": str(cursor) if cursor else None}
    )


@routes.get("/api/exchanges/{id}")
async def get_exchange(request: web.Request) -> web.Response:
    found = await load_exchange(request.app, parse_id(request.match_info["id"]))
    if found is None:
        raise not_found("exchange")
    item, messages = found
    return json_response({**item.to_json(), "messages": messages})


async def load_exchange(
    app: web.Application, exchange_id: int
) -> tuple[StoredExchange, list[dict[str, Any]]] | None:
    """One exchange and its messages as its provider parses them (the API and the UI)."""
    item = await app[STORE].get_exchange(exchange_id)
    if item is None:
        return None
    try:
        provider = app[PROVIDERS](item.provider)
    except UnknownProvider:  # written by another version: shown raw, never misparsed
        return item, []
    return item, exchange_messages(parse_stored(provider, item))


def exchange_messages(parsed: Parsed) -> list[dict[str, Any]]:
    """The call's full conversation: its input messages (or entries) and its output."""
    keys = ("role", "content", "tool_calls", "tool_call_id", "type")
    inputs = parsed.messages_in or parsed.entries_in or []
    outputs = ([parsed.message_out] if parsed.message_out else parsed.entries_out) or []
    return [
        {
            "direction": direction,
            **(
                {k: m.get(k) for k in keys} if isinstance(m, dict) else {"role": None, "content": m}
            ),
        }
        for direction, group in (("in", inputs), ("out", outputs))
        for m in group
    ]


@routes.delete("/api/exchanges/{id}")
async def delete_exchange(request: web.Request) -> web.Response:
    store = request.app[STORE]
    exchange_id = parse_id(request.match_info["id"])
    if not await store.rows("SELECT id FROM exchanges WHERE id = ?", [exchange_id]):
        raise not_found("exchange")
    # A data-subject request: the calls made about this one (replays, judges) quote it too.
    await store.delete_exchanges(await store.with_calls_about([exchange_id]))
    return json_response({"deleted": request.match_info["id"]})


@routes.get("/api/stats")
async def stats(request: web.Request) -> web.Response:
    since, until = parse_range(request.query)
    store = request.app[STORE]
    body = await store.stats(since, until)
    now = datetime.now(UTC)
    storage = storage_usd(
        await fine_tuned_models(store),
        request.app[PRICES].fine_tuning.storage_per_month,
        since,
        min(until, now) if until else now,
    )
    body["totals"]["storage_usd"] = storage
    body["by_category"] = by_category(body["totals"]["cost_by_category"], storage)
    return json_response(body)


@routes.get("/api/models")
async def models(request: web.Request) -> web.Response:
    """The models `agentops-studio finetune` made, newest first: experiments select them as
    variants beside their base model."""
    tuned = await fine_tuned_models(request.app[STORE])
    return json_response({"items": [model.to_json() for model in tuned]})


@routes.get("/api/prices")
async def prices(request: web.Request) -> web.Response:
    table = request.app[PRICES]
    body = table.to_api()
    body["unpriced"] = await request.app[STORE].unpriced(table.models)
    return json_response(body)
