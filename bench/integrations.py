"""What the integrations cost the writer, per stored record (a script, not a test).

The writer calls every `on_written` hook after each stored batch (in the writer process), so
their per-record cost is what matters: Prometheus updates its counters and histograms;
OpenTelemetry copies a few fields and queues them. Building and encoding spans happens in the
OTel worker thread and is measured separately. Nothing leaves the process: the OTLP exporter
is replaced by one that only serialises the spans to protobuf.

    .venv/bin/python bench/integrations.py [--records 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.capture.rows import build_rows
from gateway.integrations.metrics import CallMetrics
from gateway.integrations.otel import OtelExporter
from gateway.providers.mistral import MistralProvider

BATCH = 500


class EncodeOnly:
    """An exporter that does the protobuf encoding a real one does, and sends nothing."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        encode_spans(spans).SerializePartialToString()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def sample_rows(count: int) -> list[Any]:
    provider, prices = MistralProvider(), PriceTable.load(None)
    rows = []
    for n in range(count):
        body = orjson.dumps(
            {
                "model": "mistral-small-latest",
                "temperature": 0.3,
                "messages": [{"role": "user", "content": f"question {n}"}],
            }
        )
        answer = orjson.dumps(
            {
                "id": f"cmpl-{n}",
                "model": "mistral-small-latest",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "an answer"},
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
            }
        )
        headers = [("content-type", "application/json")]
        if n % 2:
            headers.append(
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            )
        exchange = Exchange(
            id=new_id(),
            started_at=time.time(),
            method="POST",
            client_path="/v1/chat/completions",
            path="/v1/chat/completions",
            query="",
            request_headers=headers,
            request_body=body,
            status=200,
            response_headers=[("content-type", "application/json")],
            response_chunks=[answer],
            chunk_ms=[40.0],
            ttfb_ms=40.0,
            latency_ms=41.0,
        )
        row = build_rows(exchange, provider, prices, 10_000_000)
        row.exchange["run_id"] = n // 4 + 1
        rows.append(row)
    return rows


def per_record(label: str, rows: list[Any], hook: Any) -> None:
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        hook(rows[i : i + BATCH])
    micros = (time.perf_counter() - start) / len(rows) * 1e6
    print(f"{label:<46} {micros:7.2f} us/record")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    count = parser.parse_args().records
    rows = sample_rows(count)

    metrics = CallMetrics()
    per_record("writer: Prometheus on_written", rows, metrics.on_written)

    otel = OtelExporter(
        EncodeOnly(),
        "http://127.0.0.1:4318/v1/traces",
        "https://api.mistral.ai",
        "bench",
        queue_size=count + 1,
    )
    per_record("writer: OpenTelemetry on_written (queue only)", rows, otel.on_written)
    items = []
    while not otel.worker.queue.empty():
        items.append(otel.worker.queue.get_nowait())
    start = time.perf_counter()
    for i in range(0, len(items), 256):
        otel._deliver(items[i : i + 256])
    micros = (time.perf_counter() - start) / len(items) * 1e6
    print(f"{'OTel thread: build + encode spans':<46} {micros:7.2f} us/record")


if __name__ == "__main__":
    main()
