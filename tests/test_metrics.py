"""Prometheus: /metrics on the UI port, behind the token, counting each gateway's own calls
(a second gateway in the process has its own registry), with the pipeline's health."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from tests.clients import RUNS_KEY as KEY
from tests.conftest import Upstream, make_settings, running

TOKEN = "metrics-token-1234"


async def call(gw: Gateway, text: str, **extra: object) -> int:
    headers = {"Authorization": f"Bearer {KEY}"}
    if extra.pop("fail", False):
        headers["x-fake-status"] = "429"
    payload = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


async def scrape(gw: Gateway, token: str | None = None) -> tuple[int, dict]:
    await gw.recorder.drained(timeout=20)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.get("/metrics", headers=headers) as resp,
    ):
        text = await resp.text()
        if resp.status != 200:
            return resp.status, {}
        assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return 200, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_calls_tokens_cost_and_health(upstream: Upstream, tmp_path: Path):
    a_settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'a.db'}", tmp_path, ui_token=TOKEN
    )
    b_settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'b.db'}", tmp_path / "b")
    async with running(a_settings) as a:
        assert [
            await call(a, "one"),
            await call(a, "two", stream=True),
            await call(a, "three", fail=True),
        ] == [200, 200, 429]
        assert (await scrape(a))[0] == 401  # behind the UI token, like the API
        status, got = await scrape(a, TOKEN)
        assert status == 200
    # A second gateway in the same process starts from zero: its own registry, no globals.
    # (One after the other: Tortoise's connections are process-wide.)
    async with running(b_settings) as b:
        assert await call(b, "other") == 200
        _, other = await scrape(b)

    model = "mistral-small-latest"
    ok, failed = {"model": model, "status": "200"}, {"model": model, "status": "429"}
    assert value(got, "agentops_requests_total", **ok) == 2
    assert value(got, "agentops_requests_total", **failed) == 1
    assert value(other, "agentops_requests_total", **ok) == 1  # its own registry
    assert value(got, "agentops_tokens_total", type="input", **ok) > 0
    assert value(got, "agentops_tokens_total", type="output", **ok) > 0
    assert value(got, "agentops_tokens_total", type="input", **failed) == 0
    assert value(got, "agentops_cost_usd_total", **ok) > 0
    assert value(got, "agentops_request_latency_seconds_count", model=model) == 3
    assert value(got, "agentops_request_latency_seconds_sum", model=model) > 0
    assert value(got, "agentops_time_to_first_token_seconds_count", model=model) == 1
    for name in (
        "agentops_queue_depth",
        "agentops_spool_bytes",
        "agentops_dropped_records_total",
        "agentops_database_errors_total",
    ):
        assert (name, ()) in got and got[(name, ())] == 0
    assert got[("agentops_queue_capacity", ())] == a_settings.queue_size
    assert got[("agentops_written_records_total", ())] == 3
    assert got[("agentops_database_up", ())] == 1 and got[("agentops_writer_up", ())] == 1


async def test_metrics_off(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'c.db'}", tmp_path, metrics="off")
    async with running(settings) as gw:
        assert (await scrape(gw))[0] == 404


async def test_unpriced_calls_have_their_own_counter(upstream: Upstream, tmp_path: Path):
    """A call of a model with no price is not $0: agentops_unpriced_calls counts it."""
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'u.db'}", tmp_path)
    async with running(settings) as gw:
        assert await call(gw, "priced") == 200
        assert await call(gw, "no price", model="my-private-finetune") == 200
        assert await call(gw, "no price, failed", model="my-private-finetune", fail=True) == 429
        _, got = await scrape(gw)
    assert value(got, "agentops_unpriced_calls_total", model="my-private-finetune") == 1
    assert value(got, "agentops_unpriced_calls_total", model="mistral-small-latest") == 0
    priced = {"model": "my-private-finetune", "status": "200"}
    assert value(got, "agentops_cost_usd_total", **priced) == 0


def test_workers_metrics_are_summed_by_name_and_labels():
    """`serve --workers N` on PostgreSQL: each worker's writer renders its own call metrics;
    /metrics adds them up, counters and histogram buckets alike, labels kept apart."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from gateway.integrations.metrics import summed

    texts = []
    for calls in (2, 3):
        registry = CollectorRegistry()
        requests = Counter("agentops_requests", "Calls.", ["model"], registry=registry)
        latency = Histogram("agentops_latency", "Latency.", buckets=(1, 5), registry=registry)
        requests.labels(model="small").inc(calls)
        requests.labels(model='we"ird\nname').inc()
        for _ in range(calls):
            latency.observe(2)
        texts.append(generate_latest(registry))
    families = {f.name: f for f in text_string_to_metric_families(summed(texts).decode())}
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in families["agentops_requests"].samples
    }
    assert values[("agentops_requests_total", (("model", "small"),))] == 5
    assert values[("agentops_requests_total", (("model", 'we"ird\nname'),))] == 2
    latency = {(s.name, s.labels.get("le")): s.value for s in families["agentops_latency"].samples}
    assert latency[("agentops_latency_bucket", "1.0")] == 0
    assert latency[("agentops_latency_bucket", "5.0")] == 5
    assert latency[("agentops_latency_count", None)] == 5
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)
    assert summed([b"", b""]) == b""
