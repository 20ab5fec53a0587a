"""The runs API on the UI port: list and read runs, attach evaluations, delete a run.

Same conventions as api.py: 400 names the bad parameter or field, 404 for unknown ids.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from aiohttp import web

from gateway.api.exchanges import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    RECORDER,
    RUNS,
    json_body,
    json_response,
    not_found,
    parse_id,
)
from gateway.errors import UserError
from gateway.store.query import parse_cursor, parse_int, run_filter

log = logging.getLogger("agentops.api")
routes = web.RouteTableDef()


@routes.get("/api/runs")
async def list_runs(request: web.Request) -> web.Response:
    query = request.query
    limit = parse_int("limit", query.get("limit"), low=1, high=MAX_LIMIT) or DEFAULT_LIMIT
    before = parse_cursor("before", query.get("before"))
    items, cursor = await request.app[RUNS].list_runs(run_filter(query), limit, before)
    return json_response(
        {"items": [item.to_json() for item in items], "next": str(cursor) if cursor else None}
    )


@routes.get("/api/runs/{id}")
async def get_run(request: web.Request) -> web.Response:
    run = await request.app[RUNS].get_run(parse_id(request.match_info["id"], "run"))
    if run is None:
        raise not_found("run")
    return json_response(run.to_json())


@routes.delete("/api/runs/{id}")
async def delete_run(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    if not await request.app[RUNS].delete_run(run_id):
        raise not_found("run")
    return json_response({"deleted": str(run_id)})


async def evaluation_body(request: web.Request) -> tuple[str, float]:
    body = await json_body(request)
    name, value = body.get("metric_name"), body.get("metric_value")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise UserError("metric_name must be a non-empty string of at most 200 characters")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"metric_value must be a finite number, got {value!r}")
    return name.strip(), float(value)


@routes.post("/api/runs/{id}/evaluations")
async def evaluate_run(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    name, value = await evaluation_body(request)
    runs = request.app[RUNS]
    if await runs.get_run_row(run_id) is None:
        raise not_found("run")
    evaluation = await runs.add_evaluation(run_id, None, name, value)
    await _late_evaluation(request, run_id, evaluation.to_json())
    return json_response(evaluation.to_json(), status=201)


@routes.post("/api/exchanges/{id}/evaluations")
async def evaluate_exchange(request: web.Request) -> web.Response:
    exchange_id = parse_id(request.match_info["id"])
    name, value = await evaluation_body(request)
    runs = request.app[RUNS]
    found, run_id = await runs.run_of_exchange(exchange_id)
    if not found:
        raise not_found("exchange")
    evaluation = await runs.add_evaluation(run_id, exchange_id, name, value)
    if run_id is not None:
        await _late_evaluation(request, run_id, evaluation.to_json())
    return json_response(evaluation.to_json(), status=201)


async def _late_evaluation(request: web.Request, run_id: int, evaluation: dict[str, Any]) -> None:
    """An evaluation of a run that already ended (and went to W&B without it) is sent on: the
    usual order is to score an agent after it finished. Best effort, like all integrations."""
    recorder = request.app[RECORDER]
    if not recorder.settings.wandb_project or not await request.app[RUNS].run_ended(run_id):
        return
    try:
        await recorder.call("log_evaluation", evaluation)
    except Exception:
        log.exception("run %s: could not pass a late evaluation to W&B", run_id)
