"""A fast fake Mistral upstream for the benchmark, run in its own process.

Why: the benchmark measures the gateway's overhead, so the upstream must cost as little and vary
as little as possible. It never parses JSON: a request is a stream when its body contains
`"stream": true` (or `"stream":true`), and the answer is canned bytes built once at start.

Per-request knobs travel in headers (a transparent proxy forwards them unchanged):

- `x-bench-chunk-delay-ms`: pause between SSE events (default `--chunk-delay-ms`, 0).
- `x-bench-chunks`: number of content chunks before the usage chunk (default `--chunks`, 20).
- `x-bench-hold: 1`: send one chunk, then a chunk every delay (default 1 s) until the bench
  calls `GET /bench/release`; used to hold many streams open for the memory measurement.

Bench-only endpoints (called directly, never through a proxy): `GET /bench/held` returns how
many hold-streams are open, `GET /bench/release` lets them finish, `GET /bench/count` how many
calls have arrived (the bench's count of calls a proxy forwarded), `GET /bench/ping` is a
readiness probe.

Run: `python bench/upstream.py --port 9000 [--chunks 20] [--chunk-delay-ms 0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

from aiohttp import web

MODEL = "mistral-small-latest"
COMPLETION_ID = "cmpl-e5cc70bb28c444948073e77776eb30ef"
CREATED = int(time.time())

CHAT_RESPONSE = json.dumps(
    {
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": (
                        "The capital of France is Paris. It has been the country's capital "
                        "since the late 10th century and is home to about 2.1 million people "
                        "in the city proper."
                    ),
                    "tool_calls": None,
                    "prefix": False,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 24, "completion_tokens": 41, "total_tokens": 65},
    }
).encode()

WORDS = (
    "The",
    " capital",
    " of",
    " France",
    " is",
    " Paris",
    ".",
    " It",
    " has",
    " been",
    " the",
    " capital",
    " since",
    " the",
    " late",
    " 10th",
    " century",
    " and",
    " is",
    " home",
)


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def content_chunk(index: int) -> bytes:
    delta: dict = {"content": WORDS[index % len(WORDS)]}
    if index == 0:
        delta["role"] = "assistant"
    return sse(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
    )


CHUNKS = [content_chunk(i) for i in range(len(WORDS))]
FINAL_CHUNK = sse(
    {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 24, "completion_tokens": 20, "total_tokens": 44},
    }
)
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
JSON_HEADERS = {"Content-Type": "application/json"}


class Upstream:
    def __init__(self, chunks: int, delay_ms: float) -> None:
        self.chunks = chunks
        self.delay_ms = delay_ms
        self.held = 0
        self.count = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/bench/"):
            return self.control(path)
        self.count += 1
        body = await request.read()
        if b'"stream": true' not in body and b'"stream":true' not in body:
            return web.Response(body=CHAT_RESPONSE, headers=JSON_HEADERS)
        headers = request.headers
        delay = float(headers.get("x-bench-chunk-delay-ms", self.delay_ms)) / 1000
        count = int(headers.get("x-bench-chunks", self.chunks))
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        if headers.get("x-bench-hold") == "1":
            await self.hold(resp, delay or 1.0)
            delay = 0.0
        else:
            for i in range(count):
                await resp.write(CHUNKS[i % len(CHUNKS)])
                if delay:
                    await asyncio.sleep(delay)
        await resp.write(FINAL_CHUNK)
        if delay:
            await asyncio.sleep(delay)
        await resp.write(DONE)
        await resp.write_eof()
        return resp

    async def hold(self, resp: web.StreamResponse, interval: float) -> None:
        release = self.release
        self.held += 1
        try:
            index = 0
            while True:
                await resp.write(CHUNKS[index % len(CHUNKS)])
                index += 1
                if release.is_set():
                    return
                try:
                    await asyncio.wait_for(release.wait(), interval)
                except TimeoutError:
                    continue
        finally:
            self.held -= 1

    def control(self, path: str) -> web.Response:
        if path == "/bench/held":
            return web.json_response({"held": self.held})
        if path == "/bench/release":
            self.release.set()
            self.release = asyncio.Event()
            return web.json_response({"released": True})
        if path == "/bench/count":
            return web.json_response({"count": self.count})
        return web.json_response({"ok": True})


async def serve(port: int, chunks: int, delay_ms: float) -> None:
    upstream = Upstream(chunks, delay_ms)
    server = web.Server(upstream.handle)
    runner = web.ServerRunner(server, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.chunks, args.chunk_delay_ms))


if __name__ == "__main__":
    main()
