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

from webui.chat import PART_LIMIT, chat_items, clipped_arguments
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
        "dropped": chat_items([m for m in previous[carried:] if isinstance(m, dict)], PART_LIMIT),
        "added": chat_items([m for m in state[carried:] if isinstance(m, dict)], PART_LIMIT),
    }


def build(run: dict[str, Any]) -> Timeline:
    exchanges = run.get("exchanges") or []
    scale = _scale(exchanges)
    messages = _grouped([{**m, "direction": m.get("direction")} for m in run.get("messages") or []])
    tools = _grouped(run.get("tool_calls") or [])
    steps = []
    for index, exchange in enumerate(exchanges):
        step = _step(index, exchange, scale, messages.get(exchange["id"], []))
        for call in tools.get(exchange["id"], []):
            _add_tool_call(step, call, scale)
        steps.append(step)
    _add_memory(steps, run.get("memory_snapshots") or [])
    ticks = [(p * 100.0, duration_ms(scale.span * p)) for p in (0, 0.25, 0.5, 0.75, 1.0)]
    tool_count = sum(len(step.tool_calls) for step in steps)
    return Timeline(span_ms=scale.span, steps=steps, ticks=ticks, tool_count=tool_count)


@dataclass(frozen=True)
class _Scale:
    """The run's clock: each exchange's start and the first one (ms since the epoch), and the
    span from the first start to the last end, which bars are percents of."""

    starts: dict[Any, float]
    origin: float
    span: float


def _scale(exchanges: list[dict[str, Any]]) -> _Scale:
    starts = {e["id"]: _ms(e.get("started_at")) for e in exchanges}
    origin = min(starts.values(), default=0.0)
    ends = [starts[e["id"]] - origin + _latency(e) for e in exchanges]
    return _Scale(starts=starts, origin=origin, span=max([*ends, 1.0]))


def _grouped(items: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """Rows by the exchange they belong to, in their order."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item["exchange_id"], []).append(item)
    return groups


def _step(
    index: int, exchange: dict[str, Any], scale: _Scale, messages: list[dict[str, Any]]
) -> Step:
    """A step with its call's bar and its new messages (tool calls and memory come next)."""
    offset = scale.starts[exchange["id"]] - scale.origin
    latency = _latency(exchange)
    label = (
        f"step {index + 1}: {exchange.get('model') or exchange['path']} "
        f"at +{duration_ms(offset)}, {duration_ms(latency)}"
    )
    return Step(
        index=index,
        exchange=exchange,
        offset_ms=offset,
        bar=_bar(offset, latency, scale.span, label),
        messages=chat_items(messages, PART_LIMIT),  # the step's page has the whole text
    )


def _add_tool_call(step: Step, call: dict[str, Any], scale: _Scale) -> None:
    """A tool call the step asked for; and a bar for the wait, from the end of this call to
    the start of the call that delivered its result, when that came later in the run."""
    step.tool_calls.append(
        {**call, **clipped_arguments(call.get("args")), "waited_ms": call.get("latency_ms")}
    )
    result_at = scale.starts.get(call.get("result_exchange_id") or "")
    if result_at is None:
        return
    asked_at = step.offset_ms + _latency(step.exchange)
    waited = (result_at - scale.origin) - asked_at
    if waited > 0:
        label = f"tool {call.get('tool_name')}: {duration_ms(waited)}"
        step.tool_bars.append(_bar(asked_at, waited, scale.span, label))


def _add_memory(steps: list[Step], snapshots: list[dict[str, Any]]) -> None:
    """Each step with a memory snapshot: what it changed in the state of the last step that
    had one."""
    by_exchange = {s["exchange_id"]: s for s in snapshots}
    previous_state: list[Any] = []
    for step in steps:
        snapshot = by_exchange.get(step.exchange["id"])
        if snapshot is not None:
            step.memory = memory_change(previous_state, snapshot)
            previous_state = snapshot.get("state") or []


def _latency(exchange: dict[str, Any]) -> float:
    return float(exchange.get("latency_ms") or 0)


def _ms(value: Any) -> float:
    at = parse_time(value)
    return at.timestamp() * 1000 if at else 0.0
