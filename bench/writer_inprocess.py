"""Writer CPU per record, in-process: `Recorder._store_records` on batches of bench-like 1 KB
chat records (fresh runs: single calls) on a fresh SQLite or PostgreSQL database, CPU of the
whole process (the SQLite connection's thread included) per record.

    python bench/writer_inprocess.py [--db sqlite|postgres] [--batch 100] [--batches 20]
                                     [--size 1024]

`--size` sets the request body's bytes (e.g. 100000 for the 100 KB calls of `bench.py`).
"""

from __future__ import annotations

import argparse
import asyncio
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


async def run(db: str, batch: int, batches: int, folder: Path, size: int) -> float:
    store = Store(db)
    await store.open()
    recorder = Recorder(
        store,
        Spool(folder / "spool", 10_000_000),
        partial(provider_named, {"mistral": MistralProvider()}),
        PriceTable.load(None),
        max_body_bytes=1_000_000,
        queue_size=100,
        grouper=Grouper(300.0),
        run_store=RunStore(store),
    )
    rng = random.Random(1)
    pool = [chat_body(rng, size) for _ in range(50)]
    n = 0
    try:
        for _ in range(3):  # warm-up
            await recorder._store_records(
                [record(pool[(n := n + 1) % 50], n) for _ in range(batch)]
            )
        spent = 0.0
        for _ in range(batches):
            records = [record(pool[(n := n + 1) % 50], n) for _ in range(batch)]
            start = time.process_time()
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentops-writer-") as tmp:
        if args.db == "sqlite":
            db = f"sqlite://{Path(tmp) / 'w.db'}"
            per = await run(db, args.batch, args.batches, Path(tmp), args.size)
        else:
            name = f"agentops_writer_{uuid.uuid4().hex[:8]}"
            await create_pg_db(name)
            try:
                per = await run(
                    f"{PG_BASE_DSN}/{name}", args.batch, args.batches, Path(tmp), args.size
                )
            finally:
                await drop_pg_db(name)
    print(f"{args.db} batch {args.batch} size {args.size}: {per:.0f} us per record")


if __name__ == "__main__":
    asyncio.run(main())
