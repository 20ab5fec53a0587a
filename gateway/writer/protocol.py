"""The wire between the proxy's process and its writer: length-prefixed pickled frames, one
frozen message class per kind and direction (each side dispatches with `match`), records as
bare tuples of their fields, and the timing constants both sides share."""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import pickle
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gateway.capture.exchange import Exchange
from gateway.writer.health import WriterHealth
from gateway.writer.parts import pickled

log = logging.getLogger("agentops.writer")


# Records leave the proxy's process in one frame per FLUSH_SECONDS at most: one write and one
# wake-up of the writer for many calls instead of one per call (at concurrency 1 about a sixth
# less writer CPU per record). A call or stop flushes at once.
FLUSH_SECONDS = 0.005
HEALTH_EVERY = 0.25
# Idle priority must not mean never: when a record has waited this long for the writer (the
# machine's cores are busy with other work), its group gets an ordinary share until it has
# caught up. 2 s, not 10 as before: under sustained load a writer that waits 10 s has a backlog
# it takes as long again to store (measured: 8-11 s of catch-up after a 2 s burst).
LAG_SECONDS = 2.0
LAG_CHECK_SECONDS = 0.5
START_TIMEOUT = 60.0
# /healthz says `dropped` for this long after a record was last dropped.
DROPPED_WINDOW = 300.0
RESTART_SECONDS = 0.5
_HEADER = struct.Struct(">I")
# How many bytes of frames the writer holds read but not yet handled before it stops reading
# the socket (and resumes at a quarter of it). asyncio's StreamReader (64 KiB, 128 KiB) paused
# and resumed the socket every few frames while the writer was behind: two epoll_ctl calls and
# their bookkeeping each time, about 3% of the writer's samples under load.
PAUSE_BYTES = 4 * 1024 * 1024
_FIELDS = tuple(Exchange.__slots__)


def body_bytes(exchange: Exchange) -> int:
    """What a record holds in memory, near enough: its request and response bodies."""
    return len(exchange.request_body) + sum(map(len, exchange.response_chunks))


def bounded(records: Iterable[Exchange], count: int, size: int) -> Iterator[list[Exchange]]:
    """`records` in order, in lists closed once they hold `count` records or `size` bytes of
    bodies (as the recorder's batches: gateway/writer/recorder.py)."""
    batch: list[Exchange] = []
    held = 0
    for record in records:
        batch.append(record)
        held += body_bytes(record)
        if len(batch) >= count or held >= size:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


@dataclass(frozen=True, slots=True)
class Message:
    """A frame's content. A message costs a microsecond or two more than a bare tuple: fine
    per frame, not per record (records travel as tuples in `Records`)."""

    def __reduce__(self) -> tuple[type[Message], tuple[Any, ...]]:
        # Its class and field values: dataclasses' default (__getstate__) made a 64-record
        # frame about 5 us (a tenth) slower to pickle.
        names: tuple[str, ...] = self.__match_args__  # the fields, in order
        return type(self), tuple(getattr(self, name) for name in names)


# -- proxy -> writer -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Records(Message):
    """Finished records, each `pack`ed; the journal keeps these same bytes (journal.py)."""

    records: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Overflow(Message):
    """A closed overflow spool file: replay it before any newer record."""

    path: str


@dataclass(frozen=True, slots=True)
class Call(Message):
    """Run a named child operation (Child.calls); answered by `Reply` or `CallFailed`."""

    token: int
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Stop(Message):
    """Store what is queued within `timeout` seconds (spool the rest), then say `Stopped`."""

    timeout: float


# -- writer -> proxy -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """The database is open and the grouper rebuilt: records can come."""

    health: WriterHealth


@dataclass(frozen=True, slots=True)
class Failed(Message):
    """The writer could not start; why (its database, most often)."""

    error: str


@dataclass(frozen=True, slots=True)
class Settled(Message):
    """These records are stored or spooled by the writer: the proxy may let them go."""

    ids: list[int]


@dataclass(frozen=True, slots=True)
class HealthReport(Message):
    """Sent every HEALTH_EVERY seconds."""

    health: WriterHealth


@dataclass(frozen=True, slots=True)
class Reply(Message):
    """What a `Call` returned."""

    token: int
    value: Any


@dataclass(frozen=True, slots=True)
class CallFailed(Message):
    """A `Call` raised; the exception's type and message."""

    token: int
    error: str


@dataclass(frozen=True, slots=True)
class Stopped(Message):
    """The writer's last word before it exits."""

    health: WriterHealth


ToWriter = Records | Overflow | Call | Stop
ToProxy = Ready | Failed | Settled | HealthReport | Reply | CallFailed | Stopped


def frame(message: Message) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def frame_parts(message: Message) -> list[bytes]:
    """`frame` in parts (its length, then the pickle's, see parts.py), for gathered writes:
    a frame of 100 KB bodies is never copied in this process (the proxy writes each twice,
    to the journal and to the socket)."""
    data = pickled(message)
    data.insert(0, _HEADER.pack(sum(map(len, data))))
    return data


async def read_frame(reader: asyncio.StreamReader) -> Message:
    """The next message; IncompleteReadError when the stream ends, even within a frame."""
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return loads(await reader.readexactly(length))


def loads(data: bytes) -> Message:
    """A frame's pickle (without its length) as its message."""
    message = pickle.loads(data)
    if not isinstance(message, Message):
        raise TypeError(f"not a writer message: {type(message).__name__}")
    return message


class Frames(asyncio.Protocol):
    """The reading end of a socket of frames, split as bytes arrive: `next` returns one
    message at a time in order, with no wait when frames are already here (the writer's
    loop: one await per frame instead of two `readexactly`, and no pause and resume of the
    socket every few frames). After the end of the stream `next` raises IncompleteReadError
    (also when it ends within a frame) or the error that closed the connection."""

    def __init__(self, pause_bytes: int = PAUSE_BYTES) -> None:
        self._buffer = bytearray()  # the start of a frame not yet whole
        self._frames: deque[bytes] = deque()
        self._held = 0  # bytes in _frames
        self._pause, self._resume = pause_bytes, pause_bytes // 4
        self._paused = False
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._end: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer, size = self._buffer, _HEADER.size
        if buffer:
            buffer += data
            # a frame of large bodies comes in many reads: copied out once, when it is whole
            if len(buffer) < size or len(buffer) < size + _HEADER.unpack_from(buffer)[0]:
                return
            data = bytes(buffer)
            buffer.clear()
        start, end = 0, len(data)
        frames = self._frames
        while end - start >= size:
            (length,) = _HEADER.unpack_from(data, start)
            stop = start + size + length
            if stop > end:
                break
            frames.append(data[start + size : stop])
            self._held += length
            start = stop
        if start < end:
            buffer += data[start:] if start else data
        self._wake()
        if self._held >= self._pause and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._end = exc or asyncio.IncompleteReadError(bytes(self._buffer), None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> Message:
        """The next message (see the class)."""
        while not self._frames:
            if self._end is not None:
                raise self._end
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._frames.popleft()
        self._held -= len(data)
        if self._paused and self._held <= self._resume and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return loads(data)


# A record as a bare tuple of its fields: pickles in microseconds, no field names repeated.
pack: Callable[[Exchange], tuple[Any, ...]] = operator.attrgetter(*_FIELDS)


def unpack(values: tuple[Any, ...]) -> Exchange:
    return Exchange(*values)  # the fields in declaration order, as `pack` reads them


def _socket(conn: Connection) -> socket.socket:
    """The socket under a multiprocessing Pipe end, for asyncio (the Pipe end is closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()
    return sock
