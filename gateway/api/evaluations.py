"""The evaluators API on the UI port: score recorded calls or runs with built-in, custom or
LLM-judge scorers (stored as evaluations), and keep judge definitions in Mistral's
Observability shape, read back unchanged.

Scoring with a judge or embeddings spends money with the gateway's replay key, so these
POSTs are guarded like the replay API's (JSON only, loopback or configured host names).
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.exchanges import json_body, json_response
from gateway.errors import UserError
from gateway.replay import scorers
from gateway.replay.evaluator import Evaluator
from gateway.replay.judge import JUDGE_SCHEMA, check_judge
from gateway.store.judges import JudgeStore

EVALUATOR = web.AppKey("evaluator", Evaluator)
JUDGES = web.AppKey("judges", JudgeStore)

CREATE_FIELDS = tuple(JUDGE_SCHEMA["properties"])

routes = web.RouteTableDef()


@routes.post("/api/evaluations")
async def evaluate(request: web.Request) -> web.Response:
    """`{"exchange_ids" | "run_ids", "scorers": [{"type", ...}], "expected"?, "api_key"?}`
    → 201 `{"results": [{"exchange_id", "run_id", "scores": [...]}]}`."""
    results = await request.app[EVALUATOR].evaluate(await json_body(request))
    return json_response({"results": results}, status=201)


@routes.get("/api/scorers")
async def list_scorers(request: web.Request) -> web.Response:
    return json_response(
        {
            "built_in": [*scorers.BUILT_IN, *scorers.CALLING],
            "custom": scorers.available_custom(),
        }
    )


@routes.post("/api/judges")
async def create_judge(request: web.Request) -> web.Response:
    definition = check_judge(await json_body(request))
    return json_response(await request.app[JUDGES].add(definition), status=201)


@routes.get("/api/judges")
async def list_judges(request: web.Request) -> web.Response:
    return json_response({"items": await request.app[JUDGES].all()})


@routes.get("/api/judges/{name}")
async def get_judge(request: web.Request) -> web.Response:
    """The definition exactly as stored (one exported from La Plateforme keeps its id and
    dates); `?shape=create` keeps only what `POST /v1/observability/judges` takes."""
    definition = await request.app[JUDGES].get(request.match_info["name"])
    shape = request.query.get("shape", "stored")
    if shape not in ("stored", "create"):
        raise UserError(f"shape must be stored or create, got {shape!r}")
    if shape == "create":
        definition = {k: v for k, v in definition.items() if k in CREATE_FIELDS}
    return json_response(definition)
