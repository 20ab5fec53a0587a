"""Keys are never stored, whatever comes back, and never logged: end to end through the real
gateway. An upstream that quotes the caller's key (in a 401's JSON body and headers, in SSE
chunks with the key cut across them, in a gzip body) leaves no trace of it in the API's
output, the database (every table dumped as text) or the spool; its fingerprint is there
instead. The same for the gateway's own replay key. A malformed header line carrying a key
is answered 400 and logged without it.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.capture import redact
from gateway.capture.exchange import Exchange
from gateway.capture.rows import decode_chunks
from gateway.store.bodies import Frames
from gateway.writer.spool import read_records
from tests.conftest import make_settings, running

KEY = "sk-keys-test-SECRET-0123456789abcdefWXYZ"
FP = redact.fingerprint(KEY)
HELD = "replay-key-HELD-9876543210fedcbaQRST"  # the gateway's own, from its environment
HELD_FP = redact.fingerprint(HELD)
CREDENTIALS = {
    "bearer": ({"Authorization": f"Bearer {KEY}"}, ""),
    "x-api-key": ({"x-api-key": KEY}, ""),
    "query": ({}, f"?key={KEY}"),
}


# -- an upstream that quotes the caller's key back -----------------------------------------


def credential(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth:
        return auth.partition(" ")[2] or auth
    return request.headers.get("x-api-key") or request.query.get("key", "")


def echo_headers(key: str) -> dict[str, str]:
    """A header name the gateway does not hide by name: only the scrub can catch it."""
    return {"X-Debug-Echo": f"caller={key}", "WWW-Authenticate": f'Bearer realm="{key}"'}


async def unauthorized(request: web.Request) -> web.Response:
    key = credential(request)
    body = {
        "object": "error",
        "type": "invalid_request_error",
        "code": "1000",
        "message": f"Invalid API key: {key}",
        "received": dict(request.headers),
    }
    return web.json_response(body, status=401, headers=echo_headers(key))


async def unauthorized_gzip(request: web.Request) -> web.StreamResponse:
    key = credential(request)
    packed = gzip.compress(orjson.dumps({"message": f"Invalid API key: {key}"}))
    response = web.StreamResponse(
        status=401,
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            **echo_headers(key),
        },
    )
    await response.prepare(request)
    for piece in (packed[:12], packed[12:]):  # two writes: the body arrives in pieces
        await response.write(piece)
    await response.write_eof()
    return response


def sse(content: str) -> bytes:
    delta = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "mistral-small-latest",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(delta) + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    """A chat completion whose answer quotes the key: as JSON, or as SSE cut mid-key."""
    key = credential(request)
    payload = await request.json()
    if not payload.get("stream"):
        return web.json_response(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": "mistral-small-latest",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"Your key is {key}"},
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            },
            headers=echo_headers(key),
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", **echo_headers(key)}
    )
    await response.prepare(request)
    whole = sse(f"Your key is {key}!")
    cut = whole.index(key.encode()) + 9
    for piece in (
        sse("Hello. "),
        whole[:cut],
        whole[cut:],
        sse(f"Again: {key}"),
        b"data: [DONE]\n\n",
    ):
        await response.write(piece)
        await asyncio.sleep(0.01)  # shapes the stream into separate chunks; waits for nothing
    await response.write_eof()
    return response


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/echo/401", unauthorized)
    app.router.add_post("/v1/echo/gzip", unauthorized_gzip)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# -- helpers ---------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def post(
    gw: Gateway, path: str, headers: dict[str, str], query: str = "", **body: object
) -> tuple[int, bytes]:
    payload = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "hello"}],
        **body,
    }
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.post(f"{gw.proxy_url}{path}{query}", json=payload, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


async def details(gw: Gateway) -> list[str]:
    """Every stored exchange as GET /api/exchanges/{id} returns it (raw JSON text)."""
    async with aiohttp.ClientSession(gw.ui_url) as ui:
        async with ui.get("/api/exchanges", params={"limit": "100"}) as resp:
            items = (await resp.json())["items"]
        out = []
        for item in items:
            async with ui.get(f"/api/exchanges/{item['id']}") as resp:
                assert resp.status == 200
                out.append(await resp.text())
        return out


async def database_text(db: str) -> str:
    """Every row of every table, as text, and every body frame decompressed (compression
    must not hide a key from this check)."""
    if db.startswith("sqlite://"):
        with sqlite3.connect(db[len("sqlite://") :]) as conn:
            conn.row_factory = sqlite3.Row
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            rows = [
                repr(tuple(row)) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')
            ]
            frames = [dict(r) for r in conn.execute("SELECT * FROM exchange_bodies")]
    else:
        conn = await asyncpg.connect(db)
        try:
            tables = [
                r[0]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            ]
            rows = [r[0] for t in tables for r in await conn.fetch(f'SELECT t::text FROM "{t}" t')]
            frames = [dict(r) for r in await conn.fetch("SELECT * FROM exchange_bodies")]
        finally:
            await conn.close()
    stored = Frames()
    stored.add(frames)
    payloads = [stored.payload(row["exchange_id"]) for row in frames if row["data"] is not None]
    assert None not in payloads
    return "\n".join(rows + [p.decode("utf-8", "replace") for p in payloads if p is not None])


def spooled(folder: Path) -> list[Exchange]:
    return [e for path in sorted(folder.rglob("spool-*.bin")) for e in read_records(path)]


def response_body(exchange: Exchange) -> bytes:
    """What the writer will store of a record's response: decoded unless already so."""
    encoding = (
        ""
        if exchange.response_decoded
        else next((v for k, v in exchange.response_headers if k.lower() == "content-encoding"), "")
    )
    chunks, ok = decode_chunks(exchange.response_chunks, encoding)
    assert ok
    return b"".join(chunks)


def assert_scrubbed(text: str, key: str, fingerprint: str | None, where: str) -> None:
    assert key not in text, f"the key is in {where}"
    assert fingerprint and fingerprint in text, f"no fingerprint in {where}"


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("sent_as", list(CREDENTIALS))
async def test_an_echoed_key_is_never_stored(echo: str, db_url: str, tmp_path: Path, sent_as: str):
    headers, query = CREDENTIALS[sent_as]
    # queue_max_bytes=1: every record goes through the disk spool on its way to the database
    settings = make_settings(echo, db_url, tmp_path, queue_max_bytes=1)
    async with running(settings) as gw:
        # The writer, stopped, cannot replay (and delete) the spool files before we read them.
        os.kill(gw.recorder.pid, signal.SIGSTOP)
        calls = [
            ("/v1/echo/401", {}, 401),
            ("/v1/echo/gzip", {}, 401),
            ("/v1/chat/completions", {}, 200),
            ("/v1/chat/completions", {"stream": True}, 200),
        ]
        for path, body, status in calls:
            got, answer = await post(gw, path, headers, query, **body)
            assert got == status
            if path != "/v1/echo/gzip":
                assert KEY.encode() in answer  # the caller gets the upstream's bytes, key and all

        spool = tmp_path / "spool"
        await wait_until(lambda: len(spooled(spool)) == len(calls))
        for record in spooled(spool):
            assert_scrubbed(repr(record.to_dict()), KEY, FP, f"spooled {record.path}")
            assert_scrubbed(
                response_body(record).decode(), KEY, FP, f"spooled response of {record.path}"
            )
        for path in spool.rglob("spool-*.bin"):
            assert KEY.encode() not in path.read_bytes()
        streamed = next(
            r
            for r in spooled(spool)
            if len(r.response_chunks) > 1 and b"[DONE]" in r.response_chunks[-1]
        )
        assert len(streamed.response_chunks) == len(streamed.chunk_ms)

        os.kill(gw.recorder.pid, signal.SIGCONT)
        await gw.recorder.drained(timeout=30)
        shown = await details(gw)
        assert len(shown) == len(calls)
        for text in shown:
            item = orjson.loads(text)
            assert_scrubbed(text, KEY, FP, f"the API's {item['path']}")
            assert_scrubbed(
                orjson.dumps(item["response_body"]).decode(),
                KEY,
                FP,
                f"the stored response of {item['path']}",
            )
            assert_scrubbed(
                orjson.dumps(item["response_headers"]).decode(),
                KEY,
                FP,
                f"the stored response headers of {item['path']}",
            )
        answers = [orjson.loads(t)["output_text"] for t in shown]
        assert f"Hello. Your key is {FP}!Again: {FP}" in answers  # the stream, reassembled
        assert_scrubbed(await database_text(db_url), KEY, FP, "the database")


async def test_the_replay_key_is_never_stored(echo: str, tmp_path: Path):
    """The gateway's own key: a replay sends it (and the upstream quotes it), a caller may
    paste it in a prompt; neither leaves it in a record."""
    db = f"sqlite://{tmp_path / 'held.db'}"
    caller = {"Authorization": f"Bearer {KEY}"}
    environ = {"AGENTOPS_REPLAY_API_KEY": HELD}
    async with running(make_settings(echo, db, tmp_path), environ) as gw:
        status, _ = await post(
            gw,
            "/v1/chat/completions",
            caller,
            messages=[{"role": "user", "content": f"is {HELD} valid?"}],
        )
        assert status == 200
        await gw.recorder.drained(timeout=10)
        [original] = [orjson.loads(t) for t in await details(gw)]
        async with (
            aiohttp.ClientSession(gw.ui_url) as ui,
            ui.post(
                f"/api/exchanges/{original['id']}/replay", json={"overrides": {"temperature": 0.5}}
            ) as resp,
        ):
            assert resp.status == 201, await resp.text()
        await gw.recorder.drained(timeout=10)
        shown = await details(gw)
        assert len(shown) == 2
        replayed = next(orjson.loads(t) for t in shown if orjson.loads(t)["replay_of"])
        assert replayed["output_text"] == f"Your key is {HELD_FP}"
        assert replayed["key_fingerprint"] == HELD_FP
        for text in shown:
            assert HELD not in text and KEY not in text
        stored = await database_text(db)
        assert_scrubbed(stored, HELD, HELD_FP, "the database")
        assert_scrubbed(stored, KEY, FP, "the database")


@pytest.mark.parametrize("port", ["proxy", "ui"])
async def test_a_malformed_header_line_is_answered_400_and_not_logged(
    echo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, port: str
):
    secret = "sk-malformed-SECRET-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    async with running(make_settings(echo, f"sqlite://{tmp_path / 'bad.db'}", tmp_path)) as gw:
        url = aiohttp.client.URL(gw.proxy_url if port == "proxy" else gw.ui_url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"X-Api-Key : " + secret.encode() + b"\r\nContent-Length: 2\r\n\r\n{}"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
        await wait_until(
            lambda: any(r.name in ("agentops.http", "aiohttp.server") for r in caplog.records)
        )
    logged = caplog.text + "\n".join(
        f"{r.getMessage()} {r.exc_text} {r.exc_info} {r.args}" for r in caplog.records
    )
    assert secret not in logged and "X-Api-Key" not in logged
    [record] = [r for r in caplog.records if "bad HTTP request" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "BadHttpMessage (400)" in record.getMessage()


def test_the_mitm_addon_scrubs_as_the_proxy_does():
    """The mitmproxy path: a real flow through the addon's hooks, its response quoting the
    caller's key across two streamed chunks and in a header, its request the held key."""
    pytest.importorskip("mitmproxy", reason="the mitm extra needs Python 3.12+")
    from mitmproxy.test import tflow

    from gateway.proxy.mitm_addon import CaptureAddon
    from gateway.proxy.scrub import Keys

    records: list[Exchange] = []
    addon = CaptureAddon(records.append, ["address"], max_body_bytes=10**6, held_keys=Keys([HELD]))
    flow = tflow.tflow(resp=True)
    flow.request.headers["Authorization"] = f"Bearer {KEY}"
    flow.request.content = f'{{"note": "{HELD}"}}'.encode()
    addon.requestheaders(flow)
    flow.response.headers["X-Debug-Echo"] = KEY
    addon.responseheaders(flow)
    body = f'{{"message": "Invalid API key: {KEY}"}}'.encode()
    for piece in (body[:30], body[30:]):  # cut inside the key
        flow.response.stream(piece)
    addon.response(flow)
    [record] = records
    text = repr(record.to_dict())
    assert KEY not in text and HELD not in text
    assert b"".join(record.response_chunks) == body.replace(KEY.encode(), FP.encode())
    assert ("X-Debug-Echo", FP) in record.response_headers
    assert HELD_FP and HELD_FP.encode() in record.request_body
