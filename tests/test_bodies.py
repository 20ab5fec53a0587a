"""How bodies are stored (gateway/store/bodies.py) and what messages and snapshots point into
(run_refs.py): frames and deltas round-trip byte for byte, chains stay bounded, a deleted base
leaves every other body readable, runs read back as if copied, and a growing agent loop costs
the database about what it adds. Real gateway, fake upstream, both databases."""

from __future__ import annotations

import base64
import os
import random
import sqlite3
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.export.exporter import exchange_record
from gateway.providers import provider_named
from gateway.providers.mistral import MistralProvider
from gateway.proxy.scrub import Keys
from gateway.runs.grouper import Grouper
from gateway.store import bodies, run_refs
from gateway.store.bodies import BodyChains, Parts, Tip, compress, decompress
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.exports import ExportReader
from gateway.store.runs import RunStore
from gateway.store.search import words
from gateway.writer.recorder import Recorder
from gateway.writer.spool import Spool
from tests.clients import AUTH, TOOLS, get, growing_loop
from tests.conftest import Upstream, make_settings, migrated_sqlite, running

# -- frames and deltas ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    base=st.binary(min_size=bodies.MIN_BASE, max_size=4096),
    cut=st.tuples(st.integers(0, 4096), st.integers(0, 4096)),
    added=st.binary(max_size=2048),
    tail=st.binary(max_size=512),
)
def test_a_delta_reads_back_byte_for_byte(
    base: bytes, cut: tuple[int, int], added: bytes, tail: bytes
) -> None:
    # what a growing request looks like: part of the base, something new, more of the base
    raw = base[: cut[0]] + added + base[cut[1] :] + tail
    assert decompress(compress(raw, base), base) == raw
    assert decompress(compress(raw)) == raw


def _dictionary_delta(raw: bytes, base: bytes) -> bytes:
    """How deltas were made before `compress` took their base as a prefix."""
    prefix = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(level=bodies.DELTA_LEVEL, dict_data=prefix).compress(raw)


@settings(max_examples=200, deadline=None)
@given(
    base=st.binary(min_size=bodies.MIN_BASE, max_size=4096),
    cut=st.tuples(st.integers(0, 4096), st.integers(0, 4096)),
    added=st.binary(max_size=2048),
)
def test_deltas_stored_before_the_prefix_still_read_back(
    base: bytes, cut: tuple[int, int], added: bytes
) -> None:
    raw = base[: cut[0]] + added + base[cut[1] :]
    old = _dictionary_delta(raw, base)
    assert decompress(old, base) == raw
    # the same kind of frame: the prefix is a raw-content dictionary to zstd
    new = zstandard.get_frame_parameters(compress(raw, base))
    was = zstandard.get_frame_parameters(old)
    assert (new.content_size, new.dict_id, new.has_checksum) == (
        was.content_size,
        was.dict_id,
        was.has_checksum,
    )


def test_a_prefix_delta_is_as_small_as_a_dictionary_one() -> None:
    rng = random.Random(7)
    messages: list[dict[str, str]] = [{"role": "user", "content": "Weather in Paris?"}]
    new = old = 0
    for _ in range(30):
        base = orjson.dumps({"model": "m", "messages": messages})
        result = base64.b64encode(rng.randbytes(1275)).decode()
        messages = [*messages, {"role": "assistant", "content": "ok"}]
        messages = [*messages, {"role": "tool", "content": result}]
        raw = orjson.dumps({"model": "m", "messages": messages})
        assert decompress(compress(raw, base), base) == raw
        new += len(compress(raw, base))
        old += len(_dictionary_delta(raw, base))
    assert new <= old * 1.02


@settings(max_examples=200, deadline=None)
@given(st.lists(st.none() | st.binary(max_size=300), min_size=5, max_size=5))
def test_parts_split_back_as_they_were(parts: list[bytes | None]) -> None:
    stored = Parts(*parts)
    assert Parts.split(stored.payload()) == stored


def test_a_delta_costs_what_it_adds() -> None:
    history = orjson.dumps({"messages": [base64.b64encode(os.urandom(30_000)).decode()]})
    longer = history[:-2] + b',"' + base64.b64encode(os.urandom(1500)) + b'"]}'
    assert len(compress(longer)) > 30_000
    assert len(compress(longer, history)) < 2_100


def _request(body: bytes) -> Parts:
    return Parts(b"[]", body, None, None, None)


def test_chains_are_bounded_and_remember_only_what_was_committed() -> None:
    chains = BodyChains(runs=2, max_bytes=10_000)
    body = b"x" * 100

    def step(eid: int, run: int = 1, extends: bool = True) -> int | None:
        pending: dict[int, Tip] = {}
        frame = chains.encode(eid, run, _request(body + b"%d" % eid), extends, pending)
        chains.commit(pending)
        return frame.base

    assert step(1) is None  # nothing to extend yet
    assert step(2) == 1
    assert step(3, extends=False) is None  # a request that repeats nothing starts a chain
    bases = [step(eid) for eid in range(4, 4 + bodies.FULL_EVERY)]
    assert bases.count(None) == 1 and bases[bodies.FULL_EVERY - 1] is None  # a full frame
    pending: dict[int, Tip] = {}
    chains.encode(500, 1, _request(body), True, pending)
    assert chains.tips[1].exchange_id != 500  # not committed: a refused batch leaves no base
    step(600, run=2), step(700, run=3)
    assert list(chains.tips) == [2, 3]  # the least recent run is forgotten
    chains.encode(800, 4, _request(b"y" * 20_000), True, pending)
    chains.commit(pending)
    assert 4 not in chains.tips and chains.size <= 10_000


# -- messages and snapshots read back as if copied (the recorder on its own, SQLite) -------------


def _answer(message: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl",
            "object": "chat.completion",
            "model": "mistral-small-latest",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    )


def _loop_records(steps: int) -> list[Exchange]:
    """A tool loop as raw records: each request resends the history (with a message with extra
    keys, a reshaped assistant reply, and from step 4 a non-message entry that shifts the
    positions of the messages after it)."""
    messages: list[Any] = [
        {"role": "system", "content": "Be brief.", "extra": {"kept": True}},
        {"role": "user", "content": [{"type": "text", "text": "Go"}]},
    ]
    out = []
    for step in range(steps):
        reply = {"role": "assistant", "content": f"step {step}", "tool_calls": None}
        if step % 2:
            call = {"id": f"c{step}", "type": "function"}
            reply["tool_calls"] = [{**call, "function": {"name": "f", "arguments": "{}"}}]
        request = {"model": "mistral-small-latest", "messages": messages, "tools": TOOLS}
        out.append(
            Exchange(
                id=new_id(),
                started_at=1.8e9 + step,
                method="POST",
                client_path="/v1/chat/completions",
                path="/v1/chat/completions",
                query="",
                request_headers=[("content-type", "application/json")],
                request_body=orjson.dumps(request),
                status=200,
                response_headers=[("content-type", "application/json")],
                response_chunks=[_answer(reply)],
                latency_ms=5.0,
            )
        )
        resent = {**reply, "prefix": False} if step == 2 else reply  # not the same: copied
        messages = [*messages, resent, {"role": "tool", "tool_call_id": "c", "content": "r"}]
        if step == 3:
            messages.append("not a message")
    return out


async def _stored_run(tmp_path: Path, name: str, records: list[Exchange]) -> dict:
    store = Store(migrated_sqlite(tmp_path / f"{name}.db"))
    await store.open(migrate_schema=False)
    try:
        recorder = Recorder(
            store,
            Spool(tmp_path / f"spool-{name}", 10_000_000),
            partial(provider_named, {"mistral": MistralProvider()}),
            PriceTable.load(None),
            max_body_bytes=1_000_000,
            queue_size=100,
            grouper=Grouper(300.0),
            run_store=RunStore(store),
        )
        for record in records:  # one batch each: deltas against committed bases
            await recorder._store_records([record])
        (row,) = await store.rows("SELECT id FROM runs")
        detail = await RunStore(store).get_run(row["id"])
        assert detail is not None
        marked = await store.rows(
            "SELECT COUNT(*) AS n FROM messages WHERE content_from IS NOT NULL"
        )
        folded = await store.rows(
            "SELECT inputs_from, COUNT(*) AS n FROM memory_snapshots GROUP BY inputs_from"
        )
        found = detail.to_json()
        found.pop("id")  # the run's own id is new in each database
        for exchange in found["exchanges"]:
            exchange.pop("run_id")
        found["marked"] = marked[0]["n"]
        found["folded"] = {row["inputs_from"]: row["n"] for row in folded}
        return found
    finally:
        await store.close()


async def test_messages_and_snapshots_read_back_as_if_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    records = _loop_records(6)
    referred = await _stored_run(tmp_path, "refs", records)
    with monkeypatch.context() as patch:  # nothing to point into: everything copied
        patch.setattr(run_refs.Sources, "of", classmethod(lambda cls, rows: cls(None, None)))
        copied = await _stored_run(tmp_path, "copies", records)
    # pointing into the exchange: markers, and steps whose message rows are derived
    assert referred.pop("marked") > 3 and copied.pop("marked") == 0
    # plain answers: no message row ("exchange"); answers asking for a tool keep their
    # output row ("request"); a reshaped reply or a non-message entry keeps them all (None)
    assert referred.pop("folded") == {"exchange": 2, "request": 2, None: 2}
    assert copied.pop("folded") == {None: 6}
    assert referred == copied
    states = [s["state"] for s in referred["memory_snapshots"]]
    assert "not a message" not in states[-1] and states[-1][0]["extra"] == {"kept": True}


# -- bodies read back as captured, on both databases ---------------------------------------------


async def _stored_body(gw: Gateway, exchange_id: int, side: str) -> bytes:
    """What the store gives back of a body (the API's text), as bytes."""
    item = await gw.store.get_exchange(exchange_id)
    assert item is not None
    text, encoding = item.body(side)  # type: ignore[arg-type]
    assert text is not None
    return base64.b64decode(text) if encoding == "base64" else text.encode()


async def _ids(gw: Gateway, **params: str) -> list[int]:
    status, page = await get(gw, "/api/exchanges", limit="200", **params)
    assert status == 200, page
    return sorted(int(item["id"]) for item in page["items"])


async def _post(http: aiohttp.ClientSession, gw: Gateway, body: bytes, **headers: str) -> bytes:
    async with http.post(
        f"{gw.proxy_url}/v1/chat/completions", data=body, headers={**AUTH, **headers}
    ) as resp:
        return await resp.read()


async def test_every_body_reads_back_as_captured(gateway: Gateway):
    loop = await growing_loop(gateway.proxy_url, steps=6, tool_bytes=600, seed=7)
    chat = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        stream = orjson.dumps({**chat, "stream": True})
        streamed = await _post(http, gateway, stream, **{"Content-Type": "application/json"})
        gzipped = await _post(http, gateway, orjson.dumps(chat), **{"x-fake-gzip": "1"})
        binary = b"\xff\xfe\x00 not text \x80"
        await _post(http, gateway, binary, **{"Content-Type": "application/octet-stream"})
        echoed = await _post(http, gateway, orjson.dumps(chat), **{"x-fake-echo": "1"})
    await gateway.recorder.drained(timeout=20)
    ids = await _ids(gateway)
    loop_ids, others = ids[:6], ids[6:]
    expected = {
        **{(i, "request"): body for i, body in zip(loop_ids, loop.requests, strict=True)},
        **{(i, "response"): body for i, body in zip(loop_ids, loop.answers, strict=True)},
        (others[0], "request"): stream,
        (others[0], "response"): streamed,
        (others[1], "response"): gzipped,  # stored decoded, as the client read it
        (others[2], "request"): binary,
        # the upstream echoed the caller's key: stored with its fingerprint instead
        (others[3], "response"): Keys([AUTH["Authorization"].split()[1]]).scrub(echoed),
    }
    assert AUTH["Authorization"].split()[1].encode() in echoed

    async def check(present: list[int]) -> None:
        for (exchange_id, side), body in expected.items():
            if exchange_id in present:
                assert await _stored_body(gateway, exchange_id, side) == body, (exchange_id, side)
        exported = {}
        async for batch in ExportReader(gateway.store).exchanges(ExchangeFilter()):
            exported |= {item.id: exchange_record(item, None) for item in batch}
        for exchange_id, body in zip(loop_ids, loop.requests, strict=True):
            if exchange_id in present:
                assert exported[exchange_id]["request_body"].encode() == body
        status, detail = await get(gateway, f"/api/exchanges/{loop_ids[-1]}")
        answer = orjson.loads(loop.answers[-1])["choices"][0]["message"]["content"]
        assert status == 200 and detail["output_text"] == answer

    await check(ids)
    # A row stored before frames (text columns) reads back the same.
    item = await gateway.store.get_exchange(others[0])
    assert item is not None
    await gateway.store.rows(
        "UPDATE exchange_bodies SET request_headers = ?, request_body = ?, "
        "response_headers = ?, response_body = ?, data = NULL WHERE exchange_id = ?",
        [
            orjson.dumps(item.request_headers).decode(),
            item.request_body,
            orjson.dumps(item.response_headers).decode(),
            item.response_body,
            others[0],
        ],
    )
    await gateway.store.rows(
        "UPDATE exchanges SET output_text = ? WHERE id = ?", [item.output_text, others[0]]
    )
    assert await gateway.store.get_exchange(others[0]) == item
    bases = await gateway.store.rows(
        "SELECT exchange_id, data_base FROM exchange_bodies WHERE data_base IS NOT NULL"
    )
    assert len(bases) == 5  # every later step is a delta against the one before
    status, detail = await get(gateway, f"/api/exchanges/{loop_ids[2]}")
    assert status == 200 and detail["request_body"] == orjson.loads(loop.requests[2])

    # Search: each step indexed what it added; an old message's word finds where it came in.
    added = orjson.loads(loop.requests[3])["messages"][-1]["content"]
    word = max(words(added), key=len)
    status, page = await get(gateway, "/api/exchanges", q=word)
    assert status == 200 and [item["id"] for item in page["items"]] == [str(loop_ids[3])]
    status, page = await get(gateway, "/api/exchanges", q="field agent station")
    assert [item["id"] for item in page["items"]] == [str(loop_ids[0])]
    assert page["items"][0]["run_id"] is not None

    # Deleting a base (and a base with its own base) leaves every other body readable.
    await gateway.store.delete_exchanges([loop_ids[1]])
    await gateway.store.delete_exchanges([loop_ids[3], loop_ids[4]])
    left = [i for i in ids if i not in (loop_ids[1], loop_ids[3], loop_ids[4])]
    await check(left)
    rebased = await gateway.store.rows(
        "SELECT exchange_id FROM exchange_bodies WHERE data_base IS NULL AND exchange_id IN (?, ?)",
        [loop_ids[2], loop_ids[5]],
    )
    assert len(rebased) == 2


# -- storage grows with new content -------------------------------------------------------------


async def _database_bytes(gw: Gateway) -> tuple[int, int]:
    """(database size as the issue measures it, the same without free pages): the SQLite
    file and its -wal after a checkpoint, or pg_total_relation_size over the tables."""
    await gw.recorder.drained(timeout=60)
    url = gw.settings.db
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0] * page
        finally:
            conn.close()
        size = sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))
        return size, size - free
    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        await conn.execute("CHECKPOINT")
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'"
        )
        return int(size), int(size)
    finally:
        await conn.close()


# The storage target is for SQLite, on the pages the data occupies: the file also holds the free
# pages FTS5 leaves each time it merges its index segments (later writes reuse them), which
# swing the file's growth by up to about 0.5x here depending on when a merge falls. PostgreSQL's
# GIN index of the incompressible tool output (about 2x its size) keeps it above the target:
# bench/storage.py reports both databases, both measures (see the README).
BOUND = {"sqlite": 1.5, "postgres": 3.0}


@pytest.fixture
async def measured(upstream: Upstream, db_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await growing_loop(gw.proxy_url, steps=4, seed=1)  # the first pages of every table
        yield gw


@pytest.mark.slow
async def test_a_growing_loop_stores_about_what_it_adds(measured: Gateway):
    before = await _database_bytes(measured)
    loops = [await growing_loop(measured.proxy_url, steps=30, seed=s) for s in (2, 3)]
    after = await _database_bytes(measured)
    unique = sum(loop.unique_bytes for loop in loops)
    grown, used = after[0] - before[0], after[1] - before[1]
    print(
        f"\n{measured.store.dialect}: grew {grown} bytes ({grown / unique:.2f}x), "
        f"{used} without free pages ({used / unique:.2f}x) for {unique} unique"
    )
    assert used / unique <= BOUND[measured.store.dialect]
    _, detail = await get(measured, "/api/exchanges", limit="1")
    last = int(detail["items"][0]["id"])
    assert await _stored_body(measured, last, "request") == loops[-1].requests[-1]
