"""Kills lose at most the last hand-off window: SIGKILL of every process of the gateway while
its writer holds records (stopped with SIGSTOP, so they are surely in transit), then a new
start stores them from the journal and records the call that was in flight as
`interrupted`, counted in /healthz and /api/stats. SIGKILL of the proxy's process alone: the
writer stores what it has before it exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.records import ExchangeSummary
from tests.conftest import CLI, ROOT, Upstream, free_port, migrated_sqlite, wait_for_health

pytestmark = pytest.mark.slow


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, ui_port: int) -> None:
        self.proc, self.port, self.ui_port = proc, port, ui_port
        self.proxy = f"http://127.0.0.1:{port}"
        self.ui = f"http://127.0.0.1:{ui_port}"

    async def health(self) -> dict:
        async with aiohttp.ClientSession() as http, http.get(f"{self.ui}/healthz") as resp:
            return await resp.json()


@contextlib.asynccontextmanager
async def serve(upstream: Upstream, db: str, tmp_path: Path) -> AsyncIterator[Served]:
    port, ui_port = free_port(), free_port()
    log = (tmp_path / "gateway.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--upstream",
        upstream.url,
        "--db",
        db,
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--spool-dir",
        str(tmp_path / "spool"),
        "--shutdown-grace",
        "1",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    try:
        await wait_for_health(f"http://127.0.0.1:{ui_port}", proc)
        yield Served(proc, port, ui_port)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        log.close()


async def chat(served: Served, text: str, **headers: str) -> int:
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": text}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{served.proxy}/v1/chat/completions",
            json=payload,
            headers={"Authorization": "Bearer sk-kill-test-000000", **headers},
        ) as resp,
    ):
        await resp.read()
        return resp.status


async def slow_stream(served: Served) -> None:
    """A stream of 10 s: in flight when the gateway is killed."""
    payload = {
        "model": "mistral-small-latest",
        "stream": True,
        "messages": [{"role": "user", "content": "in flight"}],
    }
    headers = {"Authorization": "Bearer k", "x-fake-chunks": "100", "x-fake-chunk-delay-ms": "100"}
    with contextlib.suppress(aiohttp.ClientError):
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{served.proxy}/v1/chat/completions", json=payload, headers=headers) as resp,
        ):
            async for _ in resp.content.iter_any():
                pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


async def wait_gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        await asyncio.sleep(0.05)


async def stored(db: str) -> list[ExchangeSummary]:
    store = Store(db)
    await store.open()
    try:
        items, _ = await store.list_exchanges(ExchangeFilter(), 500, None)
        return items
    finally:
        await store.close()


async def test_sigkill_of_every_process_loses_nothing_handed_over(
    upstream: Upstream, tmp_path: Path
):
    db = migrated_sqlite(tmp_path / "kill.db")
    async with serve(upstream, db, tmp_path) as first:
        writer = (await first.health())["writer_pid"]
        os.kill(writer, signal.SIGSTOP)  # records now wait in transit
        in_flight = asyncio.create_task(slow_stream(first))
        assert await asyncio.gather(*(chat(first, f"kept {n}") for n in range(20))) == [200] * 20
        await asyncio.sleep(0.2)  # well past the 5 ms hand-off window
        for pid in (first.proc.pid, writer):
            os.kill(pid, signal.SIGKILL)
        await first.proc.wait()
        await wait_gone(writer)
        await in_flight
    assert await stored(db) == []  # nothing reached the database before the kill

    async with serve(upstream, db, tmp_path) as second:

        async def settled() -> dict:
            for _ in range(200):
                health = await second.health()
                if health["queue_depth"] == 0 and health["spool_bytes"] == 0:
                    return health
                await asyncio.sleep(0.05)
            raise AssertionError(f"not drained: {health}")

        health = await settled()
        assert health["missing_calls"] == 1 and health["recovered_records"] == 20
        async with aiohttp.ClientSession() as http, http.get(f"{second.ui}/api/stats") as resp:
            stats = await resp.json()
        assert stats["totals"]["missing_calls"] == 1
        items = await stored(db)
    states = sorted(item.state for item in items)
    assert states == ["complete"] * 20 + ["interrupted"], states
    (cut,) = [item for item in items if item.state == "interrupted"]
    assert cut.path == "/v1/chat/completions" and "killed" in (cut.error or "")


async def test_writer_stores_what_it_has_when_the_proxy_process_is_killed(
    upstream: Upstream, tmp_path: Path
):
    db = migrated_sqlite(tmp_path / "orphan.db")
    async with serve(upstream, db, tmp_path) as served:
        writer = (await served.health())["writer_pid"]
        os.kill(writer, signal.SIGSTOP)
        assert await asyncio.gather(*(chat(served, f"held {n}") for n in range(15))) == [200] * 15
        await asyncio.sleep(0.2)
        served.proc.kill()  # the proxy's process only
        await served.proc.wait()
        os.kill(writer, signal.SIGCONT)
        await wait_gone(writer)
    assert len(await stored(db)) == 15


async def test_one_spool_folder_one_gateway(upstream: Upstream, tmp_path: Path):
    """Two gateways on one --spool-dir would replay and delete each other's files: the second
    refuses to start, saying why; a one-shot command (import, quarantine retry) beside a
    running gateway spools to a folder of its own, removed when it is left empty."""
    from gateway.app import Gateway
    from gateway.writer import WriterError
    from tests.conftest import make_settings, running

    settings = make_settings(upstream.url, migrated_sqlite(tmp_path / "one.db"), tmp_path)
    async with running(settings):
        second = Gateway(settings)
        with pytest.raises(WriterError, match="in use by another gateway process"):
            await second.start()
        oneshot = Gateway(settings)
        await oneshot.start(proxy=False, ui=False)
        try:
            private = Path(oneshot.recorder.settings.spool_dir)
            assert private.parent == tmp_path / "spool" and private.name.startswith("oneshot-")
        finally:
            await oneshot.stop()
        assert not private.exists()
    async with running(settings):  # the first one's lock went with it
        pass
