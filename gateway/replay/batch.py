"""Running an experiment's pending rows: what replay experiments and dataset experiments share.

Each row is done at most `concurrency` at a time; when every row is done the experiment is
`done` and reported, and anything that escapes a row (or the preparation) makes it `failed`.
A cancelled run (the gateway stopping) stays `running`, so it can be resumed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.store.replays import ReplayStore

log = logging.getLogger(__name__)

Row = dict[str, Any]
DoRow = Callable[[Row], Awaitable[None]]


async def run_pending(
    replay_store: ReplayStore,
    experiment_id: int,
    prepare: Callable[[], Awaitable[tuple[DoRow, int]]],
    finished: Callable[[int], Awaitable[None]],
    tasks: dict[int, asyncio.Task[None]],
    what: str = "experiment",
) -> None:
    """`prepare` gives the function that does one row and the concurrency; `finished`
    reports the experiment once its rows are done. The task leaves `tasks` when it ends."""
    try:
        do_row, concurrency = await prepare()
        gate = asyncio.Semaphore(concurrency)

        async def one(row: Row) -> None:
            async with gate:
                await do_row(row)

        rows = await replay_store.pending_rows(experiment_id)
        await asyncio.gather(*(one(row) for row in rows))
        await replay_store.finish_experiment(experiment_id, "done")
        await finished(experiment_id)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", what, experiment_id)
        await replay_store.finish_experiment(experiment_id, "failed")
    finally:
        tasks.pop(experiment_id, None)
