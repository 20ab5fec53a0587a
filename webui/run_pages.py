"""The run pages: the list of runs (`/runs`) with filters, and one run as a timeline
(`/runs/{id}`): waterfall, steps, tool calls, memory changes, totals and evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.api import exchanges as api
from gateway.errors import UserError
from gateway.store import agents, query
from gateway.store.query import parse_cursor
from gateway.store.records import Run, iso_z
from webui import lanes, timeline
from webui.exchange_pages import RANGES, id_or_none
from webui.formats import parse_time
from webui.render import error_page, is_htmx, query_string, render

PAGE_SIZE = 50
FILTER_KEYS = ("name", "agent_id", "user", "status", "range", "errors")


@dataclass(frozen=True, slots=True)
class RunRow:
    """One line of the runs list: the run, how long it took, its scores as text."""

    run: Run
    duration_ms: float | None
    evaluations: str


def run_duration_ms(run: Run, last: dict[str, Any] | None) -> float | None:
    """From the first call's start to the last call's last byte (both times to the
    millisecond, as the API gives them)."""
    start = parse_time(iso_z(run.started_at))
    end = parse_time(last["started_at"]) if last else None
    if start is None or end is None or last is None:
        return None
    return (end - start).total_seconds() * 1000 + float(last.get("latency_ms") or 0)


async def evaluation_summaries(request: web.Request, ids: list[int]) -> dict[int, str]:
    """`name=value` summaries of each run's evaluations, for the list."""
    found = await request.app[api.RUNS].evaluations_of(ids)
    out: dict[int, list[str]] = {}
    for evaluation in found:
        if evaluation.run_id is not None:
            out.setdefault(evaluation.run_id, []).append(
                f"{evaluation.metric_name}={evaluation.metric_value:g}"
            )
    return {run_id: ", ".join(items) for run_id, items in out.items()}


async def run_list(request: web.Request) -> web.Response:
    filters = {key: (request.query.get(key) or "").strip() for key in FILTER_KEYS}
    before = parse_cursor("before", request.query.get("before"))
    values = dict(filters)
    error = None
    runs: list[Run] = []
    cursor = None
    try:
        if values["range"]:
            if values["range"] not in RANGES:
                raise UserError(f"range must be one of {', '.join(RANGES)}")
            values["since"] = (datetime.now(UTC) - RANGES[values["range"]]).isoformat()
        f = query.run_filter(values)
        runs, cursor = await request.app[api.RUNS].list_runs(f, PAGE_SIZE, before)
    except UserError as exc:
        error = str(exc)
    ids = [run.id for run in runs]
    summaries = await evaluation_summaries(request, ids)
    lasts = await request.app[api.RUNS].last_exchanges(ids)
    items = [
        RunRow(run, run_duration_ms(run, lasts.get(run.id)), summaries.get(run.id, ""))
        for run in runs
    ]
    context = {
        "items": items,
        "next": cursor,
        "before": before,
        "filters": filters,
        "error": error,
        "ranges": RANGES,
        "statuses": query.RUN_STATUSES,
        "filtered": any(filters.values()),
    }
    response = render(
        request, "runs.html", context, partial="_run_results.html", status=400 if error else 200
    )
    if is_htmx(request):  # the address bar shows the view, without empty parameters
        response.headers["HX-Push-Url"] = "/runs" + query_string(filters, before=before)
    return response


async def run_detail(request: web.Request) -> web.Response:
    run_id = id_or_none(request.match_info["id"])
    run = await request.app[api.RUNS].get_run(run_id) if run_id else None
    if run is None:
        return error_page(
            request, 404, "No such run", "It may have been deleted, or emptied by retention."
        )
    shown = run.to_json()  # the timeline and the lanes read the run as the API shows it
    steps = timeline.build(shown)
    context = {
        "lanes": await agent_lanes(request, shown),
        "run": run,
        "duration_ms": steps.span_ms if run.exchanges else None,
        "timeline": steps,
        "config": orjson.dumps(run.config, option=orjson.OPT_INDENT_2).decode()
        if run.config
        else "",
    }
    return render(request, "run.html", context)


async def agent_lanes(request: web.Request, run: dict[str, Any]) -> lanes.Lanes | None:
    """The run's agent lanes, when two agents or more acted in it."""
    if not run["exchanges"] or len(run["exchanges"]) > agents.MAX_CALLS:
        return None
    app = request.app
    calls = await agents.run_agents(app[api.STORE], app[api.PROVIDERS], int(run["id"]))
    return None if calls is None else lanes.build(run, calls)


def setup(app: web.Application) -> None:
    app.router.add_get("/runs", run_list)
    app.router.add_get(r"/runs/{id}", run_detail)
