"""A filter from query-string values. The API, the pages, the command line and experiments
read the same parameters the same way; a bad one is a UserError naming it (400, exit 2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from gateway.errors import UserError
from gateway.store.exchanges import ExchangeFilter
from gateway.store.runs import RunFilter

RUN_STATUSES = ("running", "ok", "error")


def parse_time(name: str, value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{name} must be an ISO-8601 time such as 2026-01-31T12:00:00Z, got {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_int(name: str, value: str | None, *, low: int = 0, high: int | None = None) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UserError(f"{name} must be {bound}, got {number}")
    return number


def exchange_filter(query: Any) -> ExchangeFilter:
    status_text = (query.get("status") or "").strip().lower()
    status = status_class = None
    if status_text:
        if re.fullmatch(r"[1-5]xx", status_text):
            status_class = int(status_text[0])
        elif re.fullmatch(r"\d{3}", status_text):
            status = int(status_text)
        else:
            raise UserError(
                f"status must be a code such as 429 or a class such as 4xx, got {status_text!r}"
            )
    since = parse_time("since", query.get("since"))
    until = parse_time("until", query.get("until"))
    if since and until and since > until:
        raise UserError("since must not be after until")
    return ExchangeFilter(
        q=(query.get("q") or "").strip() or None,
        model=query.get("model") or None,
        status=status,
        status_class=status_class,
        state=query.get("state") or None,
        endpoint=query.get("endpoint") or None,
        run=parse_int("run", query.get("run")),
        since=since,
        until=until,
    )


def run_filter(query: Any) -> RunFilter:
    tag = None
    if query.get("tag"):
        key, sep, value = query["tag"].partition("=")
        if not sep or not key:
            raise UserError(f"tag must look like key=value, got {query['tag']!r}")
        tag = (key, value)
    status = query.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise UserError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    return RunFilter(
        name=query.get("name") or None,
        agent_id=query.get("agent_id") or None,
        user=query.get("user") or None,
        tag=tag,
        status=status,
        since=parse_time("since", query.get("since")),
        until=parse_time("until", query.get("until")),
    )
