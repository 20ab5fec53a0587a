"""The grouper's thread keys are stored: whatever computes them must give the digests the
first implementation gave, bit for bit. Property tests on generated messages compare the
current `canonical`, `prefix_hashes` and the remembering `Chains` with that implementation,
kept here as it was; and the messages rows the grouper builds with `message_fields`."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.capture import storable
from gateway.runs.grouper import (
    Chains,
    _message_row,
    canonical,
    message_fields,
    prefix_hashes,
)
from gateway.store.run_refs import MESSAGE_COLUMNS

# -- the first implementation, as it was ------------------------------------------------------


def _text_before(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            c.get("text", "")
            for c in content
            if isinstance(c, dict) and isinstance(c.get("text"), str)
        )
    try:
        return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return storable.json_text(content)


def _arguments_before(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def canonical_before(message: Any) -> bytes:
    if not isinstance(message, dict):
        return orjson.dumps(["?", repr(message)])
    calls = []
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = call.get("function") or {}
            if not isinstance(function, dict):
                function = {}
            calls.append(
                [function.get("name"), _arguments_before(function.get("arguments")), call.get("id")]
            )
    key = [
        message.get("role"),
        _text_before(message.get("content")),
        calls,
        message.get("tool_call_id"),
    ]
    try:
        return orjson.dumps(key, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return storable.json_text(key).encode()


def prefix_hashes_before(messages: list[Any], after: list[str] | None = None) -> list[str]:
    digest = bytes.fromhex(after[-1]) if after else b""
    out = []
    for message in messages:
        hashed = hashlib.blake2b(digest, digest_size=16)
        hashed.update(canonical_before(message))
        digest = hashed.digest()
        out.append(digest.hex())
    return out


def outcome(function: Any, *args: Any) -> Any:
    """What a call gives, or the type of what it raises (a message whose tool_calls is not
    a list cannot be hashed, then or now)."""
    try:
        return function(*args)
    except Exception as exc:
        return type(exc)


# -- generated messages -------------------------------------------------------------------------

TEXT = st.text(max_size=40) | st.sampled_from(["", "ok", "Weather in Paris?", "x" * 300])
SCALAR = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ROLE = st.sampled_from(["user", "assistant", "tool", "system"]) | st.none() | SCALAR
PART = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}) | JSON
CONTENT = TEXT | st.none() | st.lists(PART, max_size=3) | JSON
FUNCTION = st.fixed_dictionaries(
    {},
    optional={
        "name": TEXT | SCALAR,
        "arguments": TEXT | JSON | JSON.map(lambda v: orjson.dumps(v, default=str).decode()),
    },
)
CALL = st.fixed_dictionaries({}, optional={"id": TEXT | SCALAR, "function": FUNCTION | JSON}) | JSON
MESSAGE = (
    st.fixed_dictionaries(
        {},
        optional={
            "role": ROLE,
            "content": CONTENT,
            "tool_calls": st.lists(CALL, max_size=2) | st.none() | SCALAR,
            "tool_call_id": TEXT | SCALAR,
            "name": TEXT,
        },
    )
    | SCALAR
    | st.lists(SCALAR, max_size=2)
)
HISTORY = st.lists(MESSAGE, max_size=6)


@settings(max_examples=500, deadline=None)
@given(MESSAGE)
def test_canonical_is_the_first_implementation(message: Any) -> None:
    assert outcome(canonical, message) == outcome(canonical_before, message)


@settings(max_examples=300, deadline=None)
@given(HISTORY, st.lists(st.text("0123456789abcdef", min_size=32, max_size=32), max_size=2))
def test_prefix_hashes_are_the_first_implementation(messages: list[Any], after: list[str]) -> None:
    assert outcome(prefix_hashes, messages, after or None) == outcome(
        prefix_hashes_before, messages, after or None
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(HISTORY, min_size=1, max_size=6), st.sampled_from([0, 300, 2_000, 1 << 20]))
def test_chains_give_the_digests_of_prefix_hashes(histories: list[Any], limit: int) -> None:
    """Each history, then each one grown by the next, then all again: found in memory or
    hashed, with a memory too small to keep anything or large enough to keep everything."""
    chains = Chains(limit)
    grown = [a + b for a, b in itertools.pairwise(histories)]
    for messages in [*histories, *grown, *histories]:
        expected = outcome(prefix_hashes_before, messages)
        assert outcome(chains.hashes, messages) == expected
        assert outcome(chains.hashes, messages, None, False) == expected  # not looked up
        if isinstance(expected, list) and expected:  # continuing a chain, as a reply is
            # hashed after its request
            assert outcome(chains.hashes, messages[:1], expected) == outcome(
                prefix_hashes_before, messages[:1], expected
            )


def test_messages_nested_past_orjson_limit_hash_as_before():
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    messages = [
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": deep}}]},
        {"role": "tool", "content": {"deep": deep}},
    ]
    expected = prefix_hashes_before(messages)
    chains = Chains()
    assert prefix_hashes(messages) == expected
    assert chains.hashes(messages) == expected
    assert chains.hashes(messages) == expected  # found again
    lone = [{"role": "user", "content": "\ud800 a lone surrogate"}]  # no JSON for it
    assert outcome(chains.hashes, lone) is outcome(prefix_hashes_before, lone) is TypeError


def test_texts_alike_in_length_and_head_keep_their_own_digests():
    """A plain message is found by its text's length and head, then compared whole: two
    tool results that differ only past their head (a retry, a replay) are never confused."""
    chains = Chains()
    head = [{"role": "user", "content": "Weather?"}]
    for tail in ("a", "b", "a", "c", "b"):
        messages = [*head, {"role": "tool", "tool_call_id": "c1", "content": "x" * 64 + tail}]
        assert chains.hashes(messages) == prefix_hashes_before(messages)


def test_chains_keep_about_their_limit():
    """A generation holds up to half the limit, then becomes the old one and a new one
    starts: what is remembered stays under the limit, plus one entry."""
    chains = Chains(64 * 1024)
    for n in range(2_000):
        chains.hashes([{"role": "user", "content": f"{n} " + "x" * 500}])
    held = sum(key[3] for key in (*chains.young, *chains.old))
    assert 16 * 1024 < held < 64 * 1024
    assert chains.size <= 32 * 1024


@settings(max_examples=300, deadline=None)
@given(MESSAGE, st.sampled_from(["in", "out"]))
def test_a_message_row_holds_message_fields(message: Any, direction: str) -> None:
    row = _message_row(1, 2, 3, 4, direction, message)
    assert tuple(row) == MESSAGE_COLUMNS  # the columns the writer inserts, in order
    assert {k: row[k] for k in ("role", "content", "tool_calls", "tool_call_id")} == (
        message_fields(message)
    )
    assert (row["run_id"], row["exchange_id"], row["step"], row["position"]) == (1, 2, 3, 4)
    assert row["direction"] == direction
