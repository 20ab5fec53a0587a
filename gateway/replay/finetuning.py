"""The fine-tune loop (`agentops-studio finetune`): the failures as a validated Mistral
fine-tuning file, uploaded and trained through the gateway, the job followed to its end, its
cost settled on the call that created it (category `fine-tuning`) and the model registered
for experiments.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from gateway.capture.pricing import PriceTable
from gateway.errors import UserError
from gateway.export.failures import failures, problems_of, write_jsonl
from gateway.providers.mistral import MistralProvider
from gateway.replay.training import Job, Trainer
from gateway.store import finetuned
from gateway.store.exchanges import Store
from gateway.store.repricing import set_cost

STORED_WAIT = 30.0  # seconds the loop waits for the gateway to store the job's creation


@dataclass(frozen=True, slots=True)
class Options:
    model: str
    out: Path
    since: datetime | None = None
    min_score: float | None = None
    metric: str | None = None
    dry_run: bool = False
    wait: bool = True
    suffix: str | None = None
    epochs: float | None = None
    training_steps: int | None = None
    poll_every: float = 10.0
    timeout: float = 24 * 3600.0


@dataclass(slots=True)
class Outcome:
    path: Path
    examples: int = 0
    without_expected: int = 0
    job: Job | None = None
    run_name: str | None = None
    cost_usd: float | None = None
    registered: str | None = None
    notes: list[str] = field(default_factory=list)


async def export(store: Store, options: Options, outcome: Outcome) -> None:
    """Write the failures with an expected output as training lines, each validated; a line
    that fails validation stops the loop (nothing is uploaded) with the first problem."""
    lines = []
    provider = MistralProvider()
    async for failure in failures(
        store, provider, options.since, options.min_score, options.metric
    ):
        line = failure.example()
        if line is None:
            outcome.without_expected += 1
            continue
        problems = problems_of(line)
        if problems:
            raise UserError(
                f"failure of exchange {failure.call.exchange_id} is not a valid training line: "
                f"{problems[0]}"
            )
        lines.append(line)
    write_jsonl(options.out, lines)
    outcome.examples = len(lines)


def _hyperparameters(options: Options) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.epochs is not None:
        out["epochs"] = options.epochs
    if options.training_steps is not None:
        out["training_steps"] = options.training_steps
    return out


async def train(
    store: Store,
    prices: PriceTable,
    options: Options,
    outcome: Outcome,
    gateway: str,
    key: str,
    say: Callable[[str], None],
) -> None:
    """Upload, create, follow, settle, register (the export is done)."""
    outcome.run_name = f"finetune-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    async with aiohttp.ClientSession() as session:
        trainer = Trainer(session, gateway, key, outcome.run_name)
        file_id = await trainer.upload(options.out)
        say(f"uploaded {options.out} as file {file_id}")
        job = await trainer.create(
            options.model, file_id, options.suffix, _hyperparameters(options)
        )
        say(f"created job {job.id} ({job.status}) on {job.model}")
        if options.wait:
            job = await trainer.follow(
                job,
                options.poll_every,
                options.timeout,
                lambda seen: say(f"job {seen.id}: {seen.status}"),
            )
    outcome.job = job
    if job.status == "SUCCESS":
        await _settle(store, prices, options, outcome, job)


async def _settle(
    store: Store, prices: PriceTable, options: Options, outcome: Outcome, job: Job
) -> None:
    """The job's cost on its creation call (trained tokens at the base model's price, at
    least the minimum fee), and its model registered."""
    cost = prices.fine_tuning.job_cost(job.model, job.trained_tokens)
    found = None
    deadline = time.monotonic() + STORED_WAIT
    while found is None and time.monotonic() < deadline:
        found = await finetuned.job_call(store, outcome.run_name or "")
        if found is None:
            await asyncio.sleep(0.2)
    run_id = None
    if found is None:
        outcome.notes.append("the job's creation call is not stored yet: its cost stays the fee")
    else:
        await set_cost(store, found[0], cost)
        run_id = found[1]
    outcome.cost_usd = cost
    if job.fine_tuned_model:
        await finetuned.register(
            store,
            finetuned.FineTuned(
                name=job.fine_tuned_model,
                base_model=job.model,
                job_id=job.id,
                run_id=run_id,
                trained_tokens=job.trained_tokens,
                cost_usd=cost,
                examples=outcome.examples,
                created_at=datetime.now(UTC),
            ),
        )
        outcome.registered = job.fine_tuned_model
