"""Numbers and times as people read them: 1.2k tokens, $0.0031, 840 ms, "3 min ago".

Each function takes a raw value (None allowed, shown as a dash) and returns plain text; the
templates put the exact value in a `title` beside it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from gateway.store.records import iso_z

DASH = "\u2013"  # an en dash
MINUS = "\u2212"


def tokens(value: Any) -> str:
    """840, 1.2k, 12k, 3.4M."""
    if value is None:
        return DASH
    n = float(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            scaled = n / limit
            text = f"{scaled:.1f}" if abs(scaled) < 10 else f"{scaled:.0f}"
            if text.endswith(".0"):
                text = text[:-2]
            return text + suffix
    return f"{n:.0f}"


def number(value: Any) -> str:
    """An exact count with thousands separators: 1,234,567."""
    return DASH if value is None else f"{int(value):,}"


def usd(value: Any) -> str:
    """$0, $0.0031 (two significant digits below a cent), $0.42, $12.35, $1,234."""
    if value is None:
        return DASH
    v = float(value)
    if v == 0:
        return "$0"
    sign = "-" if v < 0 else ""
    v = abs(v)
    if v < 0.01:
        digits = max(2, 1 - math.floor(math.log10(v)))
        text = f"{v:.{digits}f}".rstrip("0")
        return f"{sign}${text}"
    if v < 1000:
        return f"{sign}${v:,.2f}"
    return f"{sign}${v:,.0f}"


def usd_delta(value: Any) -> str:
    """A cost change in the one cost format: +$0.000013, \u2212$0.0031, $0 (never -0)."""
    if value is None:
        return DASH
    v = float(value)
    if usd(abs(v)) == "$0":
        return "$0"
    return ("+" if v > 0 else MINUS) + usd(abs(v))


def ms_delta(value: Any) -> str:
    """A latency change rounded to whole milliseconds: +12 ms, \u221240 ms, 0 ms (never -0)."""
    if value is None:
        return DASH
    rounded = round(float(value))
    if rounded == 0:
        return "0 ms"
    return f"{'+' if rounded > 0 else MINUS}{abs(rounded)} ms"


def price(value: Any) -> str:
    """A price as written in a price list: $0.15, $2.00, $0.015, $0.000016 (never 1.6e-05)."""
    if value is None:
        return DASH
    whole, _, decimals = f"{float(value):.8f}".partition(".")
    return f"${whole}.{decimals.rstrip('0').ljust(2, '0')}"


def usd_exact(value: Any) -> str:
    return DASH if value is None else f"${float(value):.8f}".rstrip("0").rstrip(".")


def duration_ms(value: Any) -> str:
    """3.2 ms, 840 ms, 1.3 s, 12 s, 2 min 5 s, 1 h 4 min."""
    if value is None:
        return DASH
    ms = float(value)
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def percent(value: Any) -> str:
    if value is None:
        return DASH
    v = float(value) * 100
    if v == 0:
        return "0%"
    return f"{v:.1f}%" if v < 10 else f"{v:.0f}%"


def parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(value: Any) -> str:
    """A time for a `datetime` attribute: a stored time as the API writes it (text as is)."""
    return iso_z(value) if isinstance(value, datetime) else str(value)


def exact_time(value: Any) -> str:
    """2026-01-31 12:00:03.123 UTC: what a tooltip shows."""
    at = parse_time(value)
    if at is None:
        return DASH
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d} UTC"


def ago(value: Any, now: datetime | None = None) -> str:
    """just now, 42 s ago, 3 min ago, 5 h ago, 3 days ago, then the date."""
    at = parse_time(value)
    if at is None:
        return DASH
    now = now or datetime.now(UTC)
    seconds = (now - at).total_seconds()
    if seconds < 0:
        return "in the future"
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    days = int(seconds // 86400)
    if days < 30:
        return "1 day ago" if days == 1 else f"{days} days ago"
    return at.astimezone(UTC).strftime("%Y-%m-%d")


def clip(text: Any, size: int = 120) -> str:
    """One line of at most `size` characters, with an ellipsis when cut."""
    if text is None:
        return ""
    line = " ".join(str(text).split())
    return line if len(line) <= size else line[: size - 1].rstrip() + "…"


FILTERS = {
    "tokens": tokens,
    "number": number,
    "usd": usd,
    "usd_exact": usd_exact,
    "usd_delta": usd_delta,
    "ms_delta": ms_delta,
    "price": price,
    "ms": duration_ms,
    "percent": percent,
    "iso": iso,
    "exact_time": exact_time,
    "ago": ago,
    "clip": clip,
}
