"""Pickles made and written in parts, so that a large body is never copied in user space.

`pickle.dumps` copies every body into one growing buffer (reallocated as it grows: 55 us per
100 KB body, measured, where the pickle's other bytes take a few). A `Pickler` writing to a
file hands a payload of 64 KiB or more (`pickle`'s frame size) to the file's `write` as the
very object it pickles, between the buffered bytes around it. `pickled` collects those
writes: the parts joined are byte for byte what `pickle.dumps` gives (the same opcodes and
frames), and `write_all` puts them in a file with gathered writes, the kernel's copy the only
one. The hand-off frames (socket and journal) and the spool use both.
"""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Sequence
from typing import Any

# How many buffers one writev takes (Linux: 1024; POSIX's least is 16).
try:
    IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, OSError, ValueError):
    IOV_MAX = 16


class _Parts(list[bytes]):
    """A file as a `Pickler` sees one: each write is kept, not copied."""

    __slots__ = ()
    write = list.append


def pickled(obj: Any) -> list[bytes]:
    """`pickle.dumps(obj, HIGHEST_PROTOCOL)` as a list of parts that join to those bytes."""
    parts = _Parts()
    pickle.Pickler(parts, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return parts


def write_all(fd: int, parts: Sequence[bytes]) -> None:
    """Write the parts in order: gathered writes of at most IOV_MAX buffers, a short write
    continued where the kernel stopped. A write that takes nothing raises ENOSPC."""
    views = [memoryview(part) for part in parts if part]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + IOV_MAX])
        if written <= 0:
            raise OSError(errno.ENOSPC, "the file took no bytes")
        while written:
            size = len(views[first])
            if written >= size:
                written -= size
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0
