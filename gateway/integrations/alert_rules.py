"""Alert rules as the API and the UI give them: checked field by field (a 400 names the
field), and shown with their webhook URL masked (a Slack webhook URL is a secret)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import UserError
from gateway.store.alerts import KINDS, SCOPES, AlertRule
from gateway.store.budgets import THRESHOLDS

FORMATS = ("json", "slack")
FIELDS = (
    "name",
    "kind",
    "scope",
    "window_seconds",
    "threshold",
    "baseline_windows",
    "min_calls",
    "webhook_url",
    "webhook_format",
    "enabled",
)
MAX_WINDOW = 31 * 86400
DEFAULT_WINDOW = 300
# Per kind: what `threshold` means; a rule fires while its value is above it.
UNITS = {
    "spend": "USD spent in the window",
    "spend_spike": "times the mean spend of the trailing windows",
    "error_rate": "fraction of failed calls (0-1)",
    "p95_latency": "milliseconds",
    "unpriced_model": "calls of models with no price",
    "capture_loss": "records quarantined or dropped",
    "budget": "fraction of a budget's limit spent this period (0.8 or 1)",
}


def masked(url: str | None) -> str | None:
    """The scheme and host of a webhook URL; the path and query (where the secret is) hidden."""
    if not url:
        return url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/…"


def rule_json(rule: AlertRule) -> dict[str, Any]:
    return {
        "id": str(rule.id),  # a string, as every id in the API
        "name": rule.name,
        "kind": rule.kind,
        "scope": {"kind": rule.scope_kind, "value": rule.scope_value},
        "window_seconds": rule.window_seconds,
        "threshold": rule.threshold,
        "unit": UNITS.get(rule.kind, ""),
        "baseline_windows": rule.baseline_windows,
        "min_calls": rule.min_calls,
        "webhook_url": masked(rule.webhook_url),
        "webhook_format": rule.webhook_format,
        "enabled": rule.enabled,
        "created_at": rule.created_at.isoformat() if rule.created_at else None,
    }


def parse_rule(
    body: dict[str, Any], existing: AlertRule | None = None, *, partial: bool = False
) -> AlertRule:
    """A rule from a JSON object: all of it (POST; PUT, replacing `existing`), or with
    `partial` the fields to change in `existing` (PATCH). A webhook URL sent back masked
    keeps the stored one."""
    unknown = sorted(set(body) - set(FIELDS) - {"id", "created_at", "unit"})
    if unknown:
        raise UserError(f"unknown field(s): {', '.join(unknown)} (accepted: {', '.join(FIELDS)})")
    base = AlertRule(name="", kind="", window_seconds=DEFAULT_WINDOW, threshold=0.0)
    if partial and existing is not None:
        base = existing
    else:
        for required in ("name", "kind", "threshold"):
            if required not in body:
                raise UserError(f"{required} is required")
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = _text(body["name"], "name")
    if "kind" in body:
        changes["kind"] = _choice(body["kind"], "kind", KINDS)
    if "scope" in body:
        changes["scope_kind"], changes["scope_value"] = _scope(body["scope"])
    if "window_seconds" in body:
        changes["window_seconds"] = _int(body["window_seconds"], "window_seconds", 1, MAX_WINDOW)
    if "threshold" in body:
        changes["threshold"] = _number(body["threshold"], "threshold")
    if "baseline_windows" in body:
        changes["baseline_windows"] = _int(body["baseline_windows"], "baseline_windows", 1, 1000)
    if "min_calls" in body:
        changes["min_calls"] = _int(body["min_calls"], "min_calls", 1, 10**9)
    if "webhook_url" in body:
        changes["webhook_url"] = _url(body["webhook_url"], existing)
    if "webhook_format" in body:
        changes["webhook_format"] = _choice(body["webhook_format"], "webhook_format", FORMATS)
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise UserError(f"enabled must be true or false, got {body['enabled']!r}")
        changes["enabled"] = body["enabled"]
    rule = replace(base, **changes)
    if existing is not None:
        rule = replace(rule, id=existing.id, created_at=existing.created_at)
    _check(rule)
    return rule


def _check(rule: AlertRule) -> None:
    if rule.kind == "error_rate" and rule.threshold > 1:
        raise UserError(
            f"threshold of an error_rate rule is a fraction (0-1), got {rule.threshold}"
        )
    if rule.kind == "spend_spike" and rule.threshold <= 0:
        raise UserError("threshold of a spend_spike rule is a factor above 0, e.g. 3")
    if rule.kind in ("capture_loss",) and rule.scope_kind != "gateway":
        raise UserError("a capture_loss rule's scope is the whole gateway")
    if rule.kind == "budget":
        if rule.scope_kind not in ("gateway", "budget"):
            raise UserError(
                "a budget rule's scope is the gateway (every budget) or one budget: "
                '{"kind": "budget", "value": NAME}'
            )
        if rule.threshold not in THRESHOLDS:
            raise UserError(
                f"threshold of a budget rule is the first level it tells: 0.8 or 1, "
                f"got {rule.threshold}"
            )
    elif rule.scope_kind == "budget":
        raise UserError("only a budget rule has a budget scope")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise UserError(f"{name} must be a non-empty string of at most 200 characters")
    return value.strip()


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise UserError(f"{name} must not be negative, got {value!r}")
    return float(value)


def _scope(value: Any) -> tuple[str, str | None]:
    if not isinstance(value, dict) or set(value) - {"kind", "value"}:
        raise UserError('scope must be an object {"kind": ..., "value": ...}')
    kind = _choice(value.get("kind"), "scope.kind", SCOPES)
    if kind == "gateway":
        return kind, None
    return kind, _text(value.get("value"), "scope.value")


def _url(value: Any, existing: AlertRule | None) -> str | None:
    if value is None or value == "":
        return None
    if existing is not None and value == masked(existing.webhook_url):
        return existing.webhook_url  # sent back as read: unchanged
    if not isinstance(value, str) or len(value) > 2000:
        raise UserError("webhook_url must be an http(s) URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError("webhook_url must be an http(s) URL with a host")
    return value
