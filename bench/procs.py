"""The benchmark's child processes: start, pin to cores, read CPU and RSS, stop.

Why pinning: on a small host an unpinned gateway borrows the load generator's core whenever
the generator waits, and its idle-priority writer gets a core of its own; both flatter it. So
when the host has two or more cores the fake upstream and the load generator (wrk, or this
process when it drives the load itself) get one set and the system under test the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Pinning:
    """Which cores the load side (upstream, load generator, this process) and the system under
    test use; both None when the host has a single core (then nothing is pinned)."""

    load: frozenset[int] | None
    sut: frozenset[int] | None

    @classmethod
    def plan(cls, enabled: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2:
            return cls(None, None)
        half = len(cpus) // 2
        return cls(frozenset(cpus[:half]), frozenset(cpus[half:]))

    def describe(self) -> str:
        if self.load is None or self.sut is None:
            return "no pinning (one core available, or --no-pin)"
        return (
            f"upstream + load generator + bench on CPU {_cpus(self.load)}; system under test "
            f"(gateway proxy + writer, or the bare passthrough) on CPU {_cpus(self.sut)}; "
            "PostgreSQL server not pinned (stays where the OS runs it)"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _child_setup(cpus: frozenset[int] | None) -> Callable[[], None]:
    def setup() -> None:
        # get SIGTERM when the bench dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        if cpus is not None:  # inherited by the gateway's writer and forkserver
            os.sched_setaffinity(0, cpus)

    return setup


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (via /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(x) for x in fh.read().split())
    return out


def pin_process(pid: int, cpus: set[int]) -> None:
    """Move every thread of a running process to these cores (a thread started before a
    process-wide sched_setaffinity keeps its old mask, so each task is set on its own)."""
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), cpus)


def cpu_of(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds, from /proc/PID/stat."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/statm") as fh:
            total += int(fh.read().split()[1]) * PAGE_SIZE
    return total


class Proc:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        cpus: frozenset[int] | None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child_setup(cpus),
        )
        self.pid = self.popen.pid
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self, limit: int = 4000) -> str:
        if not self.log.closed:
            self.log.flush()
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""

    def stop(self, grace: float = 15.0) -> None:
        if self.alive():
            start = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
            self.stop_seconds = time.monotonic() - start
        self.exit_code = self.popen.returncode
        self.log.close()


PROCS: list[Proc] = []


def spawn(
    name: str, argv: list[str], log_dir: Path, cpus: frozenset[int] | None, cwd: Path = ROOT
) -> Proc:
    proc = Proc(name, argv, log_dir, cpus, cwd)
    PROCS.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(PROCS):
        with contextlib.suppress(Exception):
            proc.stop()


async def wait_ready(proc: Proc, probe: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with status {proc.popen.returncode} before "
                f"it was ready; its output:\n{proc.output()}"
            )
        with contextlib.suppress(Exception):  # refused, reset, not answering yet
            if await probe():
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f}s; its output:\n{proc.output()}")


async def port_open(port: int) -> bool:
    _, writer = await asyncio.open_connection(HOST, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def answers(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether `url` answers below 500 (a readiness probe for `wait_ready`)."""
    try:
        async with session.get(url) as resp:
            return resp.status < 500
    except aiohttp.ClientError:
        return False
