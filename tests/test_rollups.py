"""Rollups always equal a recount of the exchanges table: after the writer's batches, deletes,
purges, late pricing, and the 0009 migration's rebuild. Percentiles interpolate the histogram.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from tortoise.migrations.api import migrate

from gateway.app import Gateway
from gateway.store.exchanges import Store
from gateway.store.rollups import BOUNDS, VALUES, Fact, aggregate, hour_of, percentile
from gateway.store.urls import tortoise_config
from tests.conftest import Upstream, make_settings, running

AUTH = {"Authorization": "Bearer rollup-test-key-0000"}


async def traffic(gw: Gateway) -> None:
    """Several models, a named run with an agent, an error, a stream, an unpriced model."""
    plan = [
        ("mistral-small-latest", {}, False),
        ("mistral-small-latest", {"X-AgentOps-Run": "nightly", "X-AgentOps-Agent": "bot"}, False),
        ("codestral-latest", {"X-AgentOps-Run": "nightly"}, True),
        ("mistral-large-latest", {"x-fake-status": "429"}, False),
        ("my-private-finetune", {}, False),
        ("mistral-large-latest", {"X-AgentOps-Agent": "solo-agent"}, False),
    ]
    plan += [  # an agent that shows up on a later call of its run, in a later batch
        ("mistral-small-latest", {"X-AgentOps-Run": "late"}, False),
        ("mistral-small-latest", {"X-AgentOps-Run": "late", "X-AgentOps-Agent": "late-bot"}, False),
    ]
    async with aiohttp.ClientSession() as http:
        for n, (model, headers, stream) in enumerate(plan):
            payload = {
                "model": model,
                "stream": stream,
                "messages": [{"role": "user", "content": f"rollup question {n}"}],
            }
            async with http.post(
                f"{gw.proxy_url}/v1/chat/completions", json=payload, headers={**AUTH, **headers}
            ) as resp:
                await resp.read()
            await gw.recorder.drained(timeout=20)


async def stored(store: Store) -> dict[tuple[str, int, str], list[float]]:
    rows = await store.rows(f"SELECT dim, hour, value, {', '.join(VALUES)} FROM rollups")
    return {(r["dim"], int(r["hour"]), r["value"]): [float(r[c]) for c in VALUES] for r in rows}


async def recount(store: Store) -> dict[tuple[str, int, str], list[float]]:
    rows = await store.rows(
        "SELECT e.id, e.model, e.status, e.state, e.prompt_tokens, e.completion_tokens, "
        "e.total_tokens, e.cost_usd, e.latency_ms, e.provider, r.name AS run_name, "
        "r.agent_id AS agent, e.category "
        "FROM exchanges e LEFT JOIN runs r ON r.id = e.run_id"
    )
    return {
        key: [float(v) for v in values]
        for key, values in aggregate(Fact(**row) for row in rows).items()
    }


def assert_same(have: dict, want: dict) -> None:
    assert have.keys() == want.keys()
    for key, values in want.items():
        assert have[key] == pytest.approx(values), key


async def assert_rollups_true(store: Store) -> None:
    assert_same(await stored(store), await recount(store))


async def test_writer_deletes_and_purges_keep_rollups_true(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await traffic(gw)
        store = gw.store
        await assert_rollups_true(store)
        have = await stored(store)
        dims = {key[0] for key in have}
        assert dims == {"model", "provider", "run", "agent", "category"}
        assert {key[2] for key in have if key[0] == "run"} == {"nightly", "late"}
        assert {key[2] for key in have if key[0] == "agent"} == {"bot", "solo-agent", "late-bot"}
        late = [v for k, v in have.items() if k[0] == "agent" and k[2] == "late-bot"]
        assert sum(values[0] for values in late) == 2  # both calls of its run
        assert await store.rollups.unpriced() == [{"model": "my-private-finetune", "calls": 1}]
        hour = hour_of((await store.rows("SELECT MAX(id) AS id FROM exchanges"))[0]["id"])
        models = {m["value"]: m for m in await store.rollups.by_value("model", hour, hour + 1)}
        assert models["mistral-large-latest"]["errors"] == 1
        assert models["mistral-small-latest"]["calls"] == 4
        assert models["mistral-small-latest"]["p50_ms"] is not None
        (point,) = await store.rollups.series(hour - 1, hour + 2)
        assert point["calls"] == 8 and point["hour"] == hour

        solo = (
            await store.rows(
                "SELECT e.id FROM exchanges e JOIN runs r ON r.id = e.run_id "
                "WHERE r.agent_id = 'solo-agent'"
            )
        )[0]["id"]
        async with (
            aiohttp.ClientSession(gw.ui_url) as ui,
            ui.delete(f"/api/exchanges/{solo}") as resp,
        ):
            assert resp.status == 200
        await assert_rollups_true(store)
        assert "solo-agent" not in {key[2] for key in await stored(store)}
        assert await store.purge(datetime.now(UTC) + timedelta(seconds=1), batch_size=2) == 7
        assert await stored(store) == {}


async def test_late_pricing_moves_calls_out_of_unpriced(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'late.db'}"
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        await traffic(gw)
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[models."my-private-finetune"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n'
    )
    async with running(make_settings(upstream.url, db, tmp_path, prices=str(prices))) as gw:
        await gw.costs_filled
        assert await gw.store.rollups.unpriced() == []
        await assert_rollups_true(gw.store)


@pytest.mark.parametrize(
    "back_to",
    [
        "0003_runs",  # no rollups table at all
        "0008_preview",  # rollups without the interrupted count, provider and nomodel rows
    ],
)
async def test_migration_rebuilds_rollups_of_existing_exchanges(
    upstream: Upstream, db_url: str, tmp_path: Path, back_to: str
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await traffic(gw)
        before = await stored(gw.store)
        stats = await gw.store.stats(None, None)
    url = Store(db_url).url
    await migrate(config=tortoise_config(url), target=f"models.{back_to}")
    store = Store(db_url)
    await store.open()  # migrates forward again: 0009 rebuilds every rollup row
    try:
        assert_same(await stored(store), before)
        await assert_rollups_true(store)
        assert await store.stats(None, None) == stats
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        ([], 0.5, None),
        ([0] * 20, 0.5, None),
        ([4] + [0] * 19, 0.5, 5.0),  # half of the [0, 10) bucket
        ([0, 2, 2] + [0] * 17, 0.5, 25.0),  # the edge between two equal buckets
        ([0, 2, 2] + [0] * 17, 0.75, 37.5),
        ([0] * 19 + [3], 0.95, float(BOUNDS[-1])),  # the open bucket reports its lower bound
        ([1] + [0] * 18 + [1], 0.95, float(BOUNDS[-1])),
    ],
)
def test_percentile_interpolates_inside_a_bucket(histogram, q, expected):
    assert percentile(histogram, q) == expected


def test_hour_of_matches_the_id_clock():
    from gateway.capture.exchange import id_at

    at = datetime(2026, 3, 1, 14, 59, 59, tzinfo=UTC)
    assert hour_of(id_at(int(at.timestamp() * 1000))) == int(at.timestamp()) // 3600
