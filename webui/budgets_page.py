"""The budgets page (`/budgets`): each budget with its spend this period as a bar, a form to
add one and a button to delete one. The same store and checks as `/api/budgets`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.budgets import GUARD
from gateway.api.exchanges import parse_id
from gateway.store.budgets import KINDS, PERIODS, BudgetError, parse_budget
from webui.render import render


async def budgets_page(
    request: web.Request, error: str | None = None, form: Any = None
) -> web.Response:
    standings = await request.app[GUARD].refresh()
    return render(
        request,
        "budgets.html",
        {
            "budgets": [s.to_json() for s in standings],
            "kinds": KINDS,
            "periods": PERIODS,
            "timezone": request.app[GUARD].zone.key,
            "error": error,
            "form": form or {},
        },
        status=400 if error else 200,
    )


async def show(request: web.Request) -> web.Response:
    return await budgets_page(request)


async def add(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        limit = float(str(form.get("limit_usd", "")).strip() or "nan")
    except ValueError:
        limit = float("nan")
    kind = str(form.get("kind", ""))
    data = {
        "name": str(form.get("name", "")),
        "scope": {"kind": kind, "value": str(form.get("value", "")) or None},
        "period": str(form.get("period", "")),
        "limit_usd": limit,
        "hard": form.get("hard") == "on",
    }
    try:
        await request.app[GUARD].store.add(parse_budget(data, "the form"))
    except BudgetError as exc:
        return await budgets_page(request, str(exc), dict(form))
    await request.app[GUARD].refresh()
    raise web.HTTPSeeOther("/budgets")


async def delete(request: web.Request) -> web.Response:
    budget_id = parse_id(request.match_info["id"], "budget")
    await request.app[GUARD].store.delete(budget_id)
    await request.app[GUARD].refresh()
    raise web.HTTPSeeOther("/budgets")


def setup(app: web.Application) -> None:
    app.router.add_get("/budgets", show)
    app.router.add_post("/budgets", add)
    app.router.add_post("/budgets/{id}/delete", delete)
