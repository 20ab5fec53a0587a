"""Experiments over datasets: every item of a dataset version sent once per variant (a model,
sampling parameters, a system-prompt override, tools), scored, and summed up per variant.

The calls are the gateway's own: sent through the proxy's forwarding code with the replay key,
recorded and priced like any call, in runs of their own with source `experiment` (never a
user's run). The experiment and its rows live in the `experiments` / `experiment_rows` tables
of the replay experiments: a row's `position` is the item's place in the version,
`repeat_index` the variant's, `exchange_id` the dataset item and `replay_id` the call made.
Scores are evaluations of the call made (detail: experiment, variant, item). Rows still
pending when the gateway stops are sent after it starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.capture.exchange import is_id
from gateway.errors import NotFound, UserError
from gateway.replay import scorers
from gateway.replay.batch import DoRow, run_pending
from gateway.replay.judge import (
    EMBEDDING_MODEL,
    EmbeddingCosine,
    GatewayCaller,
    Judge,
    check_judge,
)
from gateway.replay.replayer import Replayer, ReplayError, SecretKey
from gateway.store.datasets import DatasetItem, DatasetStore
from gateway.store.judges import JudgeStore
from gateway.store.replays import ReplayStore
from gateway.store.runs import RunStore
from gateway.writer import WriterError

log = logging.getLogger("agentops.dataset_experiments")

PURPOSE = "experiment"
PATH = "/v1/chat/completions"
FIELDS = {"dataset_id", "version", "variants", "scorers", "concurrency", "api_key"}
VARIANT_FIELDS = {"name", "model", "params", "system", "tools", "upstream"}
PARAMS = {
    "temperature": (int, float),
    "top_p": (int, float),
    "max_tokens": (int,),
    "random_seed": (int,),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "stop": (str, list),
    "safe_prompt": (bool,),
}
MAX_VARIANTS = 10
NEEDS_EXPECTED = ("exact_match", "bleu", "chrf", "rouge_l", "embedding_cosine", "tool_call_match")
MAX_CALLS = 2000
MAX_SCORERS = 20
MAX_CONCURRENCY = 16
DEFAULT_CONCURRENCY = 4
MAX_ATTEMPTS = 5
MAX_RETRY_AFTER = 30.0
STORED_WAIT_SECONDS = 30.0
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 16
TEXT_CACHE = 20_000
PREVIEW = 500


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    tools: list[Any] | None = None
    upstream: str | None = None  # an alternative upstream's name (--upstream-alt)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "params": self.params,
            "system": self.system,
            "tools": self.tools,
            "upstream": self.upstream,
        }


def check_variant(value: Any, index: int) -> Variant:
    where = f"variants[{index}]"
    if not isinstance(value, dict):
        raise UserError(f'{where} must be an object, e.g. {{"name": "small", "model": "..."}}')
    unknown = sorted(set(value) - VARIANT_FIELDS)
    if unknown:
        raise UserError(
            f"{where}: unknown field(s) {', '.join(unknown)} "
            f"(accepted: {', '.join(sorted(VARIANT_FIELDS))})"
        )
    name = value.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise UserError(f"{where}: name must be a non-empty string of at most 100 characters")
    for key in ("model", "system", "upstream"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise UserError(f"{where}: {key} must be a string")
    tools = value.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise UserError(f"{where}: tools must be a list of tool definitions")
    return Variant(
        name.strip(),
        value.get("model"),
        _params(value.get("params"), where),
        value.get("system"),
        tools,
        value.get("upstream"),
    )


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f'{where}: params must be an object, e.g. {{"temperature": 0.2}}')
    for key, given in value.items():
        kinds = PARAMS.get(key)
        if kinds is None:
            raise UserError(
                f"{where}: params: unknown parameter {key!r} "
                f"(accepted: {', '.join(sorted(PARAMS))})"
            )
        if not isinstance(given, kinds) or (isinstance(given, bool) and bool not in kinds):
            raise UserError(f"{where}: params: {key} has the wrong type ({given!r})")
    return dict(value)


def check_variants(value: Any) -> list[Variant]:
    if not isinstance(value, list) or not value or len(value) > MAX_VARIANTS:
        raise UserError(
            f"variants must be a list of 1 to {MAX_VARIANTS} objects, e.g. "
            '[{"name": "large", "model": "mistral-large-latest"}]'
        )
    variants = [check_variant(v, i) for i, v in enumerate(value)]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UserError("variants: each variant needs its own name")
    return variants


def request_body(item_input: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The chat request for one item and one variant: the item's messages, tools and
    parameters, then the variant's model, parameters, tools and system prompt on top."""
    messages = [m for m in item_input.get("messages") or [] if isinstance(m, dict)]
    if variant.system is not None:
        messages = [m for m in messages if m.get("role") != "system"]
        messages.insert(0, {"role": "system", "content": variant.system})
    given = item_input.get("parameters")
    body: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
    body.pop("stream", None)
    body.update(variant.params)
    body["messages"] = messages
    model = variant.model or body.get("model") or item_input.get("model")
    if not isinstance(model, str) or not model:
        raise UserError("no model: the item names none, so the variant must give one")
    body["model"] = model
    tools = variant.tools if variant.tools is not None else item_input.get("tools")
    if tools:
        body["tools"] = tools
    else:
        body.pop("tools", None)
    return body


def retry_after(headers: list[tuple[str, str]], attempt: int) -> float:
    """How long to wait after a 429: Retry-After in seconds when given, else 0.5 s doubling."""
    for name, value in headers:
        if name.lower() == "retry-after":
            with contextlib.suppress(ValueError):
                return max(0.0, min(float(value), MAX_RETRY_AFTER))
    return min(0.5 * 2**attempt, MAX_RETRY_AFTER)


# -- the scoreboard -----------------------------------------------------------------------


def bootstrap_ci(values: list[float], samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of the mean (fixed seed: the same data gives the
    same interval on every read)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    rng = random.Random(BOOTSTRAP_SEED)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(samples))
    return means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 1000) * len(ordered) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


def scoreboard(variants: list[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    board = []
    for index, name in enumerate(variants):
        mine = [r for r in rows if r["repeat_index"] == index]
        ok = [r for r in mine if r["status"] == "ok"]
        latencies = [r["latency_after"] for r in ok if r["latency_after"] is not None]
        names = sorted({s for r in ok for s in r["scores"]})
        score_figures = {}
        for metric in names:
            values = [r["scores"][metric] for r in ok if r["scores"].get(metric) is not None]
            low, high = bootstrap_ci(values)
            score_figures[metric] = {
                "mean": round(statistics.fmean(values), 4) if values else None,
                "ci_low": round(low, 4),
                "ci_high": round(high, 4),
                "n": len(values),
            }
        board.append(
            {
                "variant": name,
                "items": len(mine),
                "done": len(mine) - sum(1 for r in mine if r["status"] == "pending"),
                "errors": sum(1 for r in mine if r["status"] == "error"),
                "cost_usd": round(sum(r["cost_after"] or 0 for r in ok), 10),
                "tokens": int(sum(r["tokens_after"] or 0 for r in ok)),
                "latency_p50_ms": percentile(latencies, 0.5),
                "latency_p95_ms": percentile(latencies, 0.95),
                "scores": score_figures,
            }
        )
    return board


def worse(report: dict[str, Any], base: str, other: str) -> list[dict[str, Any]]:
    """The items whose score dropped from variant `base` to variant `other`, per scorer,
    the biggest drop first; 404 for a variant the experiment does not have."""
    names = [v["name"] for v in report["variants"]]
    for given in (base, other):
        if given not in names:
            raise NotFound(f"variant {given!r} is not in this experiment (it has {names})")
    out = []
    for item in report["items"]:
        a, b = item["outputs"].get(base), item["outputs"].get(other)
        if a is None or b is None:
            continue
        for metric, before in a["scores"].items():
            after = b["scores"].get(metric)
            if before is not None and after is not None and after < before:
                out.append(
                    {
                        "item_id": item["item_id"],
                        "scorer": metric,
                        "before": before,
                        "after": after,
                        "drop": round(before - after, 6),
                        "before_output": a["output_text"],
                        "after_output": b["output_text"],
                    }
                )
    return sorted(out, key=lambda w: -w["drop"])


# -- running ------------------------------------------------------------------------------


class DatasetExperiments:
    def __init__(
        self,
        replayer: Replayer,
        replay_store: ReplayStore,
        datasets: DatasetStore,
        runs: RunStore,
        judges: JudgeStore,
        *,
        alternatives: Mapping[str, SecretKey | None] | None = None,
    ) -> None:
        """`alternatives`: the operator's other upstreams by name (--upstream-alt), each with
        its own key or None (then the experiment's key goes there too)."""
        self.replayer = replayer
        self.alternatives = dict(alternatives or {})
        self.replay_store = replay_store
        self.datasets = datasets
        self.runs = runs
        self.judges = judges
        self.tasks: dict[int, asyncio.Task[None]] = {}
        # Output texts of the calls made (they never change once stored; a page polls).
        self.text_cache: dict[int, str | None] = {}
        # Called with the finished experiment's report (the gateway logs it to W&B).
        self.on_finished: Callable[[dict[str, Any]], Awaitable[Any]] | None = None

    async def _texts(self, call_ids: list[int]) -> dict[int, str | None]:
        missing = [i for i in call_ids if i not in self.text_cache]
        if len(self.text_cache) + len(missing) > TEXT_CACHE:
            self.text_cache.clear()
        for call_id in missing:
            item = await self.replayer.store.get_exchange(call_id)
            if item is not None:
                self.text_cache[call_id] = item.output_text
        return {i: self.text_cache.get(i) for i in call_ids}

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise UserError(
                f"unknown field(s) for a dataset experiment: {', '.join(unknown)} "
                f"(accepted: {', '.join(sorted(FIELDS))})"
            )
        dataset = await self.datasets.get(_id(body["dataset_id"], "dataset_id"))
        if dataset is None:
            raise NotFound(f"dataset {body['dataset_id']} not found")
        if dataset.version == 0:
            raise UserError(f"dataset {dataset.id} has no items yet: add some first")
        version = body.get("version", dataset.version)
        if isinstance(version, bool) or not isinstance(version, int):
            raise UserError(f"version must be an integer, got {version!r}")
        if not 1 <= version <= dataset.version:
            raise NotFound(f"dataset {dataset.id} has no version {version}")
        variants = check_variants(body.get("variants"))
        self._check_upstreams(variants)
        specs = await self._specs(body.get("scorers", []))
        concurrency = body.get("concurrency", DEFAULT_CONCURRENCY)
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise UserError(f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}")
        items = await self.datasets.all_items(dataset.id, version)
        if not items:
            raise UserError(f"dataset {dataset.id} version {version} has no items")
        if len(items) * len(variants) > MAX_CALLS:
            raise UserError(
                f"{len(items)} items x {len(variants)} variants is more than {MAX_CALLS} calls"
            )
        for item in items:
            for variant in variants:
                try:
                    request_body(item.input, variant)
                except UserError as exc:
                    raise UserError(f"item {item.id}, variant {variant.name}: {exc}") from None
        key = self._key(body)
        rows = [
            {"position": p, "repeat_index": v, "exchange_id": item.id, "status": "pending"}
            for p, item in enumerate(items)
            for v in range(len(variants))
        ]
        selection = {"dataset_id": str(dataset.id), "dataset": dataset.name, "version": version}
        plan = {"variants": [v.to_json() for v in variants], "scorers": specs}
        experiment_id = await self.replay_store.create_experiment(
            selection, plan, len(variants), concurrency, rows
        )
        self.start(experiment_id, key)
        return {
            "id": str(experiment_id),
            "status": "running",
            "total": len(rows),
            "url": f"/api/experiments/{experiment_id}",
        }

    def _check_upstreams(self, variants: list[Variant]) -> None:
        known = sorted(self.alternatives)
        for variant in variants:
            if variant.upstream is not None and variant.upstream not in self.alternatives:
                raise UserError(
                    f"variant {variant.name}: no upstream named {variant.upstream!r} "
                    f"(configured with --upstream-alt: {', '.join(known) or 'none'})"
                )

    async def _specs(self, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list) or len(value) > MAX_SCORERS:
            raise UserError(
                f'scorers must be a list of up to {MAX_SCORERS}, e.g. [{{"type": "bleu"}}]'
            )
        specs = []
        for given in value:
            spec = scorers.check_spec(given)
            if spec["type"] == "judge":
                if isinstance(spec.get("judge"), str):
                    spec = {**spec, "definition": await self.judges.get(spec["judge"])}
                elif isinstance(spec.get("definition"), dict):
                    spec = {**spec, "definition": check_judge(spec["definition"])}
                else:
                    raise UserError(
                        'a judge scorer names a stored "judge" or gives its "definition"'
                    )
            elif spec["type"] not in scorers.CALLING:
                scorers.make(spec)  # a 400 now for a bad spec, before anything is spent
            specs.append(spec)
        return specs

    def _key(self, body: dict[str, Any]) -> SecretKey:
        try:
            return self.replayer.key(body.get("api_key"))
        except ReplayError as exc:
            raise UserError(exc.message) from None

    def start(self, experiment_id: int, key: SecretKey) -> None:
        self.tasks[experiment_id] = asyncio.create_task(
            self._run(experiment_id, key), name=f"agentops-dataset-experiment-{experiment_id}"
        )

    async def resume(self) -> list[int]:
        """Start again the dataset experiments a stopped gateway left unfinished (their
        pending rows only), with the gateway's replay key; without one they stay interrupted."""
        if not self.replayer.has_key:
            return []
        resumed = []
        for experiment_id in await self.replay_store.unfinished_dataset_experiments():
            await self.replay_store.finish_experiment(experiment_id, "running")
            self.start(experiment_id, self.replayer.key())
            resumed.append(experiment_id)
        return resumed

    async def _run(self, experiment_id: int, key: SecretKey) -> None:
        async def prepare() -> tuple[DoRow, int]:
            experiment = await self.replay_store.get_experiment(experiment_id)
            assert experiment is not None
            selection, plan = experiment["selection"], experiment["overrides"]
            variants = [check_variant(v, i) for i, v in enumerate(plan["variants"])]
            items = {
                i.id: i
                for i in await self.datasets.all_items(
                    int(selection["dataset_id"]), int(selection["version"])
                )
            }
            caller = GatewayCaller(self.replayer, key)

            async def do_row(row: dict[str, Any]) -> None:
                await self._row(experiment_id, row, items, variants, plan["scorers"], key, caller)

            return do_row, int(experiment["concurrency"])

        await run_pending(
            self.replay_store,
            experiment_id,
            prepare,
            self._report_finished,
            self.tasks,
            "dataset experiment",
        )

    async def _report_finished(self, experiment_id: int) -> None:
        if self.on_finished is None:
            return
        try:
            experiment = await self.replay_store.get_experiment(experiment_id)
            if experiment is not None:
                await self.on_finished(await self.report(experiment))
        except Exception:  # reporting must not fail the experiment
            log.exception("dataset experiment %s: could not report it", experiment_id)

    async def _row(
        self,
        experiment_id: int,
        row: dict[str, Any],
        items: dict[int, DatasetItem],
        variants: list[Variant],
        specs: list[dict[str, Any]],
        key: SecretKey,
        caller: GatewayCaller,
    ) -> None:
        item = items.get(int(row["exchange_id"]))
        variant = variants[row["repeat_index"]]
        if item is None:
            await self.replay_store.finish_row(row["id"], "error", error="the item is gone")
            return
        try:
            recorded = await self._call(experiment_id, item, variant, key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad row must not end the experiment
            log.exception("dataset experiment %s: item %s failed", experiment_id, item.id)
            await self.replay_store.finish_row(
                row["id"], "error", error=f"{type(exc).__name__}: {exc}"
            )
            return
        status = recorded.item.status or 0
        metrics = {
            "tokens_after": recorded.item.total_tokens,
            "cost_after": recorded.item.cost_usd,
            "latency_after": recorded.item.latency_ms,
        }
        if status >= 400:
            await self.replay_store.finish_row(
                row["id"],
                "error",
                error=f"the call failed with status {status}",
                replay_id=recorded.id,
                metrics=metrics,
            )
            return
        await self._score(experiment_id, item, variant, recorded, specs, caller)
        await self.replay_store.finish_row(row["id"], "ok", replay_id=recorded.id, metrics=metrics)

    async def _call(
        self, experiment_id: int, item: DatasetItem, variant: Variant, key: SecretKey
    ) -> Any:
        body = orjson.dumps(request_body(item.input, variant))
        if variant.upstream is not None:
            key = self.alternatives.get(variant.upstream) or key
        pairs = [
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Authorization", f"Bearer {key.reveal()}"),
        ]
        tags = (
            f"purpose={PURPOSE},experiment={experiment_id},"
            f"variant={variant.name.replace(',', ' ')},item={item.id}"
        )
        if variant.upstream is not None:
            tags += f",upstream={variant.upstream}"
        for attempt in range(MAX_ATTEMPTS):
            exchange = await self.replayer.proxy.send(
                "POST",
                PATH,
                pairs,
                body,
                replay_of=item.exchange_id or 0,
                hints={"purpose": PURPOSE, "tags": tags},
                upstream_name=variant.upstream,
            )
            if exchange.status != 429 or attempt == MAX_ATTEMPTS - 1:
                break
            await asyncio.sleep(retry_after(exchange.response_headers, attempt))
        with contextlib.suppress(TimeoutError, WriterError):
            await self.replayer.recorder.wait_settled(exchange.id, STORED_WAIT_SECONDS)
        recorded = await self.replayer.load(exchange.id)
        if recorded is None:
            raise RuntimeError(f"the call (exchange {exchange.id}) is not stored yet")
        return recorded

    async def _score(
        self,
        experiment_id: int,
        item: DatasetItem,
        variant: Variant,
        recorded: Any,
        specs: list[dict[str, Any]],
        caller: GatewayCaller,
    ) -> None:
        out = recorded.parsed.message_out or {}
        text = recorded.item.output_text
        if text is None and isinstance(out.get("content"), str):
            text = out["content"]
        calls = [scorers.normal_call(c) for c in out.get("tool_calls") or [] if isinstance(c, dict)]
        sample = scorers.Sample(text, calls, item.expected_output, item.input)
        detail = {
            "experiment_id": str(experiment_id),
            "variant": variant.name,
            "item_id": str(item.id),
        }
        for spec in specs:
            try:
                scorer = self._scorer(spec, caller, recorded.id)
                if spec["type"] in NEEDS_EXPECTED and item.expected_output is None:
                    continue
                score = await scorers.run(scorer, sample)
            except UserError as exc:
                log.info("scorer %s on item %s: %s", spec["type"], item.id, exc)
                continue
            except Exception:
                log.exception("scorer %s failed on item %s", spec["type"], item.id)
                continue
            await self.runs.add_evaluation(
                None, recorded.id, score.name, score.value, {**score.detail, **detail}
            )

    @staticmethod
    def _scorer(spec: dict[str, Any], caller: GatewayCaller, about: int) -> scorers.Scorer:
        if spec["type"] == "judge":
            return Judge(spec["definition"], caller, about)
        if spec["type"] == "embedding_cosine":
            return EmbeddingCosine(str(spec.get("model") or EMBEDDING_MODEL), caller, about)
        return scorers.make(spec)

    # -- reading ------------------------------------------------------------------------

    async def _inputs(self, selection: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each item's last user message and expected text, shortened, by item id."""
        found = await self.datasets.all_items(
            int(selection["dataset_id"]), int(selection["version"])
        )
        out = {}
        for item in found:
            users = [
                m.get("content")
                for m in item.input.get("messages") or []
                if isinstance(m, dict) and m.get("role") == "user"
            ]
            question = users[-1] if users else None
            if question is not None and not isinstance(question, str):
                question = orjson.dumps(question).decode()
            expected = scorers.Sample(None, expected=item.expected_output).expected_text()
            out[str(item.id)] = {
                "question": None if question is None else question[:PREVIEW],
                "expected": None if expected is None else expected[:PREVIEW],
            }
        return out

    async def report(self, experiment: dict[str, Any]) -> dict[str, Any]:
        """The experiment with its progress, scoreboard and items side by side."""
        plan = experiment["overrides"]
        names = [v["name"] for v in plan["variants"]]
        rows = experiment["rows"]
        call_ids = [int(r["replay_id"]) for r in rows if r["replay_id"]]
        texts = await self._texts(call_ids)
        scores = await self.replay_store.experiment_scores(call_ids)
        items: dict[str, dict[str, Any]] = {}
        inputs = await self._inputs(experiment["selection"])
        for row in rows:
            row["item_id"] = row["exchange_id"]
            row["variant"] = names[row["repeat_index"]]
            call = int(row["replay_id"]) if row["replay_id"] else None
            row["scores"] = scores.get(call, {}) if call else {}
            row["output_text"] = texts.get(call) if call else None
            entry = items.setdefault(
                row["item_id"],
                {
                    "item_id": row["item_id"],
                    "position": row["position"],
                    **inputs.get(row["item_id"], {"question": None, "expected": None}),
                    "outputs": {},
                },
            )
            entry["outputs"][row["variant"]] = {
                "status": row["status"],
                "error": row["error"],
                "exchange_id": row["replay_id"],
                "output_text": row["output_text"],
                "scores": row["scores"],
                "cost_usd": row["cost_after"],
                "latency_ms": row["latency_after"],
            }
        pending = sum(1 for r in rows if r["status"] == "pending")
        total = experiment["total"]
        experiment.update(
            {
                "kind": "dataset",
                "dataset_id": experiment["selection"]["dataset_id"],
                "version": experiment["selection"]["version"],
                "variants": plan["variants"],
                "scorers": plan["scorers"],
                "progress": {
                    "total": total,
                    "finished": total - pending,
                    "pending": pending,
                    "ok": sum(1 for r in rows if r["status"] == "ok"),
                    "error": sum(1 for r in rows if r["status"] == "error"),
                    "fraction": round((total - pending) / total, 4) if total else 1.0,
                },
                "scoreboard": [
                    {**entry, "upstream": v.get("upstream")}
                    for entry, v in zip(scoreboard(names, rows), plan["variants"], strict=True)
                ],
                "items": sorted(items.values(), key=lambda i: i["position"]),
            }
        )
        return experiment

    async def stop(self) -> int:
        """Cancel what is running (its pending rows are sent after a restart)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)


def is_dataset_experiment(experiment: dict[str, Any]) -> bool:
    selection = experiment.get("selection")
    return isinstance(selection, dict) and "dataset_id" in selection


def _id(value: Any, name: str) -> int:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not is_id(text):
        # a list or an object is named, not printed: it may nest deeper than orjson writes
        named = {list: "a list", dict: "an object", int: str(value)}.get(type(value))
        shown = named or orjson.dumps(value).decode()
        raise UserError(f"{name}: {shown} is not an id")
    return int(text)
