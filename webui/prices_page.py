"""The price page (`/prices`): the price table in use, and models seen without a price with
their call counts (from the rollups), with how to add a price."""

from __future__ import annotations

from aiohttp import web

from gateway.api import exchanges as api
from webui.render import render


async def prices(request: web.Request) -> web.Response:
    table = request.app[api.PRICES]
    unpriced = [
        row
        for row in await request.app[api.STORE].rollups.unpriced()
        if table.price(row["model"]) is None
    ]
    models = sorted(table.models.items())
    return render(
        request,
        "prices.html",
        {"models": models, "unpriced": unpriced, "as_of": table.as_of, "source": table.source},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/prices", prices)
