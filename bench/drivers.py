"""Load for the benchmark: request bodies, and the two drivers that send them for a fixed time.

wrk (Debian's `wrk`, one thread, bench/load.lua) is the driver whenever it is on PATH: a C load
generator costs a fraction of what a Python one does per call, so the system under test, not
the client, sets the pace. Where wrk is missing an aiohttp client in the bench's own process
takes its place (the old method; it caps fast arms, which pulls every ratio toward 1).

Bodies come from a pool written once per run (one JSON body per line, made from words drawn at
random so they compress about as prose does), and every request gets a unique 12-digit call
number over the body's placeholder, so no two stored bodies are byte-identical.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "load.lua"
PLACEHOLDER = "@" * 12
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench-not-a-real-key"}
VOCABULARY = (
    "the of and to in is for that on with as by at from this be are or an it was which not "
    "agent tool call context retrieval document summary result paragraph section invoice "
    "customer order shipment refund account balance payment status delivery address "
    "contract clause liability warranty termination notice party agreement schedule "
    "report quarter revenue growth margin forecast budget expense region market product "
    "weather temperature forecast humidity wind station reading sensor device firmware "
    "function argument returned error timeout retry request response header token model "
    "please summarise explain compare list extract translate classify answer briefly "
    "Paris London Berlin Madrid Rome Lisbon Vienna Prague Warsaw Dublin Brussels Amsterdam "
    "2019 2020 2021 2022 2023 2024 42 17 3.5 100 250 1,000 12.75 0.3 99%"
)
WORDS = VOCABULARY.split()


@dataclass(frozen=True)
class Pool:
    """Bodies of one size on disk (for wrk) and in memory (for the Python driver)."""

    name: str
    path: Path
    bodies: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return len(self.bodies[0])


def prose(rng: random.Random, length: int) -> str:
    words: list[str] = []
    total = 0
    while total <= length:
        word = rng.choice(WORDS)
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:length]


def chat_body(rng: random.Random, size: int) -> bytes:
    """A non-stream chat completion request of exactly `size` bytes with one placeholder."""
    system = "You are a concise assistant. Answer in one sentence." if size < 4096 else ""

    def render(text: str) -> str:
        messages = [{"role": "user", "content": f"Request {PLACEHOLDER}: {text}"}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return json.dumps(
            {
                "model": "mistral-small-latest",
                "messages": messages,
                "temperature": 0.3,
                "max_tokens": 128,
            }
        )

    fill = size - len(render(""))
    body = render(prose(rng, fill)).encode()
    assert len(body) == size and body.count(PLACEHOLDER.encode()) == 1, len(body)
    return body


def make_pool(name: str, size: int, count: int, folder: Path, seed: int) -> Pool:
    rng = random.Random(seed)
    bodies = tuple(chat_body(rng, size) for _ in range(count))
    path = folder / f"pool-{name}.jsonl"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return Pool(name, path, bodies)


@dataclass
class LoadResult:
    driver: str
    ok: int  # answered with a 2xx
    errors: int  # socket errors, timeouts and non-2xx answers
    seconds: float  # the load generator's own measure of the load's duration
    started: float  # time.monotonic() just before the first request could go out
    ended: float  # time.monotonic() once the load generator has finished
    p50_ms: float | None
    p99_ms: float | None
    error_text: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


class WrkDriver:
    name = "wrk"

    async def run(self, url: str, pool: Pool, conc: int, seconds: int, first: int) -> LoadResult:
        argv = [
            "wrk",
            "-t1",
            f"-c{conc}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA_SCRIPT),
            url,
            "--",
            str(pool.path),
            str(first),
        ]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        ended = time.monotonic()
        line = next((x for x in out.decode().splitlines() if x.startswith("BENCH-JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()[-2000:]}")
        s = json.loads(line.split(" ", 1)[1])
        errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
        text = ", ".join(
            f"{k} {s[k]}" for k in ("connect", "read", "write", "status", "timeout") if s[k]
        )
        return LoadResult(
            self.name,
            ok=s["requests"] - s["status"],
            errors=errors,
            seconds=s["duration_us"] / 1e6,
            started=started,
            ended=ended,
            p50_ms=s["p50_us"] / 1000,
            p99_ms=s["p99_us"] / 1000,
            error_text=f"wrk errors: {text}" if text else "",
        )


class PythonDriver:
    """The fallback: conc aiohttp workers in this process, each posting until the deadline."""

    name = "python (aiohttp, in the bench's process)"

    async def run(self, url: str, pool: Pool, conc: int, seconds: int, first: int) -> LoadResult:
        latencies: list[float] = []
        errors: list[str] = []
        number = first
        clock = time.perf_counter
        marker = PLACEHOLDER.encode()
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=timeout
        ) as session:

            async def worker() -> None:
                nonlocal number
                while clock() < deadline:
                    number += 1
                    body = pool.bodies[number % len(pool.bodies)]
                    body = body.replace(marker, b"%012d" % number)
                    t0 = clock()
                    try:
                        async with session.post(url, data=body, headers=HEADERS) as resp:
                            await resp.read()
                            status = resp.status
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    if 200 <= status < 300:
                        latencies.append(clock() - t0)
                    else:
                        errors.append(f"HTTP {status}")

            started = time.monotonic()
            begin = clock()
            deadline = begin + seconds
            await asyncio.gather(*(worker() for _ in range(conc)))
            elapsed = clock() - begin
        ordered = sorted(latencies)

        def pct(q: float) -> float | None:
            return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

        return LoadResult(
            self.name,
            ok=len(latencies),
            errors=len(errors),
            seconds=elapsed,
            started=started,
            ended=time.monotonic(),
            p50_ms=1000 * statistics.median(ordered) if ordered else None,
            p99_ms=pct(0.99),
            error_text="; ".join(errors[:3]),
        )


Driver = WrkDriver | PythonDriver


def choose_driver(wanted: str) -> Driver:
    """`auto`: wrk when it is on PATH, else the Python driver."""
    if wanted == "python" or (wanted == "auto" and shutil.which("wrk") is None):
        return PythonDriver()
    if shutil.which("wrk") is None:
        raise SystemExit("--driver wrk: wrk is not on PATH (Debian: apt-get install wrk)")
    return WrkDriver()
