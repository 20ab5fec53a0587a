"""Odd wire data, end to end: a raw upstream (bytes written by hand, no HTTP library to tidy
them) behind the real gateway, and a raw client. The call passes as it came and is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.app import Gateway
from gateway.proxy.forward import head_bytes
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.records import StoredExchange
from tests.conftest import listed, make_settings, migrated_sqlite, running, wait_until

KEY = "sk-wire-test-SECRET-0123456789abcdef"


@dataclass
class RawUpstream:
    """Answers every request with `answer` (whole HTTP response bytes); keeps each request's
    head and body as they came (the body read by its Content-Length)."""

    url: str = ""
    answer: bytes = b""
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            self.requests.append((head, body))
            writer.write(self.answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(status: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [b"HTTP/1.1 " + status, *(k + b": " + v for k, v in headers)]
    lines += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield up
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def gw(raw_upstream: RawUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(
        raw_upstream.url, migrated_sqlite(tmp_path / "gw.db"), tmp_path, upstream_timeout=3.0
    )
    async with running(settings) as gateway:
        yield gateway


async def stored(gateway: Gateway) -> list[StoredExchange]:
    await gateway.recorder.drained(timeout=10)
    items, _ = await gateway.store.list_exchanges(ExchangeFilter(), 500, None)
    found = [await gateway.store.get_exchange(i.id) for i in items]
    return [record for record in found if record is not None]


CHAT = {
    "model": "mistral-small-latest",
    "messages": [{"role": "user", "content": "hello compressed world " * 20}],
}
COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "model": "mistral-small-latest",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


async def post_compressed(gw: Gateway, raw_upstream: RawUpstream, chat: dict, encoding: str):
    """POST `chat` compressed with `encoding` (gzip or zlib-wrapped deflate), answered with
    COMPLETION; returns (the body sent, the answer's status and JSON)."""
    raw_upstream.answer = answer(
        b"200 OK", [(b"Content-Type", b"application/json")], orjson.dumps(COMPLETION)
    )
    plain = orjson.dumps(chat)
    body = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        "Content-Encoding": encoding,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", data=body, headers=headers) as resp,
    ):
        return body, resp.status, await resp.json()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_request_body_goes_upstream_as_sent(
    gw: Gateway, raw_upstream: RawUpstream, encoding: str
):
    """A client may compress its request (Content-Encoding: gzip): the upstream gets the same
    bytes with the same Content-Length (aiohttp's server used to inflate the body and the
    proxy forwarded it under the compressed length: the upstream waited for bytes that never
    came, and the call hung until the upstream timeout). The record keeps the decoded JSON."""
    body, status, answered = await post_compressed(gw, raw_upstream, CHAT, encoding)
    assert status == 200 and answered == COMPLETION
    ((head, sent),) = raw_upstream.requests
    assert sent == body
    assert b"content-length: %d\r\n" % len(body) in head.lower()
    assert b"content-encoding: " + encoding.encode() in head.lower()
    (record,) = await stored(gw)
    assert record.status == 200 and record.state == "complete"
    assert record.request_body_encoding == "json"
    assert orjson.loads(record.request_body) == CHAT
    assert record.request_model == "mistral-small-latest"
    assert record.prompt_tokens == 12 and not record.parse_error


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": -1000000, "total_tokens": -1000005},
        {
            "prompt_tokens": 10,
            "completion_tokens": -8,
            "prompt_tokens_details": {"cached_tokens": -7},
        },
    ],
)
async def test_negative_usage_counts_are_not_stored_and_never_price_below_zero(
    gw: Gateway, raw_upstream: RawUpstream, usage: dict
):
    """Token counts from the wire are never negative: a negative one is stored as null, as
    any other count that is not one, and no call costs less than nothing (a negative cost took
    spend off every budget and failed the Prometheus counters for its whole batch)."""
    body = orjson.dumps({**COMPLETION, "usage": usage})
    raw_upstream.answer = answer(b"200 OK", [(b"Content-Type", b"application/json")], body)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=CHAT, headers=headers) as r,
    ):
        assert await r.read() == body
    (record,) = await stored(gw)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        value = getattr(record, name)
        assert value is None or value >= 0, (name, value)
    assert record.cost_usd is None or record.cost_usd >= 0


def gzip_bomb(prefix: bytes, size: int) -> bytes:
    """`prefix` then As, `size` bytes in all, gzipped (about a thousandth of the size)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(prefix)]
    block = b"A" * (1 << 20)
    parts += [packer.compress(block) for _ in range((size - len(prefix)) >> 20)]
    return b"".join([*parts, packer.flush()])


async def test_a_gzip_bomb_is_decoded_only_as_far_as_storage_keeps(
    raw_upstream: RawUpstream, tmp_path: Path
):
    """A small gzip body that inflates to hundreds of MB: the key scrub (in the proxy's
    process) and the writer decode only what storage keeps (--max-body-bytes). Decoding it
    all held the proxy's event loop (every other call waited) for about a second per 200 MB,
    and its memory grew by the whole inflated body."""
    bomb = gzip_bomb(b'{"echo": "Bearer ' + KEY.encode() + b'", "pad": "', 384 << 20)
    raw_upstream.answer = answer(
        b"200 OK",
        [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")],
        bomb,
    )
    settings = make_settings(
        raw_upstream.url,
        migrated_sqlite(tmp_path / "gw.db"),
        tmp_path,
        max_body_bytes=1 << 20,
    )
    lags: list[float] = []

    async def probe(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    async with running(settings) as gw, aiohttp.ClientSession(auto_decompress=False) as http:
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(stop))
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.post(
            f"{gw.proxy_url}/v1/chat/completions", json=CHAT, headers=headers
        ) as r:
            assert await r.read() == bomb
        (record,) = await stored(gw)
        stop.set()
        await prober
    assert max(lags) < 0.3, f"the event loop stalled {max(lags):.2f} s"
    assert record.truncated
    assert record.response_body_encoding == "text"
    body = record.response_body or ""
    assert (1 << 20) - 100 < len(body) <= 1 << 20 and KEY not in body
    assert body.startswith('{"echo": "Bearer sha256:')


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_key_inside_a_compressed_request_body_is_never_stored(
    gw: Gateway, raw_upstream: RawUpstream, encoding: str
):
    """The key scrub sees a compressed request body as the client sent it; the writer stores
    it decoded. So the scrub decodes it too: a key pasted into a prompt of a gzip request is
    stored as its fingerprint, like one in a plain body."""
    chat = {**CHAT, "messages": [{"role": "user", "content": f"my key is {KEY}, keep it"}]}
    body, status, _ = await post_compressed(gw, raw_upstream, chat, encoding)
    assert status == 200
    ((_, sent),) = raw_upstream.requests
    assert sent == body  # upstream still gets the client's bytes
    (record,) = await stored(gw)
    assert KEY not in (record.request_body or "")
    kept = orjson.loads(record.request_body)
    assert kept["messages"][0]["content"].startswith("my key is ")
    assert kept["model"] == "mistral-small-latest"
    assert KEY not in orjson.dumps(record.to_json()).decode()


async def test_long_and_many_headers_pass_both_ways_and_are_recorded(
    gw: Gateway, raw_upstream: RawUpstream
):
    """A 20 KB header value and 200 headers (past aiohttp's defaults of 8,190 bytes and 128
    headers): the request used to get a 400 from the gateway's parser, never forwarded nor
    recorded, and such a response header a 502."""
    long_value = b"v" * 20_000
    raw_upstream.answer = answer(
        b"200 OK",
        [(b"Content-Type", b"application/json"), (b"X-Long-Answer", long_value)]
        + [(b"X-Many-%d" % i, b"%d" % i) for i in range(150)],
        orjson.dumps(COMPLETION),
    )
    headers = {"Authorization": f"Bearer {KEY}", "X-Long": long_value.decode()}
    headers |= {f"X-Extra-{i}": str(i) for i in range(200)}
    async with (
        aiohttp.ClientSession(max_field_size=65536, max_line_size=65536, max_headers=512) as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=CHAT, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Long-Answer"] == long_value.decode()
        assert resp.headers["X-Many-149"] == "149"
        assert await resp.json() == COMPLETION
    ((head, _),) = raw_upstream.requests
    assert b"x-long: " + long_value in head.lower() and b"x-extra-199: 199" in head.lower()
    (record,) = await stored(gw)
    assert record.status == 200 and record.prompt_tokens == 12
    kept = {name.lower(): value for name, value in record.request_headers}
    assert kept["x-long"] == long_value.decode() and kept["x-extra-199"] == "199"


async def raw_post(gw: Gateway, extra_headers: bytes = b"") -> bytes:
    """POST CHAT to the gateway from a raw socket (header bytes as given); the answer's head."""
    host, port = gw.proxy_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps(CHAT)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + extra_headers
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return head


async def test_header_bytes_that_are_not_utf8_go_upstream_as_they_came(
    gw: Gateway, raw_upstream: RawUpstream
):
    """A Latin-1 value (`café` as one byte é) and a lone 0xff, from a raw client: the upstream
    gets those bytes. aiohttp's client, which sent upstream before the proxy's own client,
    dropped them (its writer skips the escapes its parser made of them)."""
    raw_upstream.answer = answer(
        b"200 OK", [(b"Content-Type", b"application/json")], orjson.dumps(COMPLETION)
    )
    answered = await raw_post(gw, b"X-Raw: caf\xe9 \xff!\r\n")
    assert answered.startswith(b"HTTP/1.1 200")
    ((head, sent),) = raw_upstream.requests
    assert b"\r\nX-Raw: caf\xe9 \xff!\r\n" in head and sent == orjson.dumps(CHAT)


async def test_an_upstream_answering_twice_has_its_first_answer_relayed_alone(
    gw: Gateway, raw_upstream: RawUpstream
):
    """An upstream writes a second response right after the whole first one: the client gets
    the first, as sent, and the record is of it. The proxy's client read the second as more
    of the first: the client got the second's status with both Content-Lengths, and the
    record the second's status and both bodies."""
    body = orjson.dumps(COMPLETION)
    first = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    second = b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\nextra"
    raw_upstream.answer = first % len(body) + body + second  # (kept alive: no Connection: close)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=CHAT) as resp,
    ):
        assert resp.status == 200 and resp.headers.getall("Content-Length") == [str(len(body))]
        assert await resp.read() == body
    (record,) = await stored(gw)
    assert record.status == 200 and record.state == "complete"
    assert orjson.loads(record.response_body) == COMPLETION


async def test_a_utf8_response_header_reaches_the_client_as_sent(
    gw: Gateway, raw_upstream: RawUpstream
):
    """`café` in UTF-8 in a response header: the client gets those bytes, and the record reads
    `café`. It was decoded as Latin-1, which aiohttp's server then wrote as UTF-8 (`cafÃ©`)."""
    raw_upstream.answer = answer(
        b"200 OK",
        [(b"Content-Type", b"application/json"), (b"X-Name", "café ☕".encode())],
        orjson.dumps(COMPLETION),
    )
    head = await raw_post(gw)
    assert "\r\nX-Name: café ☕\r\n".encode() in head
    # and nothing of aiohttp's own: the upstream sent no Date nor Server
    assert b"\r\nDate:" not in head and b"\r\nServer:" not in head
    (record,) = await stored(gw)
    assert ("X-Name", "café ☕") in [tuple(h) for h in record.response_headers]


async def test_no_content_type_is_added_to_an_answer_without_one(
    gw: Gateway, raw_upstream: RawUpstream
):
    raw_upstream.answer = answer(b"200 OK", [], b"plain bytes, no type")
    head = await raw_post(gw)
    assert head.startswith(b"HTTP/1.1 200") and b"content-type" not in head.lower()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "close-delimited"])
async def test_response_header_and_reason_bytes_that_are_not_utf8_reach_the_client_as_sent(
    gw: Gateway, raw_upstream: RawUpstream, length: bool
):
    """A Latin-1 `café`, a lone 0xff and a reason phrase with a byte that is not UTF-8: the
    client gets those bytes, whether the head goes out with the body (Content-Length) or at
    once (a body the upstream's close ends). aiohttp's serializer dropped them (`caf`), and
    before that the proxy read them as Latin-1, which aiohttp wrote as UTF-8 (`cafÃ©`). The
    record shows each odd byte as `\\xNN`."""
    body = orjson.dumps(COMPLETION)
    head = b"HTTP/1.1 200 Fine\xe9 \xff\r\nContent-Type: application/json\r\n"
    head += b"X-Odd: caf\xe9 \xff!\r\nX-Plain: yes\r\n"
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) if length else b"\r\n"
    raw_upstream.answer = head + body
    answered = await raw_post(gw)
    assert answered.startswith(b"HTTP/1.1 200 Fine\xe9 \xff\r\n")
    assert b"\r\nX-Odd: caf\xe9 \xff!\r\n" in answered and b"\r\nX-Plain: yes\r\n" in answered
    (record,) = await stored(gw)
    assert ("X-Odd", "caf\\xe9 \\xff!") in [tuple(h) for h in record.response_headers]


def test_a_response_head_never_carries_a_line_break_or_nul():
    for bad in ("a\r\nSet-Cookie: x", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            head_bytes((1, 1), 200, "OK", [("X-A", bad)])
        with pytest.raises(ValueError):
            head_bytes((1, 1), 200, bad, [])
    assert head_bytes((1, 1), 200, "OK", [("X-A", "caf\udce9")]) == (
        b"HTTP/1.1 200 OK\r\nX-A: caf\xe9\r\n\r\n"
    )


@pytest.mark.parametrize("last", [b"\xff", b"\xc3\xa9"], ids=["not-utf8", "utf8"])
async def test_a_key_ending_in_a_non_ascii_byte_is_scrubbed_and_the_record_kept(
    gw: Gateway, raw_upstream: RawUpstream, last: bytes
):
    """A key whose last 4 characters are not ASCII (a stray byte pasted with it; the upstream
    answers 401 and quotes it): its fingerprint shows them, and the scrub encoded fingerprints
    as ASCII, so it raised, logged two tracebacks and dropped the record's bodies and headers,
    the very record that says why the call was refused."""
    key = KEY.encode() + last
    raw_upstream.answer = answer(
        b"401 Unauthorized",
        [(b"Content-Type", b"application/json")],
        b'{"message": "bad key ' + key + b'"}',
    )
    answered = await raw_post(gw, b"Authorization: Bearer " + key + b"\r\n")
    assert answered.startswith(b"HTTP/1.1 401")
    (record,) = await stored(gw)
    assert record.error != "bodies dropped: the key scrub failed on this record"
    assert orjson.loads(record.request_body or "null") == CHAT
    body = record.response_body or ""  # base64 when the key's last byte is not UTF-8
    kept = base64.b64decode(body) if record.response_body_encoding == "base64" else body.encode()
    assert kept.startswith(b'{"message": "bad key sha256:')
    assert KEY not in orjson.dumps(record.to_json()).decode()


async def test_a_client_that_hangs_up_before_the_answer_cancels_the_upstream_call(
    tmp_path: Path,
):
    """The upstream takes its time (an LLM still generating); the client gives up after a
    moment. The upstream's connection closes then, as the client's own closing would have
    reached it without the proxy (so it stops generating what nobody will read), and the
    record says the client left, at once. It said `upstream_timeout` (504) once
    --upstream-timeout had passed, long after the client had gone."""
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head; then never a word
        while await reader.read(65536):
            pass
        closed.set()  # the proxy closed its connection
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    settings = make_settings(
        url, migrated_sqlite(tmp_path / "gw.db"), tmp_path, upstream_timeout=60.0
    )
    try:
        async with running(settings) as gw:
            host, port = gw.proxy_url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            body = orjson.dumps(CHAT)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            await writer.drain()
            await wait_until(lambda: _serving(gw))
            writer.close()
            await asyncio.wait_for(closed.wait(), 10)
            (record,) = await stored(gw)
            assert record.state == "client_disconnected" and record.status is None
            assert "before the response began" in (record.error or "")
            assert orjson.loads(record.request_body or "null") == CHAT
            assert record.latency_ms is not None and record.latency_ms < 10_000
    finally:
        server.close()
        await server.wait_closed()


async def test_calls_cut_at_the_end_of_the_grace_are_recorded_as_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A stop gives the calls in flight --shutdown-grace seconds, then cuts them: those are
    recorded with state `shutdown` (a call waiting for its answer, a stream mid-response),
    though aiohttp's stop closes their connections too; a client that hung up during the
    grace is recorded as having left. With handler_cancellation every call still running at
    the end of the grace was recorded `client_disconnected`, and the stop took twice the
    grace (aiohttp waits it once more before it cancels). No error is logged on the way."""

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r")[0]))
        try:
            if b"stream" in head:  # an answer that takes its time
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while not writer.is_closing():
                    writer.write(b'11\r\ndata: {"x": "y"}\n\r\n')
                    await asyncio.sleep(0.05)
            while await reader.read(65536):  # none at all
                pass
        except ConnectionError:  # the proxy closed it mid-write: what the stop does
            pass
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    db = migrated_sqlite(tmp_path / "gw.db")
    settings = make_settings(url, db, tmp_path, upstream_timeout=60.0, shutdown_grace=3.0)
    clients = []
    try:
        async with running(settings) as gw:
            host, port = gw.proxy_url.removeprefix("http://").split(":")
            body = orjson.dumps(CHAT)
            for path in (b"/v1/chat/completions", b"/v1/stream", b"/v1/left"):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                    % (path, len(body), body)
                )
                clients.append((reader, writer))
            reader, writer = await asyncio.open_connection(host, int(port))  # a slow upload
            writer.write(b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            writer.write(b"the first")
            clients.append((reader, writer))
            await wait_until(lambda: _serving(gw, 4))
            await clients[1][0].readuntil(b"data:")  # the stream has begun
            started = time.monotonic()
            stop = asyncio.create_task(gw.stop())
            await asyncio.sleep(0.5)
            clients[2][1].close()  # this client leaves during the grace
            await stop
            took = time.monotonic() - started
            assert not gw.in_flight.tasks
    finally:
        for _, writer in clients:
            writer.close()
        server.close()
        await server.wait_closed()
    items = await listed(db, 10)
    states = {item.path: (item.state, item.status, item.error) for item in items}
    assert states == {
        "/v1/chat/completions": ("shutdown", None, "gateway shut down before the call finished"),
        "/v1/stream": ("shutdown", 200, "gateway shut down before the call finished"),
        "/v1/left": (
            "client_disconnected",
            None,
            "client disconnected before the response began; the upstream call was cancelled",
        ),
        "/v1/upload": ("shutdown", None, "gateway shut down before the call finished"),
    }
    (upload,) = [item for item in items if item.path == "/v1/upload"]
    record = await _read(db, upload.id)
    assert record.request_body == "the first"  # the bytes that came before the cut
    assert took < 5.5, f"the stop took {took:.1f} s with a grace of 3 s"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def _read(db: str, exchange_id: int) -> StoredExchange:
    store = Store(db)
    await store.open()
    try:
        record = await store.get_exchange(exchange_id)
    finally:
        await store.close()
    assert record is not None
    return record


async def _serving(gw: Gateway, count: int = 1) -> bool:
    return len(gw.in_flight.tasks) >= count
