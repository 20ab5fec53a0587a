"""Start and stop as a user meets them, with a real `agentops-studio` process: a SQLite folder
that is missing or cannot be made, SIGTERM and SIGINT, a second Ctrl-C with a call in flight,
and an export to a path that cannot be written. Every wait has a deadline, so a hang fails
the test instead of blocking the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream, free_port, listed, tmpfs, wait_for_health

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gateway"]
QUICK = 15.0  # seconds: far below any hang, above a start on a busy 2-core machine


@asynccontextmanager
async def serving(
    db: str, tmp_path: Path, *args: str, upstream: str = "http://127.0.0.1:9"
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`agentops-studio serve` until the block ends (then killed if still running); yields
    the process once /healthz answers, and the proxy port."""
    port, ui_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--db",
        db,
        "--upstream",
        upstream,
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--spool-dir",
        str(tmp_path / "spool"),
        "--log-level",
        "warning",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_health(f"http://127.0.0.1:{ui_port}", proc)
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run(*args: str) -> tuple[int, str, float]:
    """Run a command to its end, QUICK seconds at most (then killed: the test fails, and no
    hung process is left behind); returns its status, stderr and how long it took."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), QUICK)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, err.decode(), time.monotonic() - started


async def line_with(proc: asyncio.subprocess.Process, text: str, seen: list[str]) -> str:
    """The next stderr line containing `text` (QUICK seconds at most); lines read go to seen."""
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), QUICK)).decode()
        assert line, f"stderr ended without {text!r}: {''.join(seen)}"
        seen.append(line)
        if text in line:
            return line


async def timed_exit(proc: asyncio.subprocess.Process) -> tuple[int, str, float]:
    """Wait for a process to end (QUICK seconds at most; `serving` kills it after)."""
    started = time.monotonic()
    _, err = await asyncio.wait_for(proc.communicate(), QUICK)
    return proc.returncode or 0, err.decode(), time.monotonic() - started


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 0), (signal.SIGINT, 0)])
async def test_missing_sqlite_folder_is_made_and_a_signal_stops_serve(
    tmp_path: Path, sig: signal.Signals, status: int
):
    path = tmp_path / "not" / "yet" / "agentops.db"
    async with serving(f"sqlite://{path}", tmp_path) as (proc, _):
        assert path.is_file()
        proc.send_signal(sig)
        code, err, took = await timed_exit(proc)
    assert code == status, err
    assert "stopping: no calls in flight" in err and "Traceback" not in err
    assert took < 5, f"an idle gateway took {took:.1f} s to stop"


def _unopenable(tmp_path: Path) -> list[tuple[str, str]]:
    """SQLite paths that cannot be used, with what the one-line error must say."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder.db").mkdir()
    (tmp_path / "not-sqlite.db").write_bytes(b"this is not a SQLite database, " * 8)
    return [
        (str(tmp_path / "a-file" / "sub" / "x.db"), "is a file, not a folder"),
        ("/proc/agentops-test/x.db", "cannot create the folder /proc/agentops-test"),
        ("/sys/agentops-test/x.db", "cannot create the folder /sys/agentops-test"),
        (str(tmp_path / "a-folder.db"), "it is a folder"),
        (str(tmp_path / "not-sqlite.db"), "file is not a database"),
    ]


@pytest.mark.parametrize("case", range(5))
async def test_sqlite_path_that_cannot_be_used_is_one_line_at_once(tmp_path: Path, case: int):
    path, why = _unopenable(tmp_path)[case]
    code, err, took = await run(
        "serve",
        "--db",
        f"sqlite://{path}",
        "--port",
        "0",
        "--ui-port",
        "0",
        "--spool-dir",
        str(tmp_path / "spool"),
    )
    assert code == 2, err
    assert why in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert took < 10


@pytest.mark.parametrize("under", ["", "sub"])
async def test_a_spool_dir_that_is_a_file_says_so(tmp_path: Path, under: str):
    """`--spool-dir` naming a file (or a folder inside one): the line names the file (was
    "File exists")."""
    (tmp_path / "a-file").write_text("x")
    spool = tmp_path / "a-file" / under if under else tmp_path / "a-file"
    code, err, _ = await run(
        "serve",
        *("--db", f"sqlite://{tmp_path / 'ok.db'}", "--port", "0", "--ui-port", "0"),
        *("--spool-dir", str(spool)),
    )
    assert code == 2, err
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


async def test_a_new_sqlite_file_on_a_read_only_file_system_says_so(tmp_path: Path):
    """SQLite says only "unable to open database file" for a new file in a folder it cannot
    write: the line names the folder and why."""
    with tmpfs(tmp_path / "ro", "size=1m,ro") as disk:
        code, err, _ = await run(
            "serve",
            *("--db", f"sqlite://{disk / 'new.db'}", "--port", "0", "--ui-port", "0"),
            *("--spool-dir", str(tmp_path / "spool")),
        )
    assert code == 2, err
    assert f"{disk} is read-only" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


async def test_second_ctrl_c_cuts_the_call_in_flight_and_records_it(
    upstream: Upstream, tmp_path: Path
):
    """The first Ctrl-C waits (the grace is 60 s) and says so; the second exits at once,
    says it cut the call, and the call is stored with state `shutdown`."""
    db = f"sqlite://{tmp_path / 'cut.db'}"
    async with serving(db, tmp_path, "--shutdown-grace", "60", upstream=upstream.url) as (
        proc,
        port,
    ):

        async def hanging_call() -> None:
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.ClientError):
                    async with http.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json={"model": "mistral-small-latest", "messages": []},
                        headers={"x-fake-hang": "1"},
                    ) as resp:
                        await resp.read()

        call = asyncio.create_task(hanging_call())
        for _ in range(200):  # until the upstream holds it
            if upstream.requests:
                break
            await asyncio.sleep(0.05)
        assert upstream.requests, "the call never reached the upstream"
        seen: list[str] = []
        proc.send_signal(signal.SIGINT)
        hint = await line_with(proc, "stopping:", seen)
        assert "waiting up to 60 s for 1 call in flight" in hint
        assert "press Ctrl-C again to stop now" in hint
        proc.send_signal(signal.SIGINT)
        code, err, took = await timed_exit(proc)
        await asyncio.wait_for(call, QUICK)
    assert code == 130, err
    assert "cut 1 call in flight" in err and "Traceback" not in err
    assert took < 5, f"took {took:.1f} s to exit after the second Ctrl-C"
    items = await listed(db, 10)
    assert [item.state for item in items] == ["shutdown"]


@pytest.mark.parametrize("target", ["/proc/x.csv", "missing/x.csv", "folder"])
async def test_export_to_a_path_that_cannot_be_written_is_one_line_at_once(
    db_url: str, tmp_path: Path, target: str
):
    (tmp_path / "folder").mkdir()
    out = target if target.startswith("/") else str(tmp_path / target)
    code, err, took = await run("export", "--format", "csv", "--out", out, "--db", db_url)
    assert code == 2, err
    assert "--out" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert took < 10
    assert not list(Path(os.path.dirname(out) or ".").glob(".agentops-export-*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_ends_a_start_that_waits_for_the_database(
    tmp_path: Path, sig: signal.Signals
):
    """A database that accepts the connection and never answers keeps the start waiting
    (asyncpg's own timeout is a minute): a signal still ends it at once, with one line."""
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--db",
        f"postgres://postgres@127.0.0.1:{port}/none",
        "--port",
        "0",
        "--ui-port",
        "0",
        "--spool-dir",
        str(tmp_path / "spool"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(accepted.wait(), QUICK)
        proc.send_signal(sig)
        code, err, took = await timed_exit(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for writer in held:
            writer.close()
        server.close()
    assert code == 130, err
    assert err.strip() == "agentops-studio: interrupted while starting"
    assert took < 5
