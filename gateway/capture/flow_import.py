"""`agentops-studio import FILE`: a mitmproxy flow dump or a HAR file, as capture records.

Each flow or HAR entry to a captured host becomes the `Exchange` the proxy would have built
(same redaction, same writer), with an id derived from the call itself (`stable_id`), so a
file imported twice, or a dump of flows the `mitm` command already recorded, is stored once.
HAR is plain JSON and needs nothing; flow dumps are read with mitmproxy's own `FlowReader`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import orjson

from gateway.capture import redact
from gateway.capture.exchange import UPSTREAM_ERROR, Exchange, stable_id
from gateway.errors import UserError
from gateway.proxy import scrub
from gateway.proxy.mitm_addon import HINTS_KEY, exchange_of, hints_of, provider_of


class ImportFileError(UserError, ValueError):
    """A file that cannot be read as a flow dump or a HAR file; the message is one line."""


@dataclass
class Loaded:
    exchanges: list[Exchange]
    skipped_hosts: dict[str, int]  # flows to hosts that are not captured, by host
    kind: str  # "har" or "mitmproxy"


def load(path: str, capture_hosts: Iterable[str]) -> Loaded:
    """Read `path` (HAR if it is JSON, else a mitmproxy dump) and keep the captured hosts."""
    hosts = {h.strip().lower() for h in capture_hosts if h.strip()}
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not head:
        raise ImportFileError(f"{path}: empty file, neither a HAR file nor a mitmproxy dump")
    if head[:1] in (b"{", b"["):
        return _keep(_har(path), hosts, "har")
    return _keep(_flows(path), hosts, "mitmproxy")


def _keep(found: Iterator[tuple[str, int, Exchange]], hosts: set[str], kind: str) -> Loaded:
    loaded = Loaded([], {}, kind)
    for host, port, exchange in found:
        if host in hosts or f"{host}:{port}" in hosts:
            loaded.exchanges.append(exchange)
        else:
            loaded.skipped_hosts[host] = loaded.skipped_hosts.get(host, 0) + 1
    return loaded


async def store_all(gateway: Any, exchanges: list[Exchange]) -> tuple[int, int]:
    """Write the exchanges through `gateway`'s recorder (started without listeners), in start
    order as run grouping wants; returns (newly stored, already there)."""
    exchanges = sorted(exchanges, key=lambda e: (e.started_at, e.id))
    known: set[int] = set()
    for start in range(0, len(exchanges), 500):
        known |= await gateway.store.existing([e.id for e in exchanges[start : start + 500]])
    fresh = [e for e in exchanges if e.id not in known]
    step = max(1, gateway.settings.queue_size // 2)  # never spill an import to the spool
    for start in range(0, len(fresh), step):
        for exchange in fresh[start : start + step]:
            gateway.recorder.submit(exchange)
        await gateway.recorder.drained()
    await gateway.finish_idle_runs()  # imported runs are old: settle them now
    return len(fresh), len(exchanges) - len(fresh)


# -- mitmproxy flow dumps --------------------------------------------------------------------


def _flows(path: str) -> Iterator[tuple[str, int, Exchange]]:
    try:
        from mitmproxy import exceptions, http, io
    except ImportError:
        raise ImportFileError(
            f"{path}: reading mitmproxy flow dumps needs mitmproxy "
            "(Python 3.12+): pip install 'agentops-studio[mitm]'"
        ) from None
    with open(path, "rb") as f:
        try:
            flows = list(io.FlowReader(f).stream())
        except (exceptions.FlowReadException, ValueError, KeyError, TypeError) as exc:
            raise ImportFileError(
                f"{path}: neither a HAR file nor a mitmproxy flow dump ({str(exc).rstrip('.')})"
            ) from None
    for flow in flows:
        if not isinstance(flow, http.HTTPFlow) or flow.websocket is not None:
            continue
        body = flow.response.raw_content if flow.response is not None else None
        end = flow.response.timestamp_end if flow.response is not None else None
        chunk_ms = [((end or flow.request.timestamp_start) - flow.request.timestamp_start) * 1000]
        hints = flow.metadata.get(HINTS_KEY) or hints_of(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in flow.request.headers.fields]
        )
        exchange = exchange_of(
            flow,
            stable_id(flow.request.timestamp_start, flow.id),
            [body] if body else [],
            chunk_ms if body else [],
            hints,
        )
        yield flow.request.host.lower(), flow.request.port, exchange


# -- HAR ------------------------------------------------------------------------------------


def _har(path: str) -> Iterator[tuple[str, int, Exchange]]:
    try:
        data = orjson.loads(Path(path).read_bytes())
        entries = data["log"]["entries"]
        if not isinstance(entries, list):
            raise TypeError("log.entries is not a list")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ImportFileError(
            f"{path}: not a HAR file (JSON with log.entries): {type(exc).__name__}: {exc}"
        ) from None
    for index, entry in enumerate(entries):
        try:
            yield _har_entry(entry)
        except KeyError as exc:
            raise ImportFileError(
                f"{path}: HAR entry {index} is malformed: no {exc.args[0]!r}"
            ) from None
        except (TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise ImportFileError(
                f"{path}: HAR entry {index} is malformed: {type(exc).__name__}: {exc}"
            ) from None


@dataclass
class _HarRequest:
    """What an entry says of its request, read in the order a malformed entry's error names
    the first thing wrong (the method is read with the response, after it)."""

    request: dict[str, Any]
    url: SplitResult
    host: str
    port: int
    started: float  # Unix time, seconds
    pairs: list[tuple[str, str]]
    body: bytes

    @classmethod
    def of(cls, entry: dict[str, Any]) -> _HarRequest:
        request = entry["request"]
        url = urlsplit(request["url"])
        host = (url.hostname or "").lower()
        port = url.port or (443 if url.scheme == "https" else 80)
        started = datetime.fromisoformat(entry["startedDateTime"].replace("Z", "+00:00"))
        pairs = [(h["name"], h["value"]) for h in request.get("headers") or ()]
        body = ((request.get("postData") or {}).get("text") or "").encode()
        return cls(request, url, host, port, started.timestamp(), pairs, body)


@dataclass
class _HarResponse:
    """What an entry says of its response; status None when there was none (HAR says 0)."""

    status: int | None
    text: str  # the body as the file has it (base64 or not): part of the call's identity
    body: bytes
    pairs: list[tuple[str, str]]

    @classmethod
    def of(cls, response: dict[str, Any]) -> _HarResponse:
        content = response.get("content") or {}
        text = content.get("text") or ""
        body = base64.b64decode(text) if content.get("encoding") == "base64" else text.encode()
        # HAR keeps bodies already decoded: a Content-Encoding header no longer describes them.
        pairs = [
            (h["name"], h["value"])
            for h in response.get("headers") or ()
            if h["name"].lower() != "content-encoding"
        ]
        status = int(response.get("status") or 0) or None  # 0: no response (HAR's convention)
        return cls(status, text, body, pairs)


def _har_entry(entry: dict[str, Any]) -> tuple[str, int, Exchange]:
    call = _HarRequest.of(entry)
    answer = _HarResponse.of(entry.get("response") or {})
    total = float(entry.get("time") or 0)
    exchange_id = stable_id(call.started, _har_identity(entry, call, answer))
    hints = hints_of(call.pairs)
    path = call.url.path or "/"
    exchange = Exchange(
        id=exchange_id,
        started_at=call.started,
        method=call.request["method"],
        client_path=path,
        path=path,
        query=redact.redact_query(call.url.query),
        request_headers=redact.redact_headers(call.pairs),
        request_body=call.body,
        provider=provider_of(call.host),
        key_fingerprint=redact.fingerprint(redact.key_of(call.pairs)),
        hints=hints,
        omit_bodies=hints.get("omit", "").strip().lower() == "bodies",
        status=answer.status,
        response_headers=redact.redact_headers(answer.pairs),
        response_chunks=[answer.body] if answer.body else [],
        chunk_ms=[total] if answer.body else [],
        ttfb_ms=_ttfb(entry.get("timings")),
        latency_ms=total or None,
    )
    if answer.status is None:
        exchange.state, exchange.error = UPSTREAM_ERROR, "no response in the HAR entry"
    scrub.scrub_call(exchange, call.pairs, call.url.query, scrub.Keys())
    return call.host, call.port, exchange


def _har_identity(entry: dict[str, Any], call: _HarRequest, answer: _HarResponse) -> str:
    """What makes a HAR entry this call and no other: its stable id is derived from it."""
    request = call.request
    body = call.body.decode(errors="replace")
    fields = [entry["startedDateTime"], request["method"], request["url"], body]
    return orjson.dumps([*fields, answer.status, answer.text]).decode()


def _ttfb(timings: Any) -> float | None:
    """Time to the first response byte: every HAR phase before `receive` (-1 = not known)."""
    if not isinstance(timings, dict) or not isinstance(timings.get("wait"), int | float):
        return None
    phases = ("blocked", "dns", "connect", "send", "wait")  # ssl is already inside connect
    return round(sum(max(0.0, float(timings.get(p) or 0)) for p in phases), 3)
