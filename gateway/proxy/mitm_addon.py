"""The mitmproxy addon: flows to the captured hosts become the gateway's capture records.

For agents that cannot change their base URL, mitmproxy runs as an explicit HTTPS proxy and
this addon turns each flow to a captured host into the same `Exchange` the reverse proxy
builds (redacted the same way, submitted to the same recorder), so the rows are identical in
shape. Responses are streamed through a callable that keeps a copy of each chunk: SSE reaches
the client as it arrives. Every other flow passes untouched and unrecorded (and TLS to other
hosts is not even decrypted: see `gateway/proxy/mitm.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.capture import redact
from gateway.capture.exchange import (
    CLIENT_DISCONNECTED,
    SHUTDOWN,
    UPSTREAM_ERROR,
    Exchange,
    stable_id,
)
from gateway.proxy import scrub
from gateway.proxy.forward import HINT_PREFIX

log = logging.getLogger("agentops.mitm")

# Hosts whose calls are parsed by a provider other than Mistral's.
PROVIDER_OF_HOST = {"api.elevenlabs.io": "elevenlabs"}
HINTS_KEY = "agentops_hints"  # flow.metadata key: hints survive in saved flow dumps


def header_pairs(headers: Any) -> list[tuple[str, str]]:
    """mitmproxy headers in wire order, as text (latin-1, as aiohttp gives them)."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.fields]


def hints_of(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower()[len(HINT_PREFIX) :]: v for k, v in pairs if k.lower().startswith(HINT_PREFIX)}


def provider_of(host: str) -> str:
    return PROVIDER_OF_HOST.get(host.lower(), "mistral")


def exchange_of(
    flow: Any,
    exchange_id: int,
    chunks: list[bytes],
    chunk_ms: list[float],
    hints: dict[str, str],
    held_keys: scrub.Keys | None = None,
) -> Exchange:
    """A finished (or failed) mitmproxy HTTP flow as a capture record. Used live by the addon
    (with the chunks it saw) and by `import` (with the body a flow dump kept). The caller's
    keys and `held_keys` (the gateway's own) are scrubbed from it, as the proxy does."""
    request = flow.request
    pairs = header_pairs(request.headers)
    path, _, query = request.path.partition("?")
    started = request.timestamp_start
    exchange = Exchange(
        id=exchange_id,
        started_at=started,
        method=request.method,
        client_path=path,
        path=path,
        query=redact.redact_query(query),
        request_headers=redact.redact_headers(pairs),
        request_body=request.raw_content or b"",
        provider=provider_of(request.host),
        key_fingerprint=redact.fingerprint(redact.key_of(pairs)),
        hints=dict(hints),
        omit_bodies=hints.get("omit", "").strip().lower() == "bodies",
        response_chunks=chunks,
        chunk_ms=chunk_ms,
    )
    response = flow.response
    if response is not None:
        exchange.status = response.status_code
        exchange.response_headers = redact.redact_headers(header_pairs(response.headers))
        if response.timestamp_start:
            exchange.ttfb_ms = round((response.timestamp_start - started) * 1000, 3)
        if response.timestamp_end:
            exchange.latency_ms = round((response.timestamp_end - started) * 1000, 3)
    if flow.error is not None:
        message = flow.error.msg or "connection failed"
        exchange.error = message
        exchange.state = (
            CLIENT_DISCONNECTED if "client disconnected" in message.lower() else UPSTREAM_ERROR
        )
        if response is None:
            exchange.status = 502  # what mitmproxy answers the client
        ended = getattr(flow.error, "timestamp", None) or time.time()
        exchange.latency_ms = exchange.latency_ms or round((ended - started) * 1000, 3)
    scrub.scrub_call(exchange, pairs, query, held_keys or scrub.Keys())
    return exchange


@dataclass
class _Live:
    """What the addon keeps of one flow in progress."""

    hints: dict[str, str]
    max_bytes: int
    chunks: list[bytes] = field(default_factory=list)
    chunk_ms: list[float] = field(default_factory=list)
    stored: int = 0
    truncated: bool = False
    started: float = 0.0
    flow: Any = None  # recorded from here if the gateway stops before the flow ends

    def chunk(self, data: bytes) -> bytes:
        """mitmproxy's stream callable: keep a copy (up to the limit), pass the bytes on."""
        if data:
            if self.stored < self.max_bytes:
                self.chunks.append(data)
                self.chunk_ms.append((time.time() - self.started) * 1000)
                self.stored += len(data)
            else:
                self.truncated = True
        return data


class CaptureAddon:
    """mitmproxy hooks (requestheaders, responseheaders, response, error) that record the
    flows to `hosts` (names, or name:port) and hand each record to `submit`."""

    def __init__(
        self,
        submit: Callable[[Exchange], None],
        hosts: Iterable[str],
        *,
        max_body_bytes: int,
        held_keys: scrub.Keys | None = None,
    ) -> None:
        self.submit = submit
        self.held_keys = held_keys or scrub.Keys()
        self.hosts = {h.strip().lower() for h in hosts if h.strip()}
        self.max_body_bytes = max_body_bytes
        self.live: dict[str, _Live] = {}

    def captures(self, host: str, port: int) -> bool:
        host = host.lower()
        return host in self.hosts or f"{host}:{port}" in self.hosts

    # -- mitmproxy hooks --------------------------------------------------------------------

    def requestheaders(self, flow: Any) -> None:
        request = flow.request
        if not self.captures(request.host, request.port):
            return
        pairs = header_pairs(request.headers)
        hints = hints_of(pairs)
        for name in {k for k, _ in pairs if k.lower().startswith(HINT_PREFIX)}:
            del request.headers[name]  # as the gateway does: hints never go upstream
        flow.metadata[HINTS_KEY] = hints
        self.live[flow.id] = _Live(
            hints, self.max_body_bytes, started=request.timestamp_start, flow=flow
        )

    def responseheaders(self, flow: Any) -> None:
        live = self.live.get(flow.id)
        if live is None:
            return
        if flow.response.status_code == 101:  # a WebSocket upgrade: passed through, unrecorded
            del self.live[flow.id]
            return
        flow.response.stream = live.chunk

    def response(self, flow: Any) -> None:
        self._finish(flow)

    def error(self, flow: Any) -> None:
        self._finish(flow)

    def _finish(self, flow: Any, cut: bool = False) -> None:
        live = self.live.pop(flow.id, None)
        if live is None:
            return
        try:
            exchange = exchange_of(
                flow,
                stable_id(flow.request.timestamp_start, flow.id),
                live.chunks,
                live.chunk_ms,
                live.hints,
                self.held_keys,
            )
            exchange.response_truncated = live.truncated
            if cut:
                exchange.state = SHUTDOWN
                exchange.error = "gateway shut down before the call finished"
                exchange.latency_ms = round((time.time() - live.started) * 1000, 3)
            self.submit(exchange)
        except Exception:  # never break the agent's call over a recording problem
            log.exception("could not record flow %s", flow.id)

    def cut(self) -> int:
        """Record every flow still in flight with state `shutdown` (the gateway is stopping
        and mitmproxy will not finish them); returns how many there were."""
        flows = [live.flow for live in self.live.values()]
        for flow in flows:
            self._finish(flow, cut=True)
        return len(flows)
