"""The replay API on the UI port: replay an exchange or a run, read and compute diffs, run
experiments.

Same conventions as api.py (400 names the problem, 404 unknown ids), plus 409 for a call
that cannot be replayed. The POST routes spend money with the gateway's key, so they take
only `application/json` (a cross-site form cannot send it without a CORS preflight, which
this server never grants) and only under a loopback or configured host name (no DNS
rebinding).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.exchanges import json_body, json_response, not_found, parse_id
from gateway.capture.exchange import is_id
from gateway.errors import UserError
from gateway.replay.dataset_experiments import worse
from gateway.replay.experiments import Experiments
from gateway.replay.replayer import Replayer
from gateway.replay.run import RunReplayer
from gateway.store.replays import ReplayStore

REPLAYER = web.AppKey("replayer", Replayer)
RUN_REPLAYER = web.AppKey("run_replayer", RunReplayer)
REPLAYS = web.AppKey("replay_store", ReplayStore)
EXPERIMENTS = web.AppKey("experiments", Experiments)

routes = web.RouteTableDef()


def replay_fields(body: dict[str, Any]) -> tuple[Any, Any]:
    unknown = sorted(set(body) - {"overrides", "api_key"})
    if unknown:
        raise UserError(f"unknown field(s): {', '.join(unknown)} (accepted: overrides, api_key)")
    return body.get("overrides", {}), body.get("api_key")


@routes.post("/api/exchanges/{id}/replay")
async def replay_exchange(request: web.Request) -> web.Response:
    exchange_id = parse_id(request.match_info["id"])
    overrides, given_key = replay_fields(await json_body(request))
    replayer = request.app[REPLAYER]
    original = await replayer.original(exchange_id)
    await replayer.plan(original, overrides)  # 409/400 before the key is even looked at
    key = replayer.key(given_key)
    replayed, diff = await replayer.replay(exchange_id, overrides, key)
    return json_response({"exchange": replayed.list_item(), "diff": diff}, status=201)


@routes.post("/api/runs/{id}/replay")
async def replay_run(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    overrides, given_key = replay_fields(await json_body(request))
    runs = request.app[RUN_REPLAYER]
    steps = await runs.steps(run_id)
    await runs.replayer.plan(steps[0], overrides)
    key = runs.replayer.key(given_key)
    result = await runs.replay(run_id, overrides, key, steps)
    return json_response(result, status=201)


@routes.get("/api/diffs/{id}")
async def get_diff(request: web.Request) -> web.Response:
    diff = await request.app[REPLAYS].get_diff(parse_id(request.match_info["id"], "diff"))
    if diff is None:
        raise not_found("diff")
    return json_response(diff)


@routes.get("/api/diff")
async def compute_diff(request: web.Request) -> web.Response:
    """Any two exchanges, computed now (not stored: a GET changes nothing)."""
    return json_response(await diff_of(request))


async def diff_of(request: web.Request) -> dict[str, Any]:
    replayer = request.app[REPLAYER]
    sides = []
    for name in ("a", "b"):
        value = request.query.get(name, "")
        if not is_id(value):
            raise UserError(f"{name} must be an exchange id, got {value!r}")
        recorded = await replayer.load(int(value))
        if recorded is None:
            raise not_found(f"exchange {value} ({name})")
        sides.append(recorded)
    return await replayer.diff(sides[0], sides[1], save=False)


@routes.post("/api/experiments")
async def create_experiment(request: web.Request) -> web.Response:
    created = await request.app[EXPERIMENTS].create(await json_body(request))
    return json_response(created, status=202)


@routes.get("/api/experiments")
async def list_experiments(request: web.Request) -> web.Response:
    return json_response({"items": await request.app[REPLAYS].list_experiments(100)})


@routes.get("/api/experiments/{id}")
async def get_experiment(request: web.Request) -> web.Response:
    report = await request.app[EXPERIMENTS].report(parse_id(request.match_info["id"], "experiment"))
    if report is None:
        raise not_found("experiment")
    return json_response(report)


@routes.get("/api/experiments/{id}/worse")
async def experiment_worse(request: web.Request) -> web.Response:
    """What got worse from variant `base` to variant `variant` of a dataset experiment."""
    report = await request.app[EXPERIMENTS].report(parse_id(request.match_info["id"], "experiment"))
    if report is None:
        raise not_found("experiment")
    if report.get("kind") != "dataset":
        raise UserError("only an experiment over a dataset has variants to compare")
    base, other = request.query.get("base"), request.query.get("variant")
    if not base or not other:
        raise UserError("give ?base=VARIANT&variant=VARIANT (the variants' names)")
    return json_response({"base": base, "variant": other, "items": worse(report, base, other)})
