"""The command line as a user meets it: a real `agentops-studio` process, its --help, its one-line
errors, SIGTERM with calls in flight, and `purge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from gateway.settings import SETTINGS
from gateway.store.exchanges import Store
from tests.conftest import (
    CLI,
    ROOT,
    Upstream,
    calls,
    free_port,
    listed,
    running,
    tmpfs,
    wait_for_health,
    wait_until,
)


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_help_lists_every_setting():
    code, out, _ = await run("serve", "--help")
    assert code == 0
    for setting in SETTINGS:
        assert setting.flag in out and setting.env in out


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert setting.flag in readme, f"README does not document {setting.flag}"
        assert setting.env in readme, f"README does not document {setting.env}"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["serve", "--port", "eighty"], {}, "--port"),
        (["serve", "--max-body-bytes", "lots"], {}, "--max-body-bytes"),
        (["serve", "--upstream", "ftp://x"], {}, "--upstream"),
        (["serve", "--db", "mysql://x"], {}, "--db"),
        (["serve", "--db", "sqlite://"], {}, "--db names no SQLite file"),
        (["serve"], {"AGENTOPS_QUEUE_SIZE": "-3"}, "AGENTOPS_QUEUE_SIZE"),
        (["serve", "--ui-host", "0.0.0.0"], {}, "without a token"),
        (["serve", "--no-such-flag"], {}, "no-such-flag"),
        (["purge", "--older-than", "soon"], {}, "--older-than"),
        (["purge", "--older-than", "nan"], {}, "--older-than"),
        (["purge", "--older-than", "inf"], {}, "--older-than"),
        (["purge", "--older-than", "99999999999999999999d"], {}, "--older-than"),
        (
            ["serve", "--alert-interval", "nan", "--db", "sqlite:///no/such/dir/x.db"],
            {},
            "--alert-interval",
        ),
        (["quarantine", "drop", "\u00b2"], {}, "not a record id"),
        (["quarantine", "retry", "9999999999999999999"], {}, "not a record id"),
        (["dataset", "experiment-export", "\u00b2", "--out", "x"], {}, "not an experiment id"),
        (["dataset", "experiment-export", "1", "--out", "x", "--url", "nope"], {}, "--url"),
        (["purge", "--older-than", "1e9"], {}, "--older-than"),
        (["purge", "--older-than", "5x"], {}, "--older-than"),
    ],
)
async def test_bad_input_gives_one_clear_line(args, env, expected):
    code, _, err = await run(*args, env=env)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err


async def test_unreachable_database_is_one_line(tmp_path: Path):
    port = free_port()
    code, _, err = await run(
        "serve",
        "--db",
        f"postgres://nobody@127.0.0.1:{port}/none",
        "--port",
        "0",
        "--ui-port",
        "0",
        "--spool-dir",
        str(tmp_path / "s"),
    )
    assert code == 2
    assert "cannot open database" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("left_open", [True, False])
async def test_a_database_on_a_full_disk_is_one_line(tmp_path: Path, left_open: bool):
    """A gateway restarted while its SQLite database's disk is full: its schema is current
    (nothing to migrate) but it cannot write, so it stops with one line saying the disk is
    full, not a traceback from the first write (its node lease) nor a bare "disk I/O error".
    `left_open`: the database's -wal and -shm files are there (another process has it open,
    or the last one was killed); else SQLite cannot even create them."""
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        db = f"sqlite://{disk / 'gw.db'}"
        store = Store(db)
        await store.open()  # migrated while there was room
        await store.close()
        holder = sqlite3.connect(disk / "gw.db")
        if left_open:
            holder.execute("PRAGMA journal_mode=WAL").fetchone()
            holder.execute("SELECT count(*) FROM exchanges").fetchone()
        filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # until the disk is full
            while os.write(filler, b"\0" * 65536):
                pass
        os.close(filler)
        code, _, err = await run(
            "serve",
            *("--db", db, "--port", "0", "--ui-port", "0", "--spool-dir", str(tmp_path / "s")),
        )
        holder.close()
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "disk is full" in err and "gw.db" in err, err


async def test_bad_price_file_is_one_line(tmp_path: Path):
    prices = tmp_path / "prices.toml"
    prices.write_text("[models.x]\ninput_per_mtok = 'free'\n")
    code, _, err = await run(
        "serve", "--prices", str(prices), "--db", f"sqlite://{tmp_path / 'p.db'}"
    )
    assert code == 2 and str(prices) in err and "Traceback" not in err


async def _answered(upstream: Upstream, count: int) -> bool:
    return len(upstream.requests) >= count


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


@pytest.mark.slow
async def test_sigterm_finishes_short_calls_and_records_long_ones(
    upstream: Upstream, tmp_path: Path
):
    port, ui_port = free_port(), free_port()
    db = f"sqlite://{tmp_path / 'term.db'}"
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
        "--shutdown-grace",
        "1.5",
        "--spool-dir",
        str(tmp_path / "spool"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_health(f"http://127.0.0.1:{ui_port}", proc)
        proxy = f"http://127.0.0.1:{port}/v1/chat/completions"

        async def stream(chunks: int, delay_ms: int) -> tuple[int, bytes]:
            payload = {
                "model": "mistral-small-latest",
                "stream": True,
                "messages": [{"role": "user", "content": "in flight"}],
            }
            headers = {
                "Authorization": "Bearer k",
                "x-fake-chunks": str(chunks),
                "x-fake-chunk-delay-ms": str(delay_ms),
            }
            async with (
                aiohttp.ClientSession() as http,
                http.post(proxy, json=payload, headers=headers) as resp,
            ):
                body = b""
                try:
                    async for chunk in resp.content.iter_any():
                        body += chunk
                except aiohttp.ClientPayloadError:
                    pass
                return resp.status, body

        short = asyncio.create_task(stream(4, 200))  # 0.8 s: inside the grace period
        long = asyncio.create_task(stream(100, 100))  # 10 s: cut at shutdown
        await wait_until(lambda: _answered(upstream, 2))  # both streams have begun
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: _refused(port))
        with pytest.raises(aiohttp.ClientError):  # new connections are refused
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/v1/models"),
            ):
                pass
        status, body = await short
        assert status == 200 and b"[DONE]" in body
        _, partial = await long
        assert b"[DONE]" not in partial
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    items = await listed(db, 10)
    assert sorted(item.state for item in items) == ["complete", "shutdown"]


async def test_purge(upstream: Upstream, tmp_path: Path):
    from tests.conftest import make_settings

    db = f"sqlite://{tmp_path / 'purge.db'}"
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        await calls(gw, 3, "old")
        await gw.recorder.drained(timeout=10)
    code, out, _ = await run("purge", "--older-than", "1d", "--db", db)
    assert code == 0 and re.search(r"removed 0 exchanges", out)
    code, out, _ = await run("purge", "--older-than", "0.000001", "--db", db)
    assert code == 0 and "removed 3 exchanges" in out


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--format", "jsonl", "--out", "-"],
        ["reprice"],
        ["purge", "--older-than", "30d"],
        ["quarantine", "list"],
        ["quarantine", "drop", "1"],
        ["dataset", "list"],
        ["dataset", "export", "d", "--out", "d.jsonl"],
    ],
    ids=lambda args: "-".join(args[:2]),
)
async def test_a_command_on_a_database_that_is_not_there_says_so(tmp_path: Path, args):
    """A mistyped --db (or the default ./agentops.db from another folder): these commands
    created the folders and an empty database there and answered "exported 0 calls",
    "0 quarantined records", exit 0. They read or change what was recorded; only `serve`,
    `import` and `dataset create` make a new database."""
    missing = tmp_path / "typo" / "agentops.db"
    code, out, err = await run(*args, "--db", f"sqlite://{missing}")
    assert code == 2, (out, err)
    assert f"no SQLite database at {missing}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "typo").exists()
