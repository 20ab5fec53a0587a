"""Scoring one recorded call from its page: the form (a partial the exchange page fetches,
or a page of its own) with the built-in scorers and the stored judges, and its submission,
which stores the scores as the exchange's evaluations (gateway/replay/evaluator.py) and
returns to the exchange.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api import exchanges as api
from gateway.api.evaluations import EVALUATOR, JUDGES
from gateway.errors import UserError
from gateway.replay import scorers
from webui.render import render

# Scorers the form offers, with what each needs from it.
OFFERED = (
    ("exact_match", "exact match"),
    ("contains", "contains"),
    ("regex", "regular expression"),
    ("json_valid", "valid JSON"),
    ("tool_calls", "tool calls"),
    ("bleu", "BLEU"),
    ("chrf", "chrF"),
    ("rouge_l", "ROUGE-L"),
    ("embedding_cosine", "embedding cosine"),
)


def form_specs(form: Any) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for kind in form.getall("scorer", []):
        if kind == "contains":
            specs.append({"type": kind, "value": str(form.get("contains") or "") or None})
        elif kind == "regex":
            specs.append({"type": kind, "pattern": str(form.get("pattern") or "")})
        elif str(kind).startswith("judge:"):
            specs.append({"type": "judge", "judge": str(kind)[len("judge:") :]})
        elif kind in scorers.BUILT_IN or kind in scorers.CALLING:
            specs.append({"type": str(kind)})
        else:
            raise UserError(f"no scorer {kind!r}")
    if not specs:
        raise UserError("tick at least one scorer")
    return specs


async def score_form(request: web.Request) -> web.Response:
    exchange_id = api.parse_id(request.match_info["id"])
    context = {
        "target": str(exchange_id),
        "offered": OFFERED,
        "judges": [j["name"] for j in await request.app[JUDGES].all()],
    }
    return render(request, "score_page.html", context, partial="_score_form.html")


async def score_submit(request: web.Request) -> web.StreamResponse:
    exchange_id = api.parse_id(request.match_info["id"])
    form = await request.post()
    expected = str(form.get("expected") or "").strip() or None
    body: dict[str, Any] = {"exchange_ids": [str(exchange_id)], "scorers": form_specs(form)}
    if expected is not None:
        body["expected"] = expected
    results = await request.app[EVALUATOR].evaluate(body)
    failed = [s for r in results for s in r["scores"] if s.get("error")]
    if failed:
        raise UserError("; ".join(f"{s['name']}: {s['error']}" for s in failed))
    raise web.HTTPSeeOther(f"/exchanges/{exchange_id}#evals-h")


def setup(app: web.Application) -> None:
    app.router.add_get(r"/exchanges/{id:\d+}/score", score_form)
    app.router.add_post(r"/exchanges/{id:\d+}/score", score_submit)
