"""/healthz tells the truth: each reason appears with its cause and clears when the cause
does (database and spool: tests/test_recorder.py; quarantined: tests/test_quarantine.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp

from gateway.api.exchanges import health_reasons
from gateway.writer.health import Health, WriterHealth, retire, totals
from tests.conftest import Upstream, calls, health, make_settings, running


async def reasons_become(gw, wanted: list[str], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = await health(gw)
        if state["reasons"] == wanted:
            return state
        assert time.monotonic() < deadline, f"reasons stayed {state['reasons']}, not {wanted}"
        await asyncio.sleep(0.05)


async def test_writer_lag_is_a_reason_until_the_writer_catches_up(
    upstream: Upstream, tmp_path: Path
):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'lag.db'}", tmp_path)
    async with running(settings) as gw:
        gw.recorder.lag_seconds = 0.3  # instead of 10 s
        writer = gw.recorder.pid
        os.kill(writer, signal.SIGSTOP)
        try:
            assert await calls(gw, 5, "waiting") == [200] * 5
            state = await reasons_become(gw, ["writer_lag"])
            assert state["status"] == "degraded" and state["writer_lag_seconds"] > 0.3
        finally:
            os.kill(writer, signal.SIGCONT)
        state = await reasons_become(gw, [])
        assert state["status"] == "ok" and state["writer_lag_seconds"] == 0


async def test_a_dead_writer_is_a_reason_until_it_is_back(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'dead.db'}", tmp_path)
    async with running(settings) as gw:
        os.kill(gw.recorder.pid, signal.SIGKILL)
        await reasons_become(gw, ["writer"])
        await reasons_become(gw, [])  # restarted
        assert await calls(gw, 3, "after") == [200] * 3
        await gw.recorder.drained(timeout=15)
        assert await gw.store.count() == 3
        async with aiohttp.ClientSession() as http, http.get(f"{gw.ui_url}/healthz") as resp:
            assert (await resp.json())["writer_process"] == "ok"


def test_each_reason_has_its_cause():
    calm = {
        "database": "ok",
        "spool_bytes": 0,
        "quarantined": 0,
        "writer_lagging": False,
        "writer_process": "ok",
        "dropped_recently": False,
    }
    assert health_reasons(calm) == []
    causes = {
        "database": {"database": "down"},
        "spool": {"spool_bytes": 10},
        "quarantined": {"quarantined": 2},
        "writer_lag": {"writer_lagging": True},
        "writer": {"writer_process": "down"},
        "dropped": {"dropped_recently": True},
    }
    for reason, cause in causes.items():
        assert health_reasons({**calm, **cause}) == [reason]


def test_the_typed_health_becomes_the_same_healthz_fields():
    """Health is a dataclass until /healthz; the writer's own fields appear once it reported."""
    report = WriterHealth(
        queue_depth=9,  # the writer's own queue: /healthz counts the proxy's side
        queue_size=10_000,
        spool_bytes=100,
        spooled_records=2,
        dropped_records=1,
        written_records=40,
        database="ok",
        database_errors=0,
        quarantined_by_writer=3,
        last_database_error=None,
        checked_at=1.8e9,
        integrations={"otel": {"queued": 0, "sent": 5, "dropped": 0, "last_error": None}},
    )
    proxy_side = {
        "queue_depth": 4,
        "queue_size": 10_000,
        "spool_bytes": 150,
        "spooled_records": 3,
        "dropped_records": 1,
    }
    tail = {
        "writer_process": "ok",
        "writer_pid": 1234,
        "missing_calls": 0,
        "recovered_records": 2,
        "journal": "ok",
        "database": "ok",
        "writer_lag_seconds": 0.0,
        "writer_lagging": False,
        "dropped_recently": True,
    }
    health = Health(writer=report, **proxy_side, **tail)
    assert list(health.to_json().items()) == [
        *proxy_side.items(),
        ("written_records", 40),
        ("database", "ok"),
        ("database_errors", 0),
        ("quarantined_by_writer", 3),
        ("last_database_error", None),
        ("checked_at", 1.8e9),
        ("integrations", report.integrations),
        ("waiting_for_parent", 0),
        ("id_collisions", 0),
        *[(k, v) for k, v in tail.items() if k != "database"],
    ]
    lost = Health(writer=None, **proxy_side, **{**tail, "database": "unknown"})
    assert list(lost.to_json().items()) == [
        *proxy_side.items(),
        *{**tail, "database": "unknown"}.items(),
    ]


def test_worker_totals_add_counts_keep_the_worst_and_the_retired():
    """`serve --workers N`: counts add up over the supervisor, the live workers and the
    workers since replaced (counters only); the lag is the longest, a flag holds if it holds
    anywhere, integrations add up per name; the supervisor's own figures stay beside."""
    own = {
        "queue_depth": 1,
        "spool_bytes": 0,
        "dropped_records": 0,
        "written_records": 5,
        "integrations": {"otel": {"sent": 2, "dropped": 0, "queued": 0}},
        "writer_lag_seconds": 0.1,
        "writer_lagging": False,
        "dropped_recently": False,
    }
    worker = {
        "queue_depth": 2,
        "spool_bytes": 300,
        "dropped_records": 1,
        "written_records": 7,
        "integrations": {"otel": {"sent": 3, "dropped": 1, "queued": 4}},
        "writer_lag_seconds": 2.5,
        "writer_lagging": True,
        "dropped_recently": True,
    }
    relay = {"queue_depth": 3, "spool_bytes": 0, "dropped_records": 0, "database": "relayed"}
    retired: dict[str, int] = {}
    retire(retired, {"written_records": 11, "queue_depth": 9, "spool_bytes": 99})
    got = totals(own, [worker, relay], retired)
    assert (got["written_records"], got["dropped_records"]) == (5 + 7 + 11, 1)
    assert (got["queue_depth"], got["spool_bytes"]) == (6, 300)  # gauges: live processes only
    assert got["writer_lag_seconds"] == 2.5 and got["writer_lagging"] and got["dropped_recently"]
    assert got["integrations"] == {"otel": {"sent": 5, "dropped": 1, "queued": 4}}
    assert got["supervisor"]["written_records"] == 5 and list(got)[: len(own)] == list(own)
    assert health_reasons({**got, "database": "ok"})[:2] == ["spool", "writer_lag"]
