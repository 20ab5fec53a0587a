"""The disk spool: where capture records wait while the database is down or the queue is full.

Records are appended to files (mode 0600, in a 0700 folder) as length-prefixed pickles of
plain dicts, small ones that arrive together as one length-prefixed zstd frame of those
entries (a block); keys are redacted before a record exists, so nothing secret lands here.
Replayed records keep their ids, and the store skips ids it already has, so a replay never
duplicates.

A record (or a block) is wholly in a file or dropped and counted, never half-written: a
short write or an error (a full disk, ENOSPC; a file size limit, EFBIG) cuts the file back to
where it began; a block that does not fit is written again record by record, keeping what
fits. A process killed in the middle of a block's write loses the block: the records of one
hand-off window, which is what the journal promises (journal.py).

So `size` is always the bytes of the files this spool holds, and a full disk is logged once
per episode, not once per record.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import pickle
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zstandard

from gateway.capture.exchange import Exchange
from gateway.writer.parts import pickled, write_all

log = logging.getLogger("agentops.spool")
_HEADER = struct.Struct(">I")
_ROTATE_BYTES = 64 * 1024 * 1024
# Records that go to the spool together (a hand-off window's, a batch) are one zstd frame
# when they are small: 1 KB chat calls spool in 300-600 bytes instead of 2,150, so the default
# bound holds three to seven times as many (minutes more of a database that cannot keep up),
# for about 3 us of CPU per record. A frame begins with zstd's magic number, a pickle with its
# PROTO opcode (0x80), so a reader tells them apart, and reads files written before.
BLOCK_RECORD_BYTES = 16 * 1024  # larger records on average: written as they are
BLOCK_LEVEL = 1
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DECOMPRESSOR = zstandard.ZstdDecompressor()
SUMMARY_SECONDS = 60.0
RELEASED_CHECK_SECONDS = 1.0


class DropLog:
    """Says that records are being dropped once per episode, not once per record: the first
    drop, then a summary at most every SUMMARY_SECONDS while drops go on, and a last one when
    the episode ends (the spool emptied or closed). A full disk cannot flood the log."""

    def __init__(self, folder: Path, every: float = SUMMARY_SECONDS) -> None:
        self.folder = folder
        self.every = every
        self.started: float | None = None  # monotonic time of the episode's first drop
        self.logged_at = 0.0
        self.unlogged = 0  # drops since the last line
        self.total = 0  # drops in this episode
        self.reason = ""

    def drop(self, reason: str) -> None:
        now = time.monotonic()
        self.total += 1
        self.reason = reason
        if self.started is None:
            self.started = self.logged_at = now
            log.error(
                "spool %s cannot take records (%s): dropping and counting them "
                "(/healthz dropped_records) until it can",
                self.folder,
                reason,
            )
            return
        self.unlogged += 1
        if now - self.logged_at >= self.every:
            self._summary(now, "still dropping")

    def end(self) -> None:
        if self.started is None:
            return
        if self.unlogged:
            self._summary(time.monotonic(), "episode over")
        self.started, self.unlogged, self.total = None, 0, 0

    def _summary(self, now: float, state: str) -> None:
        assert self.started is not None
        log.error(
            "spool %s: %s; %d records dropped in %.0f s (%d since the last report; "
            "last reason: %s)",
            self.folder,
            state,
            self.total,
            now - self.started,
            self.unlogged,
            self.reason,
        )
        self.logged_at, self.unlogged = now, 0


class Spool:
    def __init__(self, folder: str | os.PathLike[str], max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.spooled = 0  # records ever written here
        self._file: Path | None = None
        self._handle: int | None = None
        self._offset = 0  # bytes in the current file: where its next record starts
        # Its records' bytes before compression: a file is rotated at _ROTATE_BYTES of either,
        # so replaying one never holds more records than before blocks were compressed.
        self._raw = 0
        self._compressor = zstandard.ZstdCompressor(level=BLOCK_LEVEL)
        # Files handed to another process to replay: they still take disk, and count against
        # the bound and in `size` until that process removes them (checked at most once per
        # RELEASED_CHECK_SECONDS, and whenever the bound would refuse a record).
        self._released: dict[Path, int] = {}
        self._released_bytes = 0
        self._released_checked = 0.0
        self._drops = DropLog(self.folder)
        self._size = _measure(self._files())

    @property
    def size(self) -> int:
        """Bytes on disk: the files this spool holds, and those it released to another
        process that has not replayed them yet."""
        return self._size + self._released_left()

    def _released_left(self, now: bool = False) -> int:
        """Bytes of released files still on disk (forgetting those that are gone)."""
        if self._released and (
            now or time.monotonic() - self._released_checked > RELEASED_CHECK_SECONDS
        ):
            self._released_checked = time.monotonic()
            for path in [p for p in self._released if not p.exists()]:
                del self._released[path]
            self._released_bytes = sum(self._released.values())
        return self._released_bytes

    def _files(self) -> list[Path]:
        if not self.folder.exists():
            return []
        return [p for p in sorted(self.folder.glob("spool-*.bin")) if p not in self._released]

    def pending(self) -> bool:
        return self._size > 0

    def append(self, records: list[Exchange]) -> int:
        """Write records to disk; those that do not fit (the size limit, a full disk) are
        dropped and counted. Returns how many were kept."""
        entries = [_entry(record) for record in records]
        block = self._block(entries)
        if block is not None and self._write(block[0], raw=block[1]) is None:
            self.spooled += len(entries)
            return len(entries)
        if len(entries) > 1 and self._write_together(entries):
            self.spooled += len(entries)
            return len(entries)
        kept = 0
        for entry in entries:
            problem = self._write(entry)
            if problem is None:
                kept += 1
            else:
                self.dropped += 1
                self._drops.drop(problem)
        self.spooled += kept
        return kept

    def _block(self, entries: list[list[bytes]]) -> tuple[list[bytes], int] | None:
        """Small records compressed together, as one entry (and their bytes before), or None
        where that does not pay: records of large bodies (zstd takes about 3 us per KB here,
        more than the disk it saves is worth on the proxy's path: they are written as they
        are, their bodies not even copied) while the spool is under half its bound, or data
        that does not compress. Past half the bound the choice is that CPU now or records
        dropped later: large records are compressed too."""
        raw = sum(len(part) for entry in entries for part in entry)
        if raw > BLOCK_RECORD_BYTES * len(entries) and self.size < self.max_bytes // 2:
            return None
        packed = self._compressor.compress(b"".join(part for entry in entries for part in entry))
        if len(packed) > raw // 2:  # too little saved for the time it took
            return None
        return [_HEADER.pack(len(packed)), packed], raw

    def _write_together(self, entries: list[list[bytes]]) -> bool:
        """Write all the entries in one gathered write where each would have been written, one
        by one, to the same file with room under the bound: the file's bytes are the same
        (one write instead of one per record: a quarter of `append`'s time for 1 KB records).
        False, with nothing written, when they must go one by one (the bound, the file's
        rotation, an error: `_write` then keeps what fits and says why the rest is dropped)."""
        sizes = [sum(map(len, entry)) for entry in entries]
        total = sum(sizes)
        if self._size + self._released_bytes + total > self.max_bytes:
            return False
        try:
            handle = self._open()
        except OSError:
            return False
        if self._offset + total - sizes[-1] >= _ROTATE_BYTES:
            return False  # the last would begin a new file
        start = self._offset
        try:
            write_all(handle, [part for entry in entries for part in entry])
        except OSError:
            self._roll_back(handle, start)
            return False
        self._offset += total
        self._size += total
        self._raw += total
        return True

    def _write(self, entry: list[bytes], raw: int = 0) -> str | None:
        """Put one entry (a record, or a block of them holding `raw` bytes of records) at
        the end of the current file, wholly or not at all; returns why it could not be, or
        None. A short write is continued; an error cuts the file back to where the entry
        began (a reader stops at a partial entry, losing what follows)."""
        size = sum(map(len, entry))
        if self._size + self._released_bytes + size > self.max_bytes and (
            self._size + self._released_left(now=True) + size > self.max_bytes
        ):
            return f"--spool-max-bytes {self.max_bytes} reached"
        try:
            handle = self._open()
        except OSError as exc:
            return f"cannot open a spool file: {exc}"
        start = self._offset
        try:
            write_all(handle, entry)  # O_APPEND: each part goes to the end
        except OSError as exc:
            self._roll_back(handle, start)
            return str(exc)
        self._offset += size
        self._size += size
        self._raw += raw or size
        return None

    def _roll_back(self, handle: int, start: int) -> None:
        try:
            os.ftruncate(handle, start)
        except OSError as exc:
            # The part stays: count its bytes, and write on in a fresh file, since whatever
            # followed it here would be unreadable. Replay stops at the part, then removes it.
            log.error("cannot cut spool file %s back after a failed write: %s", self._file, exc)
            with contextlib.suppress(OSError):
                self._size += os.fstat(handle).st_size - start
            self._close()

    def _open(self) -> int:
        if self._handle is not None and self._offset < _ROTATE_BYTES and self._raw < _ROTATE_BYTES:
            return self._handle
        self._close()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"spool-{time.time_ns():020d}-{os.getpid()}.bin"
        path = self.folder / name
        self._handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file, self._offset = path, 0
        return self._handle

    def _close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
        self._handle = None
        self._file = None
        self._offset = 0
        self._raw = 0

    def drain(self) -> Iterator[tuple[Path, list[Exchange]]]:
        """Yield each spool file's records, oldest first; call `done(path)` once stored.

        New records go to a fresh file meanwhile. The byte count is taken again from the
        files first, so files removed by hand cannot leave `pending()` true forever. A file
        that cannot be read is logged and left for the next pass."""
        self._close()
        files = self._files()
        self._size = _measure(files)
        if self._size == 0:
            self._drops.end()
        for path in files:
            try:
                records = list(read_records(path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("cannot read spool file %s: %s", path, exc)
                continue
            yield path, records

    def release(self, everything: bool = False) -> list[Path]:
        """Close the current file and hand this folder's files to another process to replay
        (the writer process takes what the proxy's process spooled). `everything` includes
        files released before, for a new taker after the last one died."""
        self._close()
        if everything:
            self._released.clear()
        files = self._files()
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                self._released[path] = path.stat().st_size
        self._released_bytes = sum(self._released.values())
        self._size = 0
        self._drops.end()
        return files

    def done(self, path: Path) -> bool:
        """Remove a replayed file. False when it could not be: it is replayed again later
        (the store skips the ids it already has)."""
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.error("cannot remove replayed spool file %s: %s", path, exc)
            return False
        self._size = max(0, self._size - size)
        if self._size == 0:
            self._drops.end()
        return True

    def close(self) -> None:
        self._close()
        self._drops.end()


def _entry(record: Exchange) -> list[bytes]:
    """A record as the spool keeps it: its length, then the pickle of its plain dict (in
    parts: its bodies are not copied before the kernel takes them, see parts.py)."""
    data = pickled(record.to_dict())
    data.insert(0, _HEADER.pack(sum(map(len, data))))
    return data


def _measure(files: list[Path]) -> int:
    total = 0
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


_FIELDS = tuple(Exchange.__slots__)
_KNOWN = frozenset(_FIELDS)
_values = operator.itemgetter(*_FIELDS)


def _record(fields: dict[str, Any]) -> Exchange:
    """`Exchange.from_dict`, by position when the dict has every field and no other (as
    always, unless another version of the gateway wrote the file): keyword arguments whose
    names were unpickled, not interned, are matched by comparing strings, a third of reading
    a 1 KB record back (from_dict 4.8 us, this 1.0)."""
    if len(fields) == len(_FIELDS) and fields.keys() <= _KNOWN:
        return Exchange(*_values(fields))
    return Exchange.from_dict(fields)


def read_records(path: Path) -> Iterator[Exchange]:
    """The records of one spool file; a partial record at its end (a process killed in the
    middle of a write) is left out with a warning, and so is anything after it."""
    with path.open("rb") as handle:
        left = os.fstat(handle.fileno()).st_size
        while left:
            header = handle.read(_HEADER.size)
            left -= len(header)
            length = _HEADER.unpack(header)[0] if len(header) == _HEADER.size else left + 1
            if length > left:  # checked before reading: a torn header could say 4 GiB
                log.warning(
                    "spool file %s ends in a partial record; replaying what comes before it", path
                )
                return
            data = handle.read(length)
            left -= len(data)
            if data[:4] == _ZSTD_MAGIC:
                yield from _block_records(path, data)
                continue
            try:
                yield _record(pickle.loads(data))
            except Exception:
                log.exception("unreadable record in spool file %s", path)


def _block_records(path: Path, data: bytes) -> Iterator[Exchange]:
    """The records of a compressed block (see BLOCK_RECORD_BYTES): entries as a file holds
    them. A block that cannot be read is logged and skipped, as an unreadable record is."""
    try:
        raw = memoryview(_DECOMPRESSOR.decompress(data))
    except zstandard.ZstdError:
        log.exception("unreadable block of records in spool file %s", path)
        return
    at = 0
    while at < len(raw):
        (length,) = _HEADER.unpack_from(raw, at) if len(raw) - at >= _HEADER.size else (-1,)
        if length < 0 or at + _HEADER.size + length > len(raw):
            log.error("a block of records in spool file %s ends in a partial record", path)
            return
        at += _HEADER.size
        try:
            yield _record(pickle.loads(raw[at : at + length]))
        except Exception:
            log.exception("unreadable record in spool file %s", path)
        at += length
