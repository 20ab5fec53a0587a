"""The dashboard (`/dashboard`): totals and charts over a time range, read from the per-hour
rollups (gateway/store/rollups.py), never from the exchanges table, so it stays fast at millions
of exchanges. Only "most expensive runs" reads the runs table (one walk of a time window).

Charts are drawn in the browser by Chart.js (served from /static/vendor) from JSON in a
`data-chart` attribute, which Jinja escapes like any other attribute.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from gateway.api import exchanges as api
from gateway.api.budgets import GUARD
from gateway.api.campaigns import BUCKETS as SCORE_BUCKETS
from gateway.api.campaigns import CAMPAIGNS
from gateway.api.campaigns import series as score_series
from gateway.store.rollups import BUCKETS, EXACT_MAX, exact_percentile, percentile
from gateway.store.spending import MonthSpend, month_spend, storage_between
from gateway.store.stats import by_category
from webui.formats import parse_time
from webui.render import render

RANGES = {
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "all": None,
}
DEFAULT_RANGE = "7d"
RANGE_FIRST, RANGE_END = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)
HOURLY_UP_TO = 72  # hours: longer ranges are drawn per day, week or month


def parse_range(query: Any, now: datetime) -> tuple[str, datetime | None, datetime, str | None]:
    """(range key, since, until, error). Custom `since`/`until` win over `range`."""
    key = query.get("range") or DEFAULT_RANGE
    since_text, until_text = query.get("since") or "", query.get("until") or ""
    if since_text or until_text:
        since, until = _range_time(since_text), _range_time(until_text) or now
        if (since_text and since is None) or (until_text and _range_time(until_text) is None):
            return (
                DEFAULT_RANGE,
                now - timedelta(days=7),
                now,
                "since and until must be dates from 1970 to 9998, such as 2026-01-31 or "
                "2026-01-31T12:00",
            )
        if len(until_text.strip()) == 10:
            until += timedelta(days=1)  # a date means the whole day
        if since and since >= until:
            return DEFAULT_RANGE, now - timedelta(days=7), now, "since must be before until"
        return "custom", since, until, None
    if key not in RANGES:
        return (
            DEFAULT_RANGE,
            now - timedelta(days=7),
            now,
            f"range must be one of {', '.join(RANGES)}",
        )
    span = RANGES[key]
    return key, (now - span if span else None), now, None


def _range_time(text: str) -> datetime | None:
    """A dashboard bound, or None: the charts count hours and days from it, and a year
    near 1 or 9999 would step out of what a datetime holds."""
    at = parse_time(text)
    if at is None or not RANGE_FIRST <= at < RANGE_END:
        return None
    return at


def hour_number(at: datetime) -> int:
    return int(at.timestamp()) // 3600


def granularity(hours: int) -> str:
    """Hourly points for up to 3 days, then days, weeks, months: a chart keeps < 200 points."""
    if hours <= HOURLY_UP_TO:
        return "hour"
    if hours <= 24 * 120:
        return "day"
    return "week" if hours <= 24 * 365 * 3 else "month"


def bucket_start(at: datetime, unit: str) -> datetime:
    if unit == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_start(at: datetime, unit: str) -> datetime:
    if unit == "month":
        return at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
    return (
        at + {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}[unit]
    )


LABELS = {"hour": "%b %d %H:00", "day": "%b %d", "week": "week of %b %d", "month": "%b %Y"}


def buckets(series: list[dict[str, Any]], first: int, last: int) -> list[dict[str, Any]]:
    """The hourly series with gaps filled, summed per day, week or month for long ranges."""
    unit = granularity(last - first)
    out: dict[datetime, dict[str, Any]] = {}
    at = bucket_start(datetime.fromtimestamp(first * 3600, UTC), unit)
    end = datetime.fromtimestamp(last * 3600, UTC)
    while at <= end:
        out[at] = {
            "label": at.strftime(LABELS[unit]),
            "calls": 0,
            "errors": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
        }
        at = next_start(at, unit)
    for row in series:
        point = out.get(bucket_start(datetime.fromtimestamp(row["hour"] * 3600, UTC), unit))
        if point is not None:
            for key in ("calls", "errors", "prompt_tokens", "completion_tokens", "cost_usd"):
                point[key] += row[key]
    points = list(out.values())
    for point in points:
        point["error_rate"] = point["errors"] / point["calls"] if point["calls"] else None
    return points


def chart(
    kind: str, labels: list[str], datasets: list[dict[str, Any]], unit: str, **options: Any
) -> str:
    return orjson.dumps(
        {"type": kind, "labels": labels, "datasets": datasets, "unit": unit, **options}
    ).decode()


def charts(
    points: list[dict[str, Any]],
    models: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    agents: list[dict[str, Any]],
) -> dict[str, str]:
    labels = [p["label"] for p in points]
    model_names = [m["value"] or "(no model)" for m in models]
    return {
        "calls": chart(
            "bar",
            labels,
            [
                {"label": "Calls", "data": [p["calls"] for p in points]},
                {"label": "Errors", "data": [p["errors"] for p in points], "tone": "error"},
            ],
            "count",
        ),
        "tokens": chart(
            "bar",
            labels,
            [
                {"label": "Prompt tokens", "data": [p["prompt_tokens"] for p in points]},
                {"label": "Completion tokens", "data": [p["completion_tokens"] for p in points]},
            ],
            "tokens",
            stacked=True,
        ),
        "cost": chart(
            "bar",
            labels,
            [{"label": "Cost", "data": [round(p["cost_usd"], 8) for p in points]}],
            "usd",
        ),
        "error_rate": chart(  # bars: one period with calls is a bar, not a lone dot
            "bar",
            labels,
            [{"label": "Error rate", "data": [p["error_rate"] for p in points], "tone": "error"}],
            "percent",
        ),
        "cost_by_model": chart(
            "bar",
            model_names,
            [{"label": "Cost", "data": [round(m["cost_usd"], 8) for m in models]}],
            "usd",
            horizontal=True,
        ),
        "latency_by_model": chart(
            "bar",
            model_names,
            [
                {"label": "p50", "data": [m["p50_ms"] for m in models]},
                {"label": "p95", "data": [m["p95_ms"] for m in models], "tone": "warn"},
            ],
            "ms",
            horizontal=True,
        ),
        "cost_by_run": chart(
            "bar",
            [r["value"] for r in runs],
            [{"label": "Cost", "data": [round(r["cost_usd"], 8) for r in runs]}],
            "usd",
            horizontal=True,
        ),
        "cost_by_agent": chart(
            "bar",
            [a["value"] for a in agents],
            [{"label": "Cost", "data": [round(a["cost_usd"], 8) for a in agents]}],
            "usd",
            horizontal=True,
        ),
    }


SCORE_SERIES = 8  # lines in the score chart: the series with the most evaluations


async def score_chart(
    request: web.Request, since: datetime | None, until: datetime
) -> tuple[str | None, list[dict[str, Any]]]:
    """Mean score per metric, agent and model over time (campaigns' and other evaluations of
    recorded calls): hourly up to 3 days, daily beyond; (chart JSON or None, the series)."""
    start = since or until - timedelta(days=365)
    unit = "hour" if (until - start) <= timedelta(hours=HOURLY_UP_TO) else "day"
    rows = await request.app[CAMPAIGNS].store.score_series(start)
    rows = [r for r in rows if _time(r["created_at"]) <= until]
    found = score_series(rows, SCORE_BUCKETS[unit])
    found.sort(key=lambda s: -sum(p["count"] for p in s["points"]))
    found = found[:SCORE_SERIES]
    if not found:
        return None, []
    times = sorted({p["t"] for s in found for p in s["points"]})
    labels = [t[:13].replace("T", " ") + "h" if unit == "hour" else t[:10] for t in times]
    datasets = []
    for s in found:
        means = {p["t"]: p["mean"] for p in s["points"]}
        name = f"{s['metric']} · {s['agent'] or '(no agent)'} · {s['model'] or '(no model)'}"
        datasets.append({"label": name, "data": [means.get(t) for t in times]})
    return chart("line", labels, datasets, "count"), found


def _time(value: Any) -> datetime:
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def category_chart(month: MonthSpend) -> str:
    """This month's spend by category, stacked in one bar beside the projected month."""
    projected = month.projected_usd
    return chart(
        "bar",
        ["Month to date", "Projected month"],
        [
            {
                "label": category,
                "data": [
                    round(cost, 8),
                    None
                    if projected is None or not month.elapsed
                    else round(cost / month.elapsed, 8),
                ],
            }
            for category, cost in month.by_category.items()
        ],
        "usd",
        stacked=True,
        horizontal=True,
    )


async def spend_parts(
    request: web.Request,
    first: int,
    last: int,
    since: datetime | None,
    until: datetime,
    now: datetime,
) -> dict[str, Any]:
    """Cost by category (storage included) and provider in the range, and this month's spend
    in --budget-timezone's calendar (gateway/store/spending.py)."""
    rollups = request.app[api.STORE].rollups
    categories, providers = await asyncio.gather(
        rollups.by_value("category", first, last + 1),
        rollups.by_value("provider", first, last + 1),
    )
    store, per_month = request.app[api.STORE], request.app[api.PRICES].fine_tuning.storage_per_month
    storage = await storage_between(store, per_month, since, until)
    month = await month_spend(store, per_month, request.app[GUARD].zone, now)
    return {
        "charts": {"cost_by_category": category_chart(month)},
        "categories": by_category({c["value"]: c["cost_usd"] for c in categories}, storage),
        "providers": providers,
        "storage_usd": storage,
        "month": month,
    }


async def dashboard(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    key, since, until, error = parse_range(request.query, now)
    rollups = request.app[api.STORE].rollups
    last = hour_number(min(until, now))
    known = await rollups.first_hour()
    first = hour_number(since) if since else (known or last)
    if known is not None and since is not None:
        # Charts start at the first call: a first day of use in a 7-day range is drawn hour
        # by hour, not as one bar (a custom range from 1990 likewise).
        first = max(first, known)
    first = min(first, last)
    # Independent queries, run side by side (PostgreSQL's pool; SQLite takes them in turn).
    series, models, runs, agents, top_runs = await asyncio.gather(
        rollups.series(first, last + 1),
        rollups.by_value("model", first, last + 1),
        rollups.by_value("run", first, last + 1, limit=10),
        rollups.by_value("agent", first, last + 1, limit=10),
        request.app[api.RUNS].costliest(since, until, 10),
    )
    spend = await spend_parts(request, first, last, since, min(until, now), now)
    points = buckets(series, first, last)
    scores_chart, scores = await score_chart(request, since, until)
    calls = sum(p["calls"] for p in points)
    histogram = [sum(m["histogram"][i] for m in models) for i in range(len(BUCKETS))]
    for m in models:
        m["error_rate"] = m["errors"] / m["calls"] if m["calls"] else None
    totals = {
        "calls": calls,
        "errors": sum(p["errors"] for p in points),
        "prompt_tokens": sum(p["prompt_tokens"] for p in points),
        "completion_tokens": sum(p["completion_tokens"] for p in points),
        "cost_usd": sum(p["cost_usd"] for p in points),
        "error_rate": sum(p["errors"] for p in points) / calls if calls else None,
        "p50_ms": percentile(histogram, 0.5),
        "p95_ms": percentile(histogram, 0.95),
        "percentiles": "histogram",
        "unpriced_calls": sum(m["unpriced"] for m in models),
    }
    if 0 < sum(m["latency_count"] for m in models) <= EXACT_MAX:
        exact = await rollups.latencies(None, first, last + 1)
        totals["p50_ms"] = exact_percentile(exact, 0.5)
        totals["p95_ms"] = exact_percentile(exact, 0.95)
        totals["percentiles"] = "exact"
    context = {
        "range": key,
        "ranges": RANGES,
        "since": since,
        "until": until,
        "error": error,
        "totals": totals,
        "models": models,
        "runs": runs,
        "agents": agents,
        "top_runs": top_runs,
        "points": points,
        "charts": {**charts(points, models, runs, agents), **spend.pop("charts")},
        **spend,
        "exact_max": EXACT_MAX,
        "scores_chart": scores_chart,
        "scores": scores,
        "custom": {
            "since": request.query.get("since", ""),
            "until": request.query.get("until", ""),
        },
    }
    return render(
        request,
        "dashboard.html",
        context,
        partial="_dashboard_body.html",
        status=400 if error else 200,
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/dashboard", dashboard)
