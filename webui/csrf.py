"""CSRF tokens for the UI's forms: an HMAC of a random per-browser cookie under a per-process
secret (a signed double-submit token). Another site can neither read nor forge it, and a
restart invalidates every open form (it says so and asks for a reload).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from aiohttp import web

COOKIE = "agentops_csrf"
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SECRET = web.AppKey("csrf_secret", bytes)
SEED = web.RequestKey("csrf_seed", str)
NEW = web.RequestKey("csrf_new", bool)
_SEED = re.compile(r"[A-Za-z0-9_-]{20,64}")


def _sign(request: web.Request, seed: str) -> str:
    return hmac.new(request.app[SECRET], seed.encode(), hashlib.sha256).hexdigest()


def token(request: web.Request) -> str:
    """The token this browser's forms carry; makes its cookie on first use."""
    seed = request.get(SEED) or request.cookies.get(COOKIE, "")
    if not _SEED.fullmatch(seed):
        seed = secrets.token_urlsafe(24)
        request[NEW] = True
    request[SEED] = seed
    return _sign(request, seed)


def valid(request: web.Request, given: str | None) -> bool:
    seed = request.cookies.get(COOKIE, "")
    if not given or not _SEED.fullmatch(seed):
        return False
    return hmac.compare_digest(given.encode(), _sign(request, seed).encode())


def set_cookie_if_new(request: web.Request, response: web.StreamResponse) -> None:
    if request.get(NEW):
        response.set_cookie(
            COOKIE, request[SEED], path="/", httponly=True, samesite="Strict", secure=request.secure
        )
