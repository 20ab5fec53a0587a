"""A filter from query-string values. The API, the pages, the command line and experiments
read the same parameters the same way; a bad one is a UserError naming it (400, exit 2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from gateway.capture.exchange import MAX_ID
from gateway.errors import UserError
from gateway.store.exchanges import ExchangeFilter
from gateway.store.runs import RunFilter

RUN_STATUSES = ("running", "ok", "error")
# What a filter of recorded calls may say: /api/exchanges's parameters (`exchange_filter`), the
# ones datasets, experiments and campaigns take in their JSON.
EXCHANGE_FILTER_FIELDS = frozenset(
    {"q", "model", "status", "state", "endpoint", "run", "since", "until", "errors"}
)


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


def parse_range(query: Any) -> tuple[datetime | None, datetime | None]:
    """`since` and `until`, each optional; since after until is refused (400, exit 2)."""
    since = parse_time("since", query.get("since"))
    until = parse_time("until", query.get("until"))
    if since and until and since > until:
        raise UserError("since must not be after until")
    return since, until


def parse_cursor(name: str, value: str | None) -> int | None:
    """A page's `before` (or `after`) cursor: an id from a previous page's `next`, or None."""
    if not value:
        return None
    if not re.fullmatch(r"\d{1,19}", value) or int(value) > MAX_ID:
        raise UserError(f"{name} must be a cursor from a previous 'next', got {value!r}")
    return int(value)


def parse_int(name: str, value: str | None, *, low: int = 0, high: int | None = None) -> int | None:
    if value is None or value == "":
        return None
    # ASCII digits only, as ids are read: int() also takes "٣", " 5 ", "+5" and "1_000"
    if not re.fullmatch(r"-?[0-9]{1,30}", value):
        raise UserError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UserError(f"{name} must be {bound}, got {number}")
    return number


def parse_text(name: str, value: str | None) -> str | None:
    """A text filter value; empty is none. A NUL is refused: no stored value holds one (the
    writer escapes it) and PostgreSQL rejects it in a query."""
    if not value:
        return None
    if "\x00" in value:
        raise UserError(f"{name} must not contain a NUL character (%00)")
    return value


def parse_flag(name: str, value: str | None) -> bool:
    """A yes/no filter: 1, true, yes or on; 0, false, no, off or empty."""
    text = (value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise UserError(f"{name} must be 1 or 0, got {value!r}")


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
    since, until = parse_range(query)
    return ExchangeFilter(
        q=(parse_text("q", query.get("q")) or "").strip() or None,
        model=parse_text("model", query.get("model")),
        status=status,
        status_class=status_class,
        state=parse_text("state", query.get("state")),
        endpoint=parse_text("endpoint", query.get("endpoint")),
        run=parse_int("run", query.get("run"), high=MAX_ID),
        since=since,
        until=until,
        errors=parse_flag("errors", query.get("errors")),
    )


def run_filter(query: Any) -> RunFilter:
    tag = None
    if parse_text("tag", query.get("tag")):
        key, sep, value = query["tag"].partition("=")
        if not sep or not key:
            raise UserError(f"tag must look like key=value, got {query['tag']!r}")
        tag = (key, value)
    status = query.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise UserError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    since, until = parse_range(query)
    return RunFilter(
        name=parse_text("name", query.get("name")),
        agent_id=parse_text("agent_id", query.get("agent_id")),
        user=parse_text("user", query.get("user")),
        tag=tag,
        status=status,
        errors=parse_flag("errors", query.get("errors")),
        since=since,
        until=until,
    )
