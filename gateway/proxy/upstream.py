"""The proxy's upstream client: HTTP/1.1 on asyncio's transports, parsed by llhttp (httptools).

Why not aiohttp's `ClientSession`, which the proxy used before: a session request builds a
`ClientRequest`, a `ClientResponse`, timers, trace hooks and a `StreamReader` per call: 134 µs
of CPU per 1 KB request on this project's machine (1 KB POSTs at c=64 to an upstream in another
process), where this client takes 68. A proxy knows more than a general client: the body is
already whole in memory, nothing is decompressed, no cookies, no redirects, no proxies, and the
response is only relayed. So this does only that: a keep-alive pool per origin, one write per
request head, llhttp's callbacks feeding a small buffer the relay reads with `iter_any`, and the
same timeouts (`sock_connect`, `sock_read`) with aiohttp's exception classes, so the proxy's
error handling reads the same either way. HEAD goes through the session (llhttp cannot be told
that a response has no body).

What goes upstream: the method, the target, each header as given (UTF-8, with undecodable bytes
the server read passed through as they came), `Host` from the URL, and `Content-Length` for the
body (none for an empty GET, as aiohttp).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
import httptools
from yarl import URL

GET_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
# sent again once when a kept-alive connection turns out closed (aiohttp's client's rule)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# What may not appear in a request line or header (aiohttp's rule: header injection).
FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
KEEPALIVE = 15.0  # seconds an idle connection is kept (aiohttp's default)
HIGH_WATER = 256 * 1024  # response bytes buffered before reading from upstream pauses
LOW_WATER = 64 * 1024
PIECE = 1024 * 1024  # a larger request body is written a piece at a time


@dataclass(frozen=True, slots=True)
class Limits:
    """llhttp's own bounds on a response head, checked here as aiohttp's parser does."""

    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 128

    @property
    def head_bytes(self) -> int:
        """The most a response head (1xx ones before it included) may take: httptools holds a
        header until its line ends, so the bound is checked on the bytes as they come."""
        return self.max_line_size + self.max_headers * (2 * self.max_field_size + 4)


class UpstreamResponse:
    """One response as the relay reads it: the surface of aiohttp's `ClientResponse` the proxy
    uses (`status`, `reason`, `raw_headers`, `content_length`, `content.iter_any()`, `async
    with`). Its body arrives through the connection's parser callbacks."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_exc",
        "_size",
        "_waiter",
        "content",
        "content_length",
        "done",
        "raw_headers",
        "reason",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self.done = False
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.content = self  # `upstream.content.iter_any()`, as on aiohttp's response

    def iter_any(self) -> UpstreamResponse:
        return self

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft() if len(chunks) == 1 else _drain(chunks)
                self._size -= len(chunk)
                if self._size <= LOW_WATER:
                    self._conn.resume()
                return chunk
            if self._exc is not None:
                raise self._exc
            if self.done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self.done or self._exc is not None:
            return
        self._exc = exc
        self._wake()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """The connection goes back to the pool when the response was read whole, else shut."""
        self._conn.finished(self)


def _drain(chunks: deque[bytes]) -> bytes:
    data = b"".join(chunks)
    chunks.clear()
    return data


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin; serves one request at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, str, int], limits: Limits) -> None:
        self.pool = pool
        self.key = key
        self.limits = limits
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.head: asyncio.Future[None] | None = None
        self.head_bytes = 0
        self.sent = 0  # requests sent on this connection
        self.reason = b""
        self.unsent = False  # the upstream answered before the whole body went
        self.closed = False
        self.paused = False
        self.keep_alive = False
        self.idle_since = 0.0
        self.read_timeout = 0.0
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.drained: asyncio.Future[None] | None = None
        self.loop = asyncio.get_running_loop()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes while idle: nothing can be trusted on this connection
            self.close()
            return
        self.last_read = self.loop.time()
        if self.head is not None and not self.head.done():
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.head_bytes:
                self._broken(aiohttp.ClientPayloadError("upstream sent a response head too long"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101 or CONNECT: nothing this relay can carry
            self._broken(aiohttp.ClientPayloadError("upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._broken(aiohttp.ClientPayloadError(f"upstream sent a malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        self._cancel_timer()
        response = self.response
        if response is not None and not response.done:
            if self.head is not None and self.head.done() and self._ends_at_close(response):
                self.on_message_complete()  # a body framed by the connection's close
            elif self.head is not None and not self.head.done():
                self._broken(aiohttp.ServerDisconnectedError())
            else:
                self._broken(aiohttp.ClientPayloadError("Response payload is not completed"))
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        self.drained = None

    # -- llhttp callbacks

    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response.done:  # an answer nobody asked for
            raise httptools.HttpParserError("bytes after the response")

    def on_status(self, reason: bytes) -> None:
        # (called once per piece the status line came in)
        self.reason += reason
        if len(self.reason) > self.limits.max_line_size:
            raise httptools.HttpParserError("status line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        assert response is not None
        limits = self.limits
        if len(name) > limits.max_field_size or len(value) > limits.max_field_size:
            raise httptools.HttpParserError("header too long")
        if len(response.raw_headers) >= limits.max_headers:
            raise httptools.HttpParserError("too many headers")
        response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None and self.head is not None
        status = self.parser.get_status_code()
        reason, self.reason = self.reason, b""
        if status < 200:  # 1xx: an interim answer (103 Early Hints); the real one follows
            response.raw_headers = []
            return
        response.status = status
        response.reason = reason.decode("utf-8", "surrogateescape")
        for name, value in response.raw_headers:
            if len(name) == 14 and name.lower() == b"content-length":
                try:
                    response.content_length = int(value)
                except ValueError:
                    response.content_length = None
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.done:
            return
        if response.status == 0:  # the end of a 1xx: wait for the real response
            return
        response.done = True
        # asked here: llhttp forgets it once the message is over
        self.keep_alive = self.parser.should_keep_alive()
        self._cancel_timer()
        response._wake()

    # -- the request

    async def send(
        self, head: bytes, body: bytes, response: UpstreamResponse, read_timeout: float | None
    ) -> None:
        """Write the request and wait for the response's head."""
        transport = self.transport
        assert transport is not None
        self.sent += 1
        self.head_bytes = 0
        if self.closed or transport.is_closing():  # the upstream let go of it already
            raise aiohttp.ServerDisconnectedError()
        self.response = response
        self.head = self.loop.create_future()
        self.read_timeout = read_timeout or 0.0
        if len(body) <= PIECE:
            if body:
                transport.writelines((head, body))  # (never pauses the protocol on 3.12)
            else:
                transport.write(head)
            await self._drained(read_timeout)
        else:  # a piece at a time, each given read_timeout to leave: a slow, steady upload
            transport.write(head)  # never times out, a stalled one does
            view = memoryview(body)
            for start in range(0, len(view), PIECE):
                if self.closed or self.head.done():  # gone, or answered early: stop sending
                    self.unsent = True
                    break
                transport.write(view[start : start + PIECE])
                await self._drained(read_timeout)
        self.last_read = self.loop.time()
        if read_timeout:
            self.timer = self.loop.call_at(self.last_read + read_timeout, self._check_timeout)
        await self.head

    async def _drained(self, read_timeout: float | None) -> None:
        """Wait until the kernel takes what was written (the read timeout counts from then,
        as aiohttp's), or the upstream answers before reading it all (the connection then
        goes no further than this response)."""
        drained, head = self.drained, self.head
        if drained is None or head is None:
            return
        await asyncio.wait((drained, head), timeout=read_timeout, return_when=FIRST_COMPLETED)
        if not drained.done():
            if not head.done():
                raise aiohttp.ServerTimeoutError("upstream stopped reading the request")
            self.unsent = True

    def _check_timeout(self) -> None:
        self.timer = None
        if self.response is None or self.response.done or self.closed:
            return
        due = self.last_read + self.read_timeout
        now = self.loop.time()
        if self.paused or now < due:
            self.timer = self.loop.call_at(
                (now + self.read_timeout) if self.paused else due, self._check_timeout
            )
            return
        self._broken(
            aiohttp.ServerTimeoutError(
                f"Timeout on reading data from socket ({self.read_timeout} s)"
            )
        )

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _broken(self, exc: BaseException) -> None:
        """The response cannot go on: fail its head or its body, and shut the connection."""
        head = self.head
        if head is not None and not head.done():
            head.set_exception(exc)
        elif self.response is not None:
            self.response._fail(exc)
        self.close()

    @staticmethod
    def _ends_at_close(response: UpstreamResponse) -> bool:
        if response.content_length is not None:
            return False
        for name, value in response.raw_headers:
            if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                return False
        return True

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def finished(self, response: UpstreamResponse) -> None:
        """The relay is done with `response`: keep the connection for the next request when the
        response ended cleanly and both sides keep it alive, else close it."""
        self._cancel_timer()
        if (
            response.done
            and response._exc is None
            and not self.closed
            and not self.paused
            and not self.unsent
            and self.keep_alive
        ):
            self.response = None
            self.head = None
            self.idle_since = self.loop.time()
            self.pool._idle(self)
        else:
            self.response = None
            self.close()

    def close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections per origin (scheme, host, port), no cap on their number (as
    `TCPConnector(limit=0)`)."""

    def __init__(self, limits: Limits | None = None, ssl_context: ssl.SSLContext | None = None):
        self.limits = limits or Limits()
        self._ssl = ssl_context
        self._idle_conns: dict[tuple[str, str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._hosts: dict[tuple[str, str, int], tuple[str, str]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(("http/1.1",))
            self._ssl = context
        return self._ssl

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)

    def _idle(self, conn: _Connection) -> None:
        self._idle_conns.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(KEEPALIVE, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for KEEPALIVE (the pool takes the newest first, so the
        oldest would otherwise stay open for good); again while any is idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for key, idle in list(self._idle_conns.items()):
            kept = [c for c in idle if not c.closed and now - c.idle_since < KEEPALIVE]
            for conn in idle:
                if conn not in kept:
                    conn.close()
                    self._all.discard(conn)
            if kept:
                idle[:] = kept
            else:
                del self._idle_conns[key]
        if self._idle_conns:
            self._sweeper = loop.call_later(KEEPALIVE / 2, self._sweep)

    async def _acquire(
        self, key: tuple[str, str, int], connect_timeout: float | None, fresh: bool = False
    ) -> _Connection:
        idle = self._idle_conns.get(key)
        if idle and not fresh:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < KEEPALIVE:
                    return conn
                conn.close()
                self._all.discard(conn)
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = self._context() if scheme == "https" else None
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, key, self.limits),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(
                f"Connection timeout to host {scheme}://{host}:{port}"
            ) from exc
        self._all.add(conn)
        return conn

    def _origin(self, url: URL) -> tuple[tuple[str, str, int], str]:
        """The pool key and the Host header of a URL (cached by origin)."""
        scheme, host, port = url.scheme, url.raw_host or "", url.port or 0
        key = (scheme, host, port)
        known = self._hosts.get(key)
        if known is None:
            shown = f"[{host}]" if ":" in host else host
            if not url.is_default_port():
                shown = f"{shown}:{port}"
            known = (shown, host)
            if len(self._hosts) < 64:
                self._hosts[key] = known
        return key, known[0]

    async def request(
        self,
        method: str,
        url: URL,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        timeout: aiohttp.ClientTimeout,
    ) -> UpstreamResponse:
        """Send one request; returns once the response's head is in (its body streams after)."""
        if url.scheme not in ("http", "https"):
            raise aiohttp.InvalidURL(url)
        key, host = self._origin(url)
        lines = [f"{method} {url.raw_path_qs} HTTP/1.1", f"Host: {host}"]
        lines += [
            f"{name}: {value}"
            for name, value in headers
            if len(name) != 14 or name.lower() != "content-length"  # set from the body below
        ]
        if body or method not in GET_METHODS:
            lines.append(f"Content-Length: {len(body)}")
        if FORBIDDEN.search("\t".join(lines)) is not None or " " in url.raw_path_qs:
            raise ValueError("forbidden character in the request line or a header")
        lines.append("\r\n")
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        retry, fresh = method in IDEMPOTENT, False
        while True:
            conn = await self._acquire(key, timeout.sock_connect, fresh)
            response = UpstreamResponse(conn)
            try:
                await conn.send(head, body, response, timeout.sock_read)
            except aiohttp.ServerDisconnectedError:
                conn.response = None
                conn.close()
                # a kept connection the upstream closed as the request came: not a word of
                # an answer, so the request goes again (once) on a new connection
                if retry and conn.sent > 1 and conn.head_bytes == 0:
                    retry, fresh = False, True
                    continue
                raise
            except BaseException:
                conn.response = None
                conn.close()
                raise
            return response

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle_conns.clear()
