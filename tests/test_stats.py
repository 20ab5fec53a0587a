"""/api/stats from rollups plus edge rows (gateway/store/stats.py) equals a plain row-level
GROUP BY over the same range, exactly: on random calls written by the writer's own batch path,
after deletes and late pricing, for ranges at any millisecond, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.capture.exchange import Exchange, id_at
from gateway.capture.pricing import PriceTable
from gateway.capture.rows import Rows, build_rows
from gateway.providers.mistral import MistralProvider
from gateway.store.exchanges import Store, time_bounds
from gateway.store.rollups import HOUR_MS, hour_of
from gateway.store.stats import Span, hour_start, read_stats, split

BASE = datetime(2026, 3, 1, 10, tzinfo=UTC)  # an hour boundary
BASE_MS = int(BASE.timestamp() * 1000)
PROVIDER, PRICES = MistralProvider(), PriceTable.load(None)


# -- splitting a range -------------------------------------------------------------------------


def test_whole_hours_go_to_rollups_and_the_rest_to_rows():
    hour = BASE_MS // HOUR_MS
    low, high = id_at(BASE_MS - 17 * 60_000 - 3), id_at(BASE_MS + 2 * HOUR_MS + 61_001)
    assert split(low, high) == Span(
        (hour, hour + 2),
        ((low, hour_start(hour)), (hour_start(hour + 2), high)),
    )
    # aligned bounds leave no edge; open bounds leave none on their side
    assert split(id_at(BASE_MS), id_at(BASE_MS + HOUR_MS)) == Span((hour, hour + 1), ())
    assert split(None, None) == Span((None, None), ())
    assert split(None, high) == Span((None, hour + 2), ((hour_start(hour + 2), high),))
    # inside one hour, or across one boundary with no whole hour: rows only
    inside = (id_at(BASE_MS + 60_000), id_at(BASE_MS + 120_000))
    assert split(*inside) == Span(None, (inside,))
    across = (id_at(BASE_MS - 60_000), id_at(BASE_MS + 60_000))
    assert split(*across) == Span(None, (across,))
    assert split(high, low) == Span(None, ())


@given(
    st.one_of(st.none(), st.integers(0, 1 << 50)),
    st.one_of(st.none(), st.integers(0, 1 << 50)),
    st.lists(st.integers(0, 1 << 50), max_size=50),
)
def test_hours_and_edges_count_each_id_of_the_range_once(
    low: int | None, high: int | None, ids: list[int]
):
    span = split(low, high)
    for probe in [*ids, *(b for b in (low, high) if b is not None)]:
        for near in (probe - 1, probe, probe + 1):
            inside = (low is None or near >= low) and (high is None or near < high)
            counted = sum(
                (a is None or near >= a) and (b is None or near < b) for a, b in span.edges
            )
            if span.hours is not None:
                first, end = span.hours
                hour = hour_of(near)
                counted += (first is None or hour >= first) and (end is None or hour < end)
            assert counted == int(inside), (near, span)


# -- rollups + edges == rows, on random data ----------------------------------------------------


def stored_rows(at_ms: int, salt: int, **columns: Any) -> Rows:
    """A call's rows as the writer builds them, with the columns stats reads set at will."""
    exchange_id = ((at_ms - 1_704_067_200_000) << 22) | salt
    record = Exchange(
        id=exchange_id,
        started_at=at_ms / 1000,
        method="POST",
        client_path="/v1/chat/completions",
        path="/v1/chat/completions",
        query="",
        request_headers=[],
        request_body=b"{}",
    )
    rows = build_rows(record, PROVIDER, PRICES, 1000)
    rows.exchange.update(columns)
    return rows


def instants(first_minute: int, last_minute: int) -> st.SearchStrategy[int]:
    """Milliseconds from BASE on few instants (a minute's start or end, an hour's), so that
    calls share instants and range bounds meet them."""
    return st.builds(
        lambda minute, ms: minute * 60_000 + ms,
        st.integers(first_minute, last_minute),
        st.sampled_from([0, 1, 999, 30_000, 59_999]),
    )


calls = st.builds(
    dict,
    offset=instants(-120, 179),
    model=st.sampled_from([None, "", "mistral-small-latest", "codestral-latest", "unpriced-x"]),
    provider=st.sampled_from(["mistral", "elevenlabs"]),
    status=st.sampled_from([None, 200, 200, 201, 404, 429, 500]),
    state=st.sampled_from(["complete", "complete", "interrupted", "client_disconnected"]),
    prompt_tokens=st.one_of(st.none(), st.integers(0, 5000)),
    completion_tokens=st.one_of(st.none(), st.integers(0, 5000)),
    # multiples of 2**-10: every sum is exact, whatever the order, so totals compare exactly
    cost_usd=st.one_of(st.none(), st.integers(0, 4000).map(lambda k: k / 1024)),
    latency_ms=st.one_of(st.none(), st.floats(0, 90_000)),
)
Window = tuple[datetime | None, datetime | None, int]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[list[dict[str, Any]]], list[Window]]:
    """Batches of calls, and ranges whose bounds are anywhere, or a call's instant, or one
    millisecond either side of it."""
    batches = draw(st.lists(st.lists(calls, min_size=1, max_size=30), min_size=1, max_size=4))
    offsets = [call["offset"] for batch in batches for call in batch]
    near_a_call = st.builds(
        lambda at, step: at + step, st.sampled_from(offsets), st.sampled_from([-1, 0, 1])
    )
    bound = st.one_of(st.none(), instants(-180, 240), near_a_call).map(
        lambda ms: None if ms is None else BASE + timedelta(milliseconds=ms)
    )
    micros = st.integers(0, 999)  # below the millisecond: dropped by both paths alike
    windows = draw(st.lists(st.tuples(bound, bound, micros), min_size=1, max_size=5))
    return batches, windows


async def row_level(store: Store, since: datetime | None, until: datetime | None) -> dict:
    """/api/stats as it was computed before rollups: a GROUP BY over every row in range."""
    clauses: list[str] = []
    params: list[Any] = []
    time_bounds("e.id", since, until, clauses, params)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sums = (
        "COUNT(*) AS calls, COALESCE(SUM(e.prompt_tokens), 0) AS prompt_tokens, "
        "COALESCE(SUM(e.completion_tokens), 0) AS completion_tokens, "
        "COALESCE(SUM(e.cost_usd), 0) AS cost_usd, "
        "SUM(CASE WHEN e.status >= 400 OR e.status IS NULL OR e.state <> 'complete' "
        "THEN 1 ELSE 0 END) AS errors, "
        "SUM(CASE WHEN e.state = 'interrupted' THEN 1 ELSE 0 END) AS missing_calls, "
        "SUM(CASE WHEN e.cost_usd IS NULL AND e.model IS NOT NULL AND e.status < 400 "
        "THEN 1 ELSE 0 END) AS unpriced_calls"
    )

    def numbers(row: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v
            if k in ("model", "provider")
            else (float(v or 0) if k == "cost_usd" else int(v or 0))
            for k, v in row.items()
        }

    def ordered(key: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # SQL leaves ties of cost and calls in any order; /api/stats breaks them by name
        items = [numbers(r) for r in rows]
        return sorted(
            items, key=lambda i: (-i["cost_usd"], -i["calls"], i[key] is not None, i[key] or "")
        )

    totals = (await store.rows(f"SELECT {sums} FROM exchanges e {where}", params))[0]
    by_model = await store.rows(
        f"SELECT e.model AS model, {sums} FROM exchanges e {where} GROUP BY e.model", params
    )
    by_provider = await store.rows(
        f"SELECT e.provider AS provider, {sums} FROM exchanges e {where} GROUP BY e.provider",
        params,
    )
    by_category = await store.rows(
        f"SELECT e.category AS category, COALESCE(SUM(e.cost_usd), 0) AS cost "
        f"FROM exchanges e {where} GROUP BY e.category",
        params,
    )
    costs = {"llm": 0.0, "tool": 0.0, "fine-tuning": 0.0}
    costs.update({r["category"]: round(float(r["cost"]), 10) + 0.0 for r in by_category})
    return {
        "totals": {**numbers(totals), "cost_by_category": costs},
        "by_model": ordered("model", by_model),
        "by_provider": ordered("provider", by_provider),
    }


async def check_same(
    db_url: str,
    batches: list[list[dict[str, Any]]],
    doomed: list[int],
    priced: bool,
    windows: list[Window],
) -> None:
    store = Store(db_url)
    await store.open(migrate_schema=False)
    try:
        old = [row["id"] for row in await store.rows("SELECT id FROM exchanges")]
        await store.delete_exchanges(old)  # the last example's calls, through the subtraction
        assert await store.rows("SELECT dim FROM rollups") == []
        salt = 0
        for batch in batches:
            rows = []
            for call in batch:
                salt += 1
                columns = {k: v for k, v in call.items() if k != "offset"}
                rows.append(stored_rows(BASE_MS + call["offset"], salt, **columns))
            await store.insert(rows)  # the writer's path: rows, then rollups per batch
        ids = sorted(row["id"] for row in await store.rows("SELECT id FROM exchanges"))
        await store.delete_exchanges([ids[i % len(ids)] for i in doomed] if ids else [])
        if priced:  # late pricing adds cost to the rollups of calls that had none
            await store.fill_costs("unpriced-x", lambda *_: 0.25)
        for since, until, micros in [(None, None, 0), *windows]:
            since = since and since + timedelta(microseconds=micros)
            until = until and until + timedelta(microseconds=micros)
            assert await read_stats(store, since, until) == await row_level(store, since, until), (
                since,
                until,
            )
    finally:
        await store.close()


@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    scenario=scenarios(),
    doomed=st.lists(st.integers(0, 200), max_size=10),
    priced=st.booleans(),
)
def test_rollups_and_edges_equal_a_row_level_count(
    db_url: str,
    scenario: tuple[list[list[dict[str, Any]]], list[Window]],
    doomed: list[int],
    priced: bool,
):
    batches, windows = scenario
    asyncio.run(check_same(db_url, batches, doomed, priced, windows))
