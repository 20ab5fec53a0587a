"""Who may use the UI and API: everyone on loopback, or whoever holds the configured token.

Settings refuse to bind a non-loopback address without a token; with one, every route but
/healthz needs `Authorization: Bearer <token>` (scripts) or the login cookie (the browser).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

COOKIE = "agentops_token"
OPEN_PATHS = frozenset({"/healthz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def presented_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.cookies.get(COOKIE)


def token_middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = token.encode()

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        given = presented_token(request)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            raise web.HTTPUnauthorized(
                text=orjson.dumps({"error": "this UI/API needs the token set with --ui-token: "
                                            "send Authorization: Bearer <token>"}).decode(),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="agentops"'})
        return await handler(request)

    return require_token
