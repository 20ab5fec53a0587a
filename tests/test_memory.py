"""Memory after a burst: the heap pages glibc keeps once 100 KB bodies are freed go back to
the system (gateway/writer/memory.py). A real allocation, a real trim, /proc for the RSS."""

from __future__ import annotations

import asyncio
import gc
import weakref

from gateway.writer.memory import _glibc_trim, collections_deferred, give_back, rss_bytes
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


def test_collections_wait_for_the_batch_and_come_after_it():
    """Within `collections_deferred` the young objects a batch builds are not collected (the
    batch frees them itself); after it the usual thresholds apply again, and garbage cycles
    made within are collected all the same."""
    usual = gc.get_threshold()
    collected: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected.append(info["generation"])

    gc.set_threshold(700, 10, 10)
    gc.callbacks.append(note)
    try:
        with collections_deferred(threshold=1_000_000):
            assert gc.get_threshold() == (1_000_000, 10, 10)
            rows = [{"n": n, "items": [n]} for n in range(20_000)]  # 40,000 containers alive
            cycle: list[object] = []
            cycle.append(cycle)
            probe = weakref.ref(Node())
            assert not collected
            del rows, cycle
        assert gc.get_threshold() == (700, 10, 10)
        [{"n": n} for n in range(2_000)]  # the next allocations collect what was left
        assert collected and probe() is None
        with collections_deferred(threshold=500):  # already above: left as it is
            assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*usual)


class Node:
    """An object in a reference cycle of its own: only a collection frees it."""

    def __init__(self) -> None:
        self.me = self
