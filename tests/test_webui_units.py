"""The UI's pure parts, table-driven: number and time formats for people, chat rendering of
message shapes, the run timeline's geometry and memory changes, safe redirects, and the list's
previews (each row by its own provider)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.api import exchanges as api
from gateway.providers import make_providers, provider_named
from gateway.settings import Settings
from gateway.store.records import ExchangeSummary
from tests.rows import exchange_row
from webui import dashboard, formats
from webui.auth import safe_next
from webui.chat import chat_items, parts, pretty_body
from webui.diff_view import shown_ops
from webui.exchange_pages import decorate
from webui.formats import DASH
from webui.timeline import build, memory_change

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, DASH),
        (0, "0"),
        (840, "840"),
        (1000, "1k"),
        (1234, "1.2k"),
        (12_345, "12k"),
        (999_999, "1000k"),
        (3_400_000, "3.4M"),
        (2_000_000_000, "2B"),
    ],
)
def test_tokens(value, text):
    assert formats.tokens(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, DASH),
        (0, "$0"),
        (0.0031, "$0.0031"),
        (0.003149, "$0.0031"),
        (0.00002355, "$0.000024"),
        (0.42, "$0.42"),
        (12.345, "$12.35"),
        (1234.5, "$1,234"),
        (-0.5, "-$0.50"),
    ],
)
def test_usd(value, text):
    assert formats.usd(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, DASH),
        (0.000013, "+$0.000013"),
        (-0.0031, "\u2212$0.0031"),
        (0.0, "$0"),
        (-0.0, "$0"),
        (1.5, "+$1.50"),
    ],
)
def test_usd_delta_is_the_cost_format_with_a_sign(value, text):
    assert formats.usd_delta(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, DASH), (-0.3, "0 ms"), (0.4, "0 ms"), (-40.2, "\u221240 ms"), (12.6, "+13 ms")],
)
def test_ms_delta_never_says_minus_zero(value, text):
    assert formats.ms_delta(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, DASH),
        (3.24, "3.2 ms"),
        (840.4, "840 ms"),
        (1300, "1.3 s"),
        (12_400, "12 s"),
        (125_000, "2 min 5 s"),
        (120_000, "2 min"),
        (3_840_000, "1 h 4 min"),
    ],
)
def test_durations(value, text):
    assert formats.duration_ms(value) == text


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=2), "just now"),
        (timedelta(seconds=42), "42 s ago"),
        (timedelta(minutes=3, seconds=20), "3 min ago"),
        (timedelta(hours=5), "5 h ago"),
        (timedelta(days=1, hours=2), "1 day ago"),
        (timedelta(days=3), "3 days ago"),
        (timedelta(days=45), "2026-01-15"),
        (timedelta(seconds=-30), "in the future"),
    ],
)
def test_ago(delta, text):
    assert formats.ago((NOW - delta).isoformat(), now=NOW) == text


def test_exact_time_percent_clip_and_price():
    assert formats.exact_time("2026-01-31T12:00:03.123Z") == "2026-01-31 12:00:03.123 UTC"
    assert formats.exact_time("not a time") == DASH
    assert (formats.percent(0.123), formats.percent(0.05), formats.percent(0)) == (
        "12%",
        "5.0%",
        "0%",
    )
    assert formats.clip("a\n  b   c", 10) == "a b c"
    assert formats.clip("x" * 20, 10) == "x" * 9 + "…"
    assert (formats.price(1.6e-05), formats.price(2.0), formats.price(0.015)) == (
        "$0.000016",
        "$2.00",
        "$0.015",
    )


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("/runs?x=1", "/runs?x=1"),
        ("//evil.example/", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_login_redirects_stay_on_this_site(value, target):
    assert safe_next(value) == target


def test_message_shapes_become_text_parts():
    assert parts("hi") == [{"kind": "text", "text": "hi"}]
    chunks = parts(
        [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
            {"type": "weird", "n": 1},
        ]
    )
    assert [c["kind"] for c in chunks] == ["text", "attachment", "thinking", "json"]
    assert "https://x/y.png" in chunks[1]["text"]
    (item,) = chat_items(
        [
            {
                "direction": "out",
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            }
        ]
    )
    assert item["output"] and item["tool_calls"][0]["name"] == "get_weather"
    assert '"city": "Oslo"' in item["tool_calls"][0]["arguments"]
    (entry,) = chat_items(
        [{"direction": "in", "role": None, "type": "function.result", "content": "42"}]
    )
    assert entry["role"] == "tool"
    assert pretty_body(None, "omitted")["note"].startswith("not recorded")
    assert pretty_body("x" * 300_000, "text", whole=True)["note"].startswith("cut at")
    preview = pretty_body("x" * 300_000, "text")  # the page shows the start, loads the rest
    assert (len(preview["text"]), preview["more"]) == (2_000, 300_000)


def test_timeline_geometry_and_memory():
    run = {
        "exchanges": [
            {
                "id": "1",
                "started_at": "2026-03-01T12:00:00.000Z",
                "latency_ms": 1000,
                "model": "m",
                "path": "/v1/chat/completions",
            },
            {
                "id": "2",
                "started_at": "2026-03-01T12:00:03.000Z",
                "latency_ms": 1000,
                "model": "m",
                "path": "/v1/chat/completions",
            },
        ],
        "messages": [
            {"exchange_id": "1", "direction": "in", "role": "user", "content": "q"},
            {"exchange_id": "2", "direction": "in", "role": "tool", "content": "r"},
        ],
        "tool_calls": [
            {
                "exchange_id": "1",
                "tool_name": "t",
                "args": {"a": 1},
                "result_exchange_id": "2",
                "latency_ms": 2000,
                "kind": "function",
            }
        ],
        "memory_snapshots": [
            {
                "exchange_id": "1",
                "carried": 0,
                "state": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            },
            {
                "exchange_id": "2",
                "carried": 1,
                "state": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
            },
        ],
    }
    line = build(run)
    assert line.span_ms == 4000 and line.tool_count == 1
    first, second = line.steps
    assert (first.bar.x, first.bar.width) == (0, 25) and (second.bar.x, second.bar.width) == (
        75,
        25,
    )
    (tool,) = first.tool_bars
    assert (tool.x, tool.width) == (25, 50)
    assert second.memory["kept"] == 1
    assert [m["role"] for m in second.memory["dropped"]] == ["assistant"]
    assert [m["role"] for m in second.memory["added"]] == ["tool"]
    assert memory_change([], {"carried": 0, "state": []})["size"] == 0
    assert build({"exchanges": []}).steps == []


def test_timeline_labels_tool_waits_and_steps_without_memory():
    """Bars are labelled by model (else path); a tool gets a bar only when its result came in
    a later call; a step without a snapshot leaves the previous state for the next one."""

    def exchange(eid: str, second: int, latency: Any, model: Any, path: str) -> dict[str, Any]:
        at = f"2026-03-01T12:00:0{second}.000Z"
        return {"id": eid, "started_at": at, "latency_ms": latency, "model": model, "path": path}

    def tool(eid: str, name: str, args: Any, result: Any, waited: Any) -> dict[str, Any]:
        return {
            "exchange_id": eid,
            "tool_name": name,
            "args": args,
            "result_exchange_id": result,
            "latency_ms": waited,
        }

    run = {
        "exchanges": [
            exchange("1", 0, 1000, None, "/v1/conversations"),
            exchange("2", 2, None, "small", "/v1/chat/completions"),
            exchange("3", 4, 1000, "large", "/v1/chat/completions"),
        ],
        "messages": [
            {"exchange_id": "1", "role": "user", "content": "q"},
            {"exchange_id": "1", "direction": "out", "role": "assistant", "content": "a"},
            {"exchange_id": "3", "direction": "in", "role": "tool", "content": "r"},
            {"exchange_id": "9", "direction": "in", "role": "user", "content": "stray"},
        ],
        "tool_calls": [
            tool("1", "slow", '{"a": 1}', "3", 3000),
            tool("1", "unanswered", None, None, None),
            tool("1", "lost", "not json", "404", None),
            tool("2", "early", {"b": 2}, "1", None),
        ],
        "memory_snapshots": [
            {"exchange_id": "1", "carried": 0, "state": [{"role": "user"}, {"role": "assistant"}]},
            {"exchange_id": "3", "carried": 1, "state": [{"role": "user"}, {"role": "tool"}]},
        ],
    }
    line = build(run)
    assert (line.span_ms, line.tool_count) == (5000, 4)
    assert line.ticks == [
        (0.0, "0.0 ms"),
        (25.0, "1.2 s"),
        (50.0, "2.5 s"),
        (75.0, "3.8 s"),
        (100.0, "5.0 s"),
    ]
    first, second, third = line.steps
    assert [s.offset_ms for s in line.steps] == [0, 2000, 4000]
    assert [(s.bar.x, s.bar.width, s.bar.label) for s in line.steps] == [
        (0, 20, "step 1: /v1/conversations at +0.0 ms, 1.0 s"),
        (40, 0.4, "step 2: small at +2.0 s, 0.0 ms"),
        (80, 20, "step 3: large at +4.0 s, 1.0 s"),
    ]
    assert [(b.x, b.width, b.label) for b in first.tool_bars] == [(20, 60, "tool slow: 3.0 s")]
    assert second.tool_bars == [] and third.tool_bars == []
    assert [(c["tool_name"], c["arguments"], c["waited_ms"]) for c in first.tool_calls] == [
        ("slow", '{\n  "a": 1\n}', 3000),
        ("unanswered", "", None),
        ("lost", "not json", None),
    ]
    assert [c["tool_name"] for c in second.tool_calls] == ["early"]
    assert [(m["role"], m["output"]) for m in first.messages] == [
        ("user", False),
        ("assistant", True),
    ]
    assert second.messages == [] and [m["role"] for m in third.messages] == ["tool"]
    assert first.memory is not None and second.memory is None and third.memory is not None
    assert (first.memory["size"], first.memory["kept"], first.memory["dropped"]) == (2, 0, [])
    assert [m["role"] for m in third.memory["dropped"]] == ["assistant"]
    assert [m["role"] for m in third.memory["added"]] == ["tool"]


class FakeBodies:
    """The two store reads the list's decoration makes."""

    def __init__(self, bodies: dict[int, tuple[str | None, str]]) -> None:
        self.bodies = bodies
        self.asked: list[int] = []

    async def request_bodies(self, ids: list[int]) -> dict[int, tuple[str | None, str]]:
        self.asked += ids
        return {i: self.bodies[i] for i in ids if i in self.bodies}

    async def names(self, run_ids) -> dict[int, dict]:
        return {}


async def test_list_previews_each_row_with_its_own_provider():
    """Rows from before the writer made previews are previewed from their request body by
    their own provider (a TTS call by the text it speaks); newer rows keep theirs."""
    chat = '{"model": "m", "messages": [{"role": "user", "content": "a chat question"}]}'
    fake = FakeBodies({1: ('{"text": "spoken words", "model_id": "m"}', "json"), 2: (chat, "json")})
    providers = make_providers(Settings())
    app = web.Application()
    app[api.STORE] = fake
    app[api.RUNS] = fake
    app[api.PROVIDERS] = lambda name: provider_named(providers, name)
    items = [
        ExchangeSummary.from_row(exchange_row(id=1, provider="elevenlabs", preview=None)),
        ExchangeSummary.from_row(exchange_row(id=2, provider="mistral", preview=None)),
        ExchangeSummary.from_row(exchange_row(id=3, preview="made by the writer")),
        ExchangeSummary.from_row(exchange_row(id=4, provider="nonesuch", preview=None)),
    ]
    rows = await decorate(make_mocked_request("GET", "/", app=app), items)
    assert [row.preview for row in rows] == [
        "spoken words",
        "a chat question",
        "made by the writer",
        None,  # a provider this gateway lacks: no preview rather than another's
    ]
    assert fake.asked == [1, 2, 4]


def test_request_view_of_hostile_bodies():
    """Parameters and tools of any JSON a client sent, however deep or odd: text, never a 500."""
    from webui.request_view import parameters, tools_offered

    deep: object = 1
    for _ in range(1_000):
        deep = [deep]
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "model": "m",
        "response_format": deep,
        "completion_args": {"top_p": 0.9, "temperature": 1.0},
        "x" * 10: "y" * 1_000,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": deep}}, "odd"],
    }
    found = dict(parameters(body))
    assert next(iter(found)) == "model" and "messages" not in found and "tools" not in found
    assert found["temperature"] == "0.2" and found["top_p"] == "0.9"  # request over args
    assert len(found["response_format"]) <= 300 and len(found["x" * 10]) <= 300
    ((tool),) = tools_offered(body)
    assert tool["name"] == "f" and tool["parameters"]
    assert parameters(["not", "a", "dict"]) == [] and tools_offered({"tools": "no"}) == []


EDGE = timedelta(hours=23, minutes=59)  # the widest UTC offset ISO-8601 allows
EDGE_ZONES = (UTC, timezone(EDGE), timezone(-EDGE))
DASHBOARD_TIMES = st.one_of(
    st.just(""),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)).map(
        lambda at: at.date().isoformat()
    ),
    st.builds(
        lambda at, zone: at.replace(tzinfo=zone).isoformat(),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        st.sampled_from(EDGE_ZONES),
    ),
    st.text(max_size=12),
)


@settings(max_examples=200, deadline=None)
@given(since=DASHBOARD_TIMES, until=DASHBOARD_TIMES)
@example(since="", until="0001-01-01T00:00:00Z")
@example(since="0001-01-01T00:00:00+23:59", until="")
@example(since="", until="9999-12-31T23:59:59-23:59")
@example(since="", until="9999-12-31")
def test_any_dashboard_range_is_a_range_or_a_message(since: str, until: str):
    """What the dashboard computes from `since`/`until` (hours, buckets, the year before
    `until`) stays inside what a datetime holds: a range, or the page's message (a 400)."""
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    _, start, end, error = dashboard.parse_range({"since": since, "until": until}, now)
    if error:
        return
    last = dashboard.hour_number(min(end, now))
    first = min(dashboard.hour_number(start) if start else last, last)
    dashboard.buckets([], first, last)
    assert (start or end - timedelta(days=365)) < end


_OPS = st.lists(
    st.one_of(
        st.text(max_size=900).map(lambda t: {"op": "equal", "before": t, "after": t}),
        st.tuples(st.text(max_size=50), st.text(max_size=50)).map(
            lambda p: {"op": "replace", "before": p[0], "after": p[1]}
        ),
        st.text(min_size=1, max_size=50).map(lambda t: {"op": "insert", "before": "", "after": t}),
        st.text(min_size=1, max_size=50).map(lambda t: {"op": "delete", "before": t, "after": ""}),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, budget=st.integers(1, 3000))
def test_shown_ops_account_for_every_character_and_keep_changes_whole(ops, budget):
    """Shown text, folds and the cut add up to each side's length; what is shown of a side
    is its text in order (folds only take from the middle of unchanged stretches); changes
    are never folded; a cut comes only past the budget."""
    shown = shown_ops(ops, context=100, budget=budget)
    for side in ("before", "after"):
        text = "".join(op[side] for op in ops)
        kept = "".join(op.get(side) or "" for op in shown if op["op"] not in ("fold", "cut"))
        folded = sum(op["chars"] for op in shown if op["op"] == "fold")
        cut = sum(op[side] for op in shown if op["op"] == "cut")
        assert len(kept) + folded + cut == len(text)
        assert text.startswith(kept) or cut or folded
    changes = [op for op in ops if op["op"] != "equal"]
    shown_changes = [op for op in shown if op["op"] not in ("equal", "fold", "cut")]
    for got, want in zip(shown_changes, changes, strict=False):  # the last one may be cut
        assert got["op"] == want["op"]
        assert want["before"].startswith(got["before"]) and want["after"].startswith(got["after"])
    cuts = [op for op in shown if op["op"] == "cut"]
    assert len(cuts) <= 1 and (not cuts or shown[-1] is cuts[0])
    if not cuts:
        assert shown_changes == changes
    for side in ("before", "after"):
        assert sum(len(op.get(side) or "") for op in shown if op["op"] in SHOWN) <= budget


def test_shown_ops_fold_a_long_unchanged_middle_to_its_edges():
    middle = "m" * 1000
    ops = [
        {"op": "insert", "before": "", "after": "x"},
        {"op": "equal", "before": middle, "after": middle},
        {"op": "delete", "before": "y", "after": ""},
    ]
    shown = shown_ops(ops, context=100)
    assert [op["op"] for op in shown] == ["insert", "equal", "fold", "equal", "delete"]
    assert shown[1]["before"] == "m" * 100 and shown[3]["after"] == "m" * 100
    assert shown[2]["chars"] == 800
    whole = [{"op": "equal", "before": middle, "after": middle}]
    assert shown_ops(whole, context=100) == [
        {"op": "equal", "before": "m" * 100, "after": "m" * 100},
        {"op": "fold", "chars": 900},
    ]


def test_shown_ops_cut_one_long_change_at_the_budget():
    ops = [{"op": "replace", "before": "b" * 5000, "after": "a" * 3000}]
    shown = shown_ops(ops, budget=1000)
    assert shown == [
        {"op": "replace", "before": "b" * 1000, "after": "a" * 1000},
        {"op": "cut", "before": 4000, "after": 2000},
    ]


SHOWN = ("equal", "replace", "insert", "delete")
