"""The writer process: everything after capture runs beside the proxy, at a lower CPU priority.

Parsing, run grouping, database writes and their indexes cost several times what forwarding a
call does. In the proxy's process they would share its core and its GIL, so every record
stored would be a call not served. Here the proxy's process only pickles finished records,
a few milliseconds' worth at a time, onto a socket; a child process (at idle CPU priority, so
the kernel serves calls first and capture gets the CPU they leave: see `step_aside`) owns
the recorder, the run grouper and the writes.

    proxy process                                  writer process (SCHED_IDLE)
    Proxy -> WriterProcess.submit ==records==>  Recorder -> Grouper -> Store
                                  <==settled, health, replies==

Bounded and lossless: records sent but not yet stored or spooled by the child ("in transit",
still referenced here until the child says they are settled) are at most --queue-size, and
their bodies at most --queue-max-bytes (the writer yields the CPU to calls, so under a load
that uses every core it falls behind and this is what fills); past
that the proxy's process appends to its own spool folder (`<spool-dir>/proxy`) and hands each
finished file to the child, which replays it in order. If the child dies, what it held is
spooled here and a new child takes it over.
"""

from __future__ import annotations

from gateway.writer.child import Child, child_main, rebuild_grouper
from gateway.writer.client import (
    WriterError,
    WriterProcess,
    journal_dir,
    overflow_dir,
    process_context,
)
from gateway.writer.health import Health, WriterHealth
from gateway.writer.priority import WRITER_NICE, set_group_nice, step_aside
from gateway.writer.protocol import (
    DROPPED_WINDOW,
    FLUSH_SECONDS,
    HEALTH_EVERY,
    LAG_CHECK_SECONDS,
    LAG_SECONDS,
    RESTART_SECONDS,
    START_TIMEOUT,
    body_bytes,
    frame,
    read_frame,
    unpack,
)

__all__ = [
    "DROPPED_WINDOW",
    "FLUSH_SECONDS",
    "HEALTH_EVERY",
    "LAG_CHECK_SECONDS",
    "LAG_SECONDS",
    "RESTART_SECONDS",
    "START_TIMEOUT",
    "WRITER_NICE",
    "Child",
    "Health",
    "WriterError",
    "WriterHealth",
    "WriterProcess",
    "body_bytes",
    "child_main",
    "frame",
    "journal_dir",
    "overflow_dir",
    "process_context",
    "read_frame",
    "rebuild_grouper",
    "set_group_nice",
    "step_aside",
    "unpack",
]
