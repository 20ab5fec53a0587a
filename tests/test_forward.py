"""The proxy's one pass over a call's headers (gateway/proxy/forward.py): it must give what the
separate steps it replaced gave (redaction, hop-by-hop filtering, hints, the caller's keys).
Property tests over header lists drawn from the names that matter."""

from __future__ import annotations

import asyncio

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.capture import redact
from gateway.proxy import scrub
from gateway.proxy.forward import (
    HINT_PREFIX,
    HOP_BY_HOP,
    forwarded_headers,
    header_kind,
    read_body,
    secrets_fingerprint,
)

NAMES = st.sampled_from(
    [
        "Content-Type",
        "content-length",
        "Authorization",
        "X-Api-Key",
        "Cookie",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "X-AgentOps-Run",
        "x-agentops-api-key",
        "X-Custom",
        "x-custom",
        "X-Session-Token",
        "Host",
        "TE",
    ]
)
VALUES = st.sampled_from(
    ["application/json", "Bearer sk-forward-0123456789", "x-custom, close", "keep-alive", "v1"]
)
PAIRS = st.lists(st.tuples(NAMES, VALUES), max_size=12)


def reference(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The filtering as it was written before the one pass (lower() per header)."""
    out, named = [], set()
    for name, value in pairs:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower.startswith(HINT_PREFIX):
            if lower == "connection":
                named.update(token.strip().lower() for token in value.split(","))
            continue
        out.append((name, value))
    gone = named - HOP_BY_HOP
    return [(n, v) for n, v in out if n.lower() not in gone]


@settings(max_examples=300, deadline=None)
@given(pairs=PAIRS)
def test_one_pass_forwards_and_redacts_as_the_separate_steps_did(pairs):
    redacted: list[tuple[str, str]] = []
    forwarded = forwarded_headers(iter(pairs), redacted)
    assert forwarded == reference(pairs)
    assert redacted == redact.redact_headers(pairs)


@settings(max_examples=300, deadline=None)
@given(pairs=PAIRS, query=st.sampled_from(["", "key=sk-query-0123456789", "model=m"]))
def test_keys_from_the_secret_headers_alone_are_the_calls_keys(pairs, query):
    secrets = tuple((n, v) for n, v in pairs if header_kind(n)[2])
    held = scrub.Keys(["held-key-0123456789"])
    mine = scrub.secret_keys(secrets, query, held)
    assert mine._data == scrub.keys_for(pairs, query, held)._data
    assert redact.key_of(list(secrets)) == redact.key_of(pairs)


@settings(max_examples=300, deadline=None)
@given(pairs=PAIRS)
def test_the_cached_fingerprint_is_the_fingerprint_of_the_calls_key(pairs):
    secrets = tuple((n, v) for n, v in pairs if header_kind(n)[2])
    assert secrets_fingerprint(secrets) == redact.fingerprint(redact.key_of(pairs))


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=20) | NAMES)
def test_a_header_kind_read_again_is_the_same_as_at_first(name):
    lower = name.lower()
    hint = lower.startswith(HINT_PREFIX)
    fresh = (lower, lower in HOP_BY_HOP or hint, redact.is_secret_name(name), hint)
    assert header_kind(name) == fresh
    assert header_kind(name) == fresh  # from the cache


KEYS = st.lists(st.text(alphabet="ab-", min_size=8, max_size=10), max_size=3)


@settings(max_examples=300, deadline=None)
@given(keys=KEYS, text=st.text(alphabet="ab-x", max_size=60), cut=st.integers(0, 60))
def test_the_key_searches_find_what_any_found(keys, text, cut):
    found = scrub.Keys(keys)
    data = text.encode()
    chunks = [data[:cut], data[cut:]]
    assert found.found_in_text(text) == any(form in text for form, _ in found._text)
    assert found.found_in([data]) == any(raw in data for raw, _ in found._data)
    assert found.found_in(chunks) == any(raw in data for raw, _ in found._data)


def test_a_header_kind_is_what_each_step_decides():
    assert header_kind("X-AgentOps-Api-Key") == ("x-agentops-api-key", True, True, True)
    assert header_kind("Content-Type") == ("content-type", False, False, False)
    assert header_kind("Connection") == ("connection", True, False, False)
    assert header_kind("Authorization")[2] and not header_kind("Authorization")[1]


class _Protocol:
    """What a StreamReader asks of its connection: flow control, here a no-op."""

    _reading_paused = False
    connected = True

    def pause_reading(self, *args: object, **kwargs: object) -> None: ...

    def resume_reading(self, *args: object, **kwargs: object) -> None: ...


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=6), st.booleans())
def test_read_body_keeps_every_byte_that_came_and_says_why_it_ended(
    chunks: list[bytes], broken: bool
) -> None:
    """Whole, it is what StreamReader.read() gives; cut off (the client went away), the bytes
    that came before and the error."""

    async def read() -> tuple[bytes, BaseException | None]:
        loop = asyncio.get_running_loop()
        content = aiohttp.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
        reading = asyncio.create_task(read_body(content))
        for chunk in chunks:  # each chunk arrives while the body is being read
            content.feed_data(chunk)
            for _ in range(3):
                await asyncio.sleep(0)
        if broken:
            content.set_exception(ConnectionResetError("Connection lost"))
        else:
            content.feed_eof()
        return await reading

    body, why = asyncio.run(read())
    assert body == b"".join(chunks)
    assert isinstance(why, ConnectionResetError) if broken else why is None
