"""`agentops-studio import`: HAR files (and, in test_mitm.py, mitmproxy flow dumps) become the
same records the proxy makes, importing twice stores each call once, and a file that is
neither gets one clear line. Bodies come from the real fake upstream.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.app import Gateway
from gateway.capture.exchange import UPSTREAM_ERROR
from gateway.capture.flow_import import ImportFileError, _har_entry, load, store_all
from gateway.store.exchanges import ExchangeFilter
from gateway.store.runs import RunFilter
from tests.conftest import Upstream, make_settings
from tests.fake_elevenlabs import audio_for

KEY = "har-test-SECRET-key-abcdefghijklmnop"
ROOT = Path(__file__).resolve().parent.parent


def header_list(headers: Any) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in headers.items()]


async def har_entry(
    http: aiohttp.ClientSession,
    upstream: Upstream,
    payload: dict,
    started: str,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One HAR entry (as a browser or mitmproxy exports it) of a real call to the fake."""
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        **(extra or {}),
    }
    body = orjson.dumps(payload).decode()
    async with http.post(f"{upstream.url}/v1/chat/completions", data=body, headers=headers) as resp:
        raw = await resp.read()
        text = (
            gzip.decompress(raw) if resp.headers.get("Content-Encoding") == "gzip" else raw
        ).decode()  # HAR keeps bodies decoded
        response = {
            "status": resp.status,
            "statusText": resp.reason,
            "headers": header_list(resp.headers),
            "content": {"size": len(text), "mimeType": resp.headers["Content-Type"], "text": text},
        }
    return {
        "startedDateTime": started,
        "time": 42.5,
        "request": {
            "method": "POST",
            "url": "https://api.mistral.ai/v1/chat/completions?x=1",
            "headers": header_list(headers),
            "postData": {"mimeType": "application/json", "text": body},
        },
        "response": response,
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": 3,
            "ssl": 2,
            "send": 0.5,
            "wait": 20,
            "receive": 19,
        },
    }


async def make_har(upstream: Upstream, path: Path) -> bytes:
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        plain = await har_entry(
            http,
            upstream,
            {
                "model": "mistral-small-latest",
                "messages": [{"role": "user", "content": "imported from a HAR file"}],
            },
            "2026-03-01T10:00:00.000Z",
            {"x-fake-gzip": "1", "X-AgentOps-Run": "har-run"},
        )
        streamed = await har_entry(
            http,
            upstream,
            {
                "model": "mistral-small-latest",
                "stream": True,
                "messages": [{"role": "user", "content": "a streamed HAR entry"}],
            },
            "2026-03-01T10:00:01.500Z",
            {"X-AgentOps-Run": "har-run"},
        )
    audio = audio_for("Spoken words", "voice1")
    speech = {
        "startedDateTime": "2026-03-01T10:00:03.000+00:00",
        "time": 300,
        "request": {
            "method": "POST",
            "url": "https://api.elevenlabs.io/v1/text-to-speech/voice1",
            "headers": [
                {"name": "xi-api-key", "value": KEY},
                {"name": "Content-Type", "value": "application/json"},
            ],
            "postData": {"text": '{"text": "Spoken words"}'},
        },
        "response": {
            "status": 200,
            "headers": [
                {"name": "Content-Type", "value": "audio/mpeg"},
                {"name": "character-cost", "value": "12"},
            ],
            "content": {"encoding": "base64", "text": base64.b64encode(audio).decode()},
        },
        "timings": {"wait": 100, "receive": 200},
    }
    other = {
        "startedDateTime": "2026-03-01T10:00:04Z",
        "time": 5,
        "request": {"method": "GET", "url": "https://www.example.com/", "headers": []},
        "response": {"status": 200, "headers": [], "content": {"text": "<html>"}},
    }
    path.write_bytes(
        orjson.dumps(
            {
                "log": {
                    "version": "1.2",
                    "creator": {"name": "test"},
                    "entries": [plain, streamed, speech, other],
                }
            }
        )
    )
    return audio


async def test_har_import_same_shape_and_idempotent(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    har = tmp_path / "session.har"
    audio = await make_har(upstream, har)
    loaded = load(str(har), ["api.mistral.ai", "api.elevenlabs.io"])
    assert loaded.kind == "har" and loaded.skipped_hosts == {"www.example.com": 1}
    gw = Gateway(make_settings(upstream.url, db_url, tmp_path))
    await gw.start(proxy=False, ui=False)
    try:
        assert await store_all(gw, loaded.exchanges) == (3, 0)
        again = load(str(har), ["api.mistral.ai", "api.elevenlabs.io"])
        assert await store_all(gw, again.exchanges) == (0, 3)
        assert await gw.store.count() == 3
        items, _ = await gw.store.list_exchanges(ExchangeFilter(), 10, None)
        found = [await gw.store.get_exchange(r.id) for r in items]
        rows = {r.id: r for r in found if r is not None}
        runs, _ = await gw.run_store.list_runs(RunFilter(name="har-run"), 10, None)
    finally:
        await gw.stop()
    chat = next(r for r in rows.values() if r.provider == "mistral" and not r.streamed)
    assert chat.to_json()["started_at"] == "2026-03-01T10:00:00.000Z"
    assert chat.query == "x=1" and chat.endpoint == "chat"
    assert chat.prompt_tokens and chat.cost_usd and chat.output_text
    assert chat.ttfb_ms == 23.5 and chat.latency_ms == 42.5  # connect+send+wait
    assert chat.response_body_encoding == "json" and chat.key_fingerprint
    streamed = next(r for r in rows.values() if r.streamed)
    assert streamed.output_text and streamed.completion_tokens
    speech = next(r for r in rows.values() if r.provider == "elevenlabs")
    assert speech.provider == "elevenlabs" and speech.cost_usd == pytest.approx(0.0012)
    assert orjson.loads(speech.response_body)["sha256"] == hashlib.sha256(audio).hexdigest()
    assert KEY not in orjson.dumps(list(rows.values())).decode()  # every field, as stored
    (run,) = runs
    assert run.exchange_count == 2 and run.status == "ok"  # old, so settled


# -- one HAR entry, without a gateway -------------------------------------------------------

UNIT_KEY = "har-unit-SECRET-key-abcdefgh"
ECHO = f'{{"echo": "{UNIT_KEY}"}}'.encode()
FULL_ENTRY = {
    "startedDateTime": "2026-03-01T10:00:00.250Z",
    "time": 42.5,
    "request": {
        "method": "POST",
        "url": "https://api.mistral.ai/v1/chat/completions?x=1&api_key=sk-SECRETSECRETSECRET",
        "headers": [
            {"name": "Authorization", "value": f"Bearer {UNIT_KEY}"},
            {"name": "Content-Type", "value": "application/json"},
            {"name": "X-AgentOps-Run", "value": "r1"},
            {"name": "X-AgentOps-Omit", "value": " Bodies "},
        ],
        "postData": {"text": '{"model": "m", "messages": []}'},
    },
    "response": {
        "status": 200,
        "headers": [
            {"name": "Content-Type", "value": "application/json"},
            {"name": "Content-Encoding", "value": "gzip"},
        ],
        "content": {"encoding": "base64", "text": base64.b64encode(ECHO).decode()},
    },
    "timings": {"blocked": -1, "dns": 1, "connect": 3, "send": 0.5, "wait": 20, "receive": 19},
}
FULL_EXCHANGE = {
    "id": 286437409820033939,  # stable: the same entry always gets the same id
    "started_at": 1772359200.25,
    "method": "POST",
    "client_path": "/v1/chat/completions",
    "path": "/v1/chat/completions",
    "query": "x=1&api_key=%5Bredacted%5D",
    "request_headers": [
        ("Authorization", "[redacted]"),
        ("Content-Type", "application/json"),
        ("X-AgentOps-Run", "r1"),
        ("X-AgentOps-Omit", " Bodies "),
    ],
    "request_body": b'{"model": "m", "messages": []}',
    "provider": "mistral",
    "key_fingerprint": "sha256:7e34e4db2d46...efgh",
    "hints": {"omit": " Bodies ", "run": "r1"},
    "omit_bodies": True,
    "status": 200,
    # HAR bodies are decoded: the Content-Encoding header goes
    "response_headers": [("Content-Type", "application/json")],
    "response_chunks": [b'{"echo": "sha256:7e34e4db2d46...efgh"}'],  # the echoed key scrubbed
    "chunk_ms": [42.5],
    "response_truncated": False,
    "request_truncated": False,
    "ttfb_ms": 24.5,  # every phase before receive, -1 counted as 0
    "latency_ms": 42.5,
    "state": "complete",
    "error": None,
    "replay_of": None,
    "response_decoded": False,
    "request_decoded": False,
}
NO_RESPONSE = {
    "id": 286422309277392947,
    "started_at": 1772355600.0,
    "method": "GET",
    "client_path": "/",
    "path": "/",
    "query": "",
    "request_headers": [],
    "request_body": b"",
    "provider": "mistral",
    "key_fingerprint": None,
    "hints": {},
    "omit_bodies": False,
    "status": None,
    "response_headers": [],
    "response_chunks": [],
    "chunk_ms": [],
    "response_truncated": False,
    "request_truncated": False,
    "ttfb_ms": None,
    "latency_ms": None,
    "state": UPSTREAM_ERROR,
    "error": "no response in the HAR entry",
    "replay_of": None,
    "response_decoded": False,
    "request_decoded": False,
}


@pytest.mark.parametrize(
    ("entry", "where", "expected"),
    [
        (FULL_ENTRY, ("api.mistral.ai", 443), FULL_EXCHANGE),
        (
            {
                "startedDateTime": "2026-03-01T10:00:00+01:00",
                "request": {"method": "GET", "url": "http://LocalHost:8080"},
                "response": {"status": 0},  # HAR's "no response"
            },
            ("localhost", 8080),
            NO_RESPONSE,
        ),
        (
            {
                "startedDateTime": "2026-03-01T10:00:00Z",
                "request": {"method": "GET", "url": "http://api.elevenlabs.io/v1/voices"},
                "response": {"status": 404, "content": {"text": "gone"}},
                "time": 0,
            },
            ("api.elevenlabs.io", 80),
            {
                **NO_RESPONSE,
                "id": 286437408769000788,
                "started_at": 1772359200.0,
                "client_path": "/v1/voices",
                "path": "/v1/voices",
                "provider": "elevenlabs",
                "status": 404,
                "response_chunks": [b"gone"],
                "chunk_ms": [0.0],
                "state": "complete",
                "error": None,
            },
        ),
    ],
)
def test_har_entry(entry: dict[str, Any], where: tuple[str, int], expected: dict[str, Any]):
    host, port, exchange = _har_entry(entry)
    assert (host, port) == where
    assert exchange.to_dict() == expected


R = {"method": "POST", "url": "https://api.mistral.ai/v1/chat/completions"}
T = "2026-03-01T10:00:00Z"
BAD_B64 = {"encoding": "base64", "text": "a"}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        # the first thing wrong, in the order the entry is read
        ({}, "no 'request'"),
        ({"request": {}}, "no 'url'"),
        ({"request": {"url": "https://a:bad/"}}, "ValueError: Port could not be cast"),
        ({"request": R}, "no 'startedDateTime'"),
        ({"request": R, "startedDateTime": "now"}, "ValueError: Invalid isoformat string"),
        (
            {"request": {**R, "headers": [{"name": "a"}]}, "startedDateTime": T, "response": 5},
            "no 'value'",
        ),
        ({"request": R, "startedDateTime": T, "response": {"content": BAD_B64}}, "Error: Invalid"),
        (
            {"request": R, "startedDateTime": T, "response": {"headers": [{"value": 1}]}},
            "no 'name'",
        ),
        (
            {
                "request": R,
                "startedDateTime": T,
                # a Content-Encoding header is dropped before its value is read
                "response": {"headers": [{"name": "content-encoding"}], "status": "abc"},
            },
            "ValueError: invalid literal for int()",
        ),
        (
            {"request": R, "startedDateTime": T, "time": "slow"},
            "ValueError: could not convert string to float: 'slow'",
        ),
        ({"request": {"url": R["url"]}, "startedDateTime": T}, "no 'method'"),
        (
            {"request": {**R, "postData": {"text": 5}}, "startedDateTime": T},
            "AttributeError: 'int' object has no attribute 'encode'",
        ),
        (
            {"request": {**R, "headers": [{"name": 5, "value": "x"}]}, "startedDateTime": T},
            "AttributeError: 'int' object has no attribute 'lower'",
        ),
    ],
)
def test_malformed_har_entry_says_what(tmp_path: Path, entry: dict[str, Any], expected: str):
    path = tmp_path / "x.har"
    path.write_bytes(orjson.dumps({"log": {"entries": [FULL_ENTRY, entry]}}))
    with pytest.raises(ImportFileError) as info:
        load(str(path), ["api.mistral.ai"])
    assert str(info.value).startswith(f"{path}: HAR entry 1 is malformed: {expected}")


NOT_A_DUMP = "neither a HAR file nor a mitmproxy flow dump"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        (b"", "empty file"),
        (b"   \n", "empty file"),
        (b'{"not": "har"}', "not a HAR file"),
        (b"{broken json", "not a HAR file"),
        (b'{"log": {"entries": [{"request": {}}]}}', "HAR entry 0 is malformed: no 'url'"),
        (b'{"log": {"entries": [{"request": {"url": 5}}]}}', "HAR entry 0 is malformed"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", NOT_A_DUMP),
        (b"12:not a flow dump,", NOT_A_DUMP),
    ],
)
def test_unreadable_files_get_one_clear_line(tmp_path: Path, content, expected):
    path = tmp_path / "input"
    if content is not None:
        path.write_bytes(content)
    if expected == NOT_A_DUMP:
        pytest.importorskip("mitmproxy", reason="reading flow dumps needs the mitm extra")
    with pytest.raises(ImportFileError) as info:
        load(str(path), ["api.mistral.ai"])
    message = str(info.value)
    assert expected in message and "\n" not in message and str(path) in message


async def test_import_command(upstream: Upstream, tmp_path: Path):
    """The real command: a summary line, then exit status 2 and one line for a bad file."""
    har = tmp_path / "calls.har"
    await make_har(upstream, har)
    db = f"sqlite://{tmp_path / 'cli.db'}"
    env = {**os.environ, "AGENTOPS_SPOOL_DIR": str(tmp_path / "spool")}

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "import",
            *args,
            "--db",
            db,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await run(str(har))
    assert code == 0, err
    assert out.strip() == (
        f"imported 3 exchanges from har file {har}; skipped 1 calls to "
        "other hosts (www.example.com; see --capture-host)"
    )
    (tmp_path / "bad.har").write_text('{"log": {}}')
    code, out, err = await run(str(tmp_path / "bad.har"))
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "not a HAR file" in err
