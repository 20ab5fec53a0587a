"""Capture never hurts the call and loses nothing: database down then back, a full queue, a
full spool, restarts with a non-empty spool.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.store.exchanges import ExchangeFilter
from tests.conftest import (
    CALL_KEY,
    Upstream,
    calls,
    health,
    make_settings,
    running,
    wait_until,
)

KEY = CALL_KEY


@pytest.mark.postgres
async def test_database_down_then_back_loses_nothing(
    upstream: Upstream, relayed_pg, tmp_path: Path
):
    db, relay = relayed_pg
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        assert await calls(gw, 5, "before") == [200] * 5
        await gw.recorder.drained(timeout=10)

        await relay.cut()
        assert await calls(gw, 20, "during") == [200] * 20  # calls never notice

        async def spooling() -> bool:
            state = await health(gw)
            return state["database"] == "down" and state["spool_bytes"] > 0

        await wait_until(spooling)
        assert (await health(gw))["status"] == "degraded"
        spool_files = list((tmp_path / "spool").glob("spool-*.bin"))
        assert spool_files
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in spool_files)
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        assert not any(KEY.encode() in f.read_bytes() for f in spool_files)

        await relay.restore()
        await gw.recorder.drained(timeout=30)
        assert await gw.store.count() == 25
        state = await health(gw)
        assert state["status"] == "ok" and state["spool_bytes"] == 0
        assert state["dropped_records"] == 0


async def test_full_queue_spills_to_spool_and_is_replayed(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'q.db'}", tmp_path)
    async with running(settings.replace(queue_size=1)) as gw:
        assert await calls(gw, 60, "burst") == [200] * 60
        await gw.recorder.drained(timeout=30)
        assert await gw.store.count() == 60  # spooled records replayed, none twice
        state = await health(gw)
        assert state["spooled_records"] > 0 and state["dropped_records"] == 0


async def test_bodies_past_queue_max_bytes_spill_to_spool_and_are_replayed(
    upstream: Upstream, tmp_path: Path
):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'b.db'}", tmp_path)
    async with running(settings.replace(queue_max_bytes=1)) as gw:
        assert await calls(gw, 20, "heavy") == [200] * 20
        await gw.recorder.drained(timeout=30)
        assert await gw.store.count() == 20
        state = await health(gw)
        # every body was over the limit, so every record went through the spool
        assert state["spooled_records"] == 20 and state["dropped_records"] == 0


@pytest.mark.postgres
async def test_spool_limit_drops_and_counts(upstream: Upstream, relayed_pg, tmp_path: Path):
    db, relay = relayed_pg
    gw = Gateway(make_settings(upstream.url, db, tmp_path, spool_max_bytes=4096))
    await gw.start()
    try:
        await relay.cut()
        assert await calls(gw, 30, "overflow") == [200] * 30

        async def dropping() -> bool:
            return (await health(gw))["dropped_records"] > 0

        await wait_until(dropping)
        state = await health(gw)
        assert state["status"] == "degraded" and state["spool_bytes"] <= 4096
    finally:
        await relay.restore()
        await gw.stop()


async def test_spool_left_by_a_previous_run_is_written_at_start(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'restart.db'}"
    async with running(make_settings(upstream.url, db, tmp_path)) as first:
        await calls(first, 3, "kept")
        await first.recorder.drained(timeout=10)
        # Records that were spooled but never replayed (say, the process was killed):
        items, _ = await first.store.list_exchanges(ExchangeFilter(), 10, None)
    from gateway.capture.exchange import Exchange, new_id
    from gateway.store.exchanges import micros
    from gateway.writer.spool import Spool

    spool = Spool(tmp_path / "spool", 10**9)
    orphan = Exchange(
        id=new_id(),
        started_at=time.time(),
        method="POST",
        client_path="/v1/chat/completions",
        path="/v1/chat/completions",
        query="",
        request_headers=[],
        request_body=b'{"model": "m"}',
        status=200,
    )
    # The same record written again (a replay) is skipped; another record that has a stored
    # id (two processes made one id) is stored under a new id, never dropped.
    async with running(make_settings(upstream.url, db, tmp_path)) as peek:
        stored = await peek.store.rows(
            "SELECT started_at, client_path FROM exchanges WHERE id = ?", [items[0].id]
        )
    duplicate = Exchange(
        id=items[0].id,
        started_at=micros(stored[0]["started_at"]) / 1e6,
        method="POST",
        client_path=stored[0]["client_path"],
        path="/x",
        query="",
        request_headers=[],
        request_body=b"",
        status=200,
    )
    colliding = Exchange(
        id=items[1].id,
        started_at=time.time(),
        method="POST",
        client_path="/x",
        path="/x",
        query="",
        request_headers=[],
        request_body=b"",
        status=200,
    )
    spool.append([orphan, duplicate, colliding])
    spool.close()

    async with running(make_settings(upstream.url, db, tmp_path)) as second:
        await second.recorder.drained(timeout=10)
        # the orphan added, the duplicate skipped, the colliding record kept with a new id
        assert await second.store.count() == 5
        found = await second.store.rows("SELECT id FROM exchanges WHERE client_path = '/x'")
        assert len(found) == 1 and found[0]["id"] != items[1].id
        assert not list((tmp_path / "spool").glob("spool-*.bin"))
