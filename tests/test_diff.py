"""The diff of two exchanges: similarity as difflib's ratio over words, ops that rebuild both
texts, tool calls compared by name and arguments (never ids), request fields, usage deltas.
"""

from __future__ import annotations

import difflib
import random

import pytest

from gateway.providers.base import Parsed
from gateway.replay import diff
from gateway.store.records import StoredExchange
from tests.rows import exchange_row

WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("", "", 1.0),
        ("same words here", "same words here", 1.0),
        ("a b c d", "a b x d", 0.75),
        ("one two", "three four", 0.0),
        ("Hello, world.", "Hello world", 2 / 3),  # punctuation runs are tokens too
        ("", "something new", 0.0),
    ],
)
def test_similarity(before: str, after: str, expected: float):
    assert diff.similarity(before, after) == pytest.approx(expected)


def test_similarity_matches_difflib_ratio_on_words():
    rng = random.Random(3)
    for _ in range(30):
        a = [rng.choice(WORDS) for _ in range(rng.randint(0, 40))]
        b = [rng.choice(WORDS) for _ in range(rng.randint(1, 40))]
        ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
        # difflib's blocks are a heuristic, LCS is exact: never fewer matches
        assert diff.similarity(" ".join(a), " ".join(b)) >= ratio - 1e-6


@pytest.mark.parametrize(
    ("before", "after", "ops"),
    [
        (
            "The quick brown fox.",
            "The quick red fox.",
            [
                ("equal", "The quick ", "The quick "),
                ("replace", "brown ", "red "),
                ("equal", "fox.", "fox."),
            ],
        ),
        (
            "keep this",
            "keep this and more",
            [("equal", "keep this", "keep this "), ("insert", "", "and more")],
        ),
        (
            "drop these words now",
            "drop now",
            [("equal", "drop ", "drop "), ("delete", "these words ", ""), ("equal", "now", "now")],
        ),
        ("", "", []),
    ],
)
def test_ops(before: str, after: str, ops: list[tuple[str, str, str]]):
    assert [(o["op"], o["before"], o["after"]) for o in diff.text_ops(before, after)] == ops


def test_ops_rebuild_both_texts(monkeypatch: pytest.MonkeyPatch):
    rng = random.Random(7)
    for forced_lines in (False, True):
        if forced_lines:  # the path huge texts take: lines first, then words per block
            monkeypatch.setattr(diff, "MAX_PAIRS", 400)
        for _ in range(20):
            lines_a = [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
                for _ in range(rng.randint(0, 12))
            ]
            lines_b = [
                line
                if rng.random() < 0.6
                else " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
                for line in lines_a
            ]
            a, b = "\n".join(lines_a), "\n".join(lines_b) + "\n  tail, end."
            ops, similar = diff.text_diff(a, b)
            if not forced_lines:
                assert similar == diff.similarity(a, b)
            assert "".join(o["before"] for o in ops) == a
            assert "".join(o["after"] for o in ops) == b
            assert all(
                o["before"] == o["after"] or o["op"] != "equal"
                for o in ops
                if o["before"].split() != o["after"].split()
            )


def test_long_outputs_are_diffed():
    rng = random.Random(1)
    words = [rng.choice(WORDS) for _ in range(17_000)]  # about 100 KB
    changed = [w if rng.random() > 0.05 else "CHANGED" for w in words]
    ops = diff.text_ops(" ".join(words), " ".join(changed))
    assert "".join(o["after"] for o in ops) == " ".join(changed)
    assert 0.9 < diff.similarity(" ".join(words), " ".join(changed)) < 1


def call(name: str, args: str, call_id: str = "x") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def test_tool_calls_compare_by_name_and_arguments_not_ids():
    before = Parsed(
        message_out={
            "role": "assistant",
            "content": "",
            "tool_calls": [
                call("weather", '{"city": "Paris"}', "a1"),
                call("weather", '{"city": "Rome"}', "a2"),
                call("time", '{"zone": "UTC"}', "a3"),
                call("search", '{"q": "x"}', "a4"),
            ],
        }
    )
    after = Parsed(
        message_out={
            "role": "assistant",
            "content": "",
            "tool_calls": [
                call("weather", '{ "city":"Rome" }', "b1"),
                call("weather", '{"city": "Oslo"}', "b2"),
                call("time", '{"zone": "UTC"}', "b3"),
                call("lookup", "not json", "b4"),
            ],
        }
    )
    compared = diff.compare_calls(diff.tool_calls(before), diff.tool_calls(after))
    assert compared["same"] == 2
    assert compared["changed"] == [
        {
            "name": "weather",
            "kind": "function",
            "before": {"city": "Paris"},
            "after": {"city": "Oslo"},
        }
    ]
    assert compared["added"] == [{"name": "lookup", "arguments": "not json", "kind": "function"}]
    assert compared["removed"] == [{"name": "search", "arguments": {"q": "x"}, "kind": "function"}]
    assert diff.differing_calls(compared) == 3


def test_conversation_calls_and_builtins():
    parsed = Parsed(
        entries_out=[
            {"type": "tool.execution", "id": "t", "name": "web_search", "arguments": '{"q": 1}'},
            {"type": "function.call", "tool_call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "message.output", "content": "done"},
        ]
    )
    calls = diff.compare_calls([], diff.tool_calls(parsed))["added"]
    assert calls == [
        {"name": "web_search", "arguments": {"q": 1}, "kind": "builtin", "server_side": True},
        {"name": "f", "arguments": {}, "kind": "function"},
    ]


def test_parameter_changes_ignore_ids_and_flatten_completion_args():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "old", "content": "42"},
    ]
    renamed = [messages[0], {**messages[1], "tool_call_id": "new"}]
    a = Parsed(
        request_json={
            "model": "a",
            "messages": messages,
            "max_tokens": 5,
            "completion_args": {"temperature": 0.1},
        }
    )
    b = Parsed(
        request_json={
            "model": "b",
            "messages": renamed,
            "stream": False,
            "completion_args": {"temperature": 0.1},
        }
    )
    assert diff.parameter_changes(a, b) == [
        {"field": "max_tokens", "before": 5, "after": None},
        {"field": "model", "before": "a", "after": "b"},
        {"field": "stream", "before": None, "after": False},
    ]
    longer = Parsed(
        request_json={"model": "a", "messages": [*messages, {"role": "user", "content": "more"}]}
    )
    assert diff.parameter_changes(
        Parsed(request_json={"model": "a", "messages": messages}), longer
    ) == [
        {
            "field": "messages",
            "before": [],
            "after": [{"role": "user", "content": "more"}],
            "from_index": 2,
        }
    ]


def test_deltas_and_identical():
    a = StoredExchange.from_row(
        exchange_row(
            id=1,
            output_text="same",
            total_tokens=10,
            prompt_tokens=4,
            completion_tokens=6,
            cost_usd=0.5,
            latency_ms=100.0,
            ttft_ms=None,
        )
    )
    b = StoredExchange.from_row(
        exchange_row(
            id=2,
            output_text="same",
            total_tokens=7,
            prompt_tokens=4,
            completion_tokens=3,
            cost_usd=0.2,
            latency_ms=80.5,
            ttft_ms=12.0,
        )
    )
    result = diff.compare(diff.Side(a, Parsed()), diff.Side(b, Parsed()))
    assert result["identical"] is True and result["similarity"] == 1.0
    assert result["deltas"] == {
        "tokens": -3,
        "prompt_tokens": 0,
        "completion_tokens": -3,
        "cost_usd": -0.3,
        "latency_ms": -19.5,
        "ttft_ms": None,
    }
    assert (result["a"], result["b"]) == ("1", "2")
