"""The replay pages: a side-by-side diff, an experiment with its table and chart, the replay
form (a partial the exchange and run pages include) and what its submission shows.

Server-rendered, autoescaped, no inline script or style (the chart is inline SVG drawn with
attributes and classes from replay.css). Forms that spend money are checked to come from
this UI (Origin / Sec-Fetch-Site, and the DNS-rebinding host guard of the replay API).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from gateway.api import exchanges as api
from gateway.api.exchanges import parse_id
from gateway.api.replay import EXPERIMENTS, REPLAYER, REPLAYS, RUN_REPLAYER
from gateway.capture import storable
from gateway.capture.exchange import is_id
from gateway.replay.dataset_experiments import worse as dataset_worse
from gateway.replay.replayer import ReplayError
from gateway.store.records import StoredExchange
from webui.diff_view import shown_ops
from webui.render import JINJA, render

CHART = {"width": 640, "height": 320, "left": 80, "right": 16, "top": 16, "bottom": 44}
NUMBER_FIELDS = {"temperature": float, "random_seed": int, "max_tokens": int, "top_p": float}
FORM_FIELDS = ("model", *NUMBER_FIELDS, "overrides")  # what a failed form is refilled with
NO_KEY = (
    "No API key to replay with: enter one in the API key field (used for this replay only, "
    "never stored), or start the gateway with AGENTOPS_REPLAY_API_KEY set."
)


def json_text(value: Any, limit: int = 2000) -> str:
    """A value as readable JSON (shortened): shown as text, so it is escaped like any text."""
    text = storable.json_text(value, orjson.OPT_INDENT_2)
    return text if len(text) <= limit else text[:limit] + " …"


def signed(value: Any, digits: int = 2) -> str:
    """+12, \u221220, 0 (never +0 or -0), with a true minus sign like the other deltas."""
    if value is None:
        return "\u2013"
    text = f"{value:+d}" if isinstance(value, int) else f"{value:+.{digits}f}"
    if text.lstrip("+-").strip("0.") == "":
        return text.lstrip("+-")
    return text.replace("-", "\u2212")


# -- the replay form ------------------------------------------------------------------------


async def replay_form(
    request: web.Request,
    action: str,
    item: StoredExchange | None = None,
    *,
    values: dict[str, str] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The context `_replay_form.html` needs, as `replay_form`: where it posts, the models to
    pick from (grouped), the original's own values as placeholders, and after a failed
    submission its error and what was typed (never the key)."""
    replayer = request.app[REPLAYER]
    body = item.decoded_body("request") if item is not None else None
    body = body if isinstance(body, dict) else {}
    args = body["completion_args"] if isinstance(body.get("completion_args"), dict) else {}
    current = {k: body.get(k, args.get(k)) for k in ("model", *NUMBER_FIELDS)}
    return {
        "action": action,
        "model_groups": await model_groups(request, current.get("model")),
        "current": current,
        "has_key": replayer.has_key,
        "values": {k: v for k, v in (values or {}).items() if k in FORM_FIELDS},
        "error": error,
    }


async def model_groups(request: web.Request, current: Any) -> list[tuple[str, list[str]]]:
    """Models to replay with, each once: those seen in the traffic, those with a price, and
    what the upstream offers (asked with the gateway's key, when it has one)."""
    seen = await request.app[api.STORE].rollups.models()
    if current and str(current) not in seen:
        seen = [str(current), *seen]
    prices = request.app[api.PRICES].models
    priced = sorted(name for name, entry in prices.items() if "input_per_mtok" in entry)
    offered = await request.app[REPLAYER].models()
    groups, shown = [], set()
    for label, names in (
        ("Seen in your traffic", seen),
        ("With a price", priced),
        ("Offered by the upstream", offered),
    ):
        fresh = [n for n in names if n not in shown]
        shown.update(fresh)
        if fresh:
            groups.append((label, fresh))
    return groups


def form_overrides(form: Any) -> dict[str, Any]:
    """The form's fields as overrides: the free JSON first, the named fields over it."""
    overrides: dict[str, Any] = {}
    text = (form.get("overrides") or "").strip()
    if text:
        try:
            overrides = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ReplayError(400, f"overrides must be JSON: {exc}") from None
        if not isinstance(overrides, dict):
            raise ReplayError(400, 'overrides must be a JSON object, e.g. {"top_p": 0.9}')
    if (form.get("model") or "").strip():
        overrides["model"] = form["model"].strip()
    for name, kind in NUMBER_FIELDS.items():
        raw = (form.get(name) or "").strip()
        if raw:
            try:
                overrides[name] = kind(raw)
            except ValueError:
                raise ReplayError(400, f"{name} must be a number, got {raw!r}") from None
    return overrides


def failure(request: web.Request, error: ReplayError) -> web.Response:
    response = render(
        request, "replay_error.html", {"error": error.message, "status": error.status}
    )
    response.set_status(error.status)
    return response


async def exchange_replay_page(request: web.Request) -> web.Response:
    exchange_id = parse_id(request.match_info["id"])
    recorded = await request.app[REPLAYER].load(exchange_id)
    if recorded is None:
        return failure(request, ReplayError(404, f"exchange {exchange_id} not found"))
    form = await replay_form(request, f"/exchanges/{exchange_id}/replay", recorded.item)
    return render(
        request,
        "replay_page.html",
        {"replay_form": form, "what": "exchange", "target": str(exchange_id)},
        partial="_replay_form.html",
    )


def form_key(replayer: Any, form: Any) -> Any:
    """The key typed in the form, else the gateway's; the form's own words when neither."""
    typed = str(form.get("api_key") or "").strip()
    if not typed and not replayer.has_key:
        raise ReplayError(400, NO_KEY)
    return replayer.key(typed or None)


async def form_failure(
    request: web.Request,
    error: ReplayError,
    what: str,
    target: int,
    item: StoredExchange | None,
    form: Any,
) -> web.Response:
    """The replay page again, its form filled as it was sent and the error inside it."""
    if error.status == 404:
        return failure(request, error)
    values = {k: str(form.get(k) or "") for k in FORM_FIELDS} if form is not None else {}
    context = {
        "replay_form": await replay_form(
            request, f"/{what}s/{target}/replay", item, values=values, error=error.message
        ),
        "what": what,
        "target": str(target),
    }
    return render(
        request, "replay_page.html", context, partial="_replay_form.html", status=error.status
    )


async def exchange_replay_submit(request: web.Request) -> web.StreamResponse:
    exchange_id = parse_id(request.match_info["id"])
    replayer = request.app[REPLAYER]
    form = None
    try:
        form = await request.post()
        overrides = form_overrides(form)
        original = await replayer.original(exchange_id)
        await replayer.plan(original, overrides)
        key = form_key(replayer, form)
        _, diff = await replayer.replay(exchange_id, overrides, key)
    except ReplayError as exc:
        recorded = await replayer.load(exchange_id)
        item = recorded.item if recorded is not None else None
        return await form_failure(request, exc, "exchange", exchange_id, item, form)
    raise web.HTTPSeeOther(f"/diffs/{diff['id']}")


async def run_replay_page(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    if await request.app[RUN_REPLAYER].run_store.get_run_row(run_id) is None:
        return failure(request, ReplayError(404, f"run {run_id} not found"))
    form = await replay_form(request, f"/runs/{run_id}/replay")
    return render(
        request,
        "replay_page.html",
        {"replay_form": form, "what": "run", "target": str(run_id)},
        partial="_replay_form.html",
    )


async def run_replay_submit(request: web.Request) -> web.Response:
    run_id = parse_id(request.match_info["id"], "run")
    runs = request.app[RUN_REPLAYER]
    form = None
    try:
        form = await request.post()
        overrides = form_overrides(form)
        steps = await runs.steps(run_id)
        await runs.replayer.plan(steps[0], overrides)
        key = form_key(runs.replayer, form)
        result = await runs.replay(run_id, overrides, key, steps)
    except ReplayError as exc:
        return await form_failure(request, exc, "run", run_id, None, form)
    response = render(request, "run_replay.html", {"result": result})
    response.set_status(201)
    return response


# -- diffs ------------------------------------------------------------------------------------


async def diff_page(request: web.Request) -> web.Response:
    diff_id = parse_id(request.match_info["id"], "diff")
    diff = await request.app[REPLAYS].get_diff(diff_id)
    if diff is None:
        return failure(request, ReplayError(404, f"diff {diff_id} not found"))
    return render(request, "diff.html", {"diff": diff})


async def compare_page(request: web.Request) -> web.Response:
    """Any two exchanges side by side (computed, not stored): `a` and `b`, or two `pick`s
    ticked in the exchange list (the older one is the "before")."""
    replayer = request.app[REPLAYER]
    query = dict(request.query)
    picked = request.query.getall("pick", [])
    if picked:
        if len(picked) != 2:
            return failure(
                request,
                ReplayError(400, f"tick exactly two exchanges to compare (got {len(picked)})"),
            )
        query["a"], query["b"] = sorted(picked, key=lambda v: (len(v), v))
    sides = []
    for name in ("a", "b"):
        value = query.get(name, "").strip()
        if not is_id(value):
            return failure(request, ReplayError(400, f"{name} must be an exchange id"))
        recorded = await replayer.load(int(value))
        if recorded is None:
            return failure(request, ReplayError(404, f"exchange {value} not found"))
        sides.append(recorded)
    return render(request, "diff.html", {"diff": await replayer.diff(*sides, save=False)})


# -- experiments ------------------------------------------------------------------------------


def _cost_change(r: dict[str, Any]) -> float | None:
    """A done replay's cost change in percent, when both costs are known."""
    if r["status"] != "ok" or not r["cost_before"] or r["cost_after"] is None:
        return None
    return float((r["cost_after"] - r["cost_before"]) / r["cost_before"] * 100)


def _tool_step(r: dict[str, Any]) -> bool:
    """A step with no text on either side that asked for tools: judged by its tool calls."""
    return r["similarity"] is None and bool(r["tool_calls_before"] or r["tool_calls_differing"])


def chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost change (x, %) against similarity (y) per replay, laid out for inline SVG. Steps
    that only asked for tools have no text to compare: they sit in a band under the plot,
    on a "same tools" or a "different tools" row (tool-call agreement)."""
    text_points, tool_points = [], []
    for r in rows:
        x = _cost_change(r)
        if x is None:
            continue
        if r["similarity"] is not None:
            text_points.append((r, x))
        elif _tool_step(r):
            tool_points.append((r, x))
    c = CHART
    plot_w = c["width"] - c["left"] - c["right"]
    plot_h = c["height"] - c["top"] - c["bottom"]
    xs = [x for _, x in text_points + tool_points]
    low = min([*xs, 0.0 if xs else -100.0, -10.0])
    high = max([*xs, 10.0])
    step = _tick_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step

    def x_of(value: float) -> float:
        return round(c["left"] + (value - low) / (high - low) * plot_w, 1)

    def y_of(value: float) -> float:
        return round(c["top"] + (1 - value) * plot_h, 1)

    bottom_y = c["top"] + plot_h
    band = _tool_band(tool_points, x_of, bottom_y) if tool_points else None
    below = band["bottom"] if band else bottom_y
    ticks_x = [{"x": x_of(v), "label": f"{v:+.0f}%"} for v in _frange(low, high, step)]
    ticks_y = [{"y": y_of(v), "label": f"{v:.2f}"} for v in (0, 0.25, 0.5, 0.75, 1.0)]
    dots = [
        {
            "x": x_of(x),
            "y": y_of(r["similarity"]),
            "diff_id": r["diff_id"],
            "kind": "identical" if r["identical"] else "changed",
            "title": f"exchange {r['exchange_id']}: cost {x:+.1f}%, similarity "
            f"{r['similarity']:.3f}",
        }
        for r, x in text_points
    ]
    return {
        **c,
        "height": below + c["bottom"],
        "plot_w": plot_w,
        "plot_h": plot_h,
        "dots": dots,
        "band": band,
        "ticks_x": ticks_x,
        "ticks_y": ticks_y,
        "zero_x": x_of(0),
        "bottom_y": bottom_y,
        "below_y": below,
    }


TOOL_ROW_PX = 22  # each row of the tool-call band


def _tool_band(
    points: list[tuple[dict[str, Any], float]], x_of: Any, plot_bottom: float
) -> dict[str, Any]:
    """The band of tool-call steps: a diamond per replay, on the row of same tools and
    arguments (agreement) or of different ones."""
    top = plot_bottom + 10
    rows = {"same": top + TOOL_ROW_PX / 2, "differ": top + TOOL_ROW_PX * 1.5}
    marks = []
    for r, x in points:
        agrees = not r["tool_calls_differing"]
        marks.append(
            {
                "x": x_of(x),
                "y": rows["same" if agrees else "differ"],
                "diff_id": r["diff_id"],
                "kind": "same" if agrees else "differ",
                "title": f"exchange {r['exchange_id']}: cost {x:+.1f}%, tool calls "
                + (
                    "the same"
                    if agrees
                    else f"differ ({r['tool_calls_differing']} of {r['tool_calls_before']})"
                ),
            }
        )
    agreeing = sum(1 for m in marks if m["kind"] == "same")
    return {
        "top": top,
        "height": TOOL_ROW_PX * 2,
        "bottom": top + TOOL_ROW_PX * 2,
        "rows": rows,
        "marks": marks,
        "agreeing": agreeing,
        "count": len(marks),
    }


def _tick_step(span: float) -> float:
    for step in (5, 10, 20, 25, 50, 100, 200, 500, 1000):
        if span / step <= 8:
            return float(step)
    return 10 ** math.ceil(math.log10(span))


def _frange(low: float, high: float, step: float) -> list[float]:
    count = round((high - low) / step)
    return [low + i * step for i in range(count + 1)]


async def experiment_page(request: web.Request) -> web.Response:
    experiment_id = parse_id(request.match_info["id"], "experiment")
    report = await request.app[EXPERIMENTS].report(experiment_id)
    if report is None:
        return failure(request, ReplayError(404, f"experiment {experiment_id} not found"))
    if report.get("kind") == "dataset":
        return render(
            request,
            "dataset_experiment.html",
            dataset_experiment_context(report),
            partial="_dataset_experiment_live.html",
        )
    context = {"experiment": report, "chart": chart(report["rows"])}
    return render(request, "experiment.html", context, partial="_experiment_table.html")


def cost_score_charts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One Chart.js scatter per scorer: a point per variant at (cost, mean score)."""
    board = report["scoreboard"]
    metrics = sorted({m for b in board for m in b["scores"]})
    out = []
    for metric in metrics:
        datasets = [
            {
                "label": b["variant"],
                "data": [{"x": b["cost_usd"], "y": b["scores"][metric]["mean"]}],
            }
            for b in board
            if b["scores"].get(metric, {}).get("mean") is not None
        ]
        spec = {"type": "scatter", "unit": "usd", "y_label": metric, "datasets": datasets}
        out.append({"metric": metric, "spec": orjson.dumps(spec).decode()})
    return out


def dataset_experiment_context(report: dict[str, Any]) -> dict[str, Any]:
    names = [v["name"] for v in report["variants"]]
    worse = [
        {"base": names[0], "variant": other, "items": dataset_worse(report, names[0], other)}
        for other in names[1:]
    ]
    return {
        "experiment": report,
        "names": names,
        "charts": cost_score_charts(report),
        "metrics": sorted({m for b in report["scoreboard"] for m in b["scores"]}),
        "worse": worse,
    }


async def experiments_page(request: web.Request) -> web.Response:
    items = await request.app[REPLAYS].list_experiments(100)
    return render(request, "experiments.html", {"items": items})


def setup(app: web.Application) -> None:
    env = app[JINJA]
    env.filters["json_text"] = json_text
    env.filters["signed"] = signed
    env.filters["shown_ops"] = shown_ops
    app.router.add_get("/diffs/{id}", diff_page)
    app.router.add_get("/compare", compare_page)
    app.router.add_get("/experiments", experiments_page)
    app.router.add_get("/experiments/{id}", experiment_page)
    app.router.add_get("/exchanges/{id}/replay", exchange_replay_page)
    app.router.add_post("/exchanges/{id}/replay", exchange_replay_submit)
    app.router.add_get("/runs/{id}/replay", run_replay_page)
    app.router.add_post("/runs/{id}/replay", run_replay_submit)
