"""Who may use the UI and API, and from where. Three checks, outermost first:

1. Host: the `Host` header must be a loopback name, an IP address, or a name listed in
   `--allowed-hosts`, so a DNS-rebinding page (evil.example resolving to 127.0.0.1) gets
   nothing.
2. Token (only with `--ui-token`): the API needs `Authorization: Bearer <token>`; UI pages
   take the same header or the HttpOnly, SameSite=Strict cookie the login form sets.
   Settings refuse a non-loopback bind without a token.
3. Writes: a POST/PUT/PATCH/DELETE that a browser marks as cross-site (Sec-Fetch-Site, or an
   Origin that is not this host) is refused, and the JSON API's writes need
   `Content-Type: application/json` (which a plain HTML form cannot send). Scripts and SDKs
   send neither header, so they keep working. UI forms also carry a CSRF token
   (webui/auth.py).

`/healthz` skips the host and token checks and `/static/` the token check: neither reveals
anything recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.settings import Settings

COOKIE = "agentops_session"
OPEN_PATHS = frozenset({"/healthz"})
LOGIN_PATH = "/login"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
SESSION_DAYS = 30

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(cls: type[web.HTTPException], message: str, **extra: str) -> web.HTTPException:
    return cls(
        text=orjson.dumps({"error": message}).decode(),
        content_type="application/json",
        headers=extra or None,
    )


MACHINE_PATHS = frozenset({"/metrics"})  # scraped by programs: the Bearer header, never a login


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path in MACHINE_PATHS


def is_open(request: web.Request) -> bool:
    return request.path in OPEN_PATHS or request.path.startswith("/static/")


# -- 1. Host -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRules:
    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" matches example.com and its subdomains

    @classmethod
    def from_settings(cls, settings: Settings) -> HostRules:
        entries = [e.strip().lower().rstrip(".") for e in (settings.allowed_hosts or "").split(",")]
        names = {e for e in entries if e and not e.startswith(".")}
        suffixes = tuple(e for e in entries if e.startswith(".") and len(e) > 1)
        names.update(s[1:] for s in suffixes)
        return cls(frozenset(names), suffixes)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        if host in LOOPBACK_NAMES or host.endswith(".localhost") or host in self.names:
            return True
        try:
            ipaddress.ip_address(host)
            return True  # an IP literal cannot be a rebound name
        except ValueError:
            pass
        return any(host.endswith(suffix) for suffix in self.suffixes)


def host_name(header: str | None) -> str | None:
    """The host part of a Host header, lower-cased, without port or brackets."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else None
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".") or None


def host_middleware(rules: HostRules) -> Middleware:
    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            host = host_name(request.headers.get("Host"))
            if not rules.allows(host):
                raise _json_error(
                    web.HTTPBadRequest,
                    f"Host header {host!r} is not allowed: open the UI through 127.0.0.1 or "
                    "localhost, or add the name to AGENTOPS_ALLOWED_HOSTS / --allowed-hosts",
                )
        return await handler(request)

    return check_host


# -- 2. Token ----------------------------------------------------------------------------------


def session_value(token: str) -> str:
    """What the login cookie holds: derived from the token, so the cookie is not the token
    (it cannot be replayed as a Bearer token) and changing the token logs everyone out."""
    return hmac.new(token.encode(), b"agentops-ui-session-v1", hashlib.sha256).hexdigest()


def bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def signed_in(request: web.Request, token: str) -> bool:
    if _same(bearer(request), token):
        return True
    return not is_api(request) and _same(request.cookies.get(COOKIE), session_value(token))


def token_middleware(token: str) -> Middleware:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_open(request) or request.path == LOGIN_PATH or signed_in(request, token):
            return await handler(request)
        if is_api(request):
            raise _json_error(
                web.HTTPUnauthorized,
                "this API needs the token set with --ui-token: send Authorization: Bearer <token>",
                **{"WWW-Authenticate": 'Bearer realm="agentops"'},
            )
        login = f"{LOGIN_PATH}?next={quote(request.path_qs, safe='')}"
        if request.headers.get("HX-Request"):  # an htmx swap: send the whole page to login
            raise web.HTTPUnauthorized(headers={"HX-Redirect": login})
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther(login)
        raise web.HTTPUnauthorized(text="sign in first", content_type="text/plain")

    return require_token


def set_session_cookie(response: web.StreamResponse, token: str, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        session_value(token),
        max_age=SESSION_DAYS * 86400,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


# -- 3. Cross-site writes -------------------------------------------------------------------------


def cross_site(request: web.Request) -> str | None:
    """Why a browser request is cross-site, or None. Non-browser clients send neither header."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site}"
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin == "null":
            return "Origin is null"
        parts = urlsplit(origin)
        host = request.headers.get("Host") or ""
        if _with_port(parts.netloc, parts.scheme) != _with_port(host, parts.scheme):
            return f"Origin {origin} is not this host"
    return None


def _with_port(netloc: str, scheme: str) -> str:
    """host:port, lower-cased, with the scheme's default port made explicit."""
    netloc = netloc.lower()
    if ":" in netloc.rsplit("]", 1)[-1]:
        return netloc
    return netloc + {"http": ":80", "https": ":443"}.get(scheme, "")


@web.middleware
async def guard_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in UNSAFE_METHODS:
        reason = cross_site(request)
        if reason:
            message = f"cross-site requests cannot change anything here ({reason})"
            if is_api(request):
                raise _json_error(web.HTTPForbidden, message)
            raise web.HTTPForbidden(text=message, content_type="text/plain")
        if (
            is_api(request)
            and request.method != "DELETE"
            and request.content_type != "application/json"
        ):
            raise _json_error(
                web.HTTPUnsupportedMediaType,
                f"Content-Type must be application/json, got {request.content_type or 'none'!r}",
            )
    return await handler(request)


def middlewares(settings: Settings) -> list[Middleware]:
    """Host check, token (when configured), cross-site write guard: in that order."""
    chain: list[Middleware] = [host_middleware(HostRules.from_settings(settings))]
    if settings.ui_token:
        chain.append(token_middleware(settings.ui_token))
    chain.append(guard_writes)
    return chain
