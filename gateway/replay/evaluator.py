"""Evaluate recorded calls or runs with scorers (gateway/replay/scorers.py, judge.py) and keep
each score as an evaluation of the exchange or run it judges (the table that `POST
/api/runs/{id}/evaluations` writes, read by the run and exchange pages).

A run is judged by its final answer (its last chat, agents or conversations call). Every
mistake in the request is a 400 before anything is spent; a scorer that fails on one call
(a judge answering off its scale) is reported beside the others, not stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.errors import NotFound, UserError
from gateway.export.dataset_items import ItemSource, parse_ids
from gateway.replay import scorers
from gateway.replay.judge import (
    EMBEDDING_MODEL,
    EmbeddingCosine,
    GatewayCaller,
    Judge,
    check_judge,
)
from gateway.replay.replayer import Replayer, ReplayError, SecretKey
from gateway.store.exchanges import ExchangeFilter
from gateway.store.judges import JudgeStore

log = logging.getLogger("agentops.evaluator")

MAX_TARGETS = 200
MAX_SCORERS = 20
FIELDS = {"exchange_ids", "run_ids", "scorers", "expected", "api_key"}
NEEDS_EXPECTED = ("exact_match", "bleu", "chrf", "rouge_l", "embedding_cosine")
CALLS = ("chat", "agents", "conversations")


@dataclass(frozen=True, slots=True)
class Target:
    exchange_id: int
    run_id: int | None  # set when the run is what is judged


class Evaluator:
    def __init__(self, source: ItemSource, replayer: Replayer, judges: JudgeStore) -> None:
        self.source = source
        self.replayer = replayer
        self.judges = judges

    async def evaluate(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise UserError(f"unknown field(s): {', '.join(unknown)} (accepted: {sorted(FIELDS)})")
        specs = self._specs(body)
        expected = body.get("expected")
        for spec in specs:
            no_value = spec["type"] == "contains" and spec.get("value") is None
            if expected is None and (spec["type"] in NEEDS_EXPECTED or no_value):
                raise UserError(f"scorer {spec['type']} needs an expected output: give `expected`")
        targets = await self._targets(body)
        plain = {
            i: scorers.make(s) for i, s in enumerate(specs) if s["type"] not in scorers.CALLING
        }
        calling = [(i, s) for i, s in enumerate(specs) if s["type"] in scorers.CALLING]
        definitions = {i: await self._judge(s) for i, s in calling if s["type"] == "judge"}
        caller = GatewayCaller(self.replayer, self._key(body)) if calling else None
        results = []
        for target in targets:
            sample = await self._sample(target, expected)
            made: list[scorers.Scorer] = []
            for index, spec in enumerate(specs):
                if index in plain:
                    made.append(plain[index])
                elif spec["type"] == "judge":
                    assert caller is not None
                    made.append(Judge(definitions[index], caller, target.exchange_id))
                else:
                    assert caller is not None
                    model = str(spec.get("model") or EMBEDDING_MODEL)
                    made.append(EmbeddingCosine(model, caller, target.exchange_id))
            results.append(await self._score(target, sample, made))
        return results

    def _specs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        specs = body.get("scorers")
        if not isinstance(specs, list) or not specs or len(specs) > MAX_SCORERS:
            raise UserError(
                f'scorers must be a list of 1 to {MAX_SCORERS}, e.g. [{{"type": "bleu"}}]'
            )
        return [scorers.check_spec(s) for s in specs]

    def _key(self, body: dict[str, Any]) -> SecretKey:
        try:
            return self.replayer.key(body.get("api_key"))
        except ReplayError as exc:
            raise UserError(exc.message) from None

    async def score_call(
        self, exchange_id: int, scorer: scorers.Scorer, tag: dict[str, Any]
    ) -> float:
        """Score one recorded call and keep the score as its evaluation, `tag` added to the
        detail (campaigns); a scorer failing on it raises."""
        sample = await self._sample(Target(exchange_id, None), None)
        score = await scorers.run(scorer, sample)
        _, run_id = await self.source.runs.run_of_exchange(exchange_id)  # shown on the run too
        await self.source.runs.add_evaluation(
            run_id, exchange_id, score.name, score.value, {**score.detail, **tag}
        )
        return score.value

    async def definition(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The judge a judge scorer spec names or gives."""
        return await self._judge(spec)

    async def _judge(self, spec: dict[str, Any]) -> dict[str, Any]:
        if isinstance(spec.get("definition"), dict):
            return check_judge(spec["definition"])
        if isinstance(spec.get("judge"), str):
            return await self.judges.get(spec["judge"])
        raise UserError('a judge scorer names a stored "judge" or gives its "definition"')

    async def _targets(self, body: dict[str, Any]) -> list[Target]:
        chosen = [k for k in ("exchange_ids", "run_ids") if k in body]
        if len(chosen) != 1:
            raise UserError('give exactly one of "exchange_ids" or "run_ids" (a list)')
        ids = parse_ids(body[chosen[0]], chosen[0])[:MAX_TARGETS]
        if chosen[0] == "exchange_ids":
            for exchange_id in ids:
                await self.source.parsed(exchange_id)  # 404/400 now, before anything is spent
            return [Target(i, None) for i in ids]
        return [Target(await self._final_call(run_id), run_id) for run_id in ids]

    async def _final_call(self, run_id: int) -> int:
        steps, _ = await self.source.store.list_exchanges(ExchangeFilter(run=run_id), 1000, None)
        calls = [s.id for s in steps if s.endpoint in CALLS and s.replay_of is None]
        if not calls:
            found = await self.source.runs.names([run_id])
            if run_id not in found:
                raise NotFound(f"run {run_id} not found")
            raise UserError(f"run {run_id} has no chat, agents or conversations call to judge")
        return max(calls)

    async def _sample(self, target: Target, expected: Any) -> scorers.Sample:
        item, parsed = await self.source.parsed(target.exchange_id)
        out = parsed.message_out or {}
        text = item.output_text
        if text is None and isinstance(out.get("content"), str):
            text = out["content"]
        calls = [scorers.normal_call(c) for c in out.get("tool_calls") or [] if isinstance(c, dict)]
        messages = parsed.messages_in if parsed.messages_in is not None else parsed.entries_in
        return scorers.Sample(text, calls, expected, {"messages": messages or []})

    async def _score(
        self, target: Target, sample: scorers.Sample, made: list[scorers.Scorer]
    ) -> dict[str, Any]:
        runs = self.source.runs
        scores: list[dict[str, Any]] = []
        for scorer in made:
            try:
                score = await scorers.run(scorer, sample)
            except UserError as exc:
                scores.append({"name": scorer.name, "value": None, "error": str(exc)})
                continue
            except Exception as exc:  # a custom scorer's bug: its error, not a 500
                log.exception("scorer %s failed on exchange %s", scorer.name, target.exchange_id)
                error = f"the scorer failed: {type(exc).__name__}: {exc}"
                scores.append({"name": scorer.name, "value": None, "error": error})
                continue
            on_exchange = target.exchange_id if target.run_id is None else None
            stored = await runs.add_evaluation(
                target.run_id, on_exchange, score.name, score.value, score.detail or None
            )
            scores.append({**score.to_json(), "evaluation_id": str(stored.id)})
        return {
            "exchange_id": str(target.exchange_id),
            "run_id": None if target.run_id is None else str(target.run_id),
            "scores": scores,
        }
