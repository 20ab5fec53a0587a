"""The disk spool: where capture records wait while the database is down or the queue is full.

Records are appended to files (mode 0600, in a 0700 folder) as length-prefixed pickles of
plain dicts; keys are redacted before a record exists, so nothing secret lands here. Replayed
records keep their ids, and the store skips ids it already has, so a replay never duplicates.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.exchange import Exchange

log = logging.getLogger("agentops.spool")
_HEADER = struct.Struct(">I")
_ROTATE_BYTES = 64 * 1024 * 1024


class Spool:
    def __init__(self, folder: str | os.PathLike[str], max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.spooled = 0  # records ever written here
        self._file: Path | None = None
        self._handle: int | None = None
        self._released: set[Path] = set()
        self._size = sum(p.stat().st_size for p in self._files()) if self.folder.exists() else 0

    @property
    def size(self) -> int:
        return self._size

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("spool-*.bin")) if self.folder.exists() else []

    def pending(self) -> bool:
        return self._size > 0

    def append(self, records: list[Exchange]) -> int:
        """Write records to disk; past the size limit they are dropped and counted. Returns kept."""
        kept = 0
        for record in records:
            data = pickle.dumps(record.to_dict(), protocol=pickle.HIGHEST_PROTOCOL)
            if self._size + len(data) + _HEADER.size > self.max_bytes:
                self.dropped += 1
                log.error("spool full (%d bytes): dropped record %s", self._size, record.id)
                continue
            try:
                os.write(self._open(), _HEADER.pack(len(data)) + data)
            except OSError:
                self.dropped += 1
                log.exception("cannot write to spool %s: dropped record %s", self.folder,
                              record.id)
                continue
            self._size += len(data) + _HEADER.size
            kept += 1
        self.spooled += kept
        return kept

    def _open(self) -> int:
        if self._handle is not None and self._file is not None:
            if self._file.stat().st_size < _ROTATE_BYTES:
                return self._handle
            self._close()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"spool-{time.time_ns():020d}-{os.getpid()}.bin"
        self._file = self.folder / name
        self._handle = os.open(self._file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return self._handle

    def _close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
        self._handle = None
        self._file = None

    def drain(self) -> Iterator[tuple[Path, list[Exchange]]]:
        """Yield each spool file's records, oldest first; call `done(path)` once stored."""
        self._close()  # new records go to a fresh file while old ones are replayed
        for path in self._files():
            yield path, list(read_records(path))

    def release(self, everything: bool = False) -> list[Path]:
        """Close the current file and hand this folder's files to another process to replay
        (the writer process takes what the proxy's process spooled). `everything` includes
        files released before, for a new taker after the last one died."""
        self._close()
        files = [p for p in self._files() if everything or p not in self._released]
        self._released.update(files)
        self._size = 0
        return files

    def done(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
            self._size = max(0, self._size - size)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self._close()


def read_records(path: Path) -> Iterator[Exchange]:
    with path.open("rb") as handle:
        while True:
            header = handle.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            (length,) = _HEADER.unpack(header)
            data = handle.read(length)
            if len(data) < length:
                log.warning("spool file %s ends in a partial record; ignoring it", path)
                return
            try:
                yield Exchange.from_dict(pickle.loads(data))
            except Exception:
                log.exception("unreadable record in spool file %s", path)
