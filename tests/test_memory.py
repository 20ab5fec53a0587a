"""Memory after a burst: the heap pages glibc keeps once 100 KB bodies are freed go back to
the system (gateway/writer/memory.py). A real allocation, a real trim, /proc for the RSS."""

from __future__ import annotations

import asyncio

from gateway.writer.memory import _glibc_trim, give_back, rss_bytes
from tests.conftest import wait_until

MIB = 1024 * 1024


async def test_a_burst_of_bodies_is_given_back_once_it_is_over():
    _glibc_trim()(0)  # free pages an earlier test left would take the burst without growing
    trimmer = asyncio.create_task(give_back(every=0.05, slack=16 * MIB))
    try:
        await asyncio.sleep(0.1)  # the trimmer notes the RSS before the burst
        before = rss_bytes()
        bodies = [b"x" * 100_000 for _ in range(2_000)]  # 200 MB from malloc's heap
        pin = b"y" * 100_000  # allocated last: the heap cannot shrink from its top alone
        assert rss_bytes() > before + 150 * MIB
        del bodies

        async def given_back() -> bool:
            return rss_bytes() < before + 50 * MIB

        await wait_until(given_back, timeout=5)
        assert pin
    finally:
        trimmer.cancel()
