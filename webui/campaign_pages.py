"""The campaigns page (`/campaigns`): each campaign with its progress (selected, scored,
failed, mean score) and a form to start one. The same checks as /api/campaigns."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.campaigns import CAMPAIGNS
from gateway.capture.exchange import is_id
from gateway.errors import NotFound, UserError
from gateway.replay.campaigns import MODES
from webui.render import render

FILTER_INPUTS = ("agent", "model", "endpoint", "q", "since", "until")
NO_SETTINGS = ("json_valid",)  # the built-in that needs neither an expected output nor settings


async def campaigns(request: web.Request) -> web.Response:
    manager = request.app[CAMPAIGNS]
    items = [c.to_json() for c in await manager.store.all()]
    judges = [j["name"] for j in await manager.evaluator.judges.all()]
    return render(
        request,
        "campaigns.html",
        {
            "campaigns": items,
            "judges": judges,
            "built_in": NO_SETTINGS,
            "modes": MODES,
            "filter_inputs": FILTER_INPUTS,
        },
    )


def _size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"sample size must be a whole number, got {text!r}") from None


async def add_campaign(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    body: dict[str, Any] = {
        "name": str(form.get("name") or ""),
        "description": str(form.get("description") or ""),
        "judge": str(form.get("judge") or ""),
        "mode": str(form.get("mode") or "batch"),
        "max_nb_events": _size(str(form.get("max_nb_events") or "").strip()),
        "filter": {k: str(form.get(k) or "").strip() for k in FILTER_INPUTS},
    }
    await request.app[CAMPAIGNS].create(body)
    raise web.HTTPSeeOther("/campaigns")


async def delete_campaign(request: web.Request) -> web.StreamResponse:
    text = request.match_info["id"]
    if not is_id(text):
        raise NotFound(f"campaign {text} not found")
    await request.app[CAMPAIGNS].delete(int(text))
    raise web.HTTPSeeOther("/campaigns")


def setup(app: web.Application) -> None:
    app.router.add_get("/campaigns", campaigns)
    app.router.add_post("/campaigns", add_campaign)
    app.router.add_post("/campaigns/{id}/delete", delete_campaign)
