"""The journal: what a SIGKILL of the gateway cannot take with it.

The proxy's process hands finished records to the writer process in frames, one per few
milliseconds, and keeps them until the writer says they are stored or spooled. If both
processes are killed, whatever was in transit is gone, and so is any sign of the calls that
were still running. So each frame is also appended, as the same bytes, to a journal file
before it is sent, and each call's start is noted:

- `records-*.bin`: the record frames, in segments; a segment is deleted once the writer has
  settled every record in it, so the journal holds about what is in transit.
- `inflight.bin`: `start` and `end` entries of calls; rewritten with only the open ones
  when it grows past 64 KiB.

Both are written once per hand-off window (`writer.FLUSH_SECONDS`), never on a call's own
path, and to the page cache only (no fsync): they survive the processes being killed, not
the machine losing power. A SIGKILL loses at most the calls that finished in the last window.

At the next start `recover()` reads what is left: the records (already stored ones are
skipped when they are written again) and the calls that started and never ended, which are
recorded as exchanges in state `interrupted`, and counted in the log, `/healthz` and
`/api/stats` as `missing_calls`. A clean stop deletes the journal.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import pickle
import struct
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.capture.exchange import INTERRUPTED, Exchange
from gateway.writer.parts import write_all

log = logging.getLogger("agentops.journal")

_HEADER = struct.Struct(">I")
SEGMENT_BYTES = 16 * 1024 * 1024
INFLIGHT_COMPACT_BYTES = 64 * 1024
RETRY_SECONDS = 30.0  # after a failed write (a full disk), journaling starts again after this
INTERRUPTED_ERROR = (
    "the gateway stopped without a clean shutdown (killed or crashed) while this call was in "
    "flight: its client saw the connection break, and nothing more of the call is known"
)
# What a start entry keeps of a call: enough to show it, find its run and count it.
START_FIELDS = (
    "id",
    "started_at",
    "method",
    "client_path",
    "path",
    "query",
    "provider",
    "key_fingerprint",
    "hints",
    "replay_of",
)
start_entry = operator.attrgetter(*START_FIELDS)  # an Exchange -> its START_FIELDS, as a tuple


def frame(*message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def read_frames(path: Path) -> Iterator[Any]:
    """The frames of a journal file; stops at a torn last one (a kill mid-write)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    at = 0
    while at + _HEADER.size <= len(data):
        (length,) = _HEADER.unpack_from(data, at)
        body = data[at + _HEADER.size : at + _HEADER.size + length]
        if len(body) < length:
            return
        at += _HEADER.size + length
        try:
            yield pickle.loads(body)
        except Exception:
            log.warning("unreadable entry in journal file %s; skipping it", path)


def _records_in(entry: Any) -> Any:
    """The packed records of a hand-off frame: a `gateway.writer.protocol.Records`, read by
    its field (the writer imports the journal, not the other way round), or the tuple
    `("records", [...])` a gateway before it wrote (a journal left by a kill, then an upgrade)."""
    if isinstance(entry, tuple):
        return entry[1] if entry[:1] == ("records",) else ()
    return getattr(entry, "records", ())


@dataclass
class Segment:
    path: Path
    fd: int
    size: int = 0
    open_records: int = 0  # written here, not yet settled


@dataclass
class Recovered:
    """What a previous process left: its records, and placeholders for its cut calls."""

    records: list[Exchange] = field(default_factory=list)
    interrupted: list[Exchange] = field(default_factory=list)


class Journal:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._segments: deque[Segment] = deque()
        self._where: dict[int, Segment] = {}  # unsettled record id -> its segment
        self._inflight: dict[int, tuple[Any, ...]] = {}  # started, not ended
        self._inflight_fd: int | None = None
        self._inflight_size = 0
        self.failed: str | None = None  # why journaling stopped (a full disk), if it did
        self._failed_at: float | None = None

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Read what a previous process left (call before `open`)."""
        found = Recovered()
        if not self.folder.exists():
            return found
        seen: set[int] = set()
        for path in sorted(self.folder.glob("records-*.bin")):
            for entry in read_frames(path):
                for values in _records_in(entry):
                    record = Exchange(*values)
                    if record.id not in seen:
                        seen.add(record.id)
                        found.records.append(record)
        started: dict[int, tuple[Any, ...]] = {}
        for kind, *rest in read_frames(self.folder / "inflight.bin"):
            if kind == "start":
                for values in rest[0]:
                    started[values[0]] = values
            elif kind == "end":
                for exchange_id in rest[0]:
                    started.pop(exchange_id, None)
        for exchange_id, values in started.items():
            if exchange_id not in seen:
                found.interrupted.append(placeholder(values))
        return found

    def discard(self) -> None:
        """Delete what `recover` read (once the caller has put it somewhere safe)."""
        if self.folder.exists():
            for path in [*self.folder.glob("*.bin"), self.folder / "inflight.tmp"]:
                path.unlink(missing_ok=True)

    # -- writing ------------------------------------------------------------------------

    def open(self) -> None:
        """Start a fresh journal. A full disk is not fatal: journaling stays off (`failed`
        says why) and is tried again later."""
        try:
            for folder in (self.folder.parent, self.folder):  # the spool's folder is 0700 too
                folder.mkdir(mode=0o700, exist_ok=True)
            self._inflight_fd = os.open(
                self.folder / "inflight.bin",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                0o600,
            )
            self._inflight_size = 0
            self.failed, self._failed_at = None, None
        except OSError as exc:
            self._fail(exc)

    def write(
        self,
        records_frame: bytes | Sequence[bytes] | None,
        ids: list[int],
        starts: list[Exchange],
        ends: list[int],
    ) -> None:
        """One hand-off window: the records' frame (the bytes sent to the writer, whole or in
        parts as `protocol.frame_parts` gives them), then the
        calls that started and ended in it. Never raises: a journal that cannot be written
        (a full disk) stops journaling and says so in `failed`."""
        if self.failed is not None:
            self.retry()
            if self.failed is not None:
                return
        if self._inflight_fd is None:
            return
        try:
            if records_frame is not None and ids:
                parts = [records_frame] if isinstance(records_frame, bytes) else records_frame
                segment = self._segment()
                write_all(segment.fd, parts)
                segment.size += sum(map(len, parts))
                segment.open_records += len(ids)
                for exchange_id in ids:
                    self._where[exchange_id] = segment
            # The window's starts and ends in one write, after its records: an end is never
            # on disk before its record (a kill between the two loses only this window's
            # starts, as a kill just before the window would).
            entries = b""
            if starts:
                started = list(map(start_entry, starts))
                inflight = self._inflight
                for entry in started:
                    inflight[entry[0]] = entry
                entries = frame("start", started)
            if ends:
                for exchange_id in ends:
                    self._inflight.pop(exchange_id, None)
                entries += frame("end", ends)
            if entries:
                self._append_inflight(entries)
        except OSError as exc:
            self._fail(exc)

    def retry(self) -> None:
        """A journal that failed starts again (the disk may have room again) once
        RETRY_SECONDS have passed: at the next hand-off, or when /healthz asks, so an idle
        gateway's health clears too."""
        if (
            self.failed is not None
            and self._failed_at is not None
            and time.monotonic() - self._failed_at >= RETRY_SECONDS
        ):
            self.open()

    def _fail(self, exc: OSError) -> None:
        """Stop journaling and give its disk space back (the spool may need it): what the
        journal held is only for a kill, and calls go on being recorded without it."""
        self.failed, self._failed_at = f"{type(exc).__name__}: {exc}", time.monotonic()
        # Ends that come while it is off are not noted: calls open now would stay "open"
        # for good, and a journal started again (compacted) would list them as interrupted
        # after a later kill though their records were stored.
        self._inflight.clear()
        log.error(
            "cannot write the journal in %s (%s): calls are still recorded, but a kill "
            "of the gateway could now lose more than its last few ms of them; trying "
            "again in %.0f s",
            self.folder,
            self.failed,
            RETRY_SECONDS,
        )
        self.close(clean=True)

    def settled(self, ids: list[int]) -> None:
        """The writer stored or spooled these: their segment may go."""
        for exchange_id in ids:
            segment = self._where.pop(exchange_id, None)
            if segment is not None:
                segment.open_records -= 1
        while len(self._segments) > 1 and self._segments[0].open_records <= 0:
            self._drop(self._segments.popleft())
        if self._segments and self._segments[0].open_records <= 0 and self._segments[0].size:
            segment = self._segments[0]  # all settled: start the file over, in place
            try:
                os.ftruncate(segment.fd, 0)
                segment.size = 0
            except OSError as exc:
                self._fail(exc)

    def close(self, clean: bool) -> None:
        """Close the files; a clean stop (everything stored or spooled) deletes them."""
        for segment in self._segments:
            os.close(segment.fd)
        self._segments.clear()
        self._where.clear()
        if self._inflight_fd is not None:
            os.close(self._inflight_fd)
            self._inflight_fd = None
        if clean:
            with contextlib.suppress(OSError):
                self.discard()

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments) + self._inflight_size

    def _segment(self) -> Segment:
        if self._segments and self._segments[-1].size < SEGMENT_BYTES:
            return self._segments[-1]
        path = self.folder / f"records-{time.time_ns():020d}-{os.getpid()}.bin"
        segment = Segment(path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        self._segments.append(segment)
        return segment

    def _drop(self, segment: Segment) -> None:
        os.close(segment.fd)
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()

    def _append_inflight(self, data: bytes) -> None:
        assert self._inflight_fd is not None
        if self._inflight_size + len(data) > INFLIGHT_COMPACT_BYTES:
            self._compact()
        write_all(self._inflight_fd, (data,))
        self._inflight_size += len(data)

    def _compact(self) -> None:
        """Rewrite inflight.bin with only the calls still open (atomically, by rename)."""
        assert self._inflight_fd is not None
        target = self.folder / "inflight.bin"
        temporary = self.folder / "inflight.tmp"
        data = frame("start", list(self._inflight.values())) if self._inflight else b""
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            write_all(fd, (data,))
        except OSError:
            os.close(fd)
            raise
        os.replace(temporary, target)
        os.close(self._inflight_fd)
        self._inflight_fd = fd
        self._inflight_size = len(data)


def placeholder(values: tuple[Any, ...]) -> Exchange:
    """The record of a call the journal saw start and never end."""
    known = dict(zip(START_FIELDS, values, strict=True))
    return Exchange(
        request_headers=[], request_body=b"", state=INTERRUPTED, error=INTERRUPTED_ERROR, **known
    )
