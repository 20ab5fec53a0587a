"""The campaigns API on the UI port: run a judge over a saved search of recorded calls, in
batch or live (gateway/replay/campaigns.py), and the score-over-time series the dashboard
draws from evaluations. Creating one spends money with the gateway's replay key, so these
writes are guarded like the replay API's (JSON only, loopback or configured host names).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.api.exchanges import json_body, json_response
from gateway.capture.exchange import is_id
from gateway.errors import NotFound, UserError
from gateway.replay.campaigns import Campaigns
from gateway.store.query import parse_int

CAMPAIGNS = web.AppKey("campaigns", Campaigns)
BUCKETS = {"hour": 3600, "day": 86400}

routes = web.RouteTableDef()


def _id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not is_id(text):
        raise NotFound(f"campaign {text} not found")
    return int(text)


@routes.post("/api/campaigns")
async def create_campaign(request: web.Request) -> web.Response:
    """`{"name", "description"?, "judge", "filter"?, "max_nb_events", "mode"?}` → 201."""
    campaign = await request.app[CAMPAIGNS].create(await json_body(request))
    return json_response(campaign.to_json(), status=201)


@routes.get("/api/campaigns")
async def list_campaigns(request: web.Request) -> web.Response:
    campaigns = await request.app[CAMPAIGNS].store.all()
    return json_response({"items": [c.to_json() for c in campaigns]})


@routes.get("/api/campaigns/{id}")
async def get_campaign(request: web.Request) -> web.Response:
    campaign = await request.app[CAMPAIGNS].store.get(_id(request))
    return json_response(campaign.to_json())


@routes.delete("/api/campaigns/{id}")
async def delete_campaign(request: web.Request) -> web.Response:
    """Stops a live campaign; its scores stay."""
    await request.app[CAMPAIGNS].delete(_id(request))
    return web.Response(status=204)


@routes.get("/api/evaluations/series")
async def score_series(request: web.Request) -> web.Response:
    """Mean score per (metric, agent, model) per hour or day over the last `days` (7):
    `{"bucket", "series": [{"metric", "agent", "model", "points": [{"t", "mean", "count"}]}]}`."""
    bucket = request.query.get("bucket", "hour")
    if bucket not in BUCKETS:
        raise UserError(f"bucket must be hour or day, got {bucket!r}")
    days = parse_int("days", request.query.get("days"), low=1, high=366) or 7
    since = datetime.now(UTC) - timedelta(days=days)
    rows = await request.app[CAMPAIGNS].store.score_series(since)
    return json_response({"bucket": bucket, "series": series(rows, BUCKETS[bucket])})


def series(rows: list[dict[str, Any]], seconds: int) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(dict)
    for row in rows:
        created = row["created_at"]
        if isinstance(created, str):
            created = datetime.fromisoformat(created)
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        start = int(created.timestamp()) // seconds * seconds
        key = (str(row["metric_name"]), str(row["agent_id"] or ""), str(row["model"] or ""))
        cell = sums[key].setdefault(start, [0.0, 0.0])
        cell[0] += float(row["metric_value"])
        cell[1] += 1
    return [
        {
            "metric": metric,
            "agent": agent or None,
            "model": model or None,
            "points": [
                {
                    "t": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"),
                    "mean": round(total / count, 6),
                    "count": int(count),
                }
                for t, (total, count) in sorted(points.items())
            ],
        }
        for (metric, agent, model), points in sorted(sums.items())
    ]
