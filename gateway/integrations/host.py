"""The integrations' place in the writer process: fed by its recorder (stored batches) and its
run-idle task (finished runs), reported in its health, and asked by the proxy's process for
metrics, experiments and draining over the writer's call channel.

Keeping them here, not in the proxy's process, means their CPU (span encoding, W&B's client)
runs niced beside the writes, and none of it can hold up a forwarded call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.integrations import Integration, load_integrations
from gateway.integrations import metrics as prometheus
from gateway.integrations.wandb_logger import WandbLogger

if TYPE_CHECKING:
    from gateway.settings import Settings
    from gateway.store.runs import RunStore
    from gateway.writer.recorder import Recorder

log = logging.getLogger("agentops.integrations")

STOP_SECONDS = 5.0


class IntegrationHost:
    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.integrations: list[Integration] = load_integrations(settings, environ)
        self.metrics = prometheus.CallMetrics() if prometheus.enabled(settings) else None

    def attach(self, recorder: Recorder) -> None:
        """Start the workers and hang the hooks on the recorder's stored batches."""
        if self.metrics is not None:
            recorder.on_written.append(self.metrics.on_written)
        for integration in self.integrations:
            integration.start()
            recorder.on_written.append(integration.on_written)

    async def runs_finished(self, run_ids: list[int], runs: RunStore) -> None:
        if not run_ids:
            return
        for integration in self.integrations:
            try:
                await integration.runs_finished(run_ids, runs)
            except Exception:
                log.exception("%s: could not take finished runs", integration.name)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Each integration's queue and counts, for the writer's health report."""
        return {i.name: i.stats() for i in self.integrations}

    # -- calls from the proxy's process ---------------------------------------------------------

    async def exposition(self) -> bytes:
        return self.metrics.exposition() if self.metrics is not None else b""

    async def log_experiment(self, experiment: dict[str, Any]) -> bool:
        """Queue an experiment's comparison table for W&B; False when W&B is not configured
        or its queue is full."""
        for integration in self.integrations:
            if isinstance(integration, WandbLogger):
                return integration.submit_experiment(experiment)
        return False

    async def log_evaluation(self, evaluation: dict[str, Any]) -> bool:
        """Queue a late evaluation (its run already ended) for W&B; False without W&B."""
        for integration in self.integrations:
            if isinstance(integration, WandbLogger):
                return integration.submit_evaluation(evaluation)
        return False

    async def drained(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until every integration delivered (or dropped) what it was given."""
        for integration in self.integrations:
            await integration.worker.drained(timeout)
        return self.stats()

    async def stop(self) -> None:
        for integration in self.integrations:  # each gets a few seconds to deliver its queue
            await asyncio.to_thread(integration.stop, STOP_SECONDS)
