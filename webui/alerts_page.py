"""The alerts page (`/alerts`): the rules (webhook URLs masked) with a form to add one, and
the alerts they raised, newest first. The same checks as /api/alert-rules."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.alerts import ALERTS, rule_id
from gateway.errors import NotFound, UserError
from gateway.integrations.alert_rules import FORMATS, UNITS, parse_rule, rule_json
from gateway.store.alerts import KINDS, SCOPES
from webui.render import render


async def alerts(request: web.Request) -> web.Response:
    store = request.app[ALERTS]
    rules = [rule_json(rule) for rule in await store.rules()]
    history = [alert.to_json() for alert in await store.history(limit=200)]
    firing = {item["rule"] for item in history if item["state"] == "firing"}
    return render(
        request,
        "alerts.html",
        {
            "rules": rules,
            "history": history,
            "firing": firing,
            "kinds": KINDS,
            "units": UNITS,
            "scopes": SCOPES,
            "formats": FORMATS,
        },
    )


def _number(form: Any, name: str, cast: type) -> Any:
    text = str(form.get(name) or "").strip()
    if not text:
        return None
    try:
        return cast(text)
    except ValueError:
        raise UserError(f"{name} must be a number, got {text!r}") from None


async def add_rule(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    body: dict[str, Any] = {
        "name": str(form.get("name") or ""),
        "kind": str(form.get("kind") or ""),
        "scope": {"kind": str(form.get("scope_kind") or "gateway")},
        "webhook_url": str(form.get("webhook_url") or "") or None,
        "webhook_format": str(form.get("webhook_format") or "json"),
    }
    if body["scope"]["kind"] != "gateway":
        body["scope"]["value"] = str(form.get("scope_value") or "")
    for name, cast in (("threshold", float), ("window_seconds", int)):
        value = _number(form, name, cast)
        if value is not None:
            body[name] = value
    await request.app[ALERTS].create_rule(parse_rule(body))
    raise web.HTTPSeeOther("/alerts")


async def delete_rule(request: web.Request) -> web.StreamResponse:
    if not await request.app[ALERTS].delete_rule(rule_id(request)):
        raise NotFound("alert rule not found")
    raise web.HTTPSeeOther("/alerts")


def setup(app: web.Application) -> None:
    app.router.add_get("/alerts", alerts)
    app.router.add_post("/alerts/rules", add_rule)
    app.router.add_post("/alerts/rules/{id}/delete", delete_rule)
