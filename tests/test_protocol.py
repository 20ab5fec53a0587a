"""The writer's wire (gateway/writer/protocol.py), without a gateway or a writer process: every
message kind through `frame`/`read_frame` (the proxy's end) and `Frames` (the writer's) over a
real socket pair, torn frames, frames cut into any reads, and records of any field values
through `pack`/`unpack`."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.capture.exchange import (
    CLIENT_DISCONNECTED,
    COMPLETE,
    INTERRUPTED,
    MAX_ID,
    SHUTDOWN,
    UPSTREAM_ERROR,
    UPSTREAM_TIMEOUT,
    Exchange,
)
from gateway.writer import protocol
from gateway.writer.health import WriterHealth
from gateway.writer.journal import Journal
from gateway.writer.journal import frame as journal_frame
from gateway.writer.protocol import (
    Call,
    CallFailed,
    Failed,
    Frames,
    HealthReport,
    Message,
    Overflow,
    Ready,
    Records,
    Reply,
    Settled,
    Stop,
    Stopped,
    ToProxy,
    ToWriter,
    frame,
    pack,
    read_frame,
    unpack,
)

HEALTH = WriterHealth(
    queue_depth=3,
    queue_size=10_000,
    spool_bytes=512,
    spooled_records=2,
    dropped_records=1,
    written_records=40,
    database="down",
    database_errors=1,
    quarantined_by_writer=0,
    last_database_error="OperationalError: disk I/O error",
    checked_at=1.8e9,
    integrations={"otel": {"queued": 0, "sent": 5, "dropped": 0, "last_error": None}},
)
RECORD = Exchange(
    id=7,
    started_at=1.8e9,
    method="POST",
    client_path="/v1/chat/completions",
    path="/v1/chat/completions",
    query="",
    request_headers=[("content-type", "application/json")],
    request_body=b'{"model":"mistral-small-latest"}',
    status=200,
    response_chunks=[b"data: {}\n\n", b"data: [DONE]\n\n"],
    chunk_ms=[1.5, 2.5],
)
MESSAGES: list[Message] = [
    Records([pack(RECORD), pack(RECORD)]),
    Overflow("/spool/proxy/spool-1.bin"),
    Call(1, "drained", ()),
    Call(2, "log_experiment", ({"id": 3, "rows": [1.5, None]},)),
    Stop(2.5),
    Ready(HEALTH),
    Failed("StoreError: cannot open database"),
    Settled([1, 2, 3]),
    HealthReport(HEALTH),
    Reply(1, HEALTH),
    Reply(3, b"# HELP agentops_calls\n"),
    CallFailed(2, "KeyError: 'nope'"),
    Stopped(HEALTH),
]


@pytest.fixture
async def wire() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Both ends of a real Unix socket pair, as the writer's channels are."""
    ours, theirs = socket.socketpair()
    reader, unused = await asyncio.open_unix_connection(sock=ours)
    _, writer = await asyncio.open_unix_connection(sock=theirs)
    yield reader, writer
    for end in (writer, unused):
        end.close()
        await end.wait_closed()


def test_every_message_kind_is_covered_and_in_one_direction():
    defined = {
        kind
        for kind in vars(protocol).values()
        if isinstance(kind, type) and issubclass(kind, Message) and kind is not Message
    }
    to_writer, to_proxy = set(ToWriter.__args__), set(ToProxy.__args__)
    assert to_writer | to_proxy == defined and not to_writer & to_proxy
    assert {type(m) for m in MESSAGES} == defined


async def test_every_message_kind_crosses_the_socket_intact(wire):
    reader, writer = wire
    for message in MESSAGES:
        writer.write(frame(message))
    await writer.drain()
    for sent in MESSAGES:
        received = await read_frame(reader)
        assert type(received) is type(sent) and received == sent


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_are_frozen_and_pickle_as_their_class_and_fields(message: Message):
    with pytest.raises(FrozenInstanceError):
        setattr(message, message.__match_args__[0], None)
    assert not hasattr(message, "__dict__")  # slots
    cls, args = message.__reduce__()
    assert cls is type(message) and cls(*args) == message


async def test_records_come_back_as_the_same_exchanges(wire):
    reader, writer = wire
    writer.write(frame(Records([pack(RECORD)])))
    await writer.drain()
    match await read_frame(reader):
        case Records([values]):
            assert unpack(values) == RECORD
        case other:
            raise AssertionError(f"unexpected {other!r}")


@pytest.mark.parametrize("cut", [0, 2, 4, 5, -1], ids=lambda n: f"cut@{n}")
async def test_a_torn_frame_is_an_incomplete_read(cut: int):
    """A writer killed mid-frame: the reader sees the end of the stream, not a message."""
    data = frame(Settled([1, 2, 3]))
    reader = asyncio.StreamReader()
    reader.feed_data(data[:cut] if cut >= 0 else data[:-1])
    reader.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader)


async def test_frames_read_one_at_a_time_and_a_torn_one_ends_the_stream():
    first, second = frame(Settled([1])), frame(Stop(1.0))
    reader = asyncio.StreamReader()
    reader.feed_data(first + second[:-3])
    reader.feed_eof()
    assert await read_frame(reader) == Settled([1])
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader)


async def test_a_frame_that_is_not_a_message_is_refused():
    data = pickle.dumps(("settled", [1]), protocol=pickle.HIGHEST_PROTOCOL)
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack(">I", len(data)) + data)
    reader.feed_eof()
    with pytest.raises(TypeError, match="not a writer message"):
        await read_frame(reader)


text = st.text(max_size=40)
floats = st.floats(allow_nan=False)
headers = st.lists(st.tuples(text, text), max_size=4)
FIELDS = {
    "id": st.integers(0, MAX_ID),
    "started_at": floats,
    "method": text,
    "client_path": text,
    "path": text,
    "query": text,
    "request_headers": headers,
    "request_body": st.binary(max_size=200),
    "provider": st.sampled_from(["mistral", "elevenlabs"]) | text,
    "key_fingerprint": st.none() | text,
    "hints": st.dictionaries(text, text, max_size=3),
    "omit_bodies": st.booleans(),
    "status": st.none() | st.integers(100, 599),
    "response_headers": headers,
    "response_chunks": st.lists(st.binary(max_size=60), max_size=5),
    "chunk_ms": st.lists(floats, max_size=5),
    "response_truncated": st.booleans(),
    "request_truncated": st.booleans(),
    "ttfb_ms": st.none() | floats,
    "latency_ms": st.none() | floats,
    "state": st.sampled_from(
        [COMPLETE, CLIENT_DISCONNECTED, UPSTREAM_ERROR, UPSTREAM_TIMEOUT, SHUTDOWN, INTERRUPTED]
    ),
    "error": st.none() | text,
    "replay_of": st.none() | st.integers(0, MAX_ID),
    "response_decoded": st.booleans(),
    "request_decoded": st.booleans(),
}


def test_the_strategy_covers_every_exchange_field():
    assert list(FIELDS) == list(Exchange.__slots__)


@settings(max_examples=100, deadline=None)
@given(st.builds(Exchange, **FIELDS))
def test_pack_and_unpack_keep_every_field(exchange: Exchange):
    values = pack(exchange)
    assert values == tuple(getattr(exchange, name) for name in Exchange.__slots__)
    assert unpack(values) == exchange
    data = frame(Records([values]))
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    message = pickle.loads(data[4:])
    assert isinstance(message, Records) and unpack(message.records[0]) == exchange


async def test_every_message_kind_reaches_the_writers_frames_intact():
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, frames = await loop.create_unix_connection(Frames, sock=ours)
    _, writer = await asyncio.open_unix_connection(sock=theirs)
    for message in MESSAGES:
        writer.write(frame(message))
    writer.close()
    for sent in MESSAGES:
        received = await frames.next()
        assert type(received) is type(sent) and received == sent
    with pytest.raises(asyncio.IncompleteReadError):  # the end of the stream
        await frames.next()
    transport.close()


class Reading(asyncio.Transport):
    """A transport that only notes when `Frames` pauses and resumes it."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        assert not self.paused
        self.paused, self.pauses = True, self.pauses + 1

    def resume_reading(self) -> None:
        assert self.paused
        self.paused = False


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(MESSAGES) - 1), max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
    torn=st.integers(0, 60),
    pause=st.integers(1, 3000),
)
def test_frames_cut_into_any_reads_come_out_whole_and_in_order(picks, cuts, torn, pause):
    """However the kernel cuts the stream, and wherever reading pauses: each message once, in
    order; a frame the stream ends within is an IncompleteReadError after them."""
    sent = [MESSAGES[i] for i in picks]
    data = b"".join(frame(m) for m in sent)
    last = frame(Settled([9, 9]))
    data += last[: min(torn, len(last) - 1)]

    async def read() -> list[Message]:
        frames, transport = Frames(pause_bytes=pause), Reading()
        frames.connection_made(transport)
        received = []
        for chunk in _chunks(data, cuts):
            frames.data_received(chunk)
            while transport.paused:  # the loop reads no more until the writer catches up
                received.append(await frames.next())
        frames.eof_received()
        frames.connection_lost(None)
        while True:
            try:
                received.append(await frames.next())
            except asyncio.IncompleteReadError:
                return received

    assert asyncio.run(read()) == sent


async def test_frames_wait_for_the_next_and_raise_what_closed_the_connection():
    frames = Frames()
    frames.connection_made(Reading())
    waiting = asyncio.create_task(frames.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    frames.data_received(frame(Settled([1])))
    assert await waiting == Settled([1])
    frames.data_received(frame(Stop(1.0)))
    frames.connection_lost(ConnectionResetError("reset"))
    assert await frames.next() == Stop(1.0)  # what came before the error first
    with pytest.raises(ConnectionResetError):
        await frames.next()


async def test_frames_pause_reading_past_their_bound_only():
    transport, frames = Reading(), Frames(pause_bytes=10_000)
    frames.connection_made(transport)
    one, held = frame(Records([pack(RECORD)] * 20)), 0
    while not transport.paused:
        frames.data_received(one)
        held += len(one) - 4
        assert transport.paused == (held >= 10_000)
    assert transport.pauses == 1
    while transport.paused:
        await frames.next()
    assert transport.pauses == 1 and not transport.paused


async def test_the_writers_frames_refuse_what_is_not_a_message():
    data = pickle.dumps(("settled", [1]), protocol=pickle.HIGHEST_PROTOCOL)
    frames = Frames()
    frames.connection_made(Reading())
    frames.data_received(struct.pack(">I", len(data)) + data)
    with pytest.raises(TypeError, match="not a writer message"):
        await frames.next()


def test_the_journal_recovers_records_frames_and_older_tuple_frames(tmp_path):
    """The journal keeps the very bytes of each Records frame (gateway/writer/journal.py); one left
    by a gateway from before the message classes holds ("records", [...]) tuples."""
    newer, older = RECORD, Exchange(*(8, *pack(RECORD)[1:]))
    journal = Journal(tmp_path / "journal")
    journal.open()
    journal.write(frame(Records([pack(newer)])), [newer.id], [], [])
    journal.write(journal_frame("records", [pack(older)]), [older.id], [], [])
    journal.close(clean=False)
    assert Journal(tmp_path / "journal").recover().records == [newer, older]


def test_the_journal_takes_a_frame_in_parts(tmp_path):
    """The proxy hands the journal `frame_parts` (length, pickle), never joined: the same
    bytes as `frame`, recovered the same way."""
    journal = Journal(tmp_path / "journal")
    journal.open()
    parts = protocol.frame_parts(Records([pack(RECORD)]))
    assert b"".join(parts) == frame(Records([pack(RECORD)]))
    journal.write(parts, [RECORD.id], [RECORD], [])
    journal.close(clean=False)
    found = Journal(tmp_path / "journal").recover()
    assert found.records == [RECORD] and found.interrupted == []
