"""A record the database refuses is set aside, never retried forever, never blocking the
others: the refusal is a real one (a trigger on SQLite, a CHECK constraint on PostgreSQL), the
records around it are stored, and the quarantine is listed, retried and dropped through the
API and the CLI."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.capture.exchange import Exchange, new_id
from gateway.store.exchanges import Store
from gateway.writer import quarantine
from tests.conftest import Upstream, make_settings, running

POISON_SQLITE = (
    "CREATE TRIGGER poison BEFORE INSERT ON exchanges WHEN NEW.path LIKE "
    "'%poison%' BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
)
POISON_PG = "ALTER TABLE exchanges ADD CONSTRAINT poison CHECK (path NOT LIKE '%poison%')"
CURE_SQLITE = "DROP TRIGGER poison"
CURE_PG = "ALTER TABLE exchanges DROP CONSTRAINT poison"


def record(path: str, body: bytes = b'{"model": "m", "messages": []}') -> Exchange:
    return Exchange(
        id=new_id(),
        started_at=1.8e9,
        method="POST",
        client_path=path,
        path=path,
        query="",
        request_headers=[("x-weird", "\udcff")],
        request_body=body,
        status=200,
        response_headers=[("content-type", "application/json")],
        response_chunks=[b'{"choices": []}'],
        chunk_ms=[1.0],
        latency_ms=3.0,
    )


async def poison(store: Store, cure: bool = False) -> None:
    if store.dialect == "sqlite":
        await store.conn.execute_script(CURE_SQLITE if cure else POISON_SQLITE)
    else:
        await store.conn.execute_script(CURE_PG if cure else POISON_PG)


async def api(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[int, dict]:
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else {})


async def test_a_refused_record_is_quarantined_and_the_batch_around_it_stored(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        await poison(gw.store)
        batch = [record(f"/v1/chat/completions/{n}") for n in range(40)]
        bad = record("/v1/poison/chat")
        batch.insert(17, bad)
        for item in batch:
            gw.recorder.submit(item)
        await gw.recorder.drained(timeout=30)
        assert await gw.store.count() == 40  # every neighbour stored
        async with aiohttp.ClientSession() as http:
            status, listed = await api(http, "GET", f"{gw.ui_url}/api/quarantine")
            assert status == 200 and listed["next"] is None
            (item,) = listed["items"]
            assert item["id"] == str(bad.id) and "poison" in item["error"]
            assert item["size_bytes"] > 0 and item["captured_at"].endswith("Z")
            status, health = await api(http, "GET", f"{gw.ui_url}/healthz")
            assert health["status"] == "degraded" and health["reasons"] == ["quarantined"]
            assert health["quarantined"] == 1 and health["database"] == "ok"

            # Recording goes on: new calls after the refusal are stored.
            later = [record("/v1/chat/completions/later") for _ in range(3)]
            for item in later:
                gw.recorder.submit(item)
            await gw.recorder.drained(timeout=30)
            assert await gw.store.count() == 43

            # Retried while the cause is still there: refused again, still quarantined.
            status, result = await api(
                http, "POST", f"{gw.ui_url}/api/quarantine/retry", json={"ids": [str(bad.id)]}
            )
            assert status == 200 and result["refused_again"] == 1 and result["stored"] == 0
            await poison(gw.store, cure=True)
            status, result = await api(http, "POST", f"{gw.ui_url}/api/quarantine/retry", json={})
            assert status == 200 and (result["retried"], result["stored"]) == (1, 1)
            status, stored = await api(http, "GET", f"{gw.ui_url}/api/exchanges/{bad.id}")
            assert status == 200 and stored["request_headers"] == [["x-weird", "\\xff"]]
            status, health = await api(http, "GET", f"{gw.ui_url}/healthz")
            assert health["status"] == "ok" and health["quarantined"] == 0, health

            # Bad input on the API gets a 400 or a 404, never a 500.
            status, _ = await api(
                http, "POST", f"{gw.ui_url}/api/quarantine/retry", json={"ids": ["x"]}
            )
            assert status == 400
            status, _ = await api(http, "DELETE", f"{gw.ui_url}/api/quarantine/123")
            assert status == 404
            status, _ = await api(http, "GET", f"{gw.ui_url}/api/quarantine?limit=0")
            assert status == 400


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "quarantine", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_quarantine_cli_lists_retries_and_drops(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'q.db'}"
    settings = make_settings(upstream.url, db, tmp_path)
    first, second = record("/v1/poison/a"), record("/v1/poison/b")
    async with running(settings) as gw:
        await poison(gw.store)
        gw.recorder.submit(first)
        gw.recorder.submit(second)
        await gw.recorder.drained(timeout=30)
        await poison(gw.store, cure=True)
    flags = ("--db", db, "--spool-dir", str(tmp_path / "cli-spool"))

    listed = await asyncio.to_thread(cli, "list", "--db", db)
    assert listed.returncode == 0, listed.stderr
    assert str(first.id) in listed.stdout and str(second.id) in listed.stdout
    assert "poison refused" in listed.stdout

    retried = await asyncio.to_thread(cli, "retry", str(first.id), *flags)
    assert retried.returncode == 0, retried.stderr
    assert "retried 1: 1 stored, 0 refused again" in retried.stdout

    dropped = await asyncio.to_thread(cli, "drop", str(second.id), "--db", db)
    assert dropped.returncode == 0 and "dropped 1" in dropped.stdout

    for bad in (
        ("drop", "nope", "--db", db),
        ("drop", str(second.id), "--db", db),
        ("retry", "12", *flags),
    ):
        result = await asyncio.to_thread(cli, *bad)
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        assert result.stderr.startswith("agentops-studio: error:"), result.stderr

    store = Store(db)
    await store.open()
    try:
        assert await store.quarantine_count() == 0
        assert await store.existing([first.id, second.id]) == {first.id}
    finally:
        await store.close()


# -- which errors mean "the database is down" -----------------------------------------------


async def test_connection_errors_mean_down_data_errors_do_not(tmp_path: Path):
    with pytest.raises(OSError) as refused:
        await asyncpg.connect("postgres://postgres@127.0.0.1:1/x", timeout=2)
    assert quarantine.database_down(refused.value)

    folder = tmp_path / "dir.db"
    folder.mkdir()
    with pytest.raises(sqlite3.OperationalError) as unopenable:
        sqlite3.connect(folder).execute("SELECT 1")
    assert quarantine.database_down(unopenable.value)

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        db.execute("INSERT INTO t VALUES (1)")
    assert not quarantine.database_down(duplicate.value)
    with pytest.raises(OverflowError) as huge:
        db.execute("INSERT INTO t VALUES (?)", (2**70,))
    assert not quarantine.database_down(huge.value)


def test_a_quarantined_record_round_trips_and_cannot_run_code():
    original = record("/v1/x", body=bytes(range(256)))
    again = quarantine.decode(quarantine.encode(original))
    assert again == original
    import pickle
    import zlib

    hostile = zlib.compress(pickle.dumps(subprocess.Popen))
    with pytest.raises(pickle.UnpicklingError):
        quarantine.decode(hostile)


async def test_an_unknown_provider_is_quarantined_not_misparsed(upstream: Upstream, tmp_path: Path):
    """A record naming a provider this gateway lacks (a spool from another version) is set
    aside with the reason, never parsed as a Mistral call; the list previews each row with
    its own provider (a TTS call by the text it speaks)."""
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'p.db'}", tmp_path)
    async with running(settings) as gw:
        stranger = record("/v1/chat/completions")
        stranger.provider = "nonesuch"
        tts = record("/v1/text-to-speech/voice", body=b'{"text": "Hello from the TTS row"}')
        tts.provider = "elevenlabs"
        tts.request_headers = [("content-type", "application/json")]
        tts.response_headers = [("content-type", "audio/mpeg")]
        for item in (stranger, tts):
            gw.recorder.submit(item)
        await gw.recorder.drained(timeout=30)
        async with aiohttp.ClientSession() as http:
            status, listed = await api(http, "GET", f"{gw.ui_url}/api/quarantine")
            assert status == 200
            async with http.get(f"{gw.ui_url}/") as resp:
                page = await resp.text()
    (item,) = listed["items"]
    assert item["id"] == str(stranger.id) and "no provider named 'nonesuch'" in item["error"]
    assert "Hello from the TTS row" in page
