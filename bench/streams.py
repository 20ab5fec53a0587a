"""Streaming measurements, which wrk cannot take: time to first token, the gap between chunks,
and the proxy's memory while many streams are open. An aiohttp client in the bench's process
(on the load side's cores) drives them; they run in full mode only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from drivers import HEADERS

STREAM_BODY = json.dumps(
    {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "What is the capital of France, and since when?"}],
        "stream": True,
    }
).encode()
HELD_CHUNK_MS = 1000
OPEN_TIMEOUT = 60.0

OnError = Callable[[str], None]


async def one_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], on_error: OnError
) -> tuple[float, float] | None:
    """One SSE call: (ttft seconds, mean gap between events seconds), or None."""
    clock = time.perf_counter
    t0 = clock()
    first = last = None
    events = 0
    tail = b""
    try:
        async with session.post(url, data=STREAM_BODY, headers=headers) as resp:
            if resp.status != 200:
                on_error(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                return None
            async for chunk in resp.content.iter_any():
                now = clock()
                count = chunk.count(b"data: ")
                if count:
                    first = now if first is None else first
                    last = now
                    events += count
                tail = (tail + chunk)[-32:]
    except (aiohttp.ClientError, TimeoutError) as exc:
        on_error(f"stream {type(exc).__name__}: {exc}")
        return None
    if first is None or last is None or b"[DONE]" not in tail:
        on_error(f"stream incomplete: {events} events, tail {tail!r}")
        return None
    gap = (last - first) / (events - 1) if events > 1 else 0.0
    return first - t0, gap


async def streams(
    session: aiohttp.ClientSession, url: str, n: int, conc: int, gap_ms: float, on_error: OnError
) -> tuple[list[tuple[float, float]], float]:
    """n streamed calls, conc at a time: their (ttft, gap) and the seconds they took."""
    headers = {**HEADERS, "x-bench-chunk-delay-ms": str(gap_ms)}
    results: list[tuple[float, float]] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            got = await one_stream(session, url, headers, on_error)
            if got is not None:
                results.append(got)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(conc, n))))
    return results, time.perf_counter() - start


async def open_streams(
    session: aiohttp.ClientSession,
    url: str,
    upstream: str,
    n: int,
    rss: Callable[[], int],
    on_error: OnError,
) -> dict[str, Any]:
    """Hold n streams open through a proxy and sample its RSS (`rss()`) while they are open."""
    headers = {**HEADERS, "x-bench-hold": "1", "x-bench-chunk-delay-ms": str(HELD_CHUNK_MS)}
    base_rss = rss()
    opened = ok = 0
    all_open = asyncio.Event()

    def count_open() -> None:
        nonlocal opened
        opened += 1
        if opened == n:
            all_open.set()

    async def one() -> None:
        nonlocal ok
        counted = False
        tail = b""
        try:
            async with session.post(url, data=STREAM_BODY, headers=headers) as resp:
                async for chunk in resp.content.iter_any():
                    if not counted:
                        counted = True
                        count_open()
                    tail = (tail + chunk)[-32:]
                if resp.status == 200 and b"[DONE]" in tail:
                    ok += 1
                else:
                    on_error(f"held stream: HTTP {resp.status}, tail {tail!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            on_error(f"held stream {type(exc).__name__}: {exc}")
        finally:
            if not counted:
                count_open()

    start = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(n)]
    peak, held, open_seconds = base_rss, 0, 0.0
    try:
        while not all_open.is_set() and time.perf_counter() - start < OPEN_TIMEOUT:
            peak = max(peak, rss())  # sample while they open too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), 0.1)
        open_seconds = time.perf_counter() - start
        async with session.get(f"{upstream}/bench/held") as resp:
            held = (await resp.json())["held"]
        for _ in range(15):  # 1.5 s of samples with all streams open
            peak = max(peak, rss())
            await asyncio.sleep(0.1)
    finally:
        async with session.get(f"{upstream}/bench/release") as resp:
            await resp.read()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "requested": n,
        "base_rss": base_rss,
        "peak_rss": peak,
        "delta_rss": peak - base_rss,
        "open_seconds": open_seconds,
        "held_at_upstream": held,
        "completed": ok,
    }
