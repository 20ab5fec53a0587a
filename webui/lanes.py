"""A multi-agent run as lanes: one lane per agent along the run's timeline, each call (or each
agent's turn within a call) a block in its agent's lane, and arrows between lanes where one
agent handed over to another: a Conversations API handoff (solid), or the next call coming
from another agent (dashed).

Pure functions over the run as the API shows it and what `gateway.store.agents` read of its
calls, laid out for a server-rendered SVG: x in percent of the run's span, y in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.store.agents import CallAgents
from webui.formats import duration_ms, parse_time

LANE_PX = 44  # each lane's height
BLOCK_PX = 22  # a block's height, centred in its lane
MIN_WIDTH = 0.5  # percent: a 2 ms call in a long run still shows
NO_AGENT = ""  # the lane of calls no agent is known for
PALETTE = 6  # lane colours (CSS classes lane-0 .. lane-5)
TIME_PRECISION_MS = 1.0  # start times are kept to the millisecond: back to back is "after"


@dataclass(frozen=True, slots=True)
class Lane:
    index: int
    agent: str  # its id ("" for calls with no agent)
    label: str  # name and id, for titles
    y: int  # top, in pixels
    name: str = ""  # what the lane is called: the agent's name, else its id
    detail: str = ""  # its id, under the name, when it has a name

    @property
    def middle(self) -> int:
        return self.y + LANE_PX // 2


@dataclass(frozen=True, slots=True)
class Block:
    lane: Lane
    x: float
    width: float
    step: int  # 1-based
    exchange_id: str
    failed: bool
    title: str


@dataclass(frozen=True, slots=True)
class Connector:
    """An arrow from one lane to another: x in percent, y in pixels."""

    kind: str  # handoff, switch
    x1: float
    y1: int
    x2: float
    y2: int
    step: int
    source: str
    target: str
    title: str


@dataclass(slots=True)
class Lanes:
    lanes: list[Lane]
    blocks: list[Block]
    connectors: list[Connector]
    ticks: list[tuple[float, str]]
    height: int
    handoffs: list[Connector] = field(default_factory=list)  # the solid ones, for the table


def _percent(value: float, span: float) -> float:
    return round(max(0.0, min(100.0, value / span * 100)), 3)


def _ms(value: Any) -> float:
    at = parse_time(value)
    return at.timestamp() * 1000 if at else 0.0


def _label(agent: str, names: dict[str, str]) -> str:
    if agent == NO_AGENT:
        return "no agent"
    name = names.get(agent)
    return f"{name} ({agent})" if name and name != agent else agent


def _lane(index: int, agent: str, names: dict[str, str]) -> Lane:
    label = _label(agent, names)
    name = names.get(agent)
    if agent == NO_AGENT or not name or name == agent:
        return Lane(index, agent, label, index * LANE_PX, name=label)
    return Lane(index, agent, label, index * LANE_PX, name=name, detail=agent)


def build(run: dict[str, Any], calls: Sequence[CallAgents]) -> Lanes | None:
    """The lanes of a run, or None when fewer than two agents acted in it."""
    by_id = {str(c.exchange_id): c for c in calls}
    exchanges = sorted(run.get("exchanges") or [], key=lambda e: (_ms(e["started_at"]), e["id"]))
    order: list[str] = []
    names: dict[str, str] = {}
    for exchange in exchanges:
        found = by_id.get(str(exchange["id"]))
        names.update(found.names if found else {})
        for turn in found.turns if found else ():
            if turn.agent not in order:
                order.append(turn.agent)
        if (found is None or not found.turns) and NO_AGENT not in order:
            order.append(NO_AGENT)
    if len([a for a in order if a != NO_AGENT]) < 2:
        return None
    lanes = {a: _lane(i, a, names) for i, a in enumerate(order)}
    origin = min((_ms(e["started_at"]) for e in exchanges), default=0.0)
    span = max([_ms(e["started_at"]) - origin + _latency(e) for e in exchanges] + [1.0])
    layout = _Layout(lanes, names, origin, span)
    for step, exchange in enumerate(exchanges, start=1):
        layout.add(step, exchange, by_id.get(str(exchange["id"])))
    ticks = [(p * 100.0, duration_ms(span * p)) for p in (0, 0.25, 0.5, 0.75, 1.0)]
    return Lanes(
        lanes=list(lanes.values()),
        blocks=layout.blocks,
        connectors=layout.connectors,
        ticks=ticks,
        height=len(lanes) * LANE_PX,
        handoffs=[c for c in layout.connectors if c.kind == "handoff"],
    )


def _latency(exchange: dict[str, Any]) -> float:
    return float(exchange.get("latency_ms") or 0)


class _Layout:
    """Blocks and connectors, call by call in start order."""

    def __init__(self, lanes: dict[str, Lane], names: dict[str, str], origin: float, span: float):
        self.lanes, self.names, self.origin, self.span = lanes, names, origin, span
        self.blocks: list[Block] = []
        self.connectors: list[Connector] = []
        self.previous: tuple[str, float, float] | None = None  # agent, end (ms), x of the end

    def add(self, step: int, exchange: dict[str, Any], found: CallAgents | None) -> None:
        start = _ms(exchange["started_at"]) - self.origin
        latency = _latency(exchange)
        turns = found.turns if found and found.turns else ()
        failed = (exchange.get("status") or 0) >= 400 or exchange.get("state") != "complete"
        what = exchange.get("model") or exchange.get("path") or ""
        if not turns:
            self._block(step, exchange, NO_AGENT, start, latency, failed, what)
            self._switch(step, NO_AGENT, start, latency)
            return
        self._switch(step, turns[0].agent, start, latency)
        for turn in turns:
            length = latency * (turn.end - turn.start)
            self._block(
                step, exchange, turn.agent, start + latency * turn.start, length, failed, what
            )
        for handoff in found.handoffs if found else ():
            x = _percent(start + latency * handoff.at, self.span)
            source, target = self.lanes[handoff.source], self.lanes[handoff.target]
            title = f"step {step}: {source.name} handed over to {target.name}"
            self.connectors.append(
                self._connector("handoff", step, (x, source), (x, target), title)
            )
        self.ended_with(turns[-1].agent)

    def _block(
        self,
        step: int,
        exchange: dict[str, Any],
        agent: str,
        start: float,
        length: float,
        failed: bool,
        what: str,
    ) -> None:
        lane = self.lanes[agent]
        x = min(_percent(start, self.span), 100 - MIN_WIDTH)
        width = min(max(MIN_WIDTH, _percent(length, self.span)), 100 - x)
        title = (
            f"step {step}: {lane.name}, {what} at +{duration_ms(start)}, {duration_ms(length)}"
            + (", failed" if failed else "")
        )
        self.blocks.append(Block(lane, x, width, step, str(exchange["id"]), failed, title))

    def _switch(self, step: int, agent: str, start: float, latency: float) -> None:
        """A dashed arrow from the previous call's last agent when this call, started after
        that one ended, comes from another agent; then this call is the previous one."""
        previous = self.previous
        if previous is not None:
            before, ended, x_end = previous
            after = start >= ended - TIME_PRECISION_MS
            if before != agent and after and NO_AGENT not in (before, agent):
                self.connectors.append(
                    self._connector(
                        "switch",
                        step,
                        (x_end, self.lanes[before]),
                        (_percent(start, self.span), self.lanes[agent]),
                        f"step {step}: after {self.lanes[before].name}, "
                        f"a call by {self.lanes[agent].name}",
                    )
                )
        end = start + latency
        self.previous = (agent, end, _percent(end, self.span))

    def _connector(
        self,
        kind: str,
        step: int,
        source: tuple[float, Lane],
        target: tuple[float, Lane],
        title: str,
    ) -> Connector:
        (x1, a), (x2, b) = source, target
        gap = BLOCK_PX // 2 + 1  # from the edge of one block to the edge of the other
        down = b.index > a.index
        return Connector(
            kind=kind,
            x1=x1,
            y1=a.middle + (gap if down else -gap),
            x2=x2,
            y2=b.middle - (gap + 2 if down else -(gap + 2)),
            step=step,
            source=a.name,
            target=b.name,
            title=title,
        )

    def ended_with(self, agent: str) -> None:
        """The previous call's last agent is `agent` (a call that handed over ends with its
        target)."""
        if self.previous is not None:
            self.previous = (agent, *self.previous[1:])
