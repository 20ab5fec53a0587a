"""A bounded hand-off from the writer to an integration's own thread.

Integrations talk to services that may be slow or down (W&B, an OTLP collector); the writer
must never wait for them. `submit` is a non-blocking put: when the queue is full the item is
dropped and counted. A daemon thread hands batches to `deliver`; a failing batch is counted
as dropped and logged once, not once per batch, until delivery works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("agentops.integrations")

_STOP = object()


class Worker:
    def __init__(
        self,
        name: str,
        deliver: Callable[[list[Any]], None],
        *,
        queue_size: int = 1000,
        batch_size: int = 100,
    ) -> None:
        self.name = name
        self.deliver = deliver
        self.batch_size = batch_size
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.sent = 0
        # Two counters, each written by one thread only: no lock needed.
        self.dropped_full = 0  # the event loop's: queue full
        self.dropped_failed = 0  # the worker thread's: delivery failed
        self.last_error: str | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name=f"agentops-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Queue an item without ever blocking; a full queue drops (and counts) it."""
        try:
            self.queue.put_nowait(item)
            return True
        except queue.Full:
            self.dropped_full += 1
            if self.dropped_full == 1:
                log.warning(
                    "%s: queue full (%d items), dropping (and counting) what does not fit",
                    self.name,
                    self.queue.maxsize,
                )
            return False

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                self.queue.task_done()
                return
            batch = [item]
            stop = False
            while len(batch) < self.batch_size:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    self.queue.task_done()
                    break
                batch.append(more)
            self._deliver(batch)
            for _ in batch:
                self.queue.task_done()
            if stop:
                return

    def _deliver(self, batch: list[Any]) -> None:
        try:
            self.deliver(batch)
        except Exception as exc:  # a backend's failure must never kill the thread
            self.dropped_failed += len(batch)
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            if not self._failing:
                self._failing = True
                log.error(
                    "%s: delivery failed, dropping and counting until it works again: %s",
                    self.name,
                    self.last_error,
                )
            return
        self.sent += len(batch)
        if self._failing:
            self._failing = False
            log.info("%s: delivering again (%d items dropped so far)", self.name, self.dropped)

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_failed

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is delivered (or dropped). False on timeout."""
        done = self.queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self.queue.unfinished_tasks == 0, timeout)

    async def drained(self, timeout: float = 30.0) -> None:
        if not await asyncio.to_thread(self.flush, timeout):
            raise TimeoutError(f"{self.name}: not drained in {timeout}s")

    def stop(self, timeout: float) -> None:
        """Deliver what is queued within `timeout`, then leave the daemon thread behind."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = self.queue.qsize()
        if self._thread.is_alive() and left:
            log.warning("%s: %d items not delivered at shutdown", self.name, left)

    def stats(self) -> dict[str, Any]:
        return {
            "queued": self.queue.qsize(),
            "sent": self.sent,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }
