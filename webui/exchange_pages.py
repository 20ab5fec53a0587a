"""The exchange pages: the live list (`/`) with search and filters, one exchange as a person
reads it (`/exchanges/{id}`), and deleting one.

The list is keyset-paged (`before` cursor, one index walk at any depth) and never counts
rows; its previews come from the page's own request bodies only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from aiohttp import web

from gateway.api import exchanges as api
from gateway.capture.exchange import MAX_ID
from gateway.capture.redact import redact_headers
from gateway.errors import UserError
from gateway.providers import UnknownProvider
from gateway.store.exchanges import ExchangeFilter
from gateway.store.query import exchange_filter, parse_cursor
from gateway.store.records import ExchangeSummary
from webui.chat import PART_LIMIT, chat_items, full_part, pretty_body
from webui.render import (
    PROXY_URL,
    error_page,
    is_htmx,
    query_string,
    render,
    render_fragment,
)
from webui.request_view import parameters, tools_offered

PAGE_SIZE = 50
FILTER_KEYS = (
    "q",
    "model",
    "status",
    "state",
    "endpoint",
    "run",
    "range",
    "since",
    "until",
    "errors",
)
RANGES = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
ENDPOINTS = (
    "chat",
    "fim",
    "agents",
    "embeddings",
    "conversations",
    "files",
    "ocr",
    "moderations",
    "audio",
    "other",
)
STATUSES = ("2xx", "4xx", "5xx", "429")
STATES = ("complete", "client_disconnected", "upstream_error", "upstream_timeout", "shutdown")


class FilterError(ValueError):
    """A filter the user typed cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ExchangeRow:
    """One line of the list: the exchange, what it shows of the call, and its run's name."""

    exchange: ExchangeSummary
    preview: str | None
    run_name: str | None


def current_filters(query: Any) -> dict[str, str]:
    return {key: (query.get(key) or "").strip() for key in FILTER_KEYS}


def build_filter(filters: dict[str, str]) -> ExchangeFilter:
    """The API's own validation, plus the list's relative time range."""
    values = dict(filters)
    if values["range"]:
        if values["range"] not in RANGES:
            raise FilterError(f"range must be one of {', '.join(RANGES)}")
        if not values["since"]:
            since = datetime.now(UTC) - RANGES[values["range"]]
            values["since"] = since.isoformat()
    try:
        return exchange_filter(values)
    except UserError as exc:
        raise FilterError(str(exc)) from None


def id_or_none(value: str | None) -> int | None:
    """An id from a page's path (None: not one, a 404) or the live poll's `after` (None: from
    the start); a list's `before` cursor is `parse_cursor`'s, a 400 when it is not one."""
    if value and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
        return number if number <= MAX_ID else None
    return None


async def decorate(request: web.Request, items: list[ExchangeSummary]) -> list[ExchangeRow]:
    """Each row with its preview (its last user message) and run name."""
    app = request.app
    # Rows recorded before the writer made previews (preview null) are previewed from their
    # request body, as they always were; newer rows carry theirs.
    legacy = [item.id for item in items if item.preview is None]
    bodies = await app[api.STORE].request_bodies(legacy) if legacy else {}
    runs = await app[api.RUNS].names(item.run_id for item in items if item.run_id)
    providers = app[api.PROVIDERS]
    rows = []
    for item in items:
        preview = item.preview or None
        if item.omitted:
            preview = "(bodies not recorded)"
        body, encoding = bodies.get(item.id, (None, None))
        if encoding == "omitted":
            preview = "(bodies not recorded)"
        elif body and encoding == "json":
            with contextlib.suppress(orjson.JSONDecodeError, UnknownProvider):
                # the row's own provider: a TTS call is previewed by the text it speaks
                preview = providers(item.provider).preview(orjson.loads(body))
        run = runs.get(item.run_id) if item.run_id else None
        rows.append(ExchangeRow(item, preview, (run["name"] or run["agent_id"]) if run else None))
    return rows


async def list_context(request: web.Request, before: int | None) -> dict[str, Any]:
    """Everything the list's templates need: rows, cursor, filters, choices, live state."""
    filters = current_filters(request.query)
    error = None
    items: list[ExchangeRow] = []
    cursor = None
    try:
        f = build_filter(filters)
        found, cursor = await request.app[api.STORE].list_exchanges(f, PAGE_SIZE, before)
        items = await decorate(request, found)
    except FilterError as exc:
        error = str(exc)
    models = await request.app[api.STORE].rollups.models()
    if filters["model"] and filters["model"] not in models:
        models.append(filters["model"])
    return {
        "items": items,
        "next": cursor,
        "before": before,
        "filters": filters,
        "error": error,
        "models": models,
        "endpoints": ENDPOINTS,
        "statuses": STATUSES,
        "states": STATES,
        "ranges": RANGES,
        "live": before is None and not filters["until"] and error is None,
        "newest": items[0].exchange.id if items else 0,
        "filtered": any(filters.values()),
        "proxy": request.app[PROXY_URL],
        "fresh": False,
    }


async def exchange_list(request: web.Request) -> web.Response:
    before = parse_cursor("before", request.query.get("before"))
    context = await list_context(request, before)
    response = render(
        request,
        "exchanges.html",
        context,
        partial="_exchange_results.html",
        status=400 if context["error"] else 200,
    )
    if is_htmx(request):  # the address bar shows the view, without empty parameters
        response.headers["HX-Push-Url"] = "/" + query_string(context["filters"], before=before)
    return response


async def exchange_live(request: web.Request) -> web.Response:
    """What arrived since the newest row the page shows: rows to prepend plus the poller
    with its new cursor (out of band), or with `into=results` (an empty page) the whole
    first page; 204 when nothing is new, so an idle poll costs one index probe."""
    filters = current_filters(request.query)
    after = id_or_none(request.query.get("after")) or 0
    try:
        f = build_filter(filters)
    except FilterError:
        return web.Response(status=204)
    items, _ = await request.app[api.STORE].list_exchanges(f, PAGE_SIZE, None, after=after)
    if not items:
        return web.Response(status=204)
    if request.query.get("into") == "results":
        context = await list_context(request, None)
        return render_fragment(request, "_exchange_results.html", context)
    return render_fragment(
        request,
        "_exchange_live.html",
        {
            "items": await decorate(request, items),
            "filters": filters,
            "newest": items[0].id,
            "fresh": True,
            "live": True,
        },
    )


async def exchange_detail(request: web.Request) -> web.Response:
    exchange_id = id_or_none(request.match_info["id"])
    found = await api.load_exchange(request.app, exchange_id) if exchange_id else None
    if found is None or exchange_id is None:
        return error_page(
            request, 404, "No such exchange", "It may have been deleted, or removed by retention."
        )
    item, messages = found
    runs = request.app[api.RUNS]
    run = previous = following = None
    if item.run_id:
        run = (await runs.names([item.run_id])).get(item.run_id)
        previous, following = await request.app[api.STORE].neighbours(item.run_id, exchange_id)
    request_json = item.decoded_body("request")
    text = item.output_text or ""
    output: dict[str, Any] = {"kind": "text", "text": text[:PART_LIMIT]}
    if len(text) > PART_LIMIT:
        output.update(more=len(text), index="output")
    context = {
        "e": item,
        "run": run,
        "previous": previous,
        "following": following,
        "chat": chat_items(messages, PART_LIMIT),
        "output": output,
        "parameters": parameters(request_json),
        "tools": tools_offered(request_json),
        "request_headers": redact_headers(list(item.request_headers)),
        "response_headers": redact_headers(list(item.response_headers)),
        "request_body": pretty_body(request_json, item.request_body_encoding),
        "response_body": pretty_body(item.decoded_body("response"), item.response_body_encoding),
        "evaluations": await runs.exchange_evaluations(exchange_id),
    }
    return render(request, "exchange.html", context)


async def exchange_text(request: web.Request) -> web.Response:
    """The whole of a long message part (`part=m-p`, or `part=output`): what the page's
    "show all" button swaps in, as escaped text."""
    exchange_id = id_or_none(request.match_info["id"])
    found = await api.load_exchange(request.app, exchange_id) if exchange_id else None
    if found is None:
        return web.Response(status=404, text="no such exchange")
    item, messages = found
    index = request.query.get("part", "")
    text = item.output_text if index == "output" else full_part(messages, index)
    if text is None:
        return web.Response(status=404, text="no such part")
    return render_fragment(request, "_text.html", {"text": text})


async def exchange_raw(request: web.Request) -> web.Response:
    """A raw body in full (up to the raw view's cut), loaded when the reader asks for it."""
    exchange_id = id_or_none(request.match_info["id"])
    side: Literal["request", "response"] = (
        "request" if request.match_info["side"] == "request" else "response"
    )
    found = await api.load_exchange(request.app, exchange_id) if exchange_id else None
    if found is None:
        return web.Response(status=404, text="no such exchange")
    item = found[0]
    encoding = item.request_body_encoding if side == "request" else item.response_body_encoding
    body = pretty_body(item.decoded_body(side), encoding, whole=True)
    return render_fragment(request, "_text.html", body)


async def exchange_delete(request: web.Request) -> web.StreamResponse:
    exchange_id = id_or_none(request.match_info["id"])
    runs = request.app[api.RUNS]
    found, run_id = await runs.run_of_exchange(exchange_id) if exchange_id else (False, None)
    if not found or exchange_id is None:
        return error_page(request, 404, "No such exchange", "It was already deleted.")
    store = request.app[api.STORE]
    await store.delete_exchanges(await store.with_calls_about([exchange_id]))
    target = "/"
    if run_id is not None and await runs.get_run_row(int(run_id)) is not None:
        target = f"/runs/{run_id}"  # unless it was the run's only exchange: then the run went
    raise web.HTTPSeeOther(f"{target}?deleted={exchange_id}")


def setup(app: web.Application) -> None:
    app.router.add_get("/", exchange_list)
    app.router.add_get("/exchanges/live", exchange_live)
    app.router.add_get(r"/exchanges/{id}", exchange_detail)
    app.router.add_get(r"/exchanges/{id}/text", exchange_text)
    app.router.add_get(r"/exchanges/{id}/raw/{side:request|response}", exchange_raw)
    app.router.add_post(r"/exchanges/{id}/delete", exchange_delete)
