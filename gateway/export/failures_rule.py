"""The failures rule: a dataset (`--failures-dataset`, default `failures`) kept filled with the
failing requests as they arrive, for `agentops-studio finetune` and experiments to start from.

A failing request is a call with an error, or (with `--failures-min-score`) a call or run
evaluated under that score; its item is the request itself (messages, tools) with the answer
it should have given where a later retry of it succeeded (gateway/export/failures.py). Calls the
gateway makes itself (judges, experiments, fine-tuning) never count. The rule runs in the
process that serves the UI (never in a `--workers` worker), waits `settle` seconds before taking
a call (so a retry has come and its expected output is known), looks back `lookback`, and
never adds one exchange twice (the dataset's items say which it has, removed ones included, so
a curator's removal sticks and a restart resumes where it was).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.capture.exchange import id_at
from gateway.errors import Conflict
from gateway.export.failures import Failure, failures
from gateway.providers.base import Provider
from gateway.store.datasets import Dataset, DatasetStore, NewItem
from gateway.store.exchanges import Store

log = logging.getLogger("agentops.failures")

DESCRIPTION = (
    "Failing calls, added as they arrive (errors, and calls or runs scored under the "
    "threshold), each with the answer a later retry gave where there was one."
)


def item_of(failure: Failure) -> NewItem:
    call = failure.call
    given: dict[str, Any] = {"messages": failure.messages}
    if failure.tools:
        given["tools"] = failure.tools
    metadata: dict[str, Any] = {"reason": call.reason, "exchange_id": str(call.exchange_id)}
    if call.run_id is not None:
        metadata["run_id"] = str(call.run_id)
    if failure.expected_from is not None:
        metadata["expected_from"] = str(failure.expected_from)
    return NewItem(given, failure.expected, metadata, call.exchange_id, call.run_id)


class FailuresRule:
    def __init__(
        self,
        store: Store,
        datasets: DatasetStore,
        provider: Provider,
        name: str,
        min_score: float | None = None,
    ) -> None:
        self.store = store
        self.datasets = datasets
        self.provider = provider
        self.name = name
        self.min_score = min_score
        self.every = 10.0  # seconds between looks
        self.settle = 30.0  # seconds a call waits for its retry
        self.lookback = timedelta(days=1)
        self._filling = asyncio.Lock()  # the loop and a caller never add one call twice

    async def run(self) -> None:
        while True:
            try:
                await self.fill()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: the next look tries again
                log.exception("failures dataset %r: could not fill it", self.name)
            await asyncio.sleep(self.every)

    async def dataset(self) -> Dataset:
        found = await self.datasets.find(self.name)
        if found is not None:
            return found
        try:
            return await self.datasets.create(self.name, DESCRIPTION)
        except Conflict:  # another replica made it first
            made = await self.datasets.find(self.name)
            assert made is not None
            return made

    async def fill(self) -> int:
        """Add the failing calls not yet in the dataset; how many were added."""
        async with self._filling:
            return await self._fill()

    async def _fill(self) -> int:
        now = time.time()
        since = datetime.fromtimestamp(now, UTC) - self.lookback
        settled = id_at(int((now - self.settle) * 1000))
        found = await self.datasets.find(self.name)  # made with its first failure
        low = id_at(int(since.timestamp() * 1000))
        have = await self._have(found.id, low) if found is not None else set()
        items = [
            item_of(failure)
            async for failure in failures(
                self.store,
                self.provider,
                since,
                self.min_score,
                skip=lambda call: call.exchange_id in have or call.exchange_id >= settled,
            )
        ]
        if items:
            dataset = found or await self.dataset()
            await self.datasets.add(dataset.id, items, "failures")
            log.info("failures dataset %r: %d calls added", self.name, len(items))
        return len(items)

    async def _have(self, dataset_id: int, low: int) -> set[int]:
        rows = await self.store.rows(
            "SELECT source_exchange_id FROM dataset_items WHERE dataset_id = ? "
            "AND source_exchange_id >= ?",
            [dataset_id, low],
        )
        return {int(r["source_exchange_id"]) for r in rows}
