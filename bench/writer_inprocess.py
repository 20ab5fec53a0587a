"""Writer CPU per record, in-process: `Recorder._store_records` on batches of bench-like 1 KB
chat records (fresh runs: single calls) on a fresh SQLite or PostgreSQL database, CPU of the
whole process (the SQLite connection's thread included) per record.

    python bench/writer_inprocess.py [--db sqlite|postgres] [--batch 100] [--batches 20]
                                     [--size 1024] [--prefill 0] [--writer-gc]
                                     [--statements] [--wal-pages]

`--size` sets the request body's bytes (e.g. 100000 for the 100 KB calls of `bench.py`).
`--prefill N` stores N records first, untimed: the writer of `cpu_per_call.py` stores into a
database that its warm-up and earlier rounds filled (measured, SQLite, batches of 100: about
150 us per record on a fresh database, 210 after 40,000 records). `--writer-gc` collects as
the writer process does (gateway/writer/memory.py: `tune_gc`, a batch's collections
deferred); without it a batch of 500 costs about half as much again per record as one of 100.

What grows with the database (SQLite): `--statements` splits the measured CPU into the event
loop's thread and the connection's, and the latter by statement (each `executemany` of the
batch's transaction, and its COMMIT, where SQLite writes the dirty pages and FTS5 flushes and
merges its segments); `--wal-pages` counts the pages each batch writes to the WAL, by table or
index (checkpoints off while measuring, so the WAL holds them all). Measured, 1 KB calls,
batches of 100, prefill 0 / 30,000 / 100,000: COMMIT 14 / 30 / 45 us per record (FTS5 merges,
about 7 -> 28 of it, and `exchanges_thread_key`, whose hashed keys land on a page each: 13 /
90 / 111 of 94 / 181 / 209 pages a batch).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers import PLACEHOLDER, chat_body
from storage import PG_BASE_DSN, create_pg_db, drop_pg_db

from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.providers import provider_named
from gateway.providers.mistral import MistralProvider
from gateway.runs.grouper import Grouper
from gateway.store import sqlite_batch
from gateway.store.exchanges import Store
from gateway.store.runs import RunStore
from gateway.writer.memory import collections_deferred, tune_gc
from gateway.writer.recorder import Recorder
from gateway.writer.spool import Spool

ANSWER = orjson.dumps(
    {
        "id": "cmpl",
        "object": "chat.completion",
        "model": "mistral-small-latest",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A short answer of one sentence."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 250, "completion_tokens": 9, "total_tokens": 259},
    }
)


def record(body: bytes, n: int) -> Exchange:
    return Exchange(
        id=new_id(),
        started_at=time.time(),
        method="POST",
        path="/v1/chat/completions",
        client_path="/v1/chat/completions",
        query="",
        request_headers=[("content-type", "application/json"), ("authorization", "Bearer x")],
        request_body=body.replace(PLACEHOLDER.encode(), b"%012d" % n),
        status=200,
        response_headers=[("content-type", "application/json")],
        response_chunks=[ANSWER],
        latency_ms=5.0,
    )


def new_recorder(store: Store, folder: Path) -> Recorder:
    """The writer's recorder on `store`, as the writer process makes it (no integrations)."""
    return Recorder(
        store,
        Spool(folder / "spool", 10_000_000),
        partial(provider_named, {"mistral": MistralProvider()}),
        PriceTable.load(None),
        max_body_bytes=1_000_000,
        queue_size=100,
        grouper=Grouper(300.0),
        run_store=RunStore(store),
    )


class Statements:
    """Thread CPU of each statement of the writer's SQLite transactions (`sqlite_batch._run`,
    replaced while counting), by statement text."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._run = sqlite_batch._run

    def __enter__(self) -> Statements:
        sqlite_batch._run = self.timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        sqlite_batch._run = self._run

    def timed(self, raw: Any, begin: bool, pending: list[Any], query: str, values: Any) -> Any:
        if begin:
            raw.execute("BEGIN")
        for text, rows in pending:
            self._time(text, raw.executemany, text, rows)
        if values is None:
            self._time(query, raw.execute, query)
            return None
        start = raw.total_changes
        found = self._time(query, lambda q, v: raw.execute(q, v).fetchall(), query, values)
        return (raw.total_changes - start) or len(found), found

    def _time(self, text: str, call: Any, *args: Any) -> Any:
        start = time.thread_time()
        try:
            return call(*args)
        finally:
            key = " ".join(text.split())
            self.spent[key] = self.spent.get(key, 0.0) + time.thread_time() - start

    def report(self, records: int) -> None:
        total = sum(self.spent.values())
        print(f"  in the connection's statements: {total / records * 1e6:.1f} us per record")
        for text, spent in sorted(self.spent.items(), key=lambda kv: -kv[1]):
            print(f"    {spent / records * 1e6:6.1f}  {text[:100]}")


async def wal_pages(store: Store, path: Path, batches: int) -> None:
    """Pages written to the WAL per batch, by table or index (dbstat), checkpoints having
    been off since the measured batches began."""

    def count(raw: sqlite3.Connection) -> list[tuple[str, int]]:
        data = (path.parent / (path.name + "-wal")).read_bytes()
        page_size = raw.execute("PRAGMA page_size").fetchone()[0]
        frame = 24 + page_size
        owner = dict(raw.execute("SELECT pageno, name FROM dbstat"))
        counts: dict[str, int] = {}
        for offset in range(32, len(data) - frame + 1, frame):
            name = owner.get(int.from_bytes(data[offset : offset + 4], "big"), "?")
            counts[name] = counts.get(name, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])

    found = await raw_call(store, count)
    print(f"  WAL pages per batch: {sum(n for _, n in found) / batches:.1f}")
    for name, n in found[:12]:
        print(f"    {n / batches:6.1f}  {name}")


async def raw_call(store: Store, call: Any) -> Any:
    """`call(sqlite3 connection)` in aiosqlite's thread."""
    connection = store.conn._connection  # type: ignore[attr-defined]
    return await connection._execute(call, connection._conn)


async def run(
    db: str,
    batch: int,
    batches: int,
    folder: Path,
    size: int,
    prefill: int,
    writer_gc: bool,
    statements: bool = False,
    wal: bool = False,
) -> float:
    store = Store(db)
    await store.open()
    recorder = new_recorder(store, folder)
    counted = Statements()
    rng = random.Random(1)
    pool = [chat_body(rng, size) for _ in range(50)]
    n = 0
    if writer_gc:
        tune_gc()
    deferred = collections_deferred if writer_gc else contextlib.nullcontext
    try:
        for _ in range(3 + -(-prefill // batch)):  # warm-up
            with deferred():
                await recorder._store_records(
                    [record(pool[(n := n + 1) % 50], n) for _ in range(batch)]
                )
        if wal:
            await raw_call(store, lambda raw: raw.execute("PRAGMA wal_autocheckpoint = 0"))
            await raw_call(store, lambda raw: raw.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        spent = main = 0.0
        with counted if statements else contextlib.nullcontext():
            for _ in range(batches):
                records = [record(pool[(n := n + 1) % 50], n) for _ in range(batch)]
                start, start_main = time.process_time(), time.thread_time()
                with deferred():
                    await recorder._store_records(records)
                spent += time.process_time() - start
                main += time.thread_time() - start_main
        if statements:
            per = 1e6 / (batch * batches)
            print(f"  event loop's thread {main * per:.0f}, others {(spent - main) * per:.0f} us")
            counted.report(batch * batches)
        if wal:
            await wal_pages(store, Path(db.removeprefix("sqlite://")), batches)
        return spent / (batch * batches) * 1e6
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024, help="request body bytes")
    parser.add_argument("--prefill", type=int, default=0, help="records stored first, untimed")
    parser.add_argument("--writer-gc", action="store_true", help="the writer's gc settings")
    parser.add_argument(
        "--statements", action="store_true", help="SQLite: CPU by thread and by statement"
    )
    parser.add_argument(
        "--wal-pages",
        action="store_true",
        help="SQLite: WAL pages by table (no checkpoints while measuring: CPU a little lower)",
    )
    args = parser.parse_args()
    extra = (args.prefill, args.writer_gc)
    if args.db == "sqlite":
        extra += (args.statements, args.wal_pages)
    with tempfile.TemporaryDirectory(prefix="agentops-writer-") as tmp:
        if args.db == "sqlite":
            db = f"sqlite://{Path(tmp) / 'w.db'}"
            per = await run(db, args.batch, args.batches, Path(tmp), args.size, *extra)
        else:
            name = f"agentops_writer_{uuid.uuid4().hex[:8]}"
            await create_pg_db(name)
            try:
                per = await run(
                    f"{PG_BASE_DSN}/{name}", args.batch, args.batches, Path(tmp), args.size, *extra
                )
            finally:
                await drop_pg_db(name)
    print(
        f"{args.db} batch {args.batch} size {args.size} prefill {args.prefill}"
        f"{' writer-gc' if args.writer_gc else ''}: {per:.0f} us per record"
    )


if __name__ == "__main__":
    asyncio.run(main())
