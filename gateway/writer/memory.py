"""Memory of the long-running processes (the proxy's and the writer's): garbage-collector
settings, and giving freed memory back to the system after a burst.

Each call allocates hundreds of short-lived objects. With CPython's default gen-0 threshold
(700) a collection runs every call or two, and the full collections that follow rescan every
object the imported libraries made, pausing the event loop for tens of milliseconds. Measured
in the proxy's process under load (bench, c=64): GC time per call 48 µs -> 5 µs.

Bodies of 100 KB are allocated by glibc's malloc, not Python's small-object allocator. After a
burst they are freed, but glibc keeps the pages (its mmap threshold grows past such sizes
after the first free, so later bodies come from its heaps, which it trims only at the top).
Measured after 10 s of 100 KB bodies at c=16, the gateway stayed at 5-7x its idle RSS. So
each process checks its RSS every few seconds and, when it has grown since the last trim
by more than a slack, asks glibc to return every free page (`malloc_trim(0)`, a few ms);
`--malloc-trim off` leaves them (bench/rss.py: then the gateway stays at its peak, 1.8-1.9x
idle, for good). Limiting each process to two malloc arenas (`limit_arenas`) saves another
10-20 MiB in the writer, whose database thread would otherwise get arenas of its own; alone,
without the trim, it gives nothing back. What bounds the peak in the first place is
elsewhere: the bytes in transit (--queue-max-bytes) and in a batch (recorder.BATCH_BYTES).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("agentops.memory")

GEN0_THRESHOLD = 20_000
# While the writer stores a batch (gateway/writer/recorder.py): what a batch of 500 records
# builds (parsed JSON, rows, message dicts) is alive at once, tens of thousands of containers
# that refcounting frees when the batch is done. A collection in the middle of it traversed
# them all and moved them to generation 1 for nothing: about 10 ms a collection, 5% of the
# writer's CPU per 1 KB call (gc.callbacks, thread CPU, bench/cpu_per_call.py).
BATCH_GEN0_THRESHOLD = 1_000_000
TRIM_EVERY = 5.0  # seconds between RSS checks
TRIM_SLACK = 16 * 1024 * 1024  # growth since the last trim that is worth a trim
TRIM_BACKOFF = 60.0  # longest wait after trims that gave nothing back
_PAGE = os.sysconf("SC_PAGE_SIZE")
ARENAS = 2  # malloc arenas per process: the event loop's thread and one more (aiosqlite's)
_M_ARENA_MAX = -8  # glibc's malloc.h


def tune_gc() -> None:
    """Call once start-up is done: what it created lives as long as the process, so it is
    frozen out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 20)


@contextlib.contextmanager
def collections_deferred(threshold: int = BATCH_GEN0_THRESHOLD) -> Iterator[None]:
    """Within: no collection until `threshold` more containers are alive than after the last
    (a bound, for a batch that keeps growing). After: the usual thresholds again, so what
    outlived the batch is collected, by generation as usual, from the next allocation on,
    when little else is alive."""
    usual = gc.get_threshold()
    if usual[0] == 0 or usual[0] >= threshold:  # collections off, or already deferred
        yield
        return
    gc.set_threshold(threshold, *usual[1:])
    try:
        yield
    finally:
        gc.set_threshold(*usual)


def limit_arenas(arenas: int = ARENAS) -> None:
    """Call first thing in a process, before it starts threads: glibc's malloc gives each
    thread that contends for a lock an arena of its own (up to 8 per core), whose freed pages
    stay apart. MALLOC_ARENA_MAX in the environment, read by glibc itself, wins."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_ARENA_MAX, arenas)


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _glibc_trim() -> Any:
    """glibc's malloc_trim, or None on another C library."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


async def give_back(
    enabled: bool = True, every: float = TRIM_EVERY, slack: int = TRIM_SLACK
) -> None:
    """Run for the life of the process: once a burst is over (RSS more than `slack` above the
    lowest it has been, and no longer growing), trim the heap. Never during the burst: a
    trim holds malloc's locks for milliseconds. A trim that gave back less than `slack`
    (what is left is live) waits twice as long before the next, up to TRIM_BACKOFF, until
    RSS grows past what it left; an idle process does not pause its loop every few seconds
    for nothing. `enabled`: --malloc-trim."""
    trim = _glibc_trim() if enabled else None
    if trim is None or not rss_bytes():
        return
    floor = last = kept = rss_bytes()
    wait, next_at = every, 0.0
    while True:
        await asyncio.sleep(every)
        rss, now = rss_bytes(), time.monotonic()
        if rss > kept + slack:  # grown since the last trim: a new burst
            wait, next_at = every, 0.0
        if floor + slack < rss <= last and now >= next_at:
            trim(0)
            kept = rss_bytes()
            wait = every if rss - kept >= slack else min(2 * wait, TRIM_BACKOFF)
            next_at = now + wait
            log.debug("trimmed the heap: RSS %d -> %d MiB", rss >> 20, kept >> 20)
            rss = kept
        floor, last = min(floor, rss), rss
