"""The proxy's upstream client (gateway/proxy/upstream.py) against a raw socket server that
answers with scripted bytes: framing (length, chunked, until close, 1xx first), keep-alive,
what goes on the wire, timeouts and broken answers, flow control. The property test feeds one
response in arbitrary pieces."""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.proxy import upstream
from gateway.proxy.upstream import HIGH_WATER, Limits, UpstreamPool
from tests.conftest import wait_until
from tests.tls import make_ca

TIMEOUT = aiohttp.ClientTimeout(sock_connect=5, sock_read=5)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Script:
    """A server that reads one request head (and its Content-Length body) per answer, records
    the raw request bytes and connections, and answers with `answer(n)` for the n-th request."""

    answer: Callable[[int], list[bytes] | None]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                pieces = self.answer(len(self.requests) - 1)
                if pieces is None:  # hang: never answer
                    await asyncio.sleep(3600)
                for piece in pieces:
                    if piece == b"<close>":
                        writer.close()
                        return
                    if piece == b"<pause>":
                        await asyncio.sleep(0.05)
                        continue
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(
    answer: Callable[[int], list[bytes] | None], context: ssl.SSLContext | None = None
) -> AsyncIterator[Script]:
    script = Script(answer)
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=context)
    script.port = server.sockets[0].getsockname()[1]
    try:
        yield script
    finally:
        for writer in script.writers:
            writer.close()
        server.close()


async def fetch(
    pool: UpstreamPool,
    port: int,
    *,
    method: str = "POST",
    body: bytes = b"{}",
    headers: list[tuple[str, str]] | None = None,
    timeout: aiohttp.ClientTimeout = TIMEOUT,
    path: str = "/v1/chat/completions",
) -> tuple[int, str, list[tuple[bytes, bytes]], bytes]:
    url = URL(f"http://127.0.0.1:{port}{path}", encoded=True)
    response = await pool.request(method, url, headers or [], body, timeout)
    async with response:
        data = b"".join([chunk async for chunk in response.content.iter_any()])
    return response.status, response.reason, response.raw_headers, data


CLOSING = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    "pieces, connections",
    [([OK], 1), ([CLOSING, b"<close>"], 3)],
    ids=["kept alive: one connection", "Connection: close honoured"],
)
async def test_sequential_calls_share_a_connection_unless_told_to_close(pieces, connections):
    async with scripted(lambda n: pieces) as server:
        pool = UpstreamPool()
        for _ in range(3):
            assert (await fetch(pool, server.port))[3] == b"ok"
        assert server.connections == connections
        await pool.close()


async def test_what_goes_on_the_wire():
    async with scripted(lambda n: [OK]) as server:
        pool = UpstreamPool()
        headers = [("X-Odd", "caf\udcc3\udca9 \udcff"), ("content-length", "999"), ("A", "1")]
        await fetch(pool, server.port, body=b"abc", headers=headers, path="/v1/x?q=%20a")
        await fetch(pool, server.port, method="GET", body=b"")
        await fetch(pool, server.port, method="DELETE", body=b"")
        post, get, delete = server.requests
        assert post == (
            b"POST /v1/x?q=%20a HTTP/1.1\r\nHost: 127.0.0.1:"
            + str(server.port).encode()
            + b"\r\nX-Odd: caf\xc3\xa9 \xff\r\nA: 1\r\nContent-Length: 3\r\n\r\nabc"
        )
        assert b"Content-Length" not in get  # an empty GET has no length, as aiohttp sends it
        assert b"Content-Length: 0\r\n" in delete
        await pool.close()


@pytest.mark.parametrize("bad", ["a\r\nInjected: 1", "a\nb", "a\x00b"])
async def test_header_injection_is_refused(bad):
    async with scripted(lambda n: [OK]) as server:
        pool = UpstreamPool()
        with pytest.raises(ValueError):
            await fetch(pool, server.port, headers=[("X-A", bad)])
        with pytest.raises(ValueError):
            await fetch(pool, server.port, headers=[(bad, "v")])
        assert server.requests == []
        await pool.close()


@pytest.mark.parametrize(
    "pieces, body",
    [
        (
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
            ],
            b"abc",
        ),
        ([b"HTTP/1.1 200 OK\r\n\r\nuntil", b"<pause>", b" close", b"<close>"], b"until close"),
        ([b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", OK], b"ok"),
        ([b"HTTP/1.1 204 No Content\r\n\r\n"], b""),
        ([b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n10!"], b"10!"),
    ],
)
async def test_framings(pieces, body):
    async with scripted(lambda n: pieces) as server:
        pool = UpstreamPool()
        status, _, raw_headers, data = await fetch(pool, server.port)
        assert data == body
        assert status in (200, 204)
        assert all(name != b"Link" for name, _ in raw_headers)  # the 103's headers are not kept
        await pool.close()


async def test_reason_and_raw_headers_as_sent():
    answer = b"HTTP/1.1 418 I'm a Teapot\r\nX-Case: MiXeD\r\nx-dup: 1\r\nx-dup: 2\r\n"
    answer += b"Content-Length: 0\r\n\r\n"
    async with scripted(lambda n: [answer]) as server:
        pool = UpstreamPool()
        status, reason, raw_headers, _ = await fetch(pool, server.port)
        assert (status, reason) == (418, "I'm a Teapot")
        assert raw_headers[:3] == [(b"X-Case", b"MiXeD"), (b"x-dup", b"1"), (b"x-dup", b"2")]
        await pool.close()


async def test_silence_before_the_head_times_out():
    async with scripted(lambda n: None) as server:
        pool = UpstreamPool()
        with pytest.raises(aiohttp.ServerTimeoutError):
            await fetch(pool, server.port, timeout=aiohttp.ClientTimeout(sock_read=0.2))
        await pool.close()


async def test_silence_mid_body_times_out_but_a_slow_steady_stream_does_not():
    slow = [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"]
    slow += [piece for byte in b"abcdef" for piece in (b"<pause>", bytes([byte]))]
    async with scripted(lambda n: slow) as server:
        pool = UpstreamPool()
        timeout = aiohttp.ClientTimeout(sock_read=0.3)  # each gap is 0.05 s, the whole 0.3 s
        assert (await fetch(pool, server.port, timeout=timeout))[3] == b"abcdef"
        await pool.close()
    stalled = [b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc"]
    async with scripted(lambda n: [*stalled, *[b"<pause>"] * 20]) as server:
        pool = UpstreamPool()
        with pytest.raises(aiohttp.ServerTimeoutError):
            await fetch(pool, server.port, timeout=aiohttp.ClientTimeout(sock_read=0.2))
        await pool.close()


async def test_broken_answers():
    cases = [
        ([b"<close>"], aiohttp.ServerDisconnectedError),
        (
            [b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", b"<close>"],
            aiohttp.ClientPayloadError,
        ),
        ([b"NOT HTTP AT ALL\r\n\r\n"], aiohttp.ClientError),
    ]
    for pieces, error in cases:
        async with scripted(lambda n, p=pieces: p) as server:
            pool = UpstreamPool()
            with pytest.raises(error):
                await fetch(pool, server.port)
            await pool.close()


async def test_refused_connection_is_an_oserror_and_connect_timeout_a_timeout():
    pool = UpstreamPool()
    async with scripted(lambda n: [OK]) as server:
        port = server.port
    with pytest.raises(OSError):
        await fetch(pool, port)
    # a listener whose backlog is full never completes another handshake
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        address = full.getsockname()
        waiting = [socket.socket() for _ in range(4)]
        for sock in waiting:
            sock.setblocking(False)
            sock.connect_ex(address)
        url = URL(f"http://127.0.0.1:{address[1]}/")
        with pytest.raises(TimeoutError):
            await pool.request("GET", url, [], b"", aiohttp.ClientTimeout(sock_connect=0.2))
        for sock in waiting:
            sock.close()
    await pool.close()


async def test_header_limits():
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(20))
    answer = b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n"
    async with scripted(lambda n: [answer]) as server:
        pool = UpstreamPool(Limits(max_headers=10))
        with pytest.raises(aiohttp.ClientError):
            await fetch(pool, server.port)
        pool = UpstreamPool(Limits(max_headers=30))
        assert (await fetch(pool, server.port))[0] == 200
        await pool.close()


async def test_a_slow_reader_pauses_the_upstream():
    """Flow control: with nobody reading, the client buffers about HIGH_WATER, not the body,
    and a pause the reader makes is not the upstream's silence (no read timeout)."""
    size = 8 * 1024 * 1024
    big = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size, b"x" * size]
    async with scripted(lambda n: big) as server:
        pool = UpstreamPool()
        url = URL(f"http://127.0.0.1:{server.port}/")
        timeout = aiohttp.ClientTimeout(sock_read=0.2)
        response = await pool.request("GET", url, [], b"", timeout)
        await asyncio.sleep(0.6)
        assert response._size < HIGH_WATER + 1024 * 1024  # (one socket read beyond the mark)
        got = 0
        async for chunk in response.content.iter_any():
            got += len(chunk)
        assert got == size
        response.release()
        await pool.close()


RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in [b"data: {}\n\n" * 3, b"data: [DONE]\n\n"])
    + b"0\r\n\r\n"
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(RESPONSE) - 1), max_size=12))
def test_any_split_of_the_bytes_reads_the_same(cuts):
    edges = [0, *sorted(set(cuts)), len(RESPONSE)]
    pieces = [RESPONSE[a:b] for a, b in itertools.pairwise(edges)]

    async def run() -> bytes:
        async with scripted(lambda n: pieces) as server:
            pool = UpstreamPool()
            data = (await fetch(pool, server.port))[3]
            await pool.close()
            return data

    assert asyncio.run(run()) == b"data: {}\n\n" * 3 + b"data: [DONE]\n\n"


async def test_tls_upstream_verified_against_the_systems_trust(tmp_path, monkeypatch):
    """https as api.mistral.ai speaks it: the default context (OpenSSL's trust, which
    SSL_CERT_FILE extends) checks the certificate and the host name; an unknown CA fails."""
    ca = make_ca(tmp_path)
    async with scripted(lambda n: [OK], ca.server_context) as server:
        url = URL(f"https://localhost:{server.port}/v1/models")
        untrusting = UpstreamPool()
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusting.request("GET", url, [], b"", TIMEOUT)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_pem))
        pool = UpstreamPool()
        for _ in range(2):
            response = await pool.request("GET", url, [], b"", TIMEOUT)
            async with response:
                assert b"".join([c async for c in response.content.iter_any()]) == b"ok"
        assert server.connections == 1  # kept alive (the refused handshake never got in)
        assert server.requests[0].startswith(b"GET /v1/models HTTP/1.1\r\nHost: localhost:")
        await pool.close()
        await untrusting.close()


async def test_a_large_body_goes_whole():
    body = bytes(range(256)) * (12 * 4096)  # 12 MiB, far past the transport's write buffer
    async with scripted(lambda n: [OK]) as server:
        pool = UpstreamPool()
        assert (await fetch(pool, server.port, body=body))[3] == b"ok"
        assert server.requests[0].endswith(body)
        await pool.close()


async def test_an_ipv6_upstream_gets_a_bracketed_host():
    script = Script(lambda n: [OK])
    server = await asyncio.start_server(script.handle, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    response = await pool.request("GET", URL(f"http://[::1]:{port}/v1/models"), [], b"", TIMEOUT)
    async with response:
        assert b"".join([c async for c in response.content.iter_any()]) == b"ok"
    assert script.requests[0].startswith(b"GET /v1/models HTTP/1.1\r\nHost: [::1]:%d\r\n" % port)
    await pool.close()
    server.close()


def test_host_header_leaves_out_the_default_port():
    pool = UpstreamPool()
    assert pool._origin(URL("https://api.mistral.ai/v1/chat/completions")) == (
        ("https", "api.mistral.ai", 443),
        "api.mistral.ai",
    )
    assert pool._origin(URL("http://example.test:8080/x"))[1] == "example.test:8080"
    assert pool._origin(URL("http://example.test:80/x"))[1] == "example.test"


async def test_a_response_after_the_complete_one_is_not_relayed_nor_the_connection_kept():
    """Bytes after a whole response, in the same segment (an upstream answering twice): the
    response read is the first one, whole and alone, and the connection is not reused (its
    next bytes cannot be trusted). They were read as more of the first response's body, its
    status and headers overwritten by the second's, and the connection went back to the
    pool."""
    extra = b"HTTP/1.1 500 Extra\r\nX-Extra: 1\r\nContent-Length: 5\r\n\r\nextra"
    async with scripted(lambda n: [OK + extra] if n == 0 else [OK]) as server:
        pool = UpstreamPool()
        status, reason, raw_headers, data = await fetch(pool, server.port)
        assert (status, reason, data) == (200, "OK", b"ok")
        assert raw_headers == [(b"Content-Length", b"2")]
        assert (await fetch(pool, server.port))[3] == b"ok"
        assert server.connections == 2
        await pool.close()


async def test_a_connection_the_upstream_dropped_before_the_request_fails_at_once(monkeypatch):
    """A new connection the upstream closes (or sends on) before the request is written: the
    call fails as a disconnect. It waited for a head that could never come, and the read
    timer gave up on a closed connection: the call hung for good."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    connect = loop.create_connection

    async def busy_loop(*args, **kwargs):  # the greeting is read before the caller resumes
        transport, conn = await connect(*args, **kwargs)

        async def gone() -> bool:
            return conn.closed

        await wait_until(gone)
        return transport, conn

    monkeypatch.setattr(loop, "create_connection", busy_loop)
    pool = UpstreamPool()
    async with asyncio.timeout(10):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await fetch(pool, port, timeout=aiohttp.ClientTimeout(sock_connect=2, sock_read=2))
    await pool.close()
    server.close()


async def test_a_reason_phrase_in_pieces_is_read_whole():
    """llhttp hands the status line's reason over in as many pieces as it came in: all are
    kept (only the last one was)."""
    pieces = [b"HTTP/1.1 418 I'm a", b"<pause>", b" Teapot\r\nContent-Length: 0\r\n\r\n"]
    async with scripted(lambda n: pieces) as server:
        pool = UpstreamPool()
        status, reason, _, _ = await fetch(pool, server.port)
        assert (status, reason) == (418, "I'm a Teapot")
        await pool.close()


async def test_an_endless_header_fails_before_it_is_all_buffered():
    """A header value that never ends: the call fails once the head is past what the limits
    allow (as aiohttp's parser did, a field at a time), rather than buffering it all in
    llhttp's callbacks until the upstream stops (64 MiB here, then silence)."""

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            for _ in range(64):
                writer.write(b"a" * (1 << 20))
                await writer.drain()
            await asyncio.sleep(3600)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(Limits(max_line_size=8190, max_field_size=8190, max_headers=128))
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(pool, port, timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=5))
    await pool.close()
    server.close()


async def test_the_read_timeout_starts_once_a_large_body_is_sent():
    """A large body the upstream reads steadily for longer than the read timeout: the timeout
    counts from when the body is sent (aiohttp's rule), not from when it was handed to the
    transport (on Python 3.12 `writelines` never pauses the protocol, so the client did not
    wait for the body and a slow upload was a timeout)."""
    size = 48 << 20

    async def steady(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        left = size
        while left:
            left -= len(await reader.read(min(left, 1 << 20)))
            await asyncio.sleep(0.03)  # >= 48 reads: the upload takes over 1.4 s
        writer.write(OK)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(steady, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=1.0)
    assert (await fetch(pool, port, body=b"x" * size, timeout=timeout))[3] == b"ok"
    await pool.close()
    server.close()


async def test_an_idempotent_call_on_a_kept_connection_the_upstream_dropped_is_sent_again():
    """An upstream closes a kept-alive connection just as the next request comes (its idle
    timeout): a GET, PUT or DELETE goes again once on a new connection, as aiohttp's client
    did (it was a 502); a POST is not sent twice (the upstream may have acted on it)."""
    async with scripted(lambda n: [b"<close>"] if n in (1, 4) else [OK]) as server:
        pool = UpstreamPool()
        assert (await fetch(pool, server.port, method="GET", body=b""))[3] == b"ok"
        assert (await fetch(pool, server.port, method="GET", body=b""))[3] == b"ok"
        assert server.connections == 2 and len(server.requests) == 3
        assert (await fetch(pool, server.port))[3] == b"ok"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await fetch(pool, server.port)
        assert len(server.requests) == 5
        await pool.close()


async def test_idle_connections_are_closed_after_the_keep_alive_time(monkeypatch):
    """Connections left idle past KEEPALIVE are closed even when no call comes to pick them
    (aiohttp's connector sweeps them). They were only closed when popped, last in first out:
    after a burst, those under the one steady traffic reuses stayed open for good."""
    monkeypatch.setattr(upstream, "KEEPALIVE", 0.2)
    async with scripted(lambda n: [OK]) as server:
        pool = UpstreamPool()
        await asyncio.gather(*[fetch(pool, server.port) for _ in range(5)])
        assert server.connections == 5

        async def all_closed() -> bool:
            return not pool._all

        await wait_until(all_closed, timeout=5)
        assert (await fetch(pool, server.port))[3] == b"ok"
        await pool.close()
