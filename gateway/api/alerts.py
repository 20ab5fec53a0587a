"""The alerts API on the UI port: rules at /api/alert-rules (create, list, read, replace,
change, delete) and what they raised at /api/alerts, newest first.

Same conventions as the rest of the API: ids are strings (a rule's `id`, an alert's `id` and
`rule`), 400 names the bad field, 404 for unknown ids (in a path: anything that is not an id a
rule can have), a filter on an unknown id selects nothing. Rule reads show the webhook URL
masked (it may be a secret); sending it back masked keeps it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.exchanges import json_body, json_response, not_found
from gateway.capture.exchange import MAX_ID, is_id
from gateway.errors import UserError
from gateway.integrations.alert_rules import parse_rule, rule_json
from gateway.store.alerts import AlertRule, AlertStore
from gateway.store.query import parse_int

ALERTS = web.AppKey("alerts", AlertStore)
STATES = ("firing", "resolved")
MAX_RULE_ID = 2**31 - 1  # rules and alerts are numbered by the database (a 32-bit column)
routes = web.RouteTableDef()


def rule_id(request: web.Request) -> int:
    value = request.match_info["id"]
    if not is_id(value) or int(value) > MAX_RULE_ID:
        raise not_found("alert rule")
    return int(value)


async def existing(request: web.Request) -> AlertRule:
    rule = await request.app[ALERTS].get_rule(rule_id(request))
    if rule is None:
        raise not_found("alert rule")
    return rule


@routes.post("/api/alert-rules")
async def create_rule(request: web.Request) -> web.Response:
    rule = await request.app[ALERTS].create_rule(parse_rule(await json_body(request)))
    return json_response(rule_json(rule), status=201)


@routes.get("/api/alert-rules")
async def list_rules(request: web.Request) -> web.Response:
    rules = await request.app[ALERTS].rules()
    return json_response({"items": [rule_json(rule) for rule in rules]})


@routes.get("/api/alert-rules/{id}")
async def get_rule(request: web.Request) -> web.Response:
    return json_response(rule_json(await existing(request)))


@routes.put("/api/alert-rules/{id}")
@routes.patch("/api/alert-rules/{id}")
async def change_rule(request: web.Request) -> web.Response:
    """PUT replaces the rule (what is left out takes its default); PATCH changes the fields
    given."""
    old = await existing(request)
    rule = parse_rule(await json_body(request), old, partial=request.method == "PATCH")
    if not await request.app[ALERTS].update_rule(rule):
        raise not_found("alert rule")
    return json_response(rule_json(rule))


@routes.delete("/api/alert-rules/{id}")
async def delete_rule(request: web.Request) -> web.Response:
    if not await request.app[ALERTS].delete_rule(rule_id(request)):
        raise not_found("alert rule")
    return json_response({"deleted": str(rule_id(request))})


@routes.get("/api/alerts")
async def list_alerts(request: web.Request) -> web.Response:
    query = request.query
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise UserError(f"state must be firing or resolved, got {state!r}")
    rule = parse_int("rule", query.get("rule"), low=1, high=MAX_ID)
    limit = parse_int("limit", query.get("limit"), low=1, high=1000) or 100
    if rule is not None and rule > MAX_RULE_ID:  # no rule has it (nor can the column hold it)
        return json_response({"items": []})
    alerts = await request.app[ALERTS].history(rule, state, limit)
    return json_response({"items": [alert.to_json() for alert in alerts]})
