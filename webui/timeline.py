"""One run as a timeline: a waterfall of its steps (where each call started and how long it
took, and how long each tool took between the call that asked for it and the call that
delivered its result), each step's new messages and tool calls, and its memory as what
changed since the previous step.

Pure functions over a run as the API shows it (`RunDetail.to_json()`), so they test without
a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webui.chat import arguments, chat_items
from webui.formats import duration_ms, parse_time

MIN_BAR_PERCENT = 0.4  # a 2 ms call in a 10 min run still shows


@dataclass
class Bar:
    x: float  # percent of the run's span
    width: float
    label: str


@dataclass
class Step:
    index: int
    exchange: dict[str, Any]
    offset_ms: float
    bar: Bar
    tool_bars: list[Bar] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] | None = None


@dataclass
class Timeline:
    span_ms: float
    steps: list[Step]
    ticks: list[tuple[float, str]]  # (percent, label)
    tool_count: int


def _percent(value: float, span: float) -> float:
    return round(max(0.0, min(100.0, value / span * 100)), 3)


def _bar(start_ms: float, length_ms: float, span: float, label: str) -> Bar:
    x = _percent(start_ms, span)
    width = max(MIN_BAR_PERCENT, _percent(length_ms, span))
    return Bar(
        x=min(x, 100 - MIN_BAR_PERCENT), width=min(width, 100 - x) or MIN_BAR_PERCENT, label=label
    )


def memory_change(previous: list[Any], snapshot: dict[str, Any]) -> dict[str, Any]:
    """What a step did to the carried state: kept the first `carried` items, dropped the
    rest of the previous state, added its new items."""
    state = snapshot.get("state") or []
    carried = int(snapshot.get("carried") or 0)
    return {
        "size": len(state),
        "kept": carried,
        "dropped": chat_items([m for m in previous[carried:] if isinstance(m, dict)]),
        "added": chat_items([m for m in state[carried:] if isinstance(m, dict)]),
    }


def build(run: dict[str, Any]) -> Timeline:
    exchanges = run.get("exchanges") or []
    starts = {e["id"]: _ms(e.get("started_at")) for e in exchanges}
    origin = min(starts.values(), default=0.0)
    ends = [starts[e["id"]] - origin + float(e.get("latency_ms") or 0) for e in exchanges]
    span = max([*ends, 1.0])
    by_exchange: dict[str, dict[str, list[Any]]] = {}
    for message in run.get("messages") or []:
        by_exchange.setdefault(message["exchange_id"], {}).setdefault("messages", []).append(
            {**message, "direction": message.get("direction")}
        )
    for call in run.get("tool_calls") or []:
        by_exchange.setdefault(call["exchange_id"], {}).setdefault("tools", []).append(call)
    snapshots = {s["exchange_id"]: s for s in run.get("memory_snapshots") or []}
    steps = []
    previous_state: list[Any] = []
    tool_count = 0
    for index, exchange in enumerate(exchanges):
        offset = starts[exchange["id"]] - origin
        latency = float(exchange.get("latency_ms") or 0)
        parts = by_exchange.get(exchange["id"], {})
        step = Step(
            index=index,
            exchange=exchange,
            offset_ms=offset,
            bar=_bar(
                offset,
                latency,
                span,
                f"step {index + 1}: {exchange.get('model') or exchange['path']} "
                f"at +{duration_ms(offset)}, {duration_ms(latency)}",
            ),
            messages=chat_items(parts.get("messages", [])),
        )
        for call in parts.get("tools", []):
            tool_count += 1
            result_at = starts.get(call.get("result_exchange_id") or "")
            waited = (result_at - origin) - (offset + latency) if result_at is not None else None
            step.tool_calls.append(
                {
                    **call,
                    "arguments": arguments(call.get("args")),
                    "waited_ms": call.get("latency_ms"),
                }
            )
            if waited is not None and waited > 0:
                step.tool_bars.append(
                    _bar(
                        offset + latency,
                        waited,
                        span,
                        f"tool {call.get('tool_name')}: {duration_ms(waited)}",
                    )
                )
        snapshot = snapshots.get(exchange["id"])
        if snapshot is not None:
            step.memory = memory_change(previous_state, snapshot)
            previous_state = snapshot.get("state") or []
        steps.append(step)
    ticks = [(p * 100.0, duration_ms(span * p)) for p in (0, 0.25, 0.5, 0.75, 1.0)]
    return Timeline(span_ms=span, steps=steps, ticks=ticks, tool_count=tool_count)


def _ms(value: Any) -> float:
    at = parse_time(value)
    return at.timestamp() * 1000 if at else 0.0
