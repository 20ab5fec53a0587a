"""The wire between the proxy's process and its writer: length-prefixed pickled frames,
records as bare tuples of their fields, and the timing constants both sides share."""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import pickle
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.capture.exchange import Exchange

log = logging.getLogger("agentops.writer")


# Records leave the proxy's process in one frame per FLUSH_SECONDS at most: one write and one
# wake-up of the writer for many calls instead of one per call (at concurrency 1 about a sixth
# less writer CPU per record). A call or stop flushes at once.
FLUSH_SECONDS = 0.005
HEALTH_EVERY = 0.25
# Idle priority must not mean never: when a record has waited this long for the writer (the
# machine's cores are busy with other work), its group gets an ordinary share until it has
# caught up.
LAG_SECONDS = 10.0
LAG_CHECK_SECONDS = 1.0
START_TIMEOUT = 60.0
# /healthz says `dropped` for this long after a record was last dropped.
DROPPED_WINDOW = 300.0
RESTART_SECONDS = 0.5
_HEADER = struct.Struct(">I")
_FIELDS = tuple(Exchange.__slots__)


def body_bytes(exchange: Exchange) -> int:
    """What a record holds in memory, near enough: its request and response bodies."""
    return len(exchange.request_body) + sum(map(len, exchange.response_chunks))


def frame(*message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    message: tuple[Any, ...] = pickle.loads(await reader.readexactly(length))
    return message


# A record as a bare tuple of its fields: pickles in microseconds, no field names repeated.
pack: Callable[[Exchange], tuple[Any, ...]] = operator.attrgetter(*_FIELDS)


def unpack(values: tuple[Any, ...]) -> Exchange:
    return Exchange(*values)  # the fields in declaration order, as `pack` reads them


def _socket(conn: Connection) -> socket.socket:
    """The socket under a multiprocessing Pipe end, for asyncio (the Pipe end is closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.close()
    return sock
