"""Experiments: replay many exchanges with one set of overrides, in the background, with
bounded concurrency, and sum up what changed (cost, similarity, tool calls, determinism).

Each replay is an ordinary single replay (recorded, in a run of its own, diffed). Progress
lives in the database row by row, so an experiment can be read at any moment; one that a
stopped gateway could not finish is marked interrupted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.capture.exchange import is_id
from gateway.errors import UserError
from gateway.replay import diff as diffs
from gateway.replay.batch import DoRow, run_pending
from gateway.replay.dataset_experiments import DatasetExperiments, is_dataset_experiment
from gateway.replay.replayer import Recorded, Replayer, ReplayError, SecretKey
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.query import EXCHANGE_FILTER_FIELDS, exchange_filter, parse_int
from gateway.store.replays import ReplayStore

log = logging.getLogger("agentops.experiments")

MAX_EXCHANGES = 500
MAX_REPEAT = 50
MAX_REPLAYS = 2000
MAX_CONCURRENCY = 16
DEFAULT_CONCURRENCY = 4
FIELDS = {"exchange_ids", "filter", "run_id", "overrides", "repeat", "concurrency", "api_key"}
FILTER_FIELDS = EXCHANGE_FILTER_FIELDS | {"limit"}


def output_hash(recorded: Recorded) -> str:
    """What counts as 'the same output': the text and the tool calls asked for."""
    calls = sorted(diffs.call_key(c) for c in diffs.tool_calls(recorded.parsed))
    text = (recorded.item.output_text or "").encode()
    return hashlib.sha256(text + b"\x00" + b"\x00".join(calls)).hexdigest()[:32]


def has_text(recorded: Recorded) -> bool:
    return bool((recorded.item.output_text or "").strip())


def row_metrics(original: Recorded, replayed: Recorded, diff: dict[str, Any]) -> dict[str, Any]:
    """A replay's figures. Similarity is of the texts, so it is None for a step where neither
    side wrote any (a tool-call step): two empty texts are not evidence of agreement."""
    calls = diff["tool_calls"]
    text = has_text(original) or has_text(replayed)
    return {
        "similarity": diff["similarity"] if text else None,
        "identical": diff["identical"],
        "tool_calls_before": len(calls["before"]),
        "tool_calls_differing": diffs.differing_calls(calls),
        "tokens_before": original.item.total_tokens,
        "tokens_after": replayed.item.total_tokens,
        "cost_before": original.item.cost_usd,
        "cost_after": replayed.item.cost_usd,
        "latency_before": original.item.latency_ms,
        "latency_after": replayed.item.latency_ms,
        "output_hash": output_hash(replayed),
    }


def _sum(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] or 0 for r in rows)


def _change(before: float, after: float) -> float | None:
    return round((after - before) / before * 100, 2) if before else None


def totals(rows: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    """The experiment in a few figures, from the rows done so far."""
    done = [r for r in rows if r["status"] == "ok"]
    similarities = [r["similarity"] for r in done if r["similarity"] is not None]
    out: dict[str, Any] = {
        "replays": len(done),
        **_cost_figures(done),
        **_token_figures(done),
        "median_latency_delta_ms": _median(_latency_deltas(done), 3),
        "median_similarity": _median(similarities, 4),
        "text_steps": len(similarities),
        "identical": sum(1 for r in done if r["identical"]),
        "tool_calls": int(_sum(done, "tool_calls_before")),
        "tool_calls_differing": int(_sum(done, "tool_calls_differing")),
        **_agreement(done),
    }
    if repeat > 1:
        out.update(_determinism(done))
    out["summary"] = summary(out)
    return out


def _median(values: list[float], digits: int) -> float | None:
    return round(statistics.median(values), digits) if values else None


def _cost_figures(done: list[dict[str, Any]]) -> dict[str, Any]:
    before, after = _sum(done, "cost_before"), _sum(done, "cost_after")
    return {
        "cost_before_usd": round(before, 10),
        "cost_after_usd": round(after, 10),
        "cost_change_pct": _change(before, after),
    }


def _token_figures(done: list[dict[str, Any]]) -> dict[str, Any]:
    before, after = _sum(done, "tokens_before"), _sum(done, "tokens_after")
    return {
        "tokens_before": int(before),
        "tokens_after": int(after),
        "tokens_change_pct": _change(before, after),
    }


def _latency_deltas(done: list[dict[str, Any]]) -> list[float]:
    """After minus before, for the rows that have both latencies."""
    return [
        r["latency_after"] - r["latency_before"]
        for r in done
        if r["latency_after"] is not None and r["latency_before"] is not None
    ]


def _has_calls(row: dict[str, Any]) -> bool:
    """Tool calls on either side: the original asked for some, or the replay differs by some."""
    return bool(row["tool_calls_before"]) or bool(row["tool_calls_differing"])


def _agreement(done: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the steps with tool calls on either side: how many asked for the same tools with
    the same parsed arguments as the original, and that share (None without such steps)."""
    steps = [r for r in done if _has_calls(r)]
    agreeing = sum(1 for r in steps if not r["tool_calls_differing"])
    return {
        "tool_call_steps": len(steps),
        "tool_call_steps_agreeing": agreeing,
        "tool_call_agreement": round(agreeing / len(steps), 4) if steps else None,
    }


def _determinism(done: list[dict[str, Any]]) -> dict[str, Any]:
    """With repeats: how many distinct outputs each exchange gave, and how flaky it was."""
    groups: dict[str, list[str]] = {}
    for row in done:
        groups.setdefault(row["exchange_id"], []).append(row["output_hash"])
    per_exchange = [_repeatability(eid, hashes) for eid, hashes in groups.items()]
    return {
        "determinism": per_exchange,
        "distinct_outputs": max((d["distinct_outputs"] for d in per_exchange), default=0),
        "flakiness": (
            round(statistics.mean(d["flakiness"] for d in per_exchange), 4)
            if per_exchange
            else None
        ),
    }


def _repeatability(exchange_id: str, hashes: list[str]) -> dict[str, Any]:
    """Flakiness: 0 when every repeat gave the same output, 1 when each gave its own."""
    distinct = len(set(hashes))
    return {
        "exchange_id": exchange_id,
        "runs": len(hashes),
        "distinct_outputs": distinct,
        "flakiness": round((distinct - 1) / (len(hashes) - 1), 4) if len(hashes) > 1 else 0.0,
    }


def summary(t: dict[str, Any]) -> str:
    """ "cost -82%, text similarity 0.91 (median of 3 steps with text), same tool calls in
    8 of 9 steps (2 of 40 tool calls differ)": text and tool calls are judged apart."""
    parts = []
    if t["cost_change_pct"] is not None:
        parts.append(f"cost {t['cost_change_pct']:+.0f}%".replace("-", "\u2212"))
    if t["median_similarity"] is not None:
        steps = t["text_steps"]
        parts.append(
            f"text similarity {t['median_similarity']:.2f} "
            f"(median of {steps} step{'' if steps == 1 else 's'} with text)"
        )
    if t["tool_call_steps"]:
        parts.append(
            f"same tool calls in {t['tool_call_steps_agreeing']} of {t['tool_call_steps']} "
            f"step{'' if t['tool_call_steps'] == 1 else 's'} "
            f"({t['tool_calls_differing']} of {t['tool_calls']} tool calls differ)"
        )
    if "flakiness" in t and t["flakiness"] is not None:
        parts.append(f"{t['distinct_outputs']} distinct outputs, flakiness {t['flakiness']:.2f}")
    return ", ".join(parts) or "nothing replayed yet"


class Experiments:
    def __init__(self, replayer: Replayer, replay_store: ReplayStore, store: Store) -> None:
        self.replayer = replayer
        self.replay_store = replay_store
        self.store = store
        self.tasks: dict[int, asyncio.Task[None]] = {}
        # Called with the finished experiment's report (the gateway logs it to W&B).
        self.on_finished: Callable[[dict[str, Any]], Awaitable[Any]] | None = None
        # Experiments over datasets (`dataset_id` in the body): see dataset_experiments.py.
        self.datasets: DatasetExperiments | None = None

    async def create(self, body: Any) -> dict[str, Any]:
        """Check everything, write the experiment and its rows, start it; 400 on bad input."""
        if not isinstance(body, dict):
            raise UserError("the body must be a JSON object")
        if "dataset_id" in body and self.datasets is not None:
            return await self.datasets.create(body)
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise UserError(
                f"unknown field(s): {', '.join(unknown)} (accepted: {', '.join(sorted(FIELDS))})"
            )
        overrides = body.get("overrides", {})
        if not isinstance(overrides, dict):
            raise UserError(
                'overrides must be a JSON object, e.g. {"model": "mistral-small-latest"}'
            )
        repeat = _bounded(body, "repeat", 1, 1, MAX_REPEAT)
        concurrency = _bounded(body, "concurrency", DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY)
        selection, ids = await self._select(body)
        if len(ids) * repeat > MAX_REPLAYS:
            raise UserError(
                f"{len(ids)} exchanges x repeat {repeat} is more than {MAX_REPLAYS} replays"
            )
        key = self._key(body)
        rows = []
        for position, exchange_id in enumerate(ids):
            original = await self.replayer.load(exchange_id)
            if original is None:
                raise UserError(f"exchange_ids: exchange {exchange_id} not found")
            try:
                await self.replayer.plan(original, overrides)
            except ReplayError as exc:
                if exc.status != 409:
                    raise UserError(f"exchange {exchange_id}: {exc.message}") from None
                rows.append(
                    {
                        "position": position,
                        "repeat_index": 0,
                        "exchange_id": exchange_id,
                        "status": "skipped",
                        "error": exc.message,
                    }
                )
                continue
            rows += [
                {
                    "position": position,
                    "repeat_index": n,
                    "exchange_id": exchange_id,
                    "status": "pending",
                }
                for n in range(repeat)
            ]
        experiment_id = await self.replay_store.create_experiment(
            selection, overrides, repeat, concurrency, rows
        )
        self.tasks[experiment_id] = asyncio.create_task(
            self._run(experiment_id, overrides, key, concurrency),
            name=f"agentops-experiment-{experiment_id}",
        )
        return {
            "id": str(experiment_id),
            "status": "running",
            "total": len(rows),
            "url": f"/api/experiments/{experiment_id}",
        }

    def _key(self, body: dict[str, Any]) -> SecretKey:
        try:
            return self.replayer.key(body.get("api_key"))
        except ReplayError as exc:
            raise UserError(exc.message) from None

    async def _select(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        chosen = [k for k in ("exchange_ids", "filter", "run_id") if k in body]
        if len(chosen) != 1:
            raise UserError(
                'give exactly one of "exchange_ids" (a list), "filter" (the '
                '/api/exchanges parameters) or "run_id"'
            )
        kind = chosen[0]
        value = body[kind]
        if kind == "exchange_ids":
            if not isinstance(value, list) or not value or len(value) > MAX_EXCHANGES:
                raise UserError(f"exchange_ids must be a list of 1 to {MAX_EXCHANGES} ids")
            ids = [_id(v, "exchange_ids") for v in value]
            return {"exchange_ids": [str(i) for i in ids]}, ids
        if kind == "run_id":
            run = _id(value, "run_id")
            f = ExchangeFilter(run=run)
            limit = MAX_EXCHANGES
        else:
            if not isinstance(value, dict):
                raise UserError(
                    "filter must be an object of /api/exchanges parameters, e.g. "
                    '{"model": "mistral-large-latest", "limit": 20}'
                )
            unknown = sorted(set(value) - FILTER_FIELDS)
            if unknown:
                raise UserError(
                    f"filter: unknown parameter(s) {', '.join(unknown)} "
                    f"(accepted: {', '.join(sorted(FILTER_FIELDS))})"
                )
            query = {k: str(v) for k, v in value.items() if v is not None}
            f = exchange_filter(query)
            limit = parse_int("filter.limit", query.get("limit"), low=1, high=MAX_EXCHANGES) or 50
        items, _ = await self.store.list_exchanges(f, limit, None)
        # Replays of earlier experiments are results, not traffic to replay again.
        ids = sorted(i.id for i in items if i.replay_of is None)
        if not ids:
            raise UserError(f"{kind} selects no exchanges")
        return {kind: value}, ids

    async def _run(
        self, experiment_id: int, overrides: dict[str, Any], key: SecretKey, concurrency: int
    ) -> None:
        async def prepare() -> tuple[DoRow, int]:
            async def do_row(row: dict[str, Any]) -> None:
                await self._replay_row(experiment_id, row, overrides, key)

            return do_row, concurrency

        await run_pending(
            self.replay_store, experiment_id, prepare, self._report_finished, self.tasks
        )

    async def _report_finished(self, experiment_id: int) -> None:
        if self.on_finished is None:
            return
        try:
            report = await self.report(experiment_id)
            if report is not None:
                await self.on_finished(report)
        except Exception:  # reporting must not fail the experiment
            log.exception("experiment %s: could not report it", experiment_id)

    async def _replay_row(
        self, experiment_id: int, row: dict[str, Any], overrides: dict[str, Any], key: SecretKey
    ) -> None:
        try:
            original = await self.replayer.original(row["exchange_id"])
            replayed, diff = await self.replayer.replay(
                row["exchange_id"], overrides, key, tags={"experiment": str(experiment_id)}
            )
        except ReplayError as exc:
            await self.replay_store.finish_row(row["id"], "error", error=exc.message)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad row must not end the experiment
            log.exception("experiment %s: replay of %s failed", experiment_id, row["exchange_id"])
            await self.replay_store.finish_row(
                row["id"], "error", error=f"{type(exc).__name__}: {exc}"
            )
            return
        failed = (replayed.item.status or 0) >= 400
        await self.replay_store.finish_row(
            row["id"],
            "error" if failed else "ok",
            error=f"the replay failed with status {replayed.item.status}" if failed else None,
            replay_id=replayed.id,
            diff_id=int(diff["id"]),
            metrics=row_metrics(original, replayed, diff),
        )

    async def report(self, experiment_id: int) -> dict[str, Any] | None:
        experiment = await self.replay_store.get_experiment(experiment_id)
        if experiment is None:
            return None
        if is_dataset_experiment(experiment) and self.datasets is not None:
            return await self.datasets.report(experiment)
        rows = experiment["rows"]
        counts = {
            s: sum(1 for r in rows if r["status"] == s)
            for s in ("pending", "ok", "error", "skipped")
        }
        finished = experiment["total"] - counts["pending"]
        experiment["progress"] = {
            "total": experiment["total"],
            "finished": finished,
            **counts,
            "fraction": round(finished / experiment["total"], 4) if experiment["total"] else 1.0,
        }
        experiment["totals"] = totals(rows, experiment["repeat"])
        return experiment

    async def stop(self) -> None:
        """Cancel what is running; the rows done so far stay, the experiment is interrupted."""
        stopped = await self.datasets.stop() if self.datasets is not None else 0
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if tasks or stopped:
            await self.replay_store.interrupt_running()


def _bounded(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _id(value: Any, name: str) -> int:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not is_id(text):
        # a list or an object is named, not printed: it may nest deeper than orjson writes
        named = {list: "a list", dict: "an object", int: str(value)}.get(type(value))
        shown = named or orjson.dumps(value).decode()
        raise UserError(f"{name}: {shown} is not an id")
    return int(text)
