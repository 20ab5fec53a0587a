"""The capture record: what the proxy saw of one call, before anything is parsed.

The proxy fills an `Exchange` on the hot path with raw bytes and timings only; the writer
turns it into rows later. Secrets are already redacted here, and any key an upstream echoed is
replaced by its fingerprint (gateway/proxy/scrub.py) before a record is queued, so it can be
spooled.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# States an exchange can end in (a contract of the API).
COMPLETE = "complete"
CLIENT_DISCONNECTED = "client_disconnected"
UPSTREAM_ERROR = "upstream_error"
UPSTREAM_TIMEOUT = "upstream_timeout"
SHUTDOWN = "shutdown"
INTERRUPTED = "interrupted"  # the gateway was killed mid-call: see journal.py

MAX_ID = 2**63 - 1
_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NODES = 1024  # 10 bits
# Random until the process leases a node of its own (gateway/store/grouping.py NodeLease):
# then ids are unique across processes, forked workers and replicas of one database.
_NODE = int.from_bytes(os.urandom(2), "big") & 0x3FF
_lock = threading.Lock()
_last_ms = 0
_seq = 0


def set_node(node: int) -> None:
    """Make `node` (0..1023, leased in the database) the node bits of this process's ids.
    A forked worker must lease a node of its own (NodeLease.claim) before it makes ids."""
    global _NODE
    if not 0 <= node < NODES:
        raise ValueError(f"node {node} is not in 0..{NODES - 1}")
    with _lock:
        _NODE = node


def node() -> int:
    return _NODE


def _after_fork() -> None:
    """A forked child starts on a random node (not its parent's) until it leases one."""
    global _NODE, _lock
    _lock = threading.Lock()
    _NODE = int.from_bytes(os.urandom(2), "big") & 0x3FF


os.register_at_fork(after_in_child=_after_fork)


def first_id_at(seconds: float) -> int:
    """The smallest id `new_id` gives at a Unix time: ids below it started earlier."""
    return max(0, int(seconds * 1000) - _EPOCH_MS) << 22


def new_id() -> int:
    """A 63-bit, time-sortable id (Snowflake layout: 41 bits ms, 10 bits node, 12 bits sequence).

    Ordering by id is ordering by start time, which makes keyset pagination one index walk,
    and the integer doubles as SQLite FTS5's rowid. It is assigned at capture time so that a
    record written twice (spool replay) is recognised as the same row.
    """
    global _last_ms, _seq
    with _lock:
        now = int(time.time() * 1000) - _EPOCH_MS
        if now <= _last_ms:
            _seq = (_seq + 1) & 0xFFF
            if _seq == 0:
                _last_ms += 1  # borrow the next millisecond rather than collide
            now = _last_ms
        else:
            _seq = 0
            _last_ms = now
        return (now << 22) | (_NODE << 12) | _seq


def stable_id(started_at: float, identity: str) -> int:
    """The id of a call recorded elsewhere (a mitmproxy flow, a HAR entry): the same time bits
    as `new_id`, then 22 bits of a hash of what identifies it. Importing it again, or importing
    a flow the `mitm` command already captured live, gives the same id, so it is stored once."""
    ms = min(max(0, int(started_at * 1000) - _EPOCH_MS), MAX_ID >> 22)
    digest = hashlib.blake2b(identity.encode("utf-8", "replace"), digest_size=8).digest()
    return (ms << 22) | (int.from_bytes(digest, "big") & 0x3FFFFF)


def is_id(text: str) -> bool:
    """Whether `text` is an id as written in a URL or a body: ASCII digits, at most MAX_ID."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_ID


def id_at(unix_ms: int) -> int:
    """The smallest id that could have been issued at `unix_ms`."""
    return min(max(0, unix_ms - _EPOCH_MS) << 22, MAX_ID)


@dataclass(slots=True)
class Exchange:
    """One proxied call as captured: raw bytes, redacted headers, timings.

    `chunk_ms[i]` is when `response_chunks[i]` arrived, in ms since `started`; the writer
    uses it to find the time to first token once it has parsed the stream.
    """

    id: int
    started_at: float  # Unix time, seconds
    method: str
    client_path: str  # as received
    path: str  # as forwarded
    query: str  # redacted query string
    request_headers: list[tuple[str, str]]  # redacted
    request_body: bytes
    provider: str = "mistral"
    key_fingerprint: str | None = None
    hints: dict[str, str] = field(default_factory=dict)  # X-AgentOps-* headers and /r/<name>
    omit_bodies: bool = False
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_chunks: list[bytes] = field(default_factory=list)
    chunk_ms: list[float] = field(default_factory=list)
    response_truncated: bool = False
    request_truncated: bool = False
    ttfb_ms: float | None = None
    latency_ms: float | None = None
    state: str = COMPLETE
    error: str | None = None
    replay_of: int | None = None
    # The key scrub (gateway/proxy/scrub.py) found a key in a gzip/deflate body and stored the
    # decoded chunks, key replaced: capture must not decode them again.
    response_decoded: bool = False
    # The same for a gzip/deflate request body (last: older journals' records end before it).
    request_decoded: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for the spool (bytes stay bytes; the spool codec handles them)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exchange:
        known = set(cls.__slots__)
        return cls(**{k: v for k, v in data.items() if k in known})
