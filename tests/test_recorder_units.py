"""The recorder (gateway/writer/recorder.py) on its own, in milliseconds: no gateway, no writer
process; a real migrated SQLite store in tmp_path, a real spool, the real Mistral provider.
The end-to-end cases (a database cut mid-run, a full spool) are in tests/test_recorder.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import orjson
import pytest

from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.capture.rows import Rows
from gateway.providers import provider_named
from gateway.providers.mistral import MistralProvider
from gateway.runs.grouper import Grouper
from gateway.store.exchanges import Store
from gateway.store.runs import RunStore
from gateway.writer.recorder import BATCH_BYTES, Recorder
from gateway.writer.spool import Spool
from tests.conftest import migrated_sqlite

PRICES = PriceTable.load(None)


def record(text: str, provider: str = "mistral") -> Exchange:
    request = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": text}]}
    answer = {
        "id": f"cmpl-{text}",
        "object": "chat.completion",
        "model": "mistral-small-latest",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    return Exchange(
        id=new_id(),
        started_at=1.8e9,
        method="POST",
        client_path="/v1/chat/completions",
        path="/v1/chat/completions",
        query="",
        request_headers=[("content-type", "application/json")],
        request_body=orjson.dumps(request),
        provider=provider,
        status=200,
        response_headers=[("content-type", "application/json")],
        response_chunks=[orjson.dumps(answer)],
        latency_ms=12.0,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(migrated_sqlite(tmp_path / "recorder.db"))
    await store.open(migrate_schema=False)
    yield store
    await store.close()


def recorder(
    store: Store, tmp_path: Path, queue_size: int = 100, spool_bytes: int = 10_000_000
) -> Recorder:
    """A recorder as the writer process builds one (gateway/writer/child.py)."""
    run_store = RunStore(store)
    return Recorder(
        store,
        Spool(tmp_path / "spool", spool_bytes),
        partial(provider_named, {"mistral": MistralProvider()}),
        PRICES,
        max_body_bytes=1_000_000,
        queue_size=queue_size,
        grouper=Grouper(300.0),
        run_store=run_store,
    )


async def test_records_are_stored_in_one_batch_then_settled(store: Store, tmp_path: Path):
    rec = recorder(store, tmp_path)
    batches: list[int] = []
    settled: list[int] = []

    def written(rows: list[Rows]) -> None:
        batches.append(len(rows))

    rec.on_written.append(written)
    rec.on_settled = settled.extend
    records = [record(f"q{n}") for n in range(5)]
    rec.start()
    assert all(rec.submit(r) for r in records)
    await rec.drained(timeout=5)
    assert batches == [5]  # one transaction for what arrived within the linger
    assert settled == [r.id for r in records]
    assert await store.count() == 5
    health = rec.health()
    assert (health.written_records, health.queue_depth, health.database) == (5, 0, "ok")
    assert (health.spooled_records, health.dropped_records, health.spool_bytes) == (0, 0, 0)
    await rec.stop(timeout=1)


async def test_a_full_queue_spools_and_loses_nothing(store: Store, tmp_path: Path):
    rec = recorder(store, tmp_path, queue_size=2)
    records = [record(f"q{n}") for n in range(5)]
    assert [rec.submit(r) for r in records] == [True, True, False, False, False]
    health = rec.health()
    assert health.queue_depth == 2 and health.queue_size == 2 and health.spooled_records == 3
    rec.start()
    await rec.drained(timeout=5)
    assert await store.count() == 5
    assert rec.health().spool_bytes == 0  # replayed, then the file removed
    await rec.stop(timeout=1)


async def test_a_record_whose_rows_cannot_be_built_is_quarantined(store: Store, tmp_path: Path):
    rec = recorder(store, tmp_path)
    rec.start()
    rec.submit(record("good"))
    rec.submit(record("odd", provider="nope"))  # no such provider here
    await rec.drained(timeout=5)
    assert await store.count() == 1
    assert await store.quarantine_count() == 1
    health = rec.health()
    assert health.quarantined_by_writer == 1 and health.dropped_records == 0
    await rec.stop(timeout=1)


async def test_a_record_stored_again_is_one_row(store: Store, tmp_path: Path):
    """A spool replayed after a crash may hold records already stored."""
    rec = recorder(store, tmp_path)
    rec.start()
    again = record("again")
    rec.submit(again)
    await rec.drained(timeout=5)
    rec.submit(again)
    await rec.drained(timeout=5)
    assert await store.count() == 1 and await store.quarantine_count() == 0
    await rec.stop(timeout=1)


async def test_stop_spools_what_is_left_for_the_next_recorder(store: Store, tmp_path: Path):
    first = recorder(store, tmp_path)
    for n in range(3):
        first.submit(record(f"left{n}"))  # never started: nothing drains the queue
    await first.stop(timeout=0.01)
    assert first.health().spooled_records == 3 and await store.count() == 0

    second = recorder(store, tmp_path)
    assert second.health().spool_bytes > 0
    second.start()
    await second.drained(timeout=5)
    assert await store.count() == 3 and second.health().spool_bytes == 0
    await second.stop(timeout=1)


async def test_a_database_down_spools_then_the_spool_is_replayed(store: Store, tmp_path: Path):
    rec = recorder(store, tmp_path)
    rec.start()
    await store.conn.execute_script("ALTER TABLE exchanges RENAME TO exchanges_away")
    rec.submit(record("while down"))
    await rec.queue.join()  # written: to the spool, as the table is gone
    health = rec.health()
    assert health.database == "down" and health.database_errors == 1
    assert health.last_database_error is not None and "exchanges" in health.last_database_error
    assert health.spooled_records == 1 and health.spool_bytes > 0

    await store.conn.execute_script("ALTER TABLE exchanges_away RENAME TO exchanges")
    await rec.drained(timeout=5)  # the recovery loop's next try
    health = rec.health()
    assert health.database == "ok" and health.spool_bytes == 0
    assert await store.count() == 1
    await rec.stop(timeout=1)


async def test_batches_are_bounded_by_the_bytes_of_their_bodies(store: Store, tmp_path: Path):
    """A batch closes at BATCH_BYTES of bodies, from the spool and from the queue alike: 500
    records of 100 KB in one batch made the writer's heap grow by hundreds of MiB."""
    big = BATCH_BYTES * 3 // 16  # in the request and the answer: three reach the bound
    rec = recorder(store, tmp_path, spool_bytes=100 * BATCH_BYTES)
    batches: list[int] = []
    rec.on_written.append(lambda rows: batches.append(len(rows)))
    rec.spool.append([record(f"s{n} " + "x" * big) for n in range(8)])
    rec.start()
    await rec.drained(timeout=30)
    assert batches == [3, 3, 2]
    assert all(rec.submit(record(f"q{n} " + "x" * big)) for n in range(5))
    await rec.drained(timeout=30)
    assert batches == [3, 3, 2, 3, 2]
    assert await store.count() == 13
    await rec.stop(timeout=1)
