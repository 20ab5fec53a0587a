"""OpenTelemetry: each exchange becomes a span (GenAI semantic conventions), each run a span
that exchange spans link to, exported over OTLP/HTTP from a worker thread.

Spans are built after the fact from stored records, with the call's real start and end
times, so nothing runs on the proxy's path. A client's `traceparent` (forwarded unchanged
upstream, and stored: it is not a secret) makes the exchange span its child; without one the
exchange is a child of its run's span. Ids of run spans are derived from the run id, so the
run span, exported when the run finishes, is the one exchange spans linked to all along.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import orjson

from gateway import __version__
from gateway.integrations import Integration, IntegrationError, require
from gateway.integrations.worker import Worker
from gateway.providers import genai_names
from gateway.settings import Settings
from gateway.store.runs import RunStore

if TYPE_CHECKING:
    from gateway.capture.rows import Rows

log = logging.getLogger("agentops.otel")

# request parameter -> GenAI attribute
REQUEST_ATTRIBUTES = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "random_seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}
FIELDS = (
    "id",
    "started_at",
    "latency_ms",
    "method",
    "path",
    "status",
    "state",
    "error",
    "model",
    "request_model",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "finish_reason",
    "cost_usd",
    "ttft_ms",
    "run_id",
    "streamed",
    "correlation_id",
    "provider",
)


def run_provider(providers: Sequence[str]) -> dict[str, Any]:
    """A run span's provider attributes: its calls' provider when they share one; none when
    they went to several (the semantic conventions give a span one provider), which
    `agentops.run.providers` then lists."""
    names = sorted({genai_names(p, "chat", agent=False)[0] for p in providers})
    if len(names) == 1:
        return {"gen_ai.provider.name": names[0], "gen_ai.system": names[0]}
    return {"agentops.run.providers": names} if names else {}


def traces_endpoint(settings: Settings, environ: Mapping[str, str]) -> str:
    base = settings.otel_endpoint or ""
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or base.rstrip("/") + "/v1/traces"


def check(settings: Settings, environ: Mapping[str, str]) -> None:
    """Raise IntegrationError when spans cannot be exported: no package, or no host."""
    require("opentelemetry.sdk", "otel")
    require("opentelemetry.exporter.otlp.proto.http", "otel")
    endpoint = traces_endpoint(settings, environ)
    if not urlparse(endpoint).hostname:
        raise IntegrationError(f"no host in the OTLP endpoint {endpoint!r}")


def from_settings(settings: Settings, environ: Mapping[str, str]) -> OtelExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = traces_endpoint(settings, environ)
    # The exporter logs every failed batch; the worker reports failures once instead.
    logging.getLogger("opentelemetry.exporter.otlp.proto.http").setLevel(logging.CRITICAL)
    exporter = OTLPSpanExporter(endpoint=endpoint)  # OTEL_EXPORTER_OTLP_HEADERS etc. apply
    service = environ.get("OTEL_SERVICE_NAME") or "agentops-studio"
    log.info("OpenTelemetry export on: spans to %s as service %s", endpoint, service)
    return OtelExporter(exporter, endpoint, settings.upstream, service)


def _ids(kind: bytes, number: int, size: int) -> int:
    digest = hashlib.blake2b(number.to_bytes(8, "big"), digest_size=size, person=kind).digest()
    return int.from_bytes(digest, "big") or 1


def run_trace_id(run_id: int) -> int:
    return _ids(b"agentops-run-tr", run_id, 16)


def run_span_id(run_id: int) -> int:
    return _ids(b"agentops-run-sp", run_id, 8)


def exchange_span_id(exchange_id: int) -> int:
    return _ids(b"agentops-exch", exchange_id, 8)


def _nanos(value: Any) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(value.timestamp() * 1e9)


class OtelExporter(Integration):
    name = "otel"

    def __init__(
        self, exporter: Any, endpoint: str, upstream: str, service: str, *, queue_size: int = 4096
    ) -> None:
        super().__init__(Worker("otel", self._deliver, queue_size=queue_size, batch_size=256))
        from opentelemetry.propagators.textmap import DefaultGetter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.exporter = exporter
        self.endpoint = endpoint
        upstream_url = urlparse(upstream)
        self.server = (
            upstream_url.hostname or "",
            upstream_url.port or (443 if upstream_url.scheme == "https" else 80),
        )
        self.resource = Resource.create({"service.name": service, "service.version": __version__})
        self.scope = InstrumentationScope("agentops-studio", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.getter = DefaultGetter()

    # -- hooks: only copy a few fields and queue them --------------------------------------------

    def on_written(self, rows: list[Rows]) -> None:
        for row in rows:
            e = row.exchange
            fields = {k: e.get(k) for k in FIELDS}
            headers = row.bodies.get("request_headers") or b""  # JSON bytes (capture/rows.py)
            if b"traceparent" in headers or b"Traceparent" in headers or b"TRACEPARENT" in headers:
                fields["trace_headers"] = headers.decode()
            parsed = row.parsed
            fields["params"] = parsed.request_params
            fields["conversation_id"] = parsed.conversation_id
            fields["agent_id"] = parsed.agent_id
            if isinstance(parsed.response_json, dict):
                fields["response_id"] = parsed.response_json.get("id")
            self.worker.submit(("exchange", fields))

    async def runs_finished(self, run_ids: list[int], runs: RunStore) -> None:
        providers = await runs.providers(run_ids)
        for run in await runs.summaries(run_ids):
            self.worker.submit(("run", {**run.to_json(), "providers": providers.get(run.id, ())}))

    # -- the worker thread ---------------------------------------------------------------------

    def _deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        spans = [
            self.exchange_span(item) if kind == "exchange" else self.run_span(item)
            for kind, item in batch
        ]
        if self.exporter.export(spans) != SpanExportResult.SUCCESS:
            raise RuntimeError(
                f"the OTLP endpoint {self.endpoint} did not take {len(spans)} "
                "spans (unreachable, or refusing them)"
            )

    def _parent(self, fields: dict[str, Any]) -> Any:
        """The client's span from its traceparent header, if it sent a valid one."""
        from opentelemetry import trace

        text = fields.get("trace_headers")
        if not text:
            return None
        try:
            carrier = {k.lower(): v for k, v in orjson.loads(text)}
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        context = self.propagator.extract(carrier, getter=self.getter)
        span_context = trace.get_current_span(context).get_span_context()
        return span_context if span_context.is_valid else None

    def exchange_span(self, f: dict[str, Any]) -> Any:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

        run_id = f.get("run_id")
        run_context = None
        if run_id is not None:
            run_context = SpanContext(
                run_trace_id(run_id),
                run_span_id(run_id),
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
        parent = self._parent(f) or run_context
        trace_id = parent.trace_id if parent else random.getrandbits(128) or 1
        context = SpanContext(
            trace_id,
            exchange_span_id(f["id"]),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            trace_state=parent.trace_state if parent else None,
        )
        start = _nanos(f["started_at"])
        end = start + int((f.get("latency_ms") or 0) * 1e6)
        provider, operation = genai_names(
            f.get("provider"), f["endpoint"], agent=bool(f.get("agent_id"))
        )
        model = f.get("model") or f.get("request_model")
        failed = (
            (f.get("status") or 0) >= 400
            or f.get("status") is None
            or (f.get("state") != "complete")
        )
        links = [Link(run_context, {"agentops.link": "run"})] if run_context else []
        return ReadableSpan(
            name=f"{operation} {model}" if model else operation,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=self.exchange_attributes(f, provider, operation, failed),
            links=links,
            kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR, f.get("error") or f"HTTP {f.get('status')}")
            if failed
            else Status(StatusCode.UNSET),
            start_time=start,
            end_time=end,
            instrumentation_scope=self.scope,
        )

    def exchange_attributes(
        self, f: dict[str, Any], provider: str, operation: str, failed: bool
    ) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.operation.name": operation,
            "agentops.endpoint": f["endpoint"],
            "gen_ai.request.model": f.get("request_model"),
            "gen_ai.response.model": f.get("model"),
            "gen_ai.usage.input_tokens": f.get("prompt_tokens"),
            "gen_ai.usage.output_tokens": f.get("completion_tokens"),
            "gen_ai.usage.cache_read.input_tokens": f.get("cached_tokens"),
            "gen_ai.response.finish_reasons": (
                [f["finish_reason"]] if f.get("finish_reason") else None
            ),
            "gen_ai.response.id": f.get("response_id"),
            "gen_ai.conversation.id": f.get("conversation_id"),
            "gen_ai.agent.id": f.get("agent_id"),
            "server.address": self.server[0],
            "server.port": self.server[1],
            "http.request.method": f.get("method"),
            "http.response.status_code": f.get("status"),
            "url.path": f.get("path"),
            "agentops.exchange.id": str(f["id"]),
            "agentops.run.id": str(f["run_id"]) if f.get("run_id") is not None else None,
            "agentops.cost_usd": f.get("cost_usd"),
            "agentops.ttft_ms": f.get("ttft_ms"),
            "agentops.streamed": bool(f.get("streamed")),
            "agentops.state": f.get("state"),
            "agentops.correlation_id": f.get("correlation_id"),
        }
        for key, name in REQUEST_ATTRIBUTES.items():
            value = (f.get("params") or {}).get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        if failed:
            attributes["error.type"] = (
                str(f["status"]) if (f.get("status") or 0) >= 400 else f.get("state") or "error"
            )
        return {k: v for k, v in attributes.items() if v is not None}

    def run_span(self, run: dict[str, Any]) -> Any:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

        run_id = int(run["id"])
        context = SpanContext(
            run_trace_id(run_id),
            run_span_id(run_id),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        name = run.get("name")
        attributes = {
            **run_provider(run.get("providers") or ()),
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": name,
            "gen_ai.agent.id": run.get("agent_id"),
            "gen_ai.usage.input_tokens": run.get("prompt_tokens"),
            "gen_ai.usage.output_tokens": run.get("completion_tokens"),
            "agentops.run.id": str(run_id),
            "agentops.run.status": run.get("status"),
            "agentops.run.source": run.get("source"),
            "agentops.run.exchange_count": run.get("exchange_count"),
            "agentops.run.user": run.get("user"),
            "agentops.cost_usd": run.get("total_cost_usd"),
        }
        end = run.get("ends_at") or run.get("ended_at") or run.get("last_seen_at")
        return ReadableSpan(
            name=f"invoke_agent {name}" if name else "invoke_agent",
            context=context,
            parent=None,
            resource=self.resource,
            attributes={k: v for k, v in attributes.items() if v is not None},
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode.ERROR, "the run's last call failed")
            if run.get("status") == "error"
            else Status(StatusCode.UNSET),
            start_time=_nanos(run["started_at"]),
            end_time=_nanos(end),
            instrumentation_scope=self.scope,
        )

    def stop(self, timeout: float) -> None:
        super().stop(timeout)
        try:
            self.exporter.shutdown()
        except Exception:  # shutting down must not raise
            log.debug("OTLP exporter shutdown failed", exc_info=True)
