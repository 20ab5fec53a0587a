"""The reverse proxy: forwards every call unchanged and hands a raw capture record to the recorder.

This is the hot path. It copies bytes and takes timestamps; all parsing, JSON work and
database I/O happen later in the writer. It runs on aiohttp's low-level server (no router,
no middlewares), so the proxy port serves nothing but the proxy.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.http_writer import StreamWriter
from yarl import URL

from gateway.capture import redact
from gateway.capture.exchange import (
    CLIENT_DISCONNECTED,
    SHUTDOWN,
    UPSTREAM_ERROR,
    UPSTREAM_TIMEOUT,
    Exchange,
    new_id,
)
from gateway.lifecycle import InFlight
from gateway.proxy import scrub
from gateway.proxy.budgets import BudgetGuard
from gateway.proxy.upstream import Limits, UpstreamPool, UpstreamResponse
from gateway.store.budgets import Budget

log = logging.getLogger("agentops.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "host",
        "expect",
    }
)
HINT_PREFIX = "x-agentops-"
# Let aiohttp's client add nothing the caller did not send.
LARGE_BODY = 1024 * 1024
SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Header limits of the HTTP parsers on both sides of the proxy. aiohttp's defaults (8,190
# bytes a line or field, 128 headers) answered a longer header with a 400 before the proxy
# saw the call (never forwarded, never recorded), and turned an upstream's into a 502: the
# proxy passes what a client and its upstream agree on, within bounds that keep one
# request's head under about 16 MiB.
HEADER_BYTES = 64 * 1024  # a request or status line, a header's value
MAX_HEADERS = 256


BUDGET_EXCEEDED = "budget_exceeded"
BUDGET_HEADER = "X-AgentOps-Budget"


def budget_header(budget: Budget) -> str:
    """The budget's name as a header value (non-Latin-1 and control characters escaped)."""
    name = budget.name
    if name.isascii() and name.isprintable():
        return name
    return name.encode("unicode_escape").decode("ascii")


def error_body(message: str, kind: str, code: int) -> bytes:
    """A gateway error in Mistral's error shape, so SDKs report it like any API error."""
    return orjson.dumps(
        {"object": "error", "message": message, "type": kind, "param": None, "code": str(code)}
    )


# What the proxy relays: aiohttp's response (HEAD, or no pool) or the lean client's.
Upstream = aiohttp.ClientResponse | UpstreamResponse
HeaderKind = tuple[str, bool, bool, bool]
KINDS_KEPT = 4096
# header_kind's answers by name: the hot loops read it with one dict lookup (`get`), cheaper
# than a call through lru_cache, and ask header_kind only for a name not seen yet.
_KINDS: dict[str, HeaderKind] = {}


def header_kind(name: str) -> HeaderKind:
    """What a header name is to the proxy: (lower-case, not forwarded (hop-by-hop or a hint),
    secret (redacted, and read for the call's keys), an X-AgentOps- hint). Kept for the first
    KINDS_KEPT names (header names repeat on every call)."""
    kind = _KINDS.get(name)
    if kind is not None:
        return kind
    lower = name.lower()
    hint = lower.startswith(HINT_PREFIX)
    kind = lower, lower in HOP_BY_HOP or hint, redact.is_secret_name(name), hint
    if len(_KINDS) < KINDS_KEPT:
        _KINDS[name] = kind
    return kind


@lru_cache(maxsize=256)  # an agent sends the same key on every call (memory only)
def secrets_fingerprint(secrets: tuple[tuple[str, str], ...]) -> str | None:
    """The fingerprint of the key among a request's secret-named headers (`redact.key_of`)."""
    return redact.fingerprint(redact.key_of(list(secrets)))


def forwarded_headers(
    pairs: Iterable[tuple[str, str]], redacted: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """Request or response headers minus hop-by-hop ones (and those Connection names);
    `redacted`, when given, gets every header, redacted, in the same pass (for the record)."""
    out: list[tuple[str, str]] = []
    named: set[str] = set()
    kinds = _KINDS
    for name, value in pairs:
        lower, dropped, secret, _ = kinds.get(name) or header_kind(name)
        if redacted is not None:
            redacted.append((name, redact.REDACTED if secret else value))
        if dropped:
            if lower == "connection":
                named.update(token.strip().lower() for token in value.split(","))
            continue
        out.append((name, value))
    named -= HOP_BY_HOP
    if named:  # rare: `Connection: x-custom` makes x-custom hop-by-hop
        out = [(name, value) for name, value in out if name.lower() not in named]
    return out


def target(request: web.BaseRequest) -> str:
    """The request target as path?query. An absolute-form target (`GET http://host/p`, as sent
    to an explicit proxy) keeps only its path: the proxy goes to the upstream, never the host."""
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    return URL(raw, encoded=True).raw_path_qs or "/"


def split_run_prefix(path: str) -> tuple[str, str | None]:
    """`/r/<name>/v1/...` -> (`/v1/...`, name): a run named in the client's base URL. The name
    is percent-decoded (`/r/nightly%20eval` is the run `X-AgentOps-Run: nightly eval` names;
    bytes that are not UTF-8 become escapes when stored)."""
    if not path.startswith("/r/"):
        return path, None
    name, sep, rest = path[3:].partition("/")
    if not name:
        return path, None
    if "%" in name:
        name = unquote(name, errors="surrogateescape")
    return "/" + rest if sep else "/", name


@dataclass(frozen=True, slots=True)
class Route:
    """Calls under `prefix` go to `upstream` (prefix removed) and are parsed by `provider`."""

    prefix: str  # "/elevenlabs"
    upstream: str
    provider: str


class RelayedResponse(web.StreamResponse):
    """A response relayed from the upstream, with the headers it came with and no more:
    aiohttp's server gives a response that lacks them a `Date`, a `Server` (its own name) and,
    with a body, `Content-Type: application/octet-stream`; a relay adds none (framing aside:
    chunking, `Connection`). Streams (no Content-Length: SSE, chunked) send the head at once,
    so a client sees the status as soon as the upstream sends it. The head goes out as the
    upstream's bytes (`head_bytes`), odd ones included."""

    async def _prepare_headers(self) -> None:
        headers = self._headers
        had = hdrs.DATE in headers, hdrs.SERVER in headers, hdrs.CONTENT_TYPE in headers
        await super()._prepare_headers()
        for name, present in zip(ADDED_BY_AIOHTTP, had, strict=True):
            if not present:
                headers.popall(name, None)

    async def _write_headers(self) -> None:
        """aiohttp's, unless the head holds text that is not ASCII: then aiohttp's
        `StreamResponse._write_headers` and `StreamWriter.write_headers` with the head made by
        `head_bytes`. aiohttp's serializer writes strict UTF-8 and silently drops what it
        cannot encode, so header and reason bytes that were not UTF-8 never reached the
        client. (The writer keeps the head until the first body bytes, or sends it now, as
        aiohttp does; tests/test_wire_odd.py pins the bytes both ways.)"""
        if self._reason.isascii() and all(map(str.isascii, self._headers.values())):
            return await super()._write_headers()
        request, writer = self._req, self._payload_writer
        assert request is not None and isinstance(writer, StreamWriter)
        head = head_bytes(request.version, self._status, self._reason, self._headers.items())
        writer._headers_written = False
        writer._headers_buf = head
        if self._send_headers_immediately:
            writer.send_headers()


def head_bytes(
    version: tuple[int, int], status: int, reason: str, headers: Iterable[tuple[str, str]]
) -> bytes:
    """A response head as bytes, text with surrogate escapes (`header_text`) as the bytes it
    stands for. CR, LF or NUL in a line is refused (ValueError), as aiohttp refuses CR and LF:
    an upstream's parser lets none through, but a header set in code could carry one."""
    lines = [f"HTTP/{version[0]}.{version[1]} {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    whole = "".join(lines)
    if "\r" in whole or "\n" in whole or "\x00" in whole:
        raise ValueError("a response head line holds CR, LF or NUL")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


ADDED_BY_AIOHTTP = (hdrs.DATE, hdrs.SERVER, hdrs.CONTENT_TYPE)


class SizedResponse(RelayedResponse):
    """A response whose length the upstream gave (Content-Length): its head goes out with the
    first body bytes, in one send, rather than in a send of its own (aiohttp's StreamResponse
    sends the head at `prepare`). The client sees the same bytes; a 1 KB call costs one
    system call fewer."""

    _send_headers_immediately = False


def header_text(raw: bytes) -> str:
    """An upstream's header bytes as text that goes back out as the same bytes (aiohttp's
    serializer, or `head_bytes`): UTF-8, a byte that is not as a surrogate escape (which the
    record shows as `\\xNN`, as it shows a client's)."""
    return raw.decode("utf-8", "surrogateescape")


WEBSOCKET_NOT_PROXIED = (
    "WebSocket connections are not proxied by AgentOps Studio; connect to {upstream} directly "
    "(the HTTP streaming endpoints are proxied and recorded)"
)


class Proxy:
    """The proxy handler. `submit` receives each finished record; it must not block or raise."""

    def __init__(
        self,
        upstream: str,
        session: aiohttp.ClientSession,
        submit: Callable[[Exchange], None],
        *,
        timeout: float,
        max_body_bytes: int,
        routes: Sequence[Route] = (),
        held_keys: scrub.Keys | None = None,
        begin: Callable[[Exchange], None] | None = None,
        guard: BudgetGuard | None = None,
        alternatives: Mapping[str, str] | None = None,
        in_flight: InFlight | None = None,
        pool: UpstreamPool | None = None,
    ) -> None:
        """`held_keys`: keys of the gateway's own (the replay key), scrubbed from every record
        as the caller's are. `guard`: the budgets, checked before a call goes upstream.
        `alternatives`: the operator's other upstreams by name (--upstream-alt), which only
        the gateway's own calls (`send`) may name; clients' calls never reach them.
        `in_flight`: where each call registers while it is served (for the stop), done here
        rather than by `InFlight.wrap`, which would add a coroutine frame to every resume.
        `pool`: the lean upstream client (upstream.py) for every call but HEAD; without one,
        `session` sends them all."""
        self.upstream = upstream.rstrip("/")
        self.alternatives = {k: v.rstrip("/") for k, v in (alternatives or {}).items()}
        self.routes = tuple(
            Route(r.prefix.rstrip("/"), r.upstream.rstrip("/"), r.provider) for r in routes
        )
        # One C-level startswith decides that a Mistral call is not routed elsewhere.
        self.route_prefixes = tuple(r.prefix for r in self.routes)
        self.session = session
        self.pool = pool
        self.submit = submit
        # told of each call as it starts (the journal: see journal.py); must not block or raise
        self.begin = begin or (lambda exchange: None)
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=timeout, sock_read=timeout
        )
        self.max_body_bytes = max_body_bytes
        self.held_keys = held_keys or scrub.Keys()
        self.guard = guard
        self.in_flight = in_flight if in_flight is not None else InFlight()  # (empty is falsy)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        path_qs = target(request)
        pairs = list(request.headers.items())  # read once, for the record and for upstream
        exchange, secrets = self._begin(request, path_qs, pairs)
        route = None
        if exchange.path.startswith(self.route_prefixes):
            route = self._route(exchange)
        base = route.upstream if route is not None else self.upstream
        upstream: Upstream | web.Response | None = None
        came: list[bytes] = []  # the body as it comes (a call cut meanwhile keeps it)
        _, sep, query = path_qs.partition("?")
        keys = scrub.scrub_start(exchange, pairs, query, self.held_keys, secrets)
        self.begin(exchange)
        in_flight = self.in_flight
        task = asyncio.current_task()
        in_flight.tasks.add(task)  # type: ignore[arg-type]  # aiohttp runs each in a task
        in_flight.served += 1
        try:
            if route is not None and request.headers.get("Upgrade", "").lower() == "websocket":
                return self._refuse_websocket(exchange, base, started)
            if request.headers.get("Expect", "").lower() == "100-continue":
                # curl asks before large uploads; answer it here rather than relay it
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body, broken = await read_body(request.content, lambda: self._left(request), came)
            exchange.request_body = body
            if broken is not None:
                return self._client_gone_sending(exchange, broken)
            if self.guard is not None and self.guard.blocked:
                budget = self.guard.refusing(exchange, body)
                if budget is not None:
                    return self._refuse_budget(exchange, budget, started)
            url = URL(base + exchange.path + sep + query, encoded=True)
            upstream = await self._open(exchange, request.method, url, pairs, body, started, base)
            # Not isinstance(upstream, web.Response): web.Response is a MutableMapping, an ABC,
            # whose isinstance costs 10x a plain class's (twice a call). _open gives a
            # response to relay or a plain web.Response.
            if not isinstance(upstream, (UpstreamResponse, aiohttp.ClientResponse)):
                return upstream  # the 502/504, already recorded
            async with upstream:
                return await self._relay(request, exchange, upstream, started)
        except asyncio.CancelledError:
            if self._left(request):  # the client hung up (aiohttp cancels its call)
                self._client_left(exchange, upstream)
            else:
                exchange.state = SHUTDOWN
                exchange.error = exchange.error or "gateway shut down before the call finished"
                if not exchange.request_body and came:  # cut while the body came in
                    exchange.request_body = b"".join(came)
            raise
        finally:
            in_flight.tasks.discard(task)  # type: ignore[arg-type]
            exchange.latency_ms = (time.perf_counter() - started) * 1000
            failed = type(upstream) is web.Response
            self._finish(exchange, pairs, query, failed=failed, keys=keys)

    async def send(
        self,
        method: str,
        path: str,
        pairs: list[tuple[str, str]],
        body: bytes,
        *,
        replay_of: int,
        hints: dict[str, str],
        upstream_name: str | None = None,
    ) -> Exchange:
        """Send one request of our own (a replay) the way a client's call is forwarded, and
        record it the same way. `path` is joined to the configured upstream (or to the
        alternative named `upstream_name`) and to nothing else: it must be a path, never a
        URL."""
        if not path.startswith("/") or path.startswith("//"):
            raise ValueError(f"not a path: {path!r}")
        base = self.upstream
        if upstream_name is not None:
            if upstream_name not in self.alternatives:
                raise ValueError(f"no alternative upstream named {upstream_name!r}")
            base = self.alternatives[upstream_name]
        started = time.perf_counter()
        key = redact.fingerprint(redact.key_of(pairs))
        exchange = self._record(method, path, path, "", redact.redact_headers(pairs), key, hints)
        exchange.request_body, exchange.replay_of = body, replay_of
        upstream: Upstream | web.Response | None = None
        keys = scrub.scrub_start(exchange, pairs, "", self.held_keys)
        self.begin(exchange)
        try:
            url = URL(base + path, encoded=True)
            origin = URL(base)
            if (url.scheme, url.host, url.port) != (origin.scheme, origin.host, origin.port):
                raise ValueError(f"{path!r} would leave the upstream")
            upstream = await self._open(exchange, method, url, pairs, body, started, base)
            if not isinstance(upstream, (UpstreamResponse, aiohttp.ClientResponse)):  # (__call__)
                return exchange
            async with upstream:
                self._response_head(exchange, upstream, started)
                try:
                    await self._pump(exchange, upstream, started, None)
                except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                    exchange.state = UPSTREAM_TIMEOUT
                    exchange.error = f"upstream stalled mid-response: {type(exc).__name__}"
                except (aiohttp.ClientError, OSError) as exc:
                    exchange.state = UPSTREAM_ERROR
                    exchange.error = f"upstream broke off mid-response: {type(exc).__name__} {exc}"
            return exchange
        except asyncio.CancelledError:
            exchange.state = SHUTDOWN
            exchange.error = exchange.error or "gateway shut down before the call finished"
            raise
        finally:
            exchange.latency_ms = (time.perf_counter() - started) * 1000
            failed = type(upstream) is web.Response
            self._finish(exchange, pairs, "", failed=failed, keys=keys)

    def _finish(
        self,
        exchange: Exchange,
        pairs: list[tuple[str, str]],
        query: str,
        *,
        failed: bool,
        keys: scrub.Keys | None,
    ) -> None:
        """Scrub the keys out of the finished record (the client already has its response),
        then hand it on; a call that never reached the upstream is logged, scrubbed too."""
        scrub.scrub_call(exchange, pairs, query, self.held_keys, keys, limit=self.max_body_bytes)
        if failed:
            log.warning(
                "%s %s -> %s: %s", exchange.method, exchange.path, exchange.status, exchange.error
            )
        self.submit(exchange)
        if self.guard is not None:
            self.guard.completed(exchange)

    def _begin(
        self, request: web.BaseRequest, path_qs: str, pairs: list[tuple[str, str]]
    ) -> tuple[Exchange, tuple[tuple[str, str], ...]]:
        """The call's record, and its secret-named headers (for its keys): one pass over the
        headers redacts them, picks out those and the X-AgentOps- hints."""
        client_path, _, query = path_qs.partition("?")
        path, run_name = split_run_prefix(client_path)
        hints = {}
        redacted = []
        secrets = []
        kinds = _KINDS
        for name, value in pairs:
            lower, _, secret, hint = kinds.get(name) or header_kind(name)
            if secret:
                secrets.append((name, value))
                redacted.append((name, redact.REDACTED))
            else:
                redacted.append((name, value))
            if hint:
                hints[lower[len(HINT_PREFIX) :]] = value
        if run_name:
            hints["run_prefix"] = run_name
        found = tuple(secrets)
        key = secrets_fingerprint(found) if found else None
        exchange = self._record(request.method, client_path, path, query, redacted, key, hints)
        return exchange, found

    @staticmethod
    def _record(
        method: str,
        client_path: str,
        path: str,
        query: str,
        redacted: list[tuple[str, str]],
        key_fingerprint: str | None,
        hints: dict[str, str],
    ) -> Exchange:
        """A new record; `redacted`: the request headers, already redacted."""
        return Exchange(
            id=new_id(),
            started_at=time.time(),
            method=method,
            client_path=client_path,
            path=path,
            query=redact.redact_query(query) if query else "",
            request_headers=redacted,
            request_body=b"",
            key_fingerprint=key_fingerprint,
            hints=hints,
            omit_bodies="omit" in hints and hints["omit"].strip().lower() == "bodies",
        )

    def _route(self, exchange: Exchange) -> Route | None:
        """The route whose prefix the path starts with (whole segments); strips the prefix."""
        for route in self.routes:
            rest = exchange.path[len(route.prefix) :]
            if exchange.path.startswith(route.prefix) and (not rest or rest[0] == "/"):
                exchange.path = rest or "/"
                exchange.provider = route.provider
                return route
        return None

    def _refuse_websocket(self, exchange: Exchange, upstream: str, started: float) -> web.Response:
        message = WEBSOCKET_NOT_PROXIED.format(
            upstream=upstream.replace("http", "ws", 1) + exchange.path
        )
        body = orjson.dumps({"detail": {"status": "websocket_not_proxied", "message": message}})
        exchange.status, exchange.error = 501, message
        exchange.ttfb_ms = (time.perf_counter() - started) * 1000
        exchange.response_headers = [("Content-Type", "application/json")]
        exchange.response_chunks, exchange.chunk_ms = [body], [exchange.ttfb_ms]
        return web.Response(status=501, body=body, content_type="application/json")

    def _refuse_budget(self, exchange: Exchange, budget: Budget, started: float) -> web.Response:
        """429 before anything goes upstream; recorded like any answer (the writer reads
        `budget_exceeded` from the body as the call's error_type)."""
        scope = budget.scope.kind + (f" {budget.scope.value}" if budget.scope.value else "")
        message = (
            f"budget {budget.name!r} ({scope}, ${budget.limit_usd:g} per {budget.period}) "
            "is used up: calls in its scope are refused until the period ends"
        )
        body = error_body(message, BUDGET_EXCEEDED, 429)
        headers = [("Content-Type", "application/json"), (BUDGET_HEADER, budget_header(budget))]
        exchange.status = 429
        exchange.ttfb_ms = (time.perf_counter() - started) * 1000
        exchange.response_headers = headers
        exchange.response_chunks, exchange.chunk_ms = [body], [exchange.ttfb_ms]
        return web.Response(status=429, body=body, headers=dict(headers))

    async def _open(
        self,
        exchange: Exchange,
        method: str,
        url: URL,
        pairs: list[tuple[str, str]],
        body: bytes,
        started: float,
        base: str,
    ) -> Upstream | web.Response:
        """The upstream's response, or (when it cannot be reached) the recorded 502/504."""
        headers = forwarded_headers(pairs)
        try:
            if self.pool is not None and method != "HEAD":
                return await self.pool.request(method, url, headers, body, self.timeout)
            data: bytes | io.BytesIO | None = body or None
            if len(body) > LARGE_BODY:
                data = io.BytesIO(body)  # aiohttp writes big bodies in pieces (warns on bytes)
            return await self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self.timeout,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            return self._fail(
                exchange,
                504,
                UPSTREAM_TIMEOUT,
                "upstream_timeout",
                f"upstream {base} did not answer in time",
                exc,
                started,
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return self._fail(
                exchange,
                502,
                UPSTREAM_ERROR,
                "upstream_unreachable",
                f"could not reach upstream {base}",
                exc,
                started,
            )

    def _response_head(
        self, exchange: Exchange, upstream: Upstream, started: float
    ) -> list[tuple[str, str]]:
        """Note the response's status and (redacted) headers; returns the headers to send on."""
        exchange.ttfb_ms = (time.perf_counter() - started) * 1000
        exchange.status = upstream.status
        redacted: list[tuple[str, str]] = []
        pairs = [
            (k.decode("latin-1"), v.decode("latin-1") if v.isascii() else header_text(v))
            for k, v in upstream.raw_headers
        ]
        headers = forwarded_headers(pairs, redacted)
        exchange.response_headers = redacted
        return headers

    async def _pump(
        self,
        exchange: Exchange,
        upstream: Upstream,
        started: float,
        write: Callable[[bytes], Awaitable[None]] | None,
    ) -> BaseException | None:
        """Copy the body as it arrives: keep it (up to --max-body-bytes) with arrival times,
        and hand each chunk to `write`. Returns the client's error when it went away."""
        chunks, times = exchange.response_chunks, exchange.chunk_ms
        stored = 0
        async for chunk in upstream.content.iter_any():
            if stored < self.max_body_bytes:
                chunks.append(chunk)
                times.append((time.perf_counter() - started) * 1000)
                stored += len(chunk)
            else:
                exchange.response_truncated = True
            if write is not None:
                try:
                    await write(chunk)
                except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
                    return exc
        return None

    async def _relay(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        upstream: Upstream,
        started: float,
    ) -> web.StreamResponse:
        headers = self._response_head(exchange, upstream, started)
        kind = SizedResponse if upstream.content_length is not None else RelayedResponse
        response = kind(status=upstream.status, reason=upstream.reason, headers=headers)
        try:
            await response.prepare(request)
        except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
            return self._client_gone(exchange, exc, response)
        try:
            gone = await self._pump(exchange, upstream, started, response.write)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            self._abort(request, exchange, UPSTREAM_TIMEOUT, "upstream stalled mid-response", exc)
            return response
        except (aiohttp.ClientError, OSError) as exc:
            self._abort(request, exchange, UPSTREAM_ERROR, "upstream broke off mid-response", exc)
            return response
        if gone is not None:
            return self._client_gone(exchange, gone, response)
        try:
            await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
            return self._client_gone(exchange, exc, response)
        return response

    def _fail(
        self,
        exchange: Exchange,
        status: int,
        state: str,
        kind: str,
        message: str,
        exc: BaseException,
        started: float,
    ) -> web.Response:
        detail = f"{message}: {type(exc).__name__} {exc}".strip()
        exchange.state, exchange.error, exchange.status = state, detail, status
        body = error_body(detail, kind, status)
        exchange.ttfb_ms = (time.perf_counter() - started) * 1000
        exchange.response_headers = [("Content-Type", "application/json")]
        exchange.response_chunks, exchange.chunk_ms = [body], [exchange.ttfb_ms]
        return web.Response(status=status, body=body, content_type="application/json")

    def _abort(
        self,
        request: web.BaseRequest,
        exchange: Exchange,
        state: str,
        message: str,
        exc: BaseException,
    ) -> None:
        """Headers are already sent: the only honest signal left is to drop the connection."""
        exchange.state, exchange.error = state, f"{message}: {type(exc).__name__} {exc}"
        if request.transport is not None:
            request.transport.close()

    def _left(self, request: web.BaseRequest) -> bool:
        """Whether the call's cancellation is its client hanging up: its connection is lost,
        and the stop has not cut the calls (aiohttp's stop closes their connections too)."""
        return request.transport is None and not self.in_flight.cutting

    @staticmethod
    def _client_left(exchange: Exchange, upstream: Upstream | web.Response | None) -> None:
        """The client's connection closed while its call was served: the call is cancelled
        and its upstream connection closed (as the client's closing would have reached the
        upstream without the proxy); the record keeps what had come."""
        exchange.state = CLIENT_DISCONNECTED
        if exchange.error is None:
            when = "before the response began" if upstream is None else "during the response"
            exchange.error = f"client disconnected {when}; the upstream call was cancelled"

    @staticmethod
    def _client_gone_sending(exchange: Exchange, exc: BaseException) -> web.StreamResponse:
        """The client left while sending its request: nothing went upstream, nobody is left
        to answer; the record keeps the bytes that came."""
        exchange.state = CLIENT_DISCONNECTED
        exchange.error = (
            f"client disconnected while sending the request body, after "
            f"{len(exchange.request_body or b'')} bytes: {type(exc).__name__}"
        )
        return web.Response(status=400)

    @staticmethod
    def _client_gone(
        exchange: Exchange, exc: BaseException, response: web.StreamResponse
    ) -> web.StreamResponse:
        exchange.state = CLIENT_DISCONNECTED
        exchange.error = f"client disconnected: {type(exc).__name__}"
        return response


# What reading a request's body raises when its client goes away before the body is whole: the
# connection lost, or a body cut short of its Content-Length or its last chunk.
BODY_BROKEN = (
    ConnectionError,
    aiohttp.ClientPayloadError,
    aiohttp.http_exceptions.HttpProcessingError,
)


async def read_body(
    content: aiohttp.StreamReader,
    gone: Callable[[], bool] = lambda: False,
    chunks: list[bytes] | None = None,
) -> tuple[bytes, BaseException | None]:
    """The request body, as `StreamReader.read()` gives it, or, when the client went away
    before sending it whole, the bytes that came and why it ended (the record keeps them).
    `gone()` says whether the client's connection is lost: aiohttp then cancels the call
    (`handler_cancellation`), which here is the client leaving, not a stop. `chunks`: where
    the bytes are gathered, so that a caller whose call is cut meanwhile still has them."""
    chunks = [] if chunks is None else chunks
    try:
        while chunk := await content.readany():
            chunks.append(chunk)
    except BODY_BROKEN as exc:
        return b"".join(chunks), exc
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not gone() or task is None:
            raise
        task.uncancel()  # (the handler ends at once: nothing is left to serve)
        return b"".join(chunks), ConnectionResetError("Connection lost")
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), None


def client_session(limit: int = 0, **kwargs: Any) -> aiohttp.ClientSession:
    """The upstream session: no decompression (gzip passes through), no connection cap."""
    connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO,
        max_line_size=HEADER_BYTES,
        max_field_size=HEADER_BYTES,
        max_headers=MAX_HEADERS,
        **kwargs,
    )


def upstream_pool() -> UpstreamPool:
    """The proxy's own upstream client, with the header limits of `client_session`."""
    return UpstreamPool(Limits(HEADER_BYTES, HEADER_BYTES, MAX_HEADERS))
