"""The proxy is transparent: bytes, status, headers, gzip, streams and faults pass as they are,
and each call is recorded. Real gateway, real fake upstream, raw aiohttp client.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.app import Gateway
from gateway.store.exchanges import ExchangeFilter
from gateway.store.records import StoredExchange
from tests.conftest import Upstream, make_settings, running, wait_until

KEY = "sk-test-SECRET-0123456789abcdefWXYZ"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def stored(gw: Gateway, exchange_id: str | None = None) -> list[StoredExchange]:
    await gw.recorder.drained(timeout=10)
    items, _ = await gw.store.list_exchanges(ExchangeFilter(), 500, None)
    if exchange_id is None:
        found = [await gw.store.get_exchange(i.id) for i in items]
    else:
        found = [await gw.store.get_exchange(int(exchange_id))]
    return [record for record in found if record is not None]


async def test_request_forwarded_byte_for_byte(sqlite_gateway, upstream: Upstream, http):
    body = b'{"model": "mistral-small-latest",  "messages": [],\n "x": "\xc3\xa9"}'
    headers = {
        **AUTH,
        "Content-Type": "application/json",
        "X-Custom": "Kept",
        "X-AgentOps-Run": "hidden",
        "x-fake-echo": "1",
        "X-Hop": "named by Connection",
        "Connection": "keep-alive, X-Hop",
    }
    url = f"{sqlite_gateway.proxy_url}/v1/some/path?b=2&a=%20x&a=1"
    async with http.post(
        url,
        data=body,
        headers=headers,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    ) as resp:
        assert resp.status == 200
        await resp.read()
    seen = upstream.requests[-1]
    assert seen["body"] == body
    assert seen["method"] == "POST"
    assert seen["path"] == "/v1/some/path"
    assert seen["query"] == "b=2&a=%20x&a=1"
    names = {k.lower(): v for k, v in seen["headers"]}
    assert names["authorization"] == f"Bearer {KEY}"
    assert names["x-custom"] == "Kept"
    assert "x-agentops-run" not in names
    assert "connection" not in names
    assert "x-hop" not in names  # a header the Connection header names is hop-by-hop too
    assert names["content-type"] == "application/json"
    assert "user-agent" not in names  # the proxy adds nothing the client did not send


async def test_response_identical_to_direct(sqlite_gateway, upstream: Upstream, http):
    headers = {**AUTH, "x-fake-raw": "plain <b>text</b> \u00e9"}
    async with http.get(f"{upstream.url}/v1/raw", headers=headers) as direct:
        direct_body, direct_headers = await direct.read(), direct.headers
    async with http.get(f"{sqlite_gateway.proxy_url}/v1/raw", headers=headers) as proxied:
        assert proxied.status == direct.status
        assert await proxied.read() == direct_body
        for name in ("Content-Type", "Content-Length", "mistral-correlation-id"):
            if name in direct_headers:
                assert name in proxied.headers


async def test_gzip_passes_through_still_compressed(sqlite_gateway, http):
    payload = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "hello gzip"}],
    }
    async with http.post(
        f"{sqlite_gateway.proxy_url}/v1/chat/completions",
        json=payload,
        headers={**AUTH, "x-fake-gzip": "1"},
    ) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = await resp.read()
    answer = orjson.loads(gzip.decompress(raw))
    assert answer["object"] == "chat.completion"
    (record,) = await stored(sqlite_gateway)
    assert record.response_body_encoding == "json"
    assert record.prompt_tokens == answer["usage"]["prompt_tokens"]
    assert record.output_text == answer["choices"][0]["message"]["content"]


async def test_stream_is_not_buffered(sqlite_gateway, http):
    payload = {
        "model": "mistral-small-latest",
        "stream": True,
        "messages": [{"role": "user", "content": "count slowly"}],
    }
    headers = {**AUTH, "x-fake-chunks": "5", "x-fake-chunk-delay-ms": "250"}
    start = time.perf_counter()
    arrivals = []
    async with http.post(
        f"{sqlite_gateway.proxy_url}/v1/chat/completions", json=payload, headers=headers
    ) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for _ in resp.content.iter_any():
            arrivals.append(time.perf_counter() - start)
    assert arrivals[0] < arrivals[-1] - 0.75, arrivals  # first token long before the end
    (record,) = await stored(sqlite_gateway)
    assert record.streamed is True
    assert record.state == "complete"
    assert record.ttft_ms is not None and record.ttft_ms < record.latency_ms - 500
    assert record.completion_tokens and record.output_text


async def test_rate_limit_passes_with_retry_after(sqlite_gateway, http):
    async with http.post(
        f"{sqlite_gateway.proxy_url}/v1/chat/completions",
        json={},
        headers={**AUTH, "x-fake-status": "429"},
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        body = orjson.loads(await resp.read())
    assert body["type"] == "rate_limited"
    (record,) = await stored(sqlite_gateway)
    assert record.status == 429 and record.state == "complete"


@pytest.mark.parametrize("status", [401, 500, 503])
async def test_errors_pass_through(sqlite_gateway, http, status):
    async with http.post(
        f"{sqlite_gateway.proxy_url}/v1/chat/completions",
        json={},
        headers={**AUTH, "x-fake-status": str(status)},
    ) as resp:
        assert resp.status == status


async def test_upstream_down_is_502_and_recorded(tmp_path: Path, http):
    settings = make_settings("http://127.0.0.1:9", f"sqlite://{tmp_path / 'd.db'}", tmp_path)
    async with running(settings) as gw:
        async with http.post(f"{gw.proxy_url}/v1/chat/completions", json={}, headers=AUTH) as resp:
            assert resp.status == 502
            body = orjson.loads(await resp.read())
        assert body["object"] == "error" and body["type"] == "upstream_unreachable"
        (record,) = await stored(gw)
        assert record.state == "upstream_error" and record.status == 502
        assert "could not reach upstream" in record.error


async def test_timeout_is_between_chunks_not_total(upstream: Upstream, tmp_path: Path, http):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 't.db'}", tmp_path)
    async with running(settings.replace(upstream_timeout=0.6)) as gw:
        async with http.post(
            f"{gw.proxy_url}/v1/chat/completions", json={}, headers={**AUTH, "x-fake-hang": "1"}
        ) as resp:
            assert resp.status == 504
            assert orjson.loads(await resp.read())["type"] == "upstream_timeout"
        payload = {
            "model": "mistral-small-latest",
            "stream": True,
            "messages": [{"role": "user", "content": "a long healthy stream"}],
        }
        headers = {**AUTH, "x-fake-chunks": "8", "x-fake-chunk-delay-ms": "200"}
        async with http.post(
            f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=headers
        ) as resp:
            text = await resp.text()
        assert "[DONE]" in text  # 1.6 s in total, never 0.6 s without a byte
        records = await stored(gw)
        assert sorted(r.state for r in records) == ["complete", "upstream_timeout"]


async def test_client_disconnect_mid_stream_is_recorded(sqlite_gateway, http):
    payload = {
        "model": "mistral-small-latest",
        "stream": True,
        "messages": [{"role": "user", "content": "I will hang up"}],
    }
    headers = {**AUTH, "x-fake-chunks": "20", "x-fake-chunk-delay-ms": "100"}
    resp = await http.post(
        f"{sqlite_gateway.proxy_url}/v1/chat/completions", json=payload, headers=headers
    )
    await resp.content.readany()
    resp.close()  # drop the connection mid-stream
    deadline = time.monotonic() + 10
    records = []
    while time.monotonic() < deadline:
        records = await stored(sqlite_gateway)
        if records:
            break
        await asyncio.sleep(0.05)
    (record,) = records
    assert record.state == "client_disconnected"
    assert record.response_body  # what had arrived is kept
    assert "[DONE]" not in record.response_body


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 9\r\n",  # 8 of 9 bytes come
        b"Transfer-Encoding: chunked\r\n",  # the last chunk never comes
    ],
)
async def test_a_client_gone_while_sending_its_body_is_recorded_with_what_came(
    sqlite_gateway, upstream: Upstream, head: bytes
):
    """No traceback, nothing upstream, and a record: state client_disconnected, the bytes
    that came (odd ones too), the header that was not UTF-8."""
    before = len(upstream.requests)
    host, port = sqlite_gateway.proxy_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    body = b'{"a":\x00\xff}'
    if b"chunked" in head:
        body = b"%x\r\n%s\r\n" % (len(body), body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\xfe\r\n"
        b"Content-Type: application/json\r\n" + head + b"\r\n" + body
    )
    await writer.drain()
    await wait_until(lambda: _in_flight(sqlite_gateway))  # the proxy is reading the body
    writer.close()

    async def one_stored() -> bool:
        return len(await stored(sqlite_gateway)) == 1

    await wait_until(one_stored)
    (record,) = await stored(sqlite_gateway)
    assert record.state == "client_disconnected" and record.status is None
    assert record.error_type == "client_disconnected"
    assert "while sending the request body, after 8 bytes" in (record.error or "")
    assert record.request_body_encoding == "base64"  # not UTF-8: kept as bytes
    assert base64.b64decode(record.request_body) == b'{"a":\x00\xff}'  # whatever the framing
    assert len(upstream.requests) == before  # nothing was forwarded


async def _in_flight(gateway: Gateway) -> bool:
    return bool(gateway.in_flight.tasks)


async def test_huge_body_forwarded_whole_stored_truncated(upstream: Upstream, tmp_path, http):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'h.db'}", tmp_path)
    async with running(settings.replace(max_body_bytes=1024 * 1024)) as gw:
        body = b'{"model": "mistral-small-latest", "input": "' + b"x" * (20 * 1024 * 1024) + b'"}'
        async with http.post(
            f"{gw.proxy_url}/v1/embeddings",
            data=io.BytesIO(body),
            headers={**AUTH, "Content-Type": "application/json"},
        ) as resp:
            await resp.read()
        seen = upstream.requests[-1]["body"]
        assert hashlib.sha256(seen).digest() == hashlib.sha256(body).digest()
        (record,) = await stored(gw)
        assert record.truncated is True
        assert len(record.request_body) <= 1024 * 1024


async def test_malformed_json_is_forwarded_and_flagged(sqlite_gateway, upstream, http):
    async with http.post(
        f"{sqlite_gateway.proxy_url}/v1/chat/completions",
        data=b'{"model": "x", "messages": [',
        headers={**AUTH, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status in (400, 422)
    assert upstream.requests[-1]["body"] == b'{"model": "x", "messages": ['
    (record,) = await stored(sqlite_gateway)
    assert record.parse_error is True
    assert record.request_body == '{"model": "x", "messages": ['
    assert record.request_body_encoding == "text"


async def test_odd_method_and_unknown_path_forwarded(sqlite_gateway, upstream, http):
    async with http.request(
        "PROPFIND", f"{sqlite_gateway.proxy_url}/nowhere/at/all?x=1", headers=AUTH
    ) as resp:
        assert resp.status == 404
    assert upstream.requests[-1]["method"] == "PROPFIND"
    assert upstream.requests[-1]["path"] == "/nowhere/at/all"
    (record,) = await stored(sqlite_gateway)
    assert record.method == "PROPFIND" and record.endpoint == "other"


async def test_proxy_port_serves_no_ui_or_api(sqlite_gateway, upstream, http):
    for path in ("/api/exchanges", "/healthz", "/"):
        async with http.get(f"{sqlite_gateway.proxy_url}{path}", headers=AUTH):
            pass
        assert upstream.requests[-1]["path"] == path  # forwarded, not answered by us


async def test_key_never_stored_or_logged(sqlite_gateway, http, caplog, tmp_path):
    caplog.set_level("DEBUG")
    payload = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "keep my secret"}],
    }
    url = f"{sqlite_gateway.proxy_url}/v1/chat/completions?api_key={KEY}"
    async with http.post(
        url, json=payload, headers={**AUTH, "Cookie": f"session={KEY}", "X-Api-Key": KEY}
    ) as resp:
        assert resp.status == 200
    (record,) = await stored(sqlite_gateway)
    assert record.key_fingerprint.endswith("WXYZ")
    assert KEY not in orjson.dumps(record).decode()
    assert KEY not in caplog.text
    db_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("gw.db*"))
    assert db_bytes  # the database is really there
    assert KEY.encode() not in db_bytes


async def test_omit_bodies_keeps_usage(sqlite_gateway, http):
    payload = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "private"}],
    }
    async with http.post(
        f"{sqlite_gateway.proxy_url}/v1/chat/completions",
        json=payload,
        headers={**AUTH, "X-AgentOps-Omit": "bodies"},
    ) as resp:
        assert resp.status == 200
    (record,) = await stored(sqlite_gateway)
    assert record.omitted is True
    assert record.request_body is None and record.response_body is None
    assert record.request_body_encoding == "omitted"
    assert record.output_text is None
    assert record.prompt_tokens and record.cost_usd is not None


async def test_omitted_bodies_leave_nothing_of_the_call_in_its_run(
    sqlite_gateway, http, tmp_path: Path
):
    """`X-AgentOps-Omit: bodies` on both steps of a tool-calling loop: the exchanges kept no
    body, but the run kept every message, tool call, tool result and memory snapshot of them
    in full (the run page and /api/runs/ID showed the prompt, the arguments and the answer)."""
    secret = "zebracornflakes"
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    messages: list[dict] = [{"role": "user", "content": f"look up {secret} please"}]
    headers = {**AUTH, "X-AgentOps-Omit": "bodies"}
    url = f"{sqlite_gateway.proxy_url}/v1/chat/completions"
    for _ in range(2):
        payload = {"model": "mistral-small-latest", "messages": messages, "tools": tools}
        async with http.post(url, json=payload, headers=headers) as resp:
            assert resp.status == 200
            reply = (await resp.json())["choices"][0]["message"]
        messages.append(reply)
        for call in reply.get("tool_calls") or ():
            messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": f"{secret} found"}
            )
    first, second = await stored(sqlite_gateway)
    assert first.omitted and second.omitted and first.run_id == second.run_id
    run = await sqlite_gateway.run_store.get_run(first.run_id)
    assert run is not None and run.exchange_count == 2
    shown = orjson.dumps(run.to_json()).decode()
    assert secret not in shown and "look up" not in shown
    for page in (f"/runs/{run.id}", f"/api/runs/{run.id}", f"/exchanges/{second.id}"):
        async with http.get(sqlite_gateway.ui_url + page) as resp:
            assert resp.status == 200 and secret not in await resp.text()
    db_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("gw.db*"))
    assert db_bytes and secret.encode() not in db_bytes


async def test_a_step_after_an_omitted_one_keeps_its_whole_memory(sqlite_gateway, http):
    """Step 1 omits its bodies, step 2 does not: step 2's memory is the whole conversation it
    sent (its own body holds it all). It carried step 1's messages, of which nothing is
    stored, so its memory read back as its last two messages alone."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    messages: list[dict] = [{"role": "user", "content": "look it up"}]
    url = f"{sqlite_gateway.proxy_url}/v1/chat/completions"
    for omit in (True, False):
        headers = {**AUTH, "X-AgentOps-Omit": "bodies"} if omit else AUTH
        payload = {"model": "mistral-small-latest", "messages": messages, "tools": tools}
        async with http.post(url, json=payload, headers=headers) as resp:
            assert resp.status == 200
            reply = (await resp.json())["choices"][0]["message"]
        sent = list(messages)
        messages.append(reply)
        for call in reply.get("tool_calls") or ():
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": "found"})
    first, second = sorted(await stored(sqlite_gateway), key=lambda r: r.id)
    assert first.omitted and not second.omitted and first.run_id == second.run_id
    run = await sqlite_gateway.run_store.get_run(second.run_id)
    assert run is not None
    (snapshot,) = run.to_json()["memory_snapshots"]  # the omitted step has none
    assert [m.get("role") for m in snapshot["state"]] == [m["role"] for m in sent] + ["assistant"]
    assert snapshot["state"][0]["content"] == "look it up"


@pytest.mark.slow
async def test_200_concurrent_calls_all_recorded(gateway, http):
    async def one(n: int) -> int:
        stream = n % 2 == 0
        payload = {
            "model": "mistral-small-latest",
            "stream": stream,
            "messages": [{"role": "user", "content": f"call number {n}"}],
        }
        headers = {**AUTH, "x-fake-chunks": "5", "x-fake-chunk-delay-ms": "5"}
        async with http.post(
            f"{gateway.proxy_url}/v1/chat/completions", json=payload, headers=headers
        ) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(one(n) for n in range(200)))
    assert statuses == [200] * 200
    await gateway.recorder.drained(timeout=30)
    assert await gateway.store.count() == 200
    assert gateway.recorder.health().dropped_records == 0


async def test_absolute_form_target_goes_to_the_upstream_only(sqlite_gateway, upstream):
    port = int(sqlite_gateway.proxy_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET http://evil.example/v1/models?x=1 HTTP/1.1\r\nHost: evil.example\r\n"
        b"Authorization: Bearer k\r\nConnection: close\r\n\r\n"
    )
    status_line = await reader.readline()
    await reader.read()
    writer.close()
    assert b" 200 " in status_line
    assert upstream.requests[-1]["path"] == "/v1/models"
    assert upstream.requests[-1]["query"] == "x=1"
    (record,) = await stored(sqlite_gateway)
    assert record.path == "/v1/models" and record.state == "complete"
