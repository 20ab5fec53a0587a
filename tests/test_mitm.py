"""mitmproxy capture: a real mitmproxy (embedded, as `agentops-studio mitm` runs it) in front of
the fake Mistral upstream served over TLS, the real mistralai and openai SDKs as clients
through HTTPS_PROXY + SSL_CERT_FILE, records compared with the reverse proxy's; then the flow
dump it saved, imported back. Also the `mitm` command as a real process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from aiohttp import web
from mistralai.client import Mistral
from openai import AsyncOpenAI

from gateway.app import Gateway
from gateway.capture.flow_import import load, store_all
from gateway.proxy.mitm import MitmCapture, MitmError, write_ca_bundle
from gateway.store.exchanges import ExchangeFilter
from gateway.store.records import StoredExchange
from tests.conftest import Upstream, make_settings
from tests.fake_mistral import REQUESTS, make_app
from tests.tls import LocalCA, make_ca

pytest.importorskip("mitmproxy", reason="the mitm extra needs Python 3.12+")

KEY = "mitm-test-SECRET-key-0123456789ABCD"
MODEL = "mistral-small-latest"
SAME_SHAPE = (
    "endpoint",
    "model",
    "request_model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "output_text",
    "cost_usd",
    "status",
    "state",
    "streamed",
    "provider",
    "request_body",
    "request_body_encoding",
    "response_body_encoding",
    "finish_reason",
    "path",
    "method",
)


@dataclass
class TlsFake:
    url: str  # https://localhost:PORT
    port: int
    app: web.Application
    ca: LocalCA


@pytest.fixture
async def tls_fake(tmp_path: Path) -> AsyncIterator[TlsFake]:
    ca = make_ca(tmp_path / "ca")
    app = make_app()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.server_context).start()
    port = runner.addresses[0][1]
    try:
        yield TlsFake(f"https://localhost:{port}", port, app, ca)
    finally:
        await runner.cleanup()


@pytest.fixture
async def mitm(
    upstream: Upstream, tls_fake: TlsFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, MitmCapture]]:
    """A gateway (reverse proxy to the plain fake, for comparison) and mitmproxy recording
    localhost into the same recorder; the client environment a user would set."""
    gw = Gateway(make_settings(upstream.url, f"sqlite://{tmp_path / 'live.db'}", tmp_path))
    capture = MitmCapture(
        gw.recorder.submit,
        host="127.0.0.1",
        port=0,
        capture_hosts=["localhost"],
        confdir=str(tmp_path / "mitmproxy"),
        max_body_bytes=gw.settings.max_body_bytes,
        upstream_ca=str(tls_fake.ca.ca_pem),
        save_flows=str(tmp_path / "flows.mitm"),
    )
    await gw.start()
    try:
        await capture.start()
        bundle = write_ca_bundle(capture.confdir)
        for name in ("NO_PROXY", "no_proxy", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", capture.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        yield gw, capture
    finally:
        await capture.stop()
        await gw.stop()


async def records(gw: Gateway) -> list[StoredExchange]:
    await gw.recorder.drained(timeout=10)
    items, _ = await gw.store.list_exchanges(ExchangeFilter(), 500, None)
    found = [await gw.store.get_exchange(i.id) for i in items]
    return [record for record in found if record is not None]


def chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


async def test_sdks_through_mitm_are_recorded_like_the_gateway(
    mitm: tuple[Gateway, MitmCapture],
    tls_fake: TlsFake,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    gw, capture = mitm
    # REQUESTS_CA_BUNDLE alone is not enough for these SDKs (the README says so): refused.
    with monkeypatch.context() as env:
        env.delenv("SSL_CERT_FILE")
        env.setenv("REQUESTS_CA_BUNDLE", str(capture.confdir / "agentops-ca-bundle.pem"))
        async with Mistral(api_key=KEY, server_url=tls_fake.url) as client:
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.chat.complete_async(model=MODEL, messages=chat("refused"))
    # The experiment the README's instructions rest on: both SDKs honour HTTPS_PROXY and
    # SSL_CERT_FILE (set by the fixture) with no code change.
    async with Mistral(api_key=KEY, server_url=tls_fake.url) as client:
        answer = await client.chat.complete_async(
            model=MODEL,
            messages=chat("Hello through mitmproxy"),
            http_headers={"X-AgentOps-Run": "mitm-run"},
        )
        start, arrivals, text = time.perf_counter(), [], ""
        stream = await client.chat.stream_async(
            model=MODEL,
            messages=chat("Stream through mitmproxy"),
            http_headers={"x-fake-chunks": "5", "x-fake-chunk-delay-ms": "150"},
        )
        async with stream:
            async for event in stream:
                arrivals.append(time.perf_counter() - start)
                text += event.data.choices[0].delta.content or ""
    assert answer.choices[0].message.content
    assert arrivals[0] < arrivals[-1] - 0.45, arrivals  # forwarded as it arrives
    oai = AsyncOpenAI(api_key=KEY, base_url=tls_fake.url + "/v1", max_retries=0)
    try:
        await oai.chat.completions.create(model=MODEL, messages=chat("Hello from openai"))
    finally:
        await oai.close()
    seen = {k.lower(): v for k, v in tls_fake.app[REQUESTS][0]["headers"]}
    assert seen["authorization"] == f"Bearer {KEY}" and "x-agentops-run" not in seen

    # Other hosts pass untouched: TLS to 127.0.0.1 is tunnelled, not decrypted (the client
    # trusts only the fake's own CA here, so a mitmproxy certificate would fail).
    only_fake = ssl.create_default_context(cafile=str(tls_fake.ca.ca_pem))
    async with httpx2.AsyncClient(proxy=capture.url, verify=only_fake) as direct:
        resp = await direct.get(
            f"https://127.0.0.1:{tls_fake.port}/v1/models", headers={"Authorization": "Bearer k"}
        )
        assert resp.status_code == 200
    # A captured host that does not answer: mitmproxy's 502, recorded as an upstream error.
    async with httpx2.AsyncClient(proxy=capture.url) as client:
        resp = await client.get("https://localhost:9/v1/models")
        assert resp.status_code == 502
    # The same call as the first one, through the reverse proxy, for the shape comparison.
    async with Mistral(api_key=KEY, server_url=gw.proxy_url) as client:
        await client.chat.complete_async(model=MODEL, messages=chat("Hello through mitmproxy"))

    rows = await records(gw)
    assert len(rows) == 5  # 4 through mitmproxy, 1 through the gateway, none for 127.0.0.1
    (failed,) = [r for r in rows if r.path == "/v1/models"]
    assert failed.state == "upstream_error" and failed.status == 502 and failed.error
    live = [
        r
        for r in rows
        if r.client_path == "/v1/chat/completions" and r.id != max(r.id for r in rows)
    ]
    via_gateway = next(r for r in rows if r.id == max(r.id for r in rows))
    via_mitm = next(r for r in live if r.output_text == answer.choices[0].message.content)
    assert set(via_mitm.to_json()) == set(via_gateway.to_json())
    for column in SAME_SHAPE:
        assert getattr(via_mitm, column) == getattr(via_gateway, column), column
    streamed = next(r for r in live if r.streamed)
    assert streamed.output_text == text and streamed.completion_tokens
    assert streamed.ttft_ms is not None and streamed.ttft_ms < streamed.latency_ms - 400
    sent = {k.lower(): v for k, v in via_mitm.request_headers}
    assert sent["authorization"] == "[redacted]" and "x-agentops-run" not in sent
    assert via_mitm.key_fingerprint == via_gateway.key_fingerprint
    assert via_mitm.run_id is not None
    run = await gw.run_store.get_run(via_mitm.run_id)
    assert run is not None and run.name == "mitm-run"
    db = b"".join(p.read_bytes() for p in tmp_path.glob("live.db*"))
    assert db and KEY.encode() not in db

    # The flows mitmproxy saved (--save-flows, unredacted, so 0600) import to the same ids:
    # nothing new here...
    assert (tmp_path / "flows.mitm").stat().st_mode & 0o777 == 0o600
    loaded = load(str(tmp_path / "flows.mitm"), ["localhost"])
    assert loaded.kind == "mitmproxy" and len(loaded.exchanges) == 4
    assert await store_all(gw, loaded.exchanges) == (0, 4)
    # ...and the same rows in a fresh database, twice imported, once stored.
    fresh = Gateway(
        make_settings("http://127.0.0.1:9", f"sqlite://{tmp_path / 'imp.db'}", tmp_path / "imp")
    )
    await fresh.start(proxy=False, ui=False)
    try:
        assert await store_all(fresh, loaded.exchanges) == (4, 0)
        assert await store_all(
            fresh, load(str(tmp_path / "flows.mitm"), ["localhost"]).exchanges
        ) == (0, 4)
        imported = {r.id: r for r in await records(fresh)}
    finally:
        await fresh.stop()
    for row in [*live, failed]:
        twin = imported[row.id]
        for column in (*SAME_SHAPE, "key_fingerprint"):
            assert getattr(twin, column) == getattr(row, column), column


async def test_mitm_command_runs_and_records(tls_fake: TlsFake, tmp_path: Path):
    """`agentops-studio mitm` as a user runs it: prints what to set, records, stops on SIGTERM."""
    db = tmp_path / "cli.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "mitm",
        "--port",
        "0",
        "--no-ui",
        "--capture-host",
        "localhost",
        "--confdir",
        str(tmp_path / "conf"),
        "--upstream-ca",
        str(tls_fake.ca.ca_pem),
        "--db",
        f"sqlite://{db}",
        "--spool-dir",
        str(tmp_path / "spool"),
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if "PROXY" not in k.upper()},
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while not any("SSL_CERT_FILE=" in line for line in lines):
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "".join(lines)
            lines.append(line)
        proxy = re.search(r"HTTPS_PROXY=(\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]
        bundle = re.search(r"SSL_CERT_FILE=(\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]
        assert Path(bundle).read_text().count("BEGIN CERTIFICATE") > 1  # mitmproxy's + roots
        trust = ssl.create_default_context(cafile=bundle)
        async with httpx2.AsyncClient(proxy=proxy, verify=trust) as client:
            resp = await client.post(
                f"{tls_fake.url}/v1/chat/completions",
                json={"model": MODEL, "messages": chat("from the CLI")},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert resp.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    gw = Gateway(make_settings("http://127.0.0.1:9", f"sqlite://{db}", tmp_path / "read"))
    await gw.start(proxy=False, ui=False)
    try:
        (row,) = await records(gw)
    finally:
        await gw.stop()
    assert row.path == "/v1/chat/completions" and row.prompt_tokens


async def test_port_in_use_is_one_clear_error(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capture = MitmCapture(
            lambda exchange: None,
            host="127.0.0.1",
            port=port,
            capture_hosts=["api.mistral.ai"],
            confdir=str(tmp_path / "c"),
            max_body_bytes=1024,
        )
        with pytest.raises(MitmError) as info:
            await capture.start()
    message = str(info.value)
    assert f"could not listen on 127.0.0.1:{port}" in message and "\n" not in message


async def test_mitm_second_ctrl_c_cuts_the_call_in_flight_and_records_it(
    tls_fake: TlsFake, tmp_path: Path
):
    """As `serve` does: the first Ctrl-C waits for the hanging call (up to --shutdown-grace)
    and says so, the second exits at once, and the call is stored with state `shutdown`."""
    db = tmp_path / "cut.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "mitm",
        "--port",
        "0",
        "--no-ui",
        "--capture-host",
        "localhost",
        "--confdir",
        str(tmp_path / "conf"),
        "--upstream-ca",
        str(tls_fake.ca.ca_pem),
        "--db",
        f"sqlite://{db}",
        "--shutdown-grace",
        "60",
        "--spool-dir",
        str(tmp_path / "spool"),
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if "PROXY" not in k.upper()},
    )
    assert proc.stderr is not None

    async def line_with(text: str) -> str:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, f"stderr ended without {text!r}"
            if text in line:
                return line

    try:
        proxy = re.search(r"HTTPS_PROXY=(\S+)", await line_with("HTTPS_PROXY=")).group(1)  # type: ignore[union-attr]
        bundle = re.search(r"SSL_CERT_FILE=(\S+)", await line_with("SSL_CERT_FILE=")).group(1)  # type: ignore[union-attr]
        trust = ssl.create_default_context(cafile=bundle)
        async with httpx2.AsyncClient(proxy=proxy, verify=trust, timeout=60) as client:
            call = asyncio.create_task(
                client.post(
                    f"{tls_fake.url}/v1/chat/completions",
                    headers={"x-fake-hang": "1"},
                    json={"model": MODEL, "messages": chat("hang")},
                )
            )
            deadline = time.monotonic() + 20
            while not tls_fake.app[REQUESTS] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert tls_fake.app[REQUESTS], "the call never reached the upstream"
            proc.send_signal(signal.SIGINT)
            hint = await line_with("stopping:")
            assert "waiting up to 60 s for 1 call in flight" in hint, hint
            proc.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, err = await asyncio.wait_for(proc.communicate(), 15)
            took = time.monotonic() - started
            call.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err.decode()
    assert "cut 1 call in flight" in err.decode()
    assert took < 5, f"took {took:.1f} s to exit after the second Ctrl-C"
    gw = Gateway(make_settings("http://127.0.0.1:9", f"sqlite://{db}", tmp_path / "read"))
    await gw.start(proxy=False, ui=False)
    try:
        (row,) = await records(gw)
    finally:
        await gw.stop()
    assert row.state == "shutdown" and row.path == "/v1/chat/completions"
