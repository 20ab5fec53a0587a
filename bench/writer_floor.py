"""The writer's floor: what the C libraries alone cost per record, against the whole writer.

Issue 13 asks for a writer at 60 us per 1 KB call, and for "until stored" at 0.65x (1 KB) and
0.5x (100 KB) of a bare passthrough on one shared core, and says: where a target cannot be met
in Python, give the measured limit. This measures that limit. It runs the real writer
(`Recorder._store_records`, as bench/writer_inprocess.py does) on batches of bench-like chat
records into a fresh SQLite database, CPU of the whole process per record, and records what
the writer hands to C along the way: each SQL statement with its rows (the transaction as
`sqlite_batch._run` runs it), each payload zstd compresses, each buffer BLAKE2b hashes, each
body orjson parses. Then it does only that C work again, timed, with no Python between:

- **sqlite**: the same statements and rows, batch by batch, into a second fresh database
  (the same schema, the same earlier batches first, so its indexes are as big);
- **zstd**, **blake2b**, **orjson**: the same calls on the same bytes.

The sum is what any writer storing these rows, frames, hashes and parses would spend,
whatever language drives it; the rest is the Python that builds them.

    .venv/bin/python bench/writer_floor.py [--size 1024] [--batch 100] [--batches 20]
                                           [--prefill 0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers import chat_body
from writer_inprocess import new_recorder, record

from gateway.providers import mistral
from gateway.runs import grouper
from gateway.store import bodies, sqlite_batch
from gateway.store.exchanges import Store
from gateway.writer.memory import collections_deferred, tune_gc


@dataclass
class Seen:
    """What the writer handed to C, per batch for SQL."""

    batches: list[list[tuple[str, Any]]] = field(default_factory=list)  # (sql, rows or values)
    compressed: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    hashed: list[bytes] = field(default_factory=list)  # each blake2b's whole input
    parsed: list[bytes] = field(default_factory=list)


class _Blake2b:
    """hashlib's blake2b, keeping each hash's input (the grouper's use: a digest, then
    `update`s, then `digest`)."""

    def __init__(self, seen: Seen, data: bytes = b"", **options: Any) -> None:
        self._seen, self._data, self._options = seen, bytearray(data), options

    def update(self, data: bytes) -> None:
        self._data += data

    def digest(self) -> bytes:
        self._seen.hashed.append(bytes(self._data))
        return hashlib.blake2b(bytes(self._data), **self._options).digest()


class _Hashlib:
    def __init__(self, seen: Seen) -> None:
        self.blake2b = lambda data=b"", **options: _Blake2b(seen, data, **options)


class _Orjson:
    def __init__(self, seen: Seen) -> None:
        self._seen = seen
        self.dumps, self.JSONDecodeError = orjson.dumps, orjson.JSONDecodeError
        self.OPT_SORT_KEYS = orjson.OPT_SORT_KEYS

    def loads(self, data: Any) -> Any:
        self._seen.parsed.append(bytes(data) if not isinstance(data, str) else data.encode())
        return orjson.loads(data)


def capture(seen: Seen) -> None:
    """Point the writer's C calls through recorders (this process only)."""
    run, compress = sqlite_batch._run, bodies.compress

    def recorded_run(raw: Any, begin: bool, pending: list[Any], query: str, values: Any) -> Any:
        seen.batches[-1].extend([(text, list(rows)) for text, rows in pending])
        seen.batches[-1].append((query, None if values is None else list(values)))
        return run(raw, begin, pending, query, values)

    def recorded_compress(raw: bytes, base: bytes | None = None) -> bytes:
        seen.compressed.append((raw, base))
        return compress(raw, base)

    sqlite_batch._run = recorded_run  # type: ignore[assignment]
    bodies.compress = recorded_compress
    grouper.hashlib = _Hashlib(seen)  # type: ignore[assignment]
    mistral.orjson = _Orjson(seen)  # type: ignore[assignment]


async def writer(db: Path, tmp: Path, args: argparse.Namespace, seen: Seen) -> tuple[int, float]:
    """Run the real writer; (records measured, CPU seconds of the process for them). The
    captures of the warm-up and prefill batches are kept apart (`seen` is reset after)."""
    store = Store(f"sqlite://{db}")
    await store.open()
    recorder = new_recorder(store, tmp)
    rng = random.Random(1)
    pool = [chat_body(rng, args.size) for _ in range(50)]
    tune_gc()
    n, spent = 0, 0.0
    try:
        for index in range(args.warm + args.batches):
            records = [record(pool[(n := n + 1) % 50], n) for _ in range(args.batch)]
            seen.batches.append([])
            start = time.process_time()
            with collections_deferred():
                await recorder._store_records(records)
            if index >= args.warm:
                spent += time.process_time() - start
    finally:
        await store.close()
    return args.batch * args.batches, spent


def replay_sql(db: Path, batches: list[list[tuple[str, Any]]], warm: int) -> float:
    """The captured transactions on a fresh database of the same schema, one thread, CPU
    seconds of the measured ones (the warm-up's first, untimed, so the indexes are as big)."""
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    spent = 0.0
    for index, statements in enumerate(batches):
        start = time.thread_time()
        raw.execute("BEGIN")
        for text, rows in statements:
            if text == "COMMIT":
                raw.execute("COMMIT")
            elif rows and isinstance(rows[0], (list, tuple)):
                raw.executemany(text, rows)
            else:
                raw.execute(text, rows or []).fetchall()
        if raw.in_transaction:
            raw.execute("COMMIT")
        if index >= warm:
            spent += time.thread_time() - start
    raw.close()
    return spent


def timed(call: Any, items: list[Any]) -> float:
    start = time.thread_time()
    for item in items:
        call(item)
    return time.thread_time() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="request body bytes")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--prefill", type=int, default=0, help="records stored first, untimed")
    args = parser.parse_args()
    args.warm = 3 + -(-args.prefill // args.batch)
    seen = Seen()
    with tempfile.TemporaryDirectory(prefix="agentops-floor-") as tmp:
        folder = Path(tmp)
        schema = folder / "schema.db"
        store = Store(f"sqlite://{schema}")  # an empty database of the schema, to copy
        await store.open()
        await store.close()
        empty = schema.read_bytes()
        capture(seen)
        records, spent = await writer(folder / "writer.db", folder, args, seen)
        # only the measured batches' C calls (the hashes, frames, parses of the warm-up went
        # first: keep each list's measured share by record count)
        share = args.batches / (args.warm + args.batches)
        (folder / "floor.db").write_bytes(empty)
        sql = replay_sql(folder / "floor.db", seen.batches, args.warm)
        count = "SELECT (SELECT COUNT(*) FROM exchanges), (SELECT COUNT(*) FROM exchange_fts)"
        same = [sqlite3.connect(folder / name).execute(count).fetchone() for name in DBS]
        assert same[0] == same[1], f"the replay stored other rows: {same}"
        costs = {
            "sqlite (statements and COMMIT)": sql,
            "zstd (frames)": timed(
                lambda item: bodies.compress(*item), _tail(seen.compressed, share)
            ),
            "blake2b (prefix hashes)": timed(
                lambda data: hashlib.blake2b(data, digest_size=16).digest(),
                _tail(seen.hashed, share),
            ),
            "orjson (parsing bodies)": timed(orjson.loads, _tail(seen.parsed, share)),
        }
    per = 1e6 / records
    floor = sum(costs.values()) * per
    print(f"writer, {args.size} B calls, batches of {args.batch}, prefill {args.prefill}:")
    print(f"  whole writer (CPU of the process)   {spent * per:7.1f} us per record")
    for name, seconds in costs.items():
        print(f"  {name:36s} {seconds * per:7.1f}")
    print(f"  C floor (their sum)                  {floor:7.1f}")
    print(f"  the Python building it              {spent * per - floor:7.1f}")


DBS = ("writer.db", "floor.db")


def _tail(items: list[Any], share: float) -> list[Any]:
    return items[len(items) - round(len(items) * share) :]


if __name__ == "__main__":
    asyncio.run(main())
