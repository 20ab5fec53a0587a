"""The writer process: idle CPU priority, killed and restarted without stopping the proxy, and
records that pile up while it is away are stored afterwards, in capture order."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.store.exchanges import ExchangeFilter
from tests.conftest import Upstream, make_settings, running, wait_until


async def chat(http: aiohttp.ClientSession, url: str, text: str) -> int:
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": text}]}
    async with http.post(
        f"{url}/v1/chat/completions",
        json=payload,
        headers={"Authorization": "Bearer sk-writer-test"},
    ) as resp:
        await resp.read()
        return resp.status


async def test_writer_steps_aside_and_survives_being_killed(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'w.db'}", tmp_path)
    async with running(settings) as gw, aiohttp.ClientSession() as http:
        first = gw.recorder.pid
        assert first is not None and first != os.getpid()
        # Idle CPU class, in a session (so an autogroup) of its own: calls get the CPU first.
        assert os.sched_getscheduler(first) == os.SCHED_IDLE
        assert os.getsid(first) == first != os.getsid(0)
        autogroup = Path(f"/proc/{first}/autogroup")
        assert autogroup.read_text().split()[-1] == "19"  # "/autogroup-123 nice 19"

        assert await chat(http, gw.proxy_url, "before") == 200
        await gw.recorder.drained(timeout=10)
        os.kill(first, signal.SIGKILL)
        # Calls never notice: the proxy spools while no writer runs, then hands the file over.
        statuses = [await chat(http, gw.proxy_url, f"while away {n}") for n in range(5)]
        assert statuses == [200] * 5

        async def restarted() -> bool:
            return gw.recorder.pid != first and gw.recorder.health().writer_process == "ok"

        await wait_until(restarted, timeout=20)
        assert await chat(http, gw.proxy_url, "after") == 200
        await gw.recorder.drained(timeout=20)

        items, _ = await gw.store.list_exchanges(ExchangeFilter(), 50, None)
        stored = []
        for item in reversed(items):
            async with http.get(f"{gw.ui_url}/api/exchanges/{item.id}") as resp:
                stored.append((await resp.json())["request_body"]["messages"][0]["content"])
        assert stored == ["before", *(f"while away {n}" for n in range(5)), "after"]
        assert not list((tmp_path / "spool" / "proxy").glob("spool-*.bin"))


async def test_a_writer_left_behind_gets_an_ordinary_share_until_it_catches_up(
    upstream: Upstream, tmp_path: Path
):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'lag.db'}", tmp_path)
    async with running(settings) as gw, aiohttp.ClientSession() as http:
        pid = gw.recorder.pid
        assert pid is not None
        group = Path(f"/proc/{pid}/autogroup")
        if not group.exists():  # a skip, which CI counts as a failure (conftest.py)
            pytest.skip("this kernel has no autogroup scheduling (/proc/PID/autogroup)")
        gw.recorder.lag_seconds, gw.recorder.lag_check_seconds = 0.3, 0.05
        os.kill(pid, signal.SIGSTOP)  # as starved as a writer can be
        try:
            assert [await chat(http, gw.proxy_url, f"late {n}") for n in range(3)] == [200] * 3
            await wait_until(nice_is(group, "0"))
        finally:
            os.kill(pid, signal.SIGCONT)
        await gw.recorder.drained(timeout=20)
        await wait_until(nice_is(group, "19"))
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE  # never left the idle class
        items, _ = await gw.store.list_exchanges(ExchangeFilter(), 50, None)
        assert len(items) == 3


def nice_is(group: Path, value: str) -> Callable[[], Awaitable[bool]]:
    """A check for `wait_until`: the autogroup's nice value ("/autogroup-123 nice 19")."""

    async def check() -> bool:
        return group.read_text().split()[-1] == value

    return check


async def test_records_spilled_to_the_proxys_spool_are_stored_with_no_call_after_them(
    upstream: Upstream, tmp_path: Path
):
    """A burst the writer could not take goes to the proxy's overflow spool; it must reach the
    database, and /healthz go back to ok, with no further traffic to flush it."""
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'idle.db'}", tmp_path, queue_size=4
    )
    async with running(settings) as gw, aiohttp.ClientSession() as http:
        pid = gw.recorder.pid
        assert pid is not None
        gw.recorder.lag_check_seconds = 0.05
        os.kill(pid, signal.SIGSTOP)  # the writer takes nothing: the burst overflows
        try:
            sent = await asyncio.gather(
                *(chat(http, gw.proxy_url, f"burst {n}") for n in range(20))
            )
            assert sent == [200] * 20

            async def spilled() -> bool:
                return gw.recorder.health().spooled_records > 0

            await wait_until(spilled)
        finally:
            os.kill(pid, signal.SIGCONT)

        async def all_stored() -> bool:
            items, _ = await gw.store.list_exchanges(ExchangeFilter(), 50, None)
            return len(items) == 20

        await wait_until(all_stored)

        async def healthy() -> bool:
            async with http.get(f"{gw.ui_url}/healthz") as resp:
                return (await resp.json())["status"] == "ok"

        await wait_until(healthy)
