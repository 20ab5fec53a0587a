"""Prometheus metrics at GET /metrics on the UI port: calls, tokens and cost by model and
status, unpriced calls by model (a missing price is not $0), latency and TTFT histograms,
and the capture pipeline's health.

Two halves, one per process. In the writer process, CallMetrics is fed from the recorder's
stored batches (aggregated per batch: a record costs a dict update and two histogram
observations) and renders its registry when asked. In the proxy's process, MetricsEndpoint
serves /metrics: the pipeline's state (queue depth, spool size, dropped records, database
errors, integrations) from the writer's health reports, then the writer's call metrics. Each
gateway has its own registries: no globals.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from gateway.capture.rows import Rows
    from gateway.settings import Settings
    from gateway.writer import WriterProcess

log = logging.getLogger("agentops.metrics")

MAX_MODELS = 200  # model names come from clients: past this many, new ones count as "other"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
CALL_TIMEOUT = 5.0


def enabled(settings: Settings, *, report: bool = False) -> bool:
    """Whether /metrics is served; with `report`, say once why not when it was asked for."""
    if settings.metrics == "off":
        return False
    if importlib.util.find_spec("prometheus_client") is None:
        if report and settings.metrics == "on":
            log.error(
                "Prometheus metrics are off: the 'prometheus-client' package is not "
                "installed: pip install 'agentops-studio[prometheus]' (the gateway runs "
                "on without it)"
            )
        return False
    return True


class CallMetrics:
    """The writer process's half: counters and histograms of stored calls."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        by = ["model", "status"]
        self.requests = Counter(
            "agentops_requests",
            "Calls recorded, by model and HTTP status (or the state, when there was no response).",
            by,
            registry=self.registry,
        )
        self.tokens = Counter(
            "agentops_tokens",
            "Tokens used (type: input or output).",
            [*by, "type"],
            registry=self.registry,
        )
        self.cost = Counter(
            "agentops_cost_usd", "Cost in USD of the recorded calls.", by, registry=self.registry
        )
        self.unpriced = Counter(
            "agentops_unpriced_calls",
            "Calls of a model with no price: agentops_cost_usd leaves them out (they are not $0).",
            ["model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agentops_request_latency_seconds",
            "Time from request to the last response byte.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "agentops_time_to_first_token_seconds",
            "Time to the first content chunk of streamed calls.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._models: set[str] = set()
        self._children: dict[tuple[str, str], tuple[Any, Any, Any, Any, Any, Any]] = {}

    def _model(self, model: str | None) -> str:
        if model is None:
            return "unknown"
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return "other"
        self._models.add(model)
        return model

    def _series(self, model: str, status: str) -> tuple[Any, Any, Any, Any, Any, Any]:
        """Label children, looked up once per (model, status): labels() is the costly part."""
        key = (model, status)
        found = self._children.get(key)
        if found is None:
            found = (
                self.requests.labels(model, status),
                self.tokens.labels(model, status, "input"),
                self.tokens.labels(model, status, "output"),
                self.cost.labels(model, status),
                self.latency.labels(model),
                self.ttft.labels(model),
            )
            self._children[key] = found
        return found

    def on_written(self, rows: list[Rows]) -> None:
        totals: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            e = row.exchange
            model = self._model(e["model"])
            status = str(e["status"]) if e["status"] is not None else e["state"]
            sums = totals.get((model, status))
            if sums is None:
                sums = totals[(model, status)] = [0, 0, 0, 0.0]
            sums[0] += 1
            sums[1] += e["prompt_tokens"] or 0
            sums[2] += e["completion_tokens"] or 0
            sums[3] += e["cost_usd"] or 0.0
            if e["cost_usd"] is None and e["model"] is not None and (e["status"] or 500) < 400:
                self.unpriced.labels(model).inc()
            series = self._series(model, status)
            if e["latency_ms"] is not None:
                series[4].observe(e["latency_ms"] / 1000)
            if e["ttft_ms"] is not None:
                series[5].observe(e["ttft_ms"] / 1000)
        for key, (calls, prompt, completion, cost) in totals.items():
            requests, tokens_in, tokens_out, spent, _, _ = self._series(*key)
            requests.inc(calls)
            if prompt:
                tokens_in.inc(prompt)
            if completion:
                tokens_out.inc(completion)
            if cost:
                spent.inc(cost)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsEndpoint:
    """The proxy's process's half: GET /metrics."""

    def __init__(
        self,
        recorder: WriterProcess,
        others: Callable[[], Awaitable[list[bytes]]] | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        alerts: Callable[[], dict[tuple[int, str], int]] | None = None,
        budgets: Callable[[], Sequence[BudgetLike]] | None = None,
    ) -> None:
        """`others`: more writers' call metrics to add in (`serve --workers N` on
        PostgreSQL, where each worker has a writer of its own). `health`: the pipeline's
        figures as /healthz has them (default: the recorder's own; with `serve --workers N`
        the totals over every worker). `budgets`: the budgets' standings now
        (gateway/proxy/budgets.py), shown as spend and limit gauges."""
        from prometheus_client import CollectorRegistry

        self.recorder = recorder
        self.others = others
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(PipelineCollector(health or (lambda: recorder.health().to_json())))
        if alerts is not None:
            self.registry.register(AlertsCollector(alerts))
        if budgets is not None:
            self.registry.register(BudgetCollector(budgets))

    async def handle(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.registry)
        calls = b""
        try:
            calls = await self.recorder.call("metrics", timeout=CALL_TIMEOUT)
        except Exception:  # the writer is restarting: the pipeline's half still tells why
            log.warning("metrics: the writer process did not answer", exc_info=True)
        if self.others is not None:
            calls = summed([calls, *await self.others()])
        body += calls
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def summed(expositions: list[bytes]) -> bytes:
    """Several writers' call metrics as one exposition: samples with the same name and
    labels added up (counters and histogram buckets, sums and counts all add)."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text.decode()):
            families.setdefault(family.name, family)
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):  # a time, not a count
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    lines = []
    for name, family in families.items():
        if not values[name]:  # only `_created` samples
            continue
        kind = {"counter": "counter", "histogram": "histogram"}.get(family.type, "gauge")
        shown = f"{name}_total" if kind == "counter" else name  # as generate_latest names it
        lines += [f"# HELP {shown} {family.documentation}", f"# TYPE {shown} {kind}"]
        for (series, labels), value in values[name].items():
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{series}{{{pairs}}} {value!r}" if pairs else f"{series} {value!r}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class BudgetLike(Protocol):
    """A budget's standing as the gauges read it (gateway/proxy/budgets.py Standing)."""

    @property
    def spent_usd(self) -> float: ...

    @property
    def budget(self) -> Any: ...


class BudgetCollector:
    """Spend in the current period and limit per budget, read at scrape time."""

    def __init__(self, standings: Callable[[], Sequence[BudgetLike]]) -> None:
        self.standings = standings

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["budget", "scope", "period", "hard"]
        spend = GaugeMetricFamily(
            "agentops_budget_spend_usd",
            "Spend in USD in the budget's current period (database totals, refreshed every "
            "second, plus this process's calls not yet stored).",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "agentops_budget_limit_usd", "The budget's limit in USD per period.", labels=labels
        )
        for standing in self.standings():
            budget = standing.budget
            scope = budget.scope.kind + (f":{budget.scope.value}" if budget.scope.value else "")
            values = [budget.name, scope, budget.period, "true" if budget.hard else "false"]
            spend.add_metric(values, standing.spent_usd)
            limit.add_metric(values, budget.limit_usd)
        yield from (spend, limit)


class PipelineCollector:
    """The capture pipeline's state, read at scrape time from the /healthz figures (the
    writers' health reports; the writer's own fields are absent until it reported)."""

    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self.health = health

    def describe(self) -> list[Any]:
        return []  # series are only known at collect time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        health = self.health()
        yield GaugeMetricFamily(
            "agentops_writer_up",
            "1 while the writer process runs.",
            value=1 if health.get("writer_process") == "ok" else 0,
        )
        yield GaugeMetricFamily(
            "agentops_queue_depth", "Records waiting for the writer.", value=health["queue_depth"]
        )
        yield GaugeMetricFamily(
            "agentops_queue_capacity", "Size of the in-memory queue.", value=health["queue_size"]
        )
        yield GaugeMetricFamily(
            "agentops_spool_bytes", "Bytes waiting in the disk spool.", value=health["spool_bytes"]
        )
        yield GaugeMetricFamily(
            "agentops_database_up",
            "1 when the last write succeeded.",
            value=1 if health.get("database") == "ok" else 0,
        )
        for name, value, text in (
            ("agentops_written_records", health.get("written_records", 0), "Records stored."),
            (
                "agentops_spooled_records",
                health["spooled_records"],
                "Records that went to the disk spool.",
            ),
            (
                "agentops_dropped_records",
                health["dropped_records"],
                "Records lost: spool full, or unparseable.",
            ),
            (
                "agentops_database_errors",
                health.get("database_errors", 0),
                "Failed database writes.",
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)
        sent = CounterMetricFamily(
            "agentops_integration_sent",
            "Items delivered by each integration.",
            labels=["integration"],
        )
        dropped = CounterMetricFamily(
            "agentops_integration_dropped",
            "Items an integration dropped (queue full, or its backend failed).",
            labels=["integration"],
        )
        queued = GaugeMetricFamily(
            "agentops_integration_queue_depth",
            "Items waiting in an integration's queue.",
            labels=["integration"],
        )
        for name, stats in (health.get("integrations") or {}).items():
            sent.add_metric([name], stats["sent"])
            dropped.add_metric([name], stats["dropped"])
            queued.add_metric([name], stats["queued"])
        yield from (sent, dropped, queued)


class AlertsCollector:
    """`agentops_alerts_firing`: 1 per rule while its alert fires, else 0 (as of the last
    evaluation, gateway/integrations/alerts.py)."""

    def __init__(self, firing: Callable[[], dict[tuple[int, str], int]]) -> None:
        self.firing = firing

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "agentops_alerts_firing",
            "1 while the alert rule's alert is firing, else 0.",
            labels=["rule", "rule_id"],
        )
        for (rule_id, name), value in sorted(self.firing().items()):
            gauge.add_metric([name, str(rule_id)], value)
        yield gauge
