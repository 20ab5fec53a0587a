"""The multi-agent view of a run: agents created and run through the real gateway with the
`mistralai` SDK (Conversations API handoffs, plain and streamed) or named by the
X-AgentOps-Agent header give one lane per agent and an arrow per handoff; a run with one
agent has no lanes; captured names stay text. Plus the layout as pure functions.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
from mistralai.client import Mistral

from gateway.app import Gateway
from gateway.store.agents import CallAgents, Handoff, Turn
from tests.clients import RUNS_KEY as KEY
from tests.conftest import Upstream, make_settings, running
from webui import lanes

HOSTILE_NAME = 'Researcher <img src=x onerror="alert(1)">'


def handoff_run(gw: Gateway) -> str:
    """A triage agent that may hand over to a researcher; one conversation that it hands
    over (plain), one more (streamed), all in the run `desk`. Returns the researcher's id."""
    with Mistral(api_key=KEY, server_url=gw.proxy_url) as client:
        researcher = client.beta.agents.create(
            model="mistral-small-latest", name=HOSTILE_NAME, instructions="Find facts."
        )
        triage = client.beta.agents.create(
            model="mistral-medium-latest", name="Triage", handoffs=[researcher.id]
        )
    with Mistral(api_key=KEY, server_url=f"{gw.proxy_url}/r/desk") as client:
        started = client.beta.conversations.start(
            agent_id=triage.id, inputs=f"Please ask the {HOSTILE_NAME} about rivers"
        )
        kinds = [o.type for o in started.outputs]
        assert kinds == ["agent.handoff", "message.output"], kinds
        assert started.outputs[1].agent_id == researcher.id
        events = client.beta.conversations.start_stream(
            agent_id=triage.id, inputs=f"And the {HOSTILE_NAME} about lakes"
        )
        assert "agent.handoff.done" in [e.event for e in events]
    return researcher.id


async def run_page(gw: Gateway, name: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.ui_url}/api/runs", params={"name": name}) as resp:
            (run,) = (await resp.json())["items"]
        async with http.get(f"{gw.ui_url}/runs/{run['id']}") as resp:
            assert resp.status == 200
            return await resp.text()


async def test_handoffs_draw_two_lanes_and_arrows(upstream: Upstream, db_url: str, tmp_path: Path):
    settings = make_settings(upstream.url, db_url, tmp_path)
    async with running(settings) as gw:
        researcher = await asyncio.to_thread(handoff_run, gw)
        await gw.recorder.drained(timeout=20)
        html = await run_page(gw, "desk")
    assert html.count('<li class="lane-') == 2
    assert html.count('class="lane-link handoff"') == 2  # one per handed-over conversation
    assert html.count('class="lane-block') == 4  # each call: triage's turn, then the researcher's
    assert "Triage (ag_" in html and f"({researcher})" in html
    assert "<img src=x" not in html and "Researcher &lt;img src=x onerror=" in html
    handoffs = re.search(r'<table class="compact handoffs".*?</table>', html, re.S)
    assert handoffs and handoffs[0].count("<tr>") == 3  # a header and two handoffs


async def test_agent_header_gives_lanes_and_one_agent_none(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'hdr.db'}", tmp_path)
    async with running(settings) as gw, aiohttp.ClientSession() as http:
        calls = [("crew", "planner"), ("crew", "<b>coder</b>"), ("crew", "planner")]
        calls += [("solo", "planner"), ("solo", "planner")]
        for run, agent in calls:
            async with http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                json={
                    "model": "mistral-small-latest",
                    "messages": [{"role": "user", "content": f"{agent}'s turn"}],
                },
                headers={
                    "Authorization": f"Bearer {KEY}",
                    "X-AgentOps-Run": run,
                    "X-AgentOps-Agent": agent,
                },
            ) as resp:
                assert resp.status == 200
        await gw.recorder.drained(timeout=20)
        crew, solo = await run_page(gw, "crew"), await run_page(gw, "solo")
    assert crew.count('<li class="lane-') == 2 and "&lt;b&gt;coder&lt;/b&gt;" in crew
    assert crew.count('class="lane-link switch"') == 2 and "lane-link handoff" not in crew
    assert 'class="compact handoffs"' not in crew
    assert 'id="lanes-h"' not in solo and "lane-block" not in solo


# -- the layout, without a gateway ------------------------------------------------------------


def exchange(number: int, started_ms: int, latency_ms: float, **extra: Any) -> dict[str, Any]:
    seconds, ms = divmod(started_ms, 1000)
    return {
        "id": str(number),
        "started_at": f"2026-01-01T00:00:{seconds:02d}.{ms:03d}Z",
        "latency_ms": latency_ms,
        "model": "m",
        "status": 200,
        "state": "complete",
        **extra,
    }


def test_lanes_of_a_handoff_within_one_call():
    run = {"exchanges": [exchange(1, 0, 1000), exchange(2, 2000, 1000)]}
    calls = [
        CallAgents(
            1,
            (Turn("a", 0, 0.25), Turn("b", 0.25, 1.0)),
            (Handoff(0.25, "a", "b"),),
            {"a": "Alpha", "b": "Beta"},
        ),
        CallAgents(2, (Turn("a", 0, 1.0),)),
    ]
    found = lanes.build(run, calls)
    assert found is not None
    assert [lane.label for lane in found.lanes] == ["Alpha (a)", "Beta (b)"]
    first, second, third = found.blocks
    assert (first.lane.agent, first.x, first.width) == ("a", 0, round(250 / 3000 * 100, 3))
    assert (second.lane.agent, second.x) == ("b", first.width)
    assert third.lane.agent == "a" and third.x == round(2000 / 3000 * 100, 3)
    handoff, switch = found.connectors
    assert handoff.kind == "handoff" and handoff.x1 == handoff.x2 == first.width
    assert handoff.y1 < handoff.y2  # down, from Alpha's lane to Beta's
    assert switch.kind == "switch" and switch.x1 == round(1000 / 3000 * 100, 3)
    assert switch.y1 > switch.y2  # back up to Alpha, for the next call
    assert found.handoffs == [handoff] and found.height == 2 * lanes.LANE_PX


def test_no_lanes_for_one_agent_and_a_lane_for_calls_without_one():
    run = {"exchanges": [exchange(1, 0, 10), exchange(2, 20, 10), exchange(3, 40, 10)]}
    one = [CallAgents(1, (Turn("a", 0, 1),)), CallAgents(2), CallAgents(3, (Turn("a", 0, 1),))]
    assert lanes.build(run, one) is None
    two = [*one[:2], CallAgents(3, (Turn("b", 0, 1),))]
    found = lanes.build(run, two)
    assert found is not None
    assert [lane.label for lane in found.lanes] == ["a", "no agent", "b"]
    assert found.connectors == []  # calls without an agent are not "switches"
