"""How bodies are stored: one zstd frame per exchange, and a step that extends its run's
previous one as a delta against it, so an agent loop that resends its whole history costs
what it adds.

The frame holds the request's headers and body, the response's, and the output text, after a
first line of their sizes. So an answer that quotes its prompt costs little, headers that
repeat the last step's cost nothing, and one frame is decompressed per exchange. A delta is a
frame compressed with an earlier exchange's payload (its three parts) as a raw-content
dictionary, a prefix the frame copies from, so it stays byte-exact; `data_base` names that
exchange. The writer remembers each run's last payload (`BodyChains`, a bounded LRU in the
writer process), so no read is needed to write a delta; a run it no longer remembers gets a
full frame. Reading decompresses a chain from its last full frame down (`Frames`), so a chain
is cut by a full frame every FULL_EVERY steps or once its payloads pass CHAIN_BYTES. Deleting a
base first re-encodes the frames that name it as full ones, in the same transaction
(`Store.delete_exchanges`), so no delete makes another body unreadable.

Rows from before this format keep their text columns (`request_headers`, `request_body`, ...,
`exchanges.output_text`) and are read as they are; a row with a frame holds "" in its headers
columns (they are not nullable) and null in the others.
"""

from __future__ import annotations

import base64
import logging
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

log = logging.getLogger("agentops.store")

# zstd level 1 for a full frame: measured on 100 KB chat bodies, 333 us a body against 467 at
# the default 3 (text-like words, the same size within 1%), and 89 against 318 us for one that
# does not compress (random hex, where level 3 works hardest for nothing); the writer's CPU per
# call limits how fast records are stored. A delta keeps level 3: level 1's smaller match
# search finds less of a 100 KB prefix (a 30-step loop stored 1.9x its new content, not 1.3x).
LEVEL = 1
DELTA_LEVEL = 3
# Reading a body decompresses its chain: at most FULL_EVERY frames and CHAIN_BYTES bytes
# (zstd decompresses several GB/s here, so any body comes back in a few ms). A loop of 30
# steps growing to 100 KB (1.5 MB in all) stays one chain: a full frame every few steps
# would store its whole history again each time.
FULL_EVERY = 64
CHAIN_BYTES = 8 * 1024 * 1024
# What the writer remembers: the last payload of the runs seen most recently. An agent's next
# step follows its last within seconds, so only runs active now matter; a run pushed out
# costs one full frame, never a wrong one.
REMEMBER_RUNS = 1000
REMEMBER_BYTES = 16 * 1024 * 1024
MIN_BASE = 64  # a shorter payload is no use as a dictionary

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[dict[str, Any]]]]

_COMPRESS = zstandard.ZstdCompressor(level=LEVEL)
_DECOMPRESS = zstandard.ZstdDecompressor()


def compress(raw: bytes, base: bytes | None = None) -> bytes:
    """A zstd frame of `raw`; with `base`, a delta that needs `base` to be read back.

    The delta references `base` as a prefix (zstd's refPrefix), not as a raw-content
    dictionary: the same frame (a raw-content dictionary is a prefix to zstd, and
    `decompress` reads it as one), but python-zstandard builds a dictionary's match tables
    apart and then copies them, where a prefix is hashed straight into the compressor's own:
    118 against 62 us for a 100 KB step of a loop (bench/writer_loop_inprocess.py's)."""
    if base is None:
        return _COMPRESS.compress(raw)
    prefix = zstd.ZstdDict(base, is_raw=True).as_prefix
    return zstd.compress(raw, level=DELTA_LEVEL, zstd_dict=prefix)


def decompress(data: bytes, base: bytes | None = None) -> bytes:
    if base is None:
        return _DECOMPRESS.decompress(data)
    prefix = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdDecompressor(dict_data=prefix).decompress(data)


def shown(raw: bytes | None, encoding: str | None) -> str | None:
    """Stored bytes as the text the API shows: base64 for a body that is not UTF-8 text."""
    if raw is None:
        return None
    if encoding == "base64":
        return base64.b64encode(raw).decode("ascii")
    return raw.decode("utf-8", "replace")  # capture kept only valid UTF-8 as text


@dataclass(frozen=True, slots=True)
class Parts:
    """What an exchange's frame holds: its headers (JSON text) and bodies (the bytes kept),
    and its output text, each None when absent."""

    request_headers: bytes | None
    request: bytes | None
    response_headers: bytes | None
    response: bytes | None
    output: bytes | None

    def payload(self) -> bytes:
        """The bytes a frame holds: a first line of sizes ("-": absent), then the parts."""
        parts = (
            self.request_headers,
            self.request,
            self.response_headers,
            self.response,
            self.output,
        )
        sizes = ",".join(["-" if p is None else str(len(p)) for p in parts])
        # one join: a 100 KB request is copied once, not twice
        return b"".join([sizes.encode(), b"\n", *[p for p in parts if p]])

    @classmethod
    def split(cls, payload: bytes) -> Parts:
        line, _, rest = payload.partition(b"\n")
        found: list[bytes | None] = []
        at = 0
        for size in line.split(b","):
            if size == b"-":
                found.append(None)
                continue
            found.append(rest[at : at + int(size)])
            at += int(size)
        return cls(*found)

    def text(self, name: str) -> str | None:
        value = getattr(self, name)
        return None if value is None else value.decode("utf-8", "surrogatepass")

    def empty(self) -> bool:
        return (
            self.request_headers is None
            and self.request is None
            and self.response_headers is None
            and self.response is None
            and self.output is None
        )


# -- writing: the writer's memory of each run's last payload ---------------------------------


@dataclass(frozen=True, slots=True)
class Tip:
    """A run's last stored payload: the base its next step is written against."""

    exchange_id: int
    payload: bytes
    depth: int  # deltas between it and its chain's full frame
    chain_bytes: int  # what reading it decompresses: its payload and its bases'


@dataclass(slots=True)
class Frame:
    """One exchange's payload as it will be stored."""

    exchange_id: int
    payload: bytes
    data: bytes | None
    base: int | None

    def full(self) -> None:
        """Store it whole after all (its base is gone)."""
        if self.base is not None:
            self.data, self.base = compress(self.payload), None


class BodyChains:
    """The last payload of recently seen runs, bounded by count and bytes. Only what a
    committed transaction stored is remembered (`commit`), so a base is always stored."""

    def __init__(self, runs: int = REMEMBER_RUNS, max_bytes: int = REMEMBER_BYTES) -> None:
        self.runs = runs
        self.max_bytes = max_bytes
        self.size = 0
        self.tips: OrderedDict[int, Tip] = OrderedDict()

    def encode(
        self,
        exchange_id: int,
        run_id: int | None,
        parts: Parts,
        extends: bool,
        pending: dict[int, Tip],
    ) -> Frame:
        """Encode an exchange's payload: a delta when it extends its run's last one and the
        chain has room, else a full frame. `pending` collects the new tips until `commit`."""
        if parts.empty():
            return Frame(exchange_id, b"", None, None)
        payload = parts.payload()
        tip = None if run_id is None else pending.get(run_id) or self.tips.get(run_id)
        if (
            extends
            and tip is not None
            and len(tip.payload) >= MIN_BASE
            and tip.depth + 1 < FULL_EVERY
            and tip.chain_bytes + len(payload) <= CHAIN_BYTES
        ):
            frame = Frame(exchange_id, payload, compress(payload, tip.payload), tip.exchange_id)
            new = Tip(exchange_id, payload, tip.depth + 1, tip.chain_bytes + len(payload))
        else:
            frame = Frame(exchange_id, payload, compress(payload), None)
            new = Tip(exchange_id, payload, 0, len(payload))
        if run_id is not None and parts.request is not None:
            pending[run_id] = new
        return frame

    def commit(self, pending: Mapping[int, Tip]) -> None:
        tips, size = self.tips, self.size
        for run_id, tip in pending.items():
            old = tips.pop(run_id, None)  # forget(run_id)
            if old is not None:
                size -= len(old.payload)
            if len(tip.payload) <= self.max_bytes:
                tips[run_id] = tip
                size += len(tip.payload)
        self.size = size
        while self.tips and (len(self.tips) > self.runs or self.size > self.max_bytes):
            _, old = self.tips.popitem(last=False)
            self.size -= len(old.payload)

    def forget(self, run_id: int) -> None:
        old = self.tips.pop(run_id, None)
        if old is not None:
            self.size -= len(old.payload)


# -- reading -------------------------------------------------------------------------------

# The columns a read selects of `exchange_bodies b` (then `read_bodies` makes the API's texts).
BODY_SELECT = (
    "b.request_headers, b.request_body, b.request_body_encoding, b.response_headers, "
    "b.response_body, b.response_body_encoding, b.data, b.data_base"
)


def chain_query(count: int) -> str:
    """The frames of `count` exchanges and of every base below them."""
    marks = ", ".join("?" * count)
    return (
        "WITH RECURSIVE chain(exchange_id, data, data_base) AS ("
        "SELECT exchange_id, data, data_base FROM exchange_bodies "
        f"WHERE exchange_id IN ({marks}) UNION "
        "SELECT b.exchange_id, b.data, b.data_base FROM exchange_bodies b "
        "JOIN chain c ON b.exchange_id = c.data_base) "
        "SELECT exchange_id, data, data_base FROM chain"
    )


class Frames:
    """Stored frames (data, base) by exchange id, decompressed on demand, each once."""

    def __init__(self) -> None:
        self.stored: dict[int, tuple[bytes, int | None]] = {}
        self.payloads: dict[int, bytes | None] = {}

    def add(self, rows: Iterable[Mapping[str, Any]], key: str = "exchange_id") -> None:
        """Rows with `data` and `data_base` (and their exchange id in `key`)."""
        for row in rows:
            if row["data"] is not None:
                self.stored[int(row[key])] = (bytes(row["data"]), row["data_base"])

    async def complete(self, fetch: Fetch) -> None:
        """Fetch the chains below what is held, in one query."""
        held = self.stored
        missing = sorted({b for _, b in held.values() if b is not None and b not in held})
        if missing:
            self.add(await fetch(chain_query(len(missing)), missing))

    def payload(self, exchange_id: int) -> bytes | None:
        """The exchange's payload (None: no frame, or its chain is broken)."""
        chain = []
        at: int | None = exchange_id
        while at is not None and at not in self.payloads:
            if at not in self.stored:
                log.error("the frame of exchange %s lacks its base %s", exchange_id, at)
                return None
            chain.append(at)
            at = self.stored[at][1]
        for eid in reversed(chain):
            data, base = self.stored[eid]
            prefix = None if base is None else self.payloads[base]
            broken = base is not None and prefix is None
            self.payloads[eid] = None if broken else decompress(data, prefix)
        return self.payloads[exchange_id]

    def parts(self, exchange_id: int) -> Parts | None:
        payload = self.payload(exchange_id)
        return None if payload is None else Parts.split(payload)


async def read_bodies(
    rows: list[dict[str, Any]], fetch: Fetch, key: str = "id"
) -> list[dict[str, Any]]:
    """Rows selected with `e.*` and BODY_SELECT (`key`: their exchange id), with headers,
    bodies (as the API's texts) and output text filled in from their frames; rows stored in
    the older form are left as they are."""
    frames = Frames()
    frames.add(rows, key)
    await frames.complete(fetch)
    out = []
    for row in rows:
        row = dict(row)
        if row["data"] is not None:
            parts = frames.parts(int(row[key])) or Parts(None, None, None, None, None)
            row["request_headers"] = parts.text("request_headers")
            row["request_body"] = shown(parts.request, row["request_body_encoding"])
            row["response_headers"] = parts.text("response_headers")
            row["response_body"] = shown(parts.response, row["response_body_encoding"])
            row["output_text"] = parts.text("output")
        row.pop("data", None)
        row.pop("data_base", None)
        out.append(row)
    return out
