"""The browser's side of access: the login form (with `--ui-token`) and the CSRF check on
every UI form that changes something (and no NUL in its fields). The gateway/api/access.py
checks (host, token, cross-site writes) run before these.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.api import access
from gateway.errors import UserError
from gateway.settings import Settings
from webui import csrf
from webui.render import UI_TOKEN, error_page, render

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def check_csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in access.UNSAFE_METHODS and not access.is_api(request):
        form = await request.post()
        given = form.get(csrf.FIELD) or request.headers.get(csrf.HEADER)
        if not csrf.valid(request, given if isinstance(given, str) else None):
            return error_page(
                request,
                403,
                "This form has expired",
                "The page was open too long, or the gateway restarted. Go back, "
                "reload the page and try again.",
            )
        for name, value in form.items():
            if isinstance(value, str) and "\x00" in value:
                # as in a JSON body (gateway/api/exchanges.py): PostgreSQL stores no NUL
                raise UserError(f"{name} must not contain a NUL character (\\u0000)")
    response = await handler(request)
    csrf.set_cookie_if_new(request, response)
    return response


def safe_next(value: str | None) -> str:
    """Only a path on this site (no //host, no scheme): an open redirect would help phishing."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


async def login_page(request: web.Request) -> web.StreamResponse:
    token = request.app.get(UI_TOKEN)
    target = safe_next(request.query.get("next"))
    if not token or access.signed_in(request, token):
        raise web.HTTPSeeOther(target)
    return render(request, "login.html", {"next": target, "error": None})


async def login(request: web.Request) -> web.StreamResponse:
    token = request.app.get(UI_TOKEN)
    form = await request.post()
    target = safe_next(str(form.get("next") or "/"))
    if not token:
        raise web.HTTPSeeOther(target)
    if not hmac.compare_digest(str(form.get("token") or "").encode(), token.encode()):
        return render(
            request,
            "login.html",
            {
                "next": target,
                "error": "That is not the token the gateway was started with (--ui-token).",
            },
            status=401,
        )
    response = web.HTTPSeeOther(target)
    access.set_session_cookie(response, token, request.secure)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(access.LOGIN_PATH)
    response.del_cookie(access.COOKIE, path="/")
    raise response


def setup(app: web.Application, settings: Settings) -> None:
    app[csrf.SECRET] = secrets.token_bytes(32)
    if settings.ui_token:
        app[UI_TOKEN] = settings.ui_token
    app.middlewares.append(check_csrf)
    app.router.add_get(access.LOGIN_PATH, login_page)
    app.router.add_post(access.LOGIN_PATH, login)
    app.router.add_post("/logout", logout)
