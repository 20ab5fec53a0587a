"""Writer CPU per record, in-process: `Recorder._store_records` on batches of bench-like 1 KB
chat records (fresh runs: single calls) on a fresh SQLite or PostgreSQL database, CPU of the
whole process (the SQLite connection's thread included) per record.

    python bench/writer_inprocess.py [--db sqlite|postgres] [--batch 100] [--batches 20]
                                     [--size 1024] [--prefill 0] [--writer-gc]

`--size` sets the request body's bytes (e.g. 100000 for the 100 KB calls of `bench.py`).
`--prefill N` stores N records first, untimed: the writer of `cpu_per_call.py` stores into a
database that its warm-up and earlier rounds filled (measured, SQLite, batches of 100: about
150 us per record on a fresh database, 210 after 40,000 records). `--writer-gc` collects as
the writer process does (gateway/writer/memory.py: `tune_gc`, a batch's collections
deferred); without it a batch of 500 costs about half as much again per record as one of 100.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

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


async def run(
    db: str, batch: int, batches: int, folder: Path, size: int, prefill: int, writer_gc: bool
) -> float:
    store = Store(db)
    await store.open()
    recorder = new_recorder(store, folder)
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
        spent = 0.0
        for _ in range(batches):
            records = [record(pool[(n := n + 1) % 50], n) for _ in range(batch)]
            start = time.process_time()
            with deferred():
                await recorder._store_records(records)
            spent += time.process_time() - start
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
    args = parser.parse_args()
    extra = (args.prefill, args.writer_gc)
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
