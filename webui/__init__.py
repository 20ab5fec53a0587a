"""The server-rendered web UI on the UI port: Jinja2 templates (autoescaped), htmx for partial
updates, Chart.js for the dashboard, all served locally under a strict CSP.

`setup()` adds the pages, the login form, the CSRF check and the security headers to the
UI/API application that gateway/app.py builds.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from gateway.api.access import Handler, is_api
from gateway.errors import AgentOpsError
from gateway.settings import Settings
from webui import (
    alerts_page,
    auth,
    budgets_page,
    campaign_pages,
    dashboard,
    dataset_pages,
    exchange_pages,
    prices_page,
    render,
    run_pages,
    score_pages,
)

log = logging.getLogger(__name__)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Strict CSP and friends on every response, errors included; nothing captured is cached.
    `Server-Timing` says how long the server took (bench/ui_timing.py reads it)."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _harden(request, exc, started)
        raise
    except Exception:  # a bug: still a 500 with the headers, and the traceback in the log
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = _internal_error(request)
    _harden(request, response, started)
    return response


def _internal_error(request: web.Request) -> web.StreamResponse:
    message = "Something went wrong on our side; the log has the details."
    if is_api(request):
        return web.json_response({"error": message}, status=500)
    try:
        return render.error_page(request, 500, "Something went wrong", message)
    except Exception:  # the page itself failed: plain text
        return web.Response(text=message, status=500)


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown pages get an HTML page with a way back; the API keeps its JSON errors."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if is_api(request) or request.path.startswith("/static/"):
            raise
        return render.error_page(
            request, 404, "Page not found", "There is nothing at this address."
        )
    except AgentOpsError as exc:  # the error tree (gateway/errors.py), as a page
        if is_api(request):
            raise
        title = "Not found" if exc.status == 404 else "That did not work"
        return render.error_page(request, exc.status, title, str(exc))


def _harden(request: web.Request, response: web.StreamResponse, started: float) -> None:
    if not response.prepared:
        timing = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        response.headers["Server-Timing"] = timing
        _secure(request, response)


async def _secure_streamed(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: a handler that streams (a dataset export) sends its head before
    the middleware sees its answer, so the same headers go on here."""
    _secure(request, response)


def _secure(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")  # no-referrer would null Origin
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if request.path.startswith("/static/"):
        headers.setdefault("Cache-Control", "no-cache")
    else:
        headers.setdefault("Cache-Control", "no-store")


def setup(app: web.Application, settings: Settings, proxy_url: str = "") -> None:
    app[render.JINJA] = render.environment()
    app[render.SETTINGS] = settings
    shown = proxy_url or f"http://{settings.host}:{settings.port}"
    for wildcard in ("//0.0.0.0:", "//[::]:"):  # a client connects to a real address
        shown = shown.replace(wildcard, "//127.0.0.1:")
    app[render.PROXY_URL] = shown
    app.middlewares.insert(0, security_headers)
    app.on_response_prepare.append(_secure_streamed)
    app.middlewares.append(html_errors)
    auth.setup(app, settings)
    exchange_pages.setup(app)
    run_pages.setup(app)
    dashboard.setup(app)
    prices_page.setup(app)
    dataset_pages.setup(app)
    score_pages.setup(app)
    alerts_page.setup(app)
    budgets_page.setup(app)
    campaign_pages.setup(app)
    app.router.add_static("/static/", render.HERE / "static")
    from webui import replay_views  # imports this module: set up after it is complete

    replay_views.setup(app)
