"""`serve --workers 2` as a real subprocess, on SQLite and PostgreSQL: the real mistralai SDK
calls it concurrently, each call on a connection of its own (SO_REUSEPORT spreads
connections, not calls); every call is stored exactly once, both workers served some; a
worker killed with SIGKILL is restarted and serves again; a SIGTERM with calls in flight
stops every process, and those calls finish and are stored."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from mistralai.client import Mistral
from prometheus_client.parser import text_string_to_metric_families

from gateway.store.exchanges import ExchangeFilter, Store
from tests.conftest import CLI, ROOT, Upstream, free_port, listed, wait_until

pytestmark = pytest.mark.slow

KEY = "test-key-workers-abcdefghij-4242"
CALLS = 24
NAMED = 6  # calls of one named run, each on its own connection


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, ui_port: int) -> None:
        self.proc = proc
        self.proxy = f"http://127.0.0.1:{port}"
        self.ui = f"http://127.0.0.1:{ui_port}"

    async def health(self) -> dict:
        async with aiohttp.ClientSession() as http, http.get(f"{self.ui}/healthz") as resp:
            return await resp.json()

    async def workers_up(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            workers = (await self.health()).get("workers", [])
            return len(workers) == 2 and all(w["state"] == "up" for w in workers)
        return False


@contextlib.asynccontextmanager
async def serve(upstream: Upstream, db: str, tmp_path: Path, *extra: str) -> AsyncIterator[Served]:
    port, ui_port = free_port(), free_port()
    log = (tmp_path / "gateway.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        *("--upstream", upstream.url, "--db", db, "--port", str(port)),
        *("--ui-port", str(ui_port), "--spool-dir", str(tmp_path / "spool")),
        *("--shutdown-grace", "20", *extra),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    served = Served(proc, port, ui_port)
    try:
        await wait_until(served.workers_up, timeout=60)
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def one_call(served: Served, number: int, prefix: str = "") -> str:
    """One SDK call on a client (so a connection) of its own; returns the answer's text."""
    async with Mistral(api_key=KEY, server_url=served.proxy + prefix) as client:
        answer = await client.chat.complete_async(
            model="mistral-small-latest",
            messages=[{"role": "user", "content": f"worker test call {number}"}],
        )
    return str(answer.choices[0].message.content)


async def slow_stream(served: Served) -> int:
    """A 2 s stream: in flight when the SIGTERM comes; returns the chunks received."""
    payload = {
        "model": "mistral-small-latest",
        "stream": True,
        "messages": [{"role": "user", "content": "in flight at SIGTERM"}],
    }
    headers = {"Authorization": f"Bearer {KEY}", "x-fake-chunks": "20"}
    headers["x-fake-chunk-delay-ms"] = "100"
    received = 0
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{served.proxy}/v1/chat/completions", json=payload, headers=headers) as resp,
    ):
        async for _ in resp.content.iter_any():
            received += 1
    return received


async def stored(db: str) -> tuple[list[str], list[int]]:
    """Every stored exchange's id, and the run ids of the named run's calls."""
    store = Store(db)
    await store.open()
    try:
        items, _ = await store.list_exchanges(ExchangeFilter(), 500, None)
        rows = await store.rows(
            "SELECT run_id FROM exchanges WHERE client_path LIKE ?", ["/r/across-workers/%"]
        )
        return [str(item.id) for item in items], [row["run_id"] for row in rows]
    finally:
        await store.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    return True


async def test_two_workers_store_every_call_once_and_stop_together(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with serve(upstream, db_url, tmp_path, "--workers", "2") as served:
        answers = await asyncio.gather(*(one_call(served, n) for n in range(CALLS)))
        assert all(answers)
        named = [one_call(served, 100 + n, "/r/across-workers") for n in range(NAMED)]
        assert all(await asyncio.gather(*named))
        health = await served.health()
        workers = health["workers"]
        pids = {w["pid"] for w in workers}
        assert len(pids) == 2 and served.proc.pid not in pids

        async def all_counted() -> bool:
            served_counts = [w.get("served", 0) for w in (await served.health())["workers"]]
            return sum(served_counts) == CALLS + NAMED

        await wait_until(all_counted)
        counts = [w["served"] for w in (await served.health())["workers"]]
        assert all(count > 0 for count in counts), counts  # both workers took connections
        killed = workers[0]["pid"]
        os.kill(killed, signal.SIGKILL)  # a dead worker is restarted

        async def restarted() -> bool:
            first = (await served.health())["workers"][0]
            return first["state"] == "up" and first["pid"] != killed and first["restarts"] == 1

        await wait_until(restarted, timeout=60)
        assert all(await asyncio.gather(*(one_call(served, CALLS + n) for n in range(4))))
        pids = {w["pid"] for w in (await served.health())["workers"]} | pids
        streams = [asyncio.create_task(slow_stream(served)) for _ in range(2)]
        await wait_until(lambda: _upstream_saw(upstream, CALLS + NAMED + 6))
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 60) == 0
        assert [await s for s in streams] and all(s.result() > 0 for s in streams)
        assert all(gone(pid) for pid in pids)
    ids, named_runs = await stored(db_url)
    assert len(ids) == CALLS + NAMED + 6 and len(set(ids)) == len(ids)
    assert len(named_runs) == NAMED
    # SQLite: one writer groups every worker's calls. PostgreSQL: a writer per worker, and
    # the name is claimed in the database (gateway/store/grouping.py): whole either way.
    assert len(set(named_runs)) == 1, named_runs


async def _upstream_saw(upstream: Upstream, count: int) -> bool:
    return len(upstream.requests) >= count


async def hanging_call(served: Served, number: int) -> BaseException | None:
    """A call the upstream never answers; returns how its connection ended."""
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Authorization": f"Bearer {KEY}", "x-fake-hang": "1", "x-n": str(number)}
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{served.proxy}/v1/chat/completions", json=payload, headers=headers) as r,
        ):
            await r.read()
    except aiohttp.ClientError as exc:
        return exc
    return None


async def test_a_killed_workers_calls_in_flight_are_recorded_as_interrupted(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    """A worker SIGKILLed with calls in flight: their clients see the connection break, and
    each call is stored in state `interrupted` (as a killed gateway's journal records them),
    not lost. On SQLite the worker relays its calls' starts to the supervisor, which records
    them when the worker dies (before, they were nowhere, even after a restart of the whole
    gateway: a clean stop deletes the supervisor's journal); on PostgreSQL the restarted
    worker finds them in its own journal."""
    async with serve(upstream, db_url, tmp_path, "--workers", "2") as served:
        calls = [asyncio.create_task(hanging_call(served, n)) for n in range(3)]
        await wait_until(lambda: _upstream_saw(upstream, 3))

        async def reported() -> bool:
            workers = (await served.health())["workers"]
            return sum(w.get("in_flight", 0) for w in workers) == 3

        await wait_until(reported)
        for worker in (await served.health())["workers"]:
            if worker["in_flight"]:
                os.kill(worker["pid"], signal.SIGKILL)
        ended = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert all(isinstance(e, aiohttp.ClientError) for e in ended), ended

        async def interrupted() -> list[dict]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{served.ui}/api/exchanges", params={"state": "interrupted"}) as resp,
            ):
                return (await resp.json())["items"]

        async def all_recorded() -> bool:
            return len(await interrupted()) == 3

        await wait_until(all_recorded, timeout=60)
        assert all("stopped without a clean shutdown" in e["error"] for e in await interrupted())
        await wait_until(served.workers_up, timeout=60)
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 60) == 0
    store = Store(db_url)
    await store.open()
    try:
        items, _ = await store.list_exchanges(ExchangeFilter(state="interrupted"), 50, None)
    finally:
        await store.close()
    assert len(items) == 3  # once each


async def test_workers_stop_when_the_supervisor_is_killed(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'killed.db'}"
    async with serve(upstream, db, tmp_path, "--workers", "2") as served:
        pids = [w["pid"] for w in (await served.health())["workers"]]
        served.proc.kill()
        await served.proc.wait()

        async def all_gone() -> bool:
            return all(gone(pid) for pid in pids)

        await wait_until(all_gone, timeout=30)


async def test_calls_finished_after_the_supervisor_is_killed_are_stored_at_the_next_start(
    upstream: Upstream, tmp_path: Path
):
    """SIGKILL the supervisor of `serve --workers 2` on SQLite while streams are in flight:
    the workers stop as on SIGTERM, letting the streams finish, but nothing is left to store
    their records (they were logged as lost; the restarted gateway's journal showed them as
    `interrupted`, answered though they were). They go to the spool folder instead, and the
    next `serve` on it stores them whole."""
    db = f"sqlite://{tmp_path / 'supervisor.db'}"
    async with serve(upstream, db, tmp_path, "--workers", "2") as served:
        streams = [asyncio.create_task(slow_stream(served)) for _ in range(3)]
        await wait_until(lambda: _upstream_saw(upstream, 3))
        served.proc.kill()
        await served.proc.wait()
        received = await asyncio.wait_for(asyncio.gather(*streams), 60)
        assert all(chunks > 1 for chunks in received)  # each stream ran to its end
    async with serve(upstream, db, tmp_path, "--workers", "2") as served:

        async def complete() -> list[dict]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{served.ui}/api/exchanges", params={"state": "complete"}) as resp,
            ):
                return (await resp.json())["items"]

        async def all_stored() -> bool:
            return len(await complete()) == 3

        await wait_until(all_stored, timeout=60)
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 60) == 0
    items = await listed(db, 50)
    assert sorted(item.state for item in items) == ["complete"] * 3  # once each, answered


async def metric(served: Served, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{served.ui}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def test_health_figures_are_totals_over_the_workers(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    """/healthz's top-level counts add up the supervisor's writer and every worker's (on
    PostgreSQL each worker's writer stores its own calls), a restarted worker's stay counted,
    and /metrics's pipeline figures are the same totals."""
    async with serve(upstream, db_url, tmp_path, "--workers", "2") as served:
        assert all(await asyncio.gather(*(one_call(served, n) for n in range(16))))

        async def written(count: int) -> bool:
            return (await served.health())["written_records"] >= count

        await wait_until(lambda: written(16))
        health = await served.health()
        own, theirs = health["supervisor"], [w["health"] for w in health["workers"]]
        for key in ("written_records", "dropped_records", "queue_depth", "spool_bytes"):
            assert health[key] == own.get(key, 0) + sum(w.get(key, 0) for w in theirs), key
        assert {"index", "pid", "state", "restarts", "served"} <= set(health["workers"][0])

        async def scraped_the_same() -> bool:
            health = await served.health()
            return await metric(served, "agentops_written_records_total") == float(
                health["written_records"]
            )

        await wait_until(scraped_the_same)
        before = health["written_records"]
        killed = health["workers"][0]["pid"]
        os.kill(killed, signal.SIGKILL)

        async def restarted() -> bool:
            first = (await served.health())["workers"][0]
            return first["state"] == "up" and first["pid"] != killed and "health" in first

        await wait_until(restarted, timeout=60)
        assert (await served.health())["written_records"] >= before  # its count is kept


async def test_port_in_use_exits_2(upstream: Upstream, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "serve",
            *("--workers", "2", "--port", str(port), "--ui-port", str(free_port())),
            *("--db", f"sqlite://{tmp_path / 'a.db'}", "--spool-dir", str(tmp_path / "spool")),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert b"cannot listen" in err and b"Traceback" not in err


async def test_bad_workers_value_exits_2(tmp_path: Path):
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--workers",
        "many",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"--workers / AGENTOPS_WORKERS" in err and b"auto" in err
