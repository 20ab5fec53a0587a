"""The integrations' worker: a full queue drops and counts without blocking; a failing backend
is logged once (not once per batch) until it works again."""

from __future__ import annotations

import logging
import threading

import pytest

from gateway.integrations.worker import Worker


async def test_full_queue_and_failing_backend_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
):
    release, entered = threading.Event(), threading.Event()
    failing = True
    delivered: list[int] = []

    def deliver(batch: list[int]) -> None:
        entered.set()
        release.wait(10)
        if failing:
            raise ConnectionError("collector down")
        delivered.extend(batch)

    worker = Worker("test", deliver, queue_size=2, batch_size=10)
    caplog.set_level(logging.INFO, logger="agentops.integrations")
    worker.start()
    assert worker.submit(0)
    assert entered.wait(10)  # the thread holds the first item, blocked in deliver
    accepted = [worker.submit(n) for n in range(1, 6)]  # the queue takes two more
    assert accepted == [True, True, False, False, False] and worker.dropped_full == 3
    release.set()
    await worker.drained(10)
    for n in range(6, 9):  # still failing: counted, not logged again
        worker.submit(n)
        await worker.drained(10)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "collector down" in errors[0].getMessage()
    assert worker.dropped == 9 and worker.sent == 0
    failing = False
    worker.submit(9)
    await worker.drained(10)
    assert delivered == [9] and worker.stats()["sent"] == 1
    assert any("delivering again" in r.getMessage() for r in caplog.records)
    worker.stop(5)
