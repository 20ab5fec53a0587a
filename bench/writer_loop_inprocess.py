"""Writer CPU per record on growing agent loops, in-process: `Recorder._store_records` on
batches that each hold the next step of `--loops` loops (tests/clients.py `growing_loop`'s
shape: every step resends the whole history plus the last reply and a tool result of
`--tool-bytes` random base64), on a fresh SQLite or PostgreSQL database; CPU of the whole
process per record.

    python bench/writer_loop_inprocess.py [--db sqlite|postgres] [--loops 50] [--steps 30]
                                          [--tool-bytes 1700] [--writer-gc]

`--writer-gc` collects as the writer process does (gateway/writer/memory.py: `tune_gc`, a
batch's collections deferred), as bench/writer_inprocess.py's option: without it, CPython's
default gen-0 threshold collects every few hundred containers the parsed bodies make (about
20-40 of 400 us per record, measured on both databases).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import PG_BASE_DSN, create_pg_db, drop_pg_db
from writer_inprocess import new_recorder

from gateway.capture.exchange import Exchange, new_id
from gateway.store.exchanges import Store
from gateway.writer.memory import collections_deferred, tune_gc
from tests.clients import TOOLS  # the tool the loops of tests/clients.py call


def answer(message: dict[str, Any]) -> bytes:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return orjson.dumps(
        {
            "id": "cmpl",
            "object": "chat.completion",
            "model": "mistral-large-latest",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 250, "completion_tokens": 9, "total_tokens": 259},
        }
    )


class Loop:
    """One agent loop: the model asks for the tool once, then answers each result by
    quoting it (as tests/fake_mistral.py does)."""

    def __init__(self, n: int, tool_bytes: int) -> None:
        self.n, self.tool_bytes, self.rng = n, tool_bytes, random.Random(n)
        self.messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You are a field agent. Read every station."},
            {"role": "user", "content": f"Weather in Paris? ({n})"},
        ]
        self.result: str | None = None

    def reply(self) -> dict[str, Any]:
        if self.result is None:
            call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
            tool_calls = [{"id": f"call_{self.n}", "type": "function", "function": call}]
            return {"role": "assistant", "content": "", "tool_calls": tool_calls}
        return {"role": "assistant", "content": f"According to get_weather: {self.result}."}

    def record(self) -> Exchange:
        body = orjson.dumps(
            {"model": "mistral-large-latest", "messages": self.messages, "tools": TOOLS}
        )
        reply = self.reply()
        self.result = base64.b64encode(self.rng.randbytes(self.tool_bytes * 3 // 4)).decode()
        result = {"role": "tool", "tool_call_id": f"call_{self.n}", "content": self.result}
        self.messages = [*self.messages, reply, {**result, "name": "get_weather"}]
        return Exchange(
            id=new_id(),
            started_at=time.time(),
            method="POST",
            path="/v1/chat/completions",
            client_path="/v1/chat/completions",
            query="",
            request_headers=[("content-type", "application/json"), ("authorization", "Bearer x")],
            request_body=body,
            status=200,
            response_headers=[("content-type", "application/json")],
            response_chunks=[answer(reply)],
            latency_ms=5.0,
        )


async def run(
    db: str, loops: int, steps: int, tool_bytes: int, writer_gc: bool, folder: Path
) -> float:
    store = Store(db)
    await store.open()
    recorder = new_recorder(store, folder)
    if writer_gc:
        tune_gc()
    deferred = collections_deferred if writer_gc else contextlib.nullcontext
    try:
        warm = [Loop(-1 - n, tool_bytes) for n in range(loops)]
        for _ in range(3):  # warm-up
            with deferred():
                await recorder._store_records([loop.record() for loop in warm])
        timed = [Loop(n, tool_bytes) for n in range(loops)]
        spent = 0.0
        for _ in range(steps):
            records = [loop.record() for loop in timed]
            start = time.process_time()
            with deferred():
                await recorder._store_records(records)
            spent += time.process_time() - start
        return spent / (loops * steps) * 1e6
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--loops", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tool-bytes", type=int, default=1700)
    parser.add_argument("--writer-gc", action="store_true", help="the writer's gc settings")
    args = parser.parse_args()
    shape = (args.loops, args.steps, args.tool_bytes, args.writer_gc)
    with tempfile.TemporaryDirectory(prefix="agentops-writer-") as tmp:
        if args.db == "sqlite":
            per = await run(f"sqlite://{Path(tmp) / 'w.db'}", *shape, Path(tmp))
        else:
            name = f"agentops_writer_{uuid.uuid4().hex[:8]}"
            await create_pg_db(name)
            try:
                per = await run(f"{PG_BASE_DSN}/{name}", *shape, Path(tmp))
            finally:
                await drop_pg_db(name)
    print(
        f"{args.db} {args.loops} loops x {args.steps} steps, tool results of "
        f"{args.tool_bytes} B{' writer-gc' if args.writer_gc else ''}: {per:.0f} us per record"
    )


if __name__ == "__main__":
    asyncio.run(main())
