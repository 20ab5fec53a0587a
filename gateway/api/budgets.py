"""The budgets API on the UI port: `GET/POST /api/budgets`, `PATCH/DELETE /api/budgets/{id}`.

Same conventions as the other APIs: 400 names the bad field, 404 for unknown ids. Each answer
reads the spend fresh from the database, so it also refreshes this process's enforcement.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.exchanges import json_body, json_response, parse_id
from gateway.proxy.budgets import BudgetGuard
from gateway.store.budgets import parse_budget, parse_changes

GUARD = web.AppKey("budget_guard", BudgetGuard)
routes = web.RouteTableDef()


@routes.get("/api/budgets")
async def list_budgets(request: web.Request) -> web.Response:
    standings = await request.app[GUARD].refresh()
    return json_response({"items": [s.to_json() for s in standings]})


@routes.post("/api/budgets")
async def add_budget(request: web.Request) -> web.Response:
    data = await json_body(request)
    guard = request.app[GUARD]
    budget = await guard.store.add(parse_budget(data))
    standings = await guard.refresh()
    added = next(s for s in standings if s.budget.id == budget.id)
    return json_response(added.to_json(), status=201)


@routes.patch("/api/budgets/{id}")
async def change_budget(request: web.Request) -> web.Response:
    """`{"limit_usd"?, "hard"?}`: a raised (or lowered) limit holds at once in this process,
    within a refresh (1 s) in the others."""
    budget_id = parse_id(request.match_info["id"], "budget")
    changes = parse_changes(await json_body(request))
    guard = request.app[GUARD]
    await guard.store.update(budget_id, changes)
    standings = await guard.refresh()
    changed = next(s for s in standings if s.budget.id == budget_id)
    return json_response(changed.to_json())


@routes.delete("/api/budgets/{id}")
async def delete_budget(request: web.Request) -> web.Response:
    budget_id = parse_id(request.match_info["id"], "budget")
    guard = request.app[GUARD]
    await guard.store.delete(budget_id)
    await guard.refresh()
    return json_response({"deleted": str(budget_id)})
