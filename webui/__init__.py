"""The server-rendered web UI on the UI port: Jinja2 templates, autoescaped, strict CSP.

Templates live in the top-level `templates/` folder of a checkout; a built wheel carries
them as `webui/templates`, so both layouts are looked up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway import api
from gateway.settings import Settings
from gateway.store import ExchangeFilter

HERE = Path(__file__).resolve().parent
JINJA = web.AppKey("jinja", jinja2.Environment)
SETTINGS = web.AppKey("settings", Settings)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def template_dir() -> Path:
    for candidate in (HERE / "templates", HERE.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("the templates folder is missing from this installation")


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir()),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def render(request: web.Request, name: str, context: dict[str, Any]) -> web.Response:
    html = request.app[JINJA].get_template(name).render(request=request, **context)
    response = web.Response(text=html, content_type="text/html")
    response.headers["Vary"] = "HX-Request"
    return response


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


async def index(request: web.Request) -> web.Response:
    items, cursor = await request.app[api.STORE].list_exchanges(ExchangeFilter(), 50, None)
    settings = request.app[SETTINGS]
    return render(request, "index.html", {"items": items, "next": cursor,
                                          "proxy": f"http://{settings.host}:{settings.port}"})


def setup(app: web.Application, settings: Settings) -> None:
    app[JINJA] = environment()
    app[SETTINGS] = settings
    app.middlewares.append(security_headers)
    app.router.add_get("/", index)
    app.router.add_static("/static/", HERE / "static")
    from webui import replay_views  # imports this module: set up after it is complete

    replay_views.setup(app)
