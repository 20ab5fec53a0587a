"""Who acted in each call of a run: the agent a call speaks for and the handoffs in its
answer, read back from what was stored (the agent id the call names or its answer carries,
Conversations API `agent.handoff` entries, else the `X-AgentOps-Agent` header). The run
page's agent lanes are drawn from it.

A call with handoffs is cut into turns, one per agent in order, placed by the order of its
answer's entries (each gets an equal share of the call: entry times come from Mistral's clock
and say nothing of how long an agent thought before its first entry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.providers import UnknownProvider
from gateway.providers.base import Parsed, Provider
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.exports import ExportReader
from gateway.store.records import StoredExchange
from gateway.store.stored import parse_stored

AGENT_HEADER = "x-agentops-agent"
# Endpoints whose bodies name agents (Mistral's conversations and agents completions); other
# calls are not parsed again: only their X-AgentOps-Agent header can name an agent.
AGENT_ENDPOINTS = frozenset({"conversations", "agents"})
MAX_CALLS = 2000  # a run longer than this is not read for its agents (one page load)
_OWNED = ("message.output", "function.call", "tool.execution")  # entries an agent wrote


@dataclass(frozen=True, slots=True)
class Turn:
    """A stretch of one call during which one agent acted, in fractions of the call."""

    agent: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Handoff:
    """An `agent.handoff` entry: at `at` (a fraction of the call) `source` handed to
    `target`."""

    at: float
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class CallAgents:
    """One call's agents: its turns (empty when no agent is known), its handoffs, and the
    agents' names where the answer gave them."""

    exchange_id: int
    turns: tuple[Turn, ...] = ()
    handoffs: tuple[Handoff, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _header(item: StoredExchange, name: str) -> str | None:
    for key, value in item.headers("request"):
        if key.lower() == name:
            return _str(value)
    return None


def _positions(entries: Sequence[dict[str, Any]]) -> list[float]:
    """Where each entry sits in the call, as a fraction: the middle of an equal share per
    entry, in order (an answer does not say how long each agent thought before its entry)."""
    count = len(entries)
    return [(index + 0.5) / count for index in range(count)]


def _names(entries: Sequence[dict[str, Any]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for entry in entries:
        for side in ("previous", "next"):
            agent, name = _str(entry.get(f"{side}_agent_id")), _str(entry.get(f"{side}_agent_name"))
            if agent and name:
                names[agent] = name
    return names


def _first_agent(item: StoredExchange, parsed: Parsed, entries: Sequence[dict]) -> str | None:
    """Who the call starts as: the agent it names, the first handoff's source or the first
    entry's author, else the X-AgentOps-Agent header, else the agent its answer names."""
    request = parsed.request_json if isinstance(parsed.request_json, dict) else {}
    found = _str(request.get("agent_id"))
    for entry in entries:
        if found:
            break
        if entry.get("type") == "agent.handoff":
            found = _str(entry.get("previous_agent_id"))
        elif entry.get("type") in _OWNED:
            found = _str(entry.get("agent_id"))
    return found or _header(item, AGENT_HEADER) or _str(parsed.agent_id)


def call_agents(item: StoredExchange, parsed: Parsed) -> CallAgents:
    """The turns and handoffs of one stored call, parsed again by its provider."""
    entries = [e for e in parsed.entries_out or () if isinstance(e, dict)]
    agent = _first_agent(item, parsed, entries)
    if agent is None:
        return CallAgents(item.id)
    turns: list[Turn] = []
    handoffs: list[Handoff] = []
    start = 0.0
    for entry, at in zip(entries, _positions(entries), strict=True):
        target = _str(entry.get("next_agent_id"))
        if entry.get("type") != "agent.handoff" or target is None:
            continue
        source = _str(entry.get("previous_agent_id")) or agent
        turns.append(Turn(source, start, at))
        handoffs.append(Handoff(at, source, target))
        agent, start = target, at
    turns.append(Turn(agent, start, 1.0))
    return CallAgents(item.id, tuple(turns), tuple(handoffs), _names(entries))


def _parsed(provider_of: Callable[[str], Provider], item: StoredExchange) -> Parsed:
    """The call parsed again when its body can name agents (else nothing: its header can)."""
    if item.endpoint not in AGENT_ENDPOINTS:
        return Parsed()
    try:
        provider = provider_of(item.provider)
    except UnknownProvider:  # written by another version: its lane comes from its header
        return Parsed()
    return parse_stored(provider, item)


async def run_agents(
    store: Store, provider_of: Callable[[str], Provider], run_id: int, limit: int = MAX_CALLS
) -> list[CallAgents] | None:
    """Each call's agents, in id order; None when the run has more than `limit` calls."""
    found: list[CallAgents] = []
    reader = ExportReader(store)
    async for batch in reader.exchanges(ExchangeFilter(run=run_id), batch_size=500):
        for item in batch:
            found.append(call_agents(item, _parsed(provider_of, item)))
        if len(found) > limit:
            return None
    return found
