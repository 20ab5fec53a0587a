"""Weights & Biases: one wandb run per finished agent run, and experiments' comparison tables.

Finished runs are read from the store in the gateway's run-idle task, then handed to a worker
thread that talks to W&B; the proxy and the writer never wait for it. wandb is imported
lazily, in that thread (it takes about a second). W&B's own environment (WANDB_API_KEY,
WANDB_MODE, WANDB_ENTITY, WANDB_DIR, WANDB_BASE_URL) applies as usual.

Each wandb run has a history row per call (tokens, latency, cost) and the exchanges table.
Replays made by an experiment are not wandb runs of their own: they are the rows (table and
history) of the experiment's wandb run, in a group of its own (`experiment-<id>`); single and
run replays go to the group `replays`. An evaluation posted after its run was logged resumes
that wandb run and sets `eval/<metric>` in its summary.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import orjson

from gateway.integrations import Integration, IntegrationError, require
from gateway.integrations.worker import Worker
from gateway.settings import Settings
from gateway.store.runs import RunStore

log = logging.getLogger("agentops.wandb")

OFFLINE_MODES = ("offline", "dryrun", "disabled")
TEXT_LIMIT = 2000  # characters of a message kept in a table cell
TABLE_COLUMNS = (
    "step",
    "exchange_id",
    "started_at",
    "model",
    "endpoint",
    "status",
    "state",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "tool_calls",
    "output",
    "error",
)


def has_api_key(environ: Mapping[str, str]) -> bool:
    """Whether W&B will find credentials: the env, an identity token, or a netrc entry."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    path = environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check(settings: Settings, environ: Mapping[str, str]) -> None:
    """Raise IntegrationError when W&B cannot work: no package, or no key in online mode."""
    require("wandb", "wandb")
    mode = (environ.get("WANDB_MODE") or "online").lower()
    if mode not in OFFLINE_MODES and not has_api_key(environ):
        raise IntegrationError(
            f"project {settings.wandb_project!r} is set but no W&B API key was found "
            "(set WANDB_API_KEY, run `wandb login`, or set WANDB_MODE=offline)"
        )


def from_settings(settings: Settings, environ: Mapping[str, str]) -> WandbLogger:
    mode = (environ.get("WANDB_MODE") or "online").lower()
    logger = WandbLogger(settings.wandb_project or "", settings.wandb_group_by)
    log.info(
        "W&B logging on: project %s, mode %s, grouped by %s",
        settings.wandb_project,
        mode,
        settings.wandb_group_by,
    )
    return logger


class WandbLogger(Integration):
    name = "wandb"

    def __init__(self, project: str, group_by: str = "name", *, queue_size: int = 256) -> None:
        super().__init__(Worker("wandb", self._deliver, queue_size=queue_size, batch_size=1))
        self.project = project
        self.group_by = group_by

    async def runs_finished(self, run_ids: list[int], runs: RunStore) -> None:
        for run_id in run_ids:
            if self.worker.queue.full():  # don't read a run we would drop
                self.worker.dropped_full += 1
                continue
            run = await runs.get_run(run_id)
            if run is None:
                continue
            logged = run.to_json()
            if "experiment" in (logged.get("tags") or {}):
                continue  # a row of its experiment's wandb run (log_experiment)
            self.worker.submit(("run", logged))

    def submit_evaluation(self, evaluation: dict[str, Any]) -> bool:
        """An evaluation of a run already logged: its wandb run is resumed (see log_evaluation)."""
        return self.worker.submit(("evaluation", evaluation))

    def submit_experiment(self, experiment: dict[str, Any]) -> bool:
        """Log an experiment's comparison table without waiting (see log_experiment)."""
        return self.worker.submit(("experiment", experiment))

    def _deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, payload in batch:
            if kind == "run":
                log_run(payload, project=self.project, group_by=self.group_by)
            elif kind == "evaluation":
                log_evaluation(payload, project=self.project)
            else:
                log_experiment(payload, project=self.project)


def _settings() -> Any:
    """Quiet runs: no console capture (the gateway's own logs), no system stats, no git."""
    import wandb

    return wandb.Settings(
        silent=True,
        console="off",
        save_code=False,
        disable_git=True,
        disable_job_creation=True,
        x_disable_stats=True,
        x_disable_meta=True,
        x_disable_machine_info=True,
    )


def log_run(run: dict[str, Any], *, project: str, group_by: str = "name") -> str:
    """Log one finished agent run (as /api/runs/{id} shows it); returns the wandb run id."""
    import wandb

    exchanges = run.get("exchanges") or []
    group, name, job_type = run_identity(run, group_by)
    wandb_id = f"agentops-{run['id']}"
    with wandb.init(
        project=project,
        id=wandb_id,
        resume="allow",
        group=group,
        name=name,
        job_type=job_type,
        config=run_config(run),
        tags=run_tags(run),
        settings=_settings(),
        reinit="create_new",
    ) as wb:
        for row in call_history(exchanges):
            wb.log(row)
        wb.log(
            {
                "exchanges": wandb.Table(
                    columns=list(TABLE_COLUMNS), data=exchange_table(run), allow_mixed_types=True
                )
            }
        )
        for key, value in run_summary(run, exchanges).items():
            wb.summary[key] = value
    return wandb_id


def run_identity(run: dict[str, Any], group_by: str) -> tuple[str | None, str, str]:
    """(group, display name, job type): replays go to the group `replays`, named for what
    they replayed; other runs are grouped by name (or agent) when group_by is "name"."""
    tags = run.get("tags") or {}
    name = run.get("name") or f"run {run['id']}"
    if "replay_of_run" in tags:
        return "replays", f"replay of run {tags['replay_of_run']}", "replay"
    if "replay_of" in tags:
        return "replays", f"replay of exchange {tags['replay_of']}", "replay"
    if group_by != "name":
        return None, name, "agent-run"
    return run.get("name") or run.get("agent_id") or "unnamed", name, "agent-run"


def call_history(exchanges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One history row per call, in order: W&B charts tokens, latency and cost per step."""
    rows = []
    for e in exchanges:
        prompt, completion = e.get("prompt_tokens"), e.get("completion_tokens")
        row = {
            "call/prompt_tokens": prompt,
            "call/completion_tokens": completion,
            "call/total_tokens": (prompt or 0) + (completion or 0)
            if prompt is not None or completion is not None
            else None,
            "call/latency_ms": e.get("latency_ms"),
            "call/ttft_ms": e.get("ttft_ms"),
            "call/cost_usd": e.get("cost_usd"),
            "call/status": e.get("status"),
            "call/failed": int(_failed(e)),
        }
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def log_evaluation(evaluation: dict[str, Any], *, project: str) -> str:
    """Resume the finished run's wandb run and put the evaluation in its summary (the latest
    value of a metric wins, as when it is logged with the run)."""
    import wandb

    wandb_id = f"agentops-{evaluation['run_id']}"
    with wandb.init(
        project=project,
        id=wandb_id,
        resume="allow",
        settings=_settings(),
        reinit="create_new",
    ) as wb:
        wb.summary[f"eval/{evaluation['metric_name']}"] = evaluation["metric_value"]
    return wandb_id


def run_config(run: dict[str, Any]) -> dict[str, Any]:
    config = {
        "agentops_run_id": run["id"],
        "run_name": run.get("name"),
        "agent_id": run.get("agent_id"),
        "user": run.get("user"),
        "source": run.get("source"),
        "tags": run.get("tags") or {},
        "conversation_ids": run.get("conversation_ids") or [],
        "started_at": run.get("started_at"),
        "ended_at": run.get("ended_at"),
    }
    config.update(run.get("config") or {})  # model and sampling parameters of the first call
    return config


def run_tags(run: dict[str, Any]) -> list[str]:
    tags = [f"{k}={v}"[:64] for k, v in (run.get("tags") or {}).items()]
    return [*tags, str(run.get("status") or "unknown")]


def run_summary(run: dict[str, Any], exchanges: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [e["latency_ms"] for e in exchanges if e.get("latency_ms") is not None]
    ttfts = [e["ttft_ms"] for e in exchanges if e.get("ttft_ms") is not None]
    errors = sum(1 for e in exchanges if _failed(e))
    summary: dict[str, Any] = {
        "status": run.get("status"),
        "steps": run.get("exchange_count", len(exchanges)),
        "errors": errors,
        "tool_calls": len(run.get("tool_calls") or []),
        "prompt_tokens": run.get("prompt_tokens", 0),
        "completion_tokens": run.get("completion_tokens", 0),
        "total_tokens": run.get("total_tokens", 0),
        "cost_usd": run.get("total_cost_usd", 0.0),
        "latency_ms_total": round(sum(latencies), 3),
        "latency_ms_mean": round(sum(latencies) / len(latencies), 3) if latencies else None,
        "latency_ms_max": max(latencies) if latencies else None,
        "ttft_ms_mean": round(sum(ttfts) / len(ttfts), 3) if ttfts else None,
    }
    for evaluation in run.get("evaluations") or []:  # the latest value of each metric wins
        summary[f"eval/{evaluation['metric_name']}"] = evaluation["metric_value"]
    return {k: v for k, v in summary.items() if v is not None}


def exchange_table(run: dict[str, Any]) -> list[list[Any]]:
    outputs: dict[str, str] = {}
    for message in run.get("messages") or []:
        if message.get("direction") == "out":
            outputs[message["exchange_id"]] = _text(message.get("content"))
    tools: dict[str, list[str]] = {}
    for call in run.get("tool_calls") or []:
        tools.setdefault(call["exchange_id"], []).append(str(call.get("tool_name")))
    rows = []
    for step, e in enumerate(run.get("exchanges") or []):
        rows.append(
            [
                step,
                e["id"],
                e.get("started_at"),
                e.get("model"),
                e.get("endpoint"),
                e.get("status"),
                e.get("state"),
                e.get("prompt_tokens"),
                e.get("completion_tokens"),
                e.get("cost_usd"),
                e.get("latency_ms"),
                e.get("ttft_ms"),
                ", ".join(tools.get(e["id"], [])),
                outputs.get(e["id"], ""),
                e.get("error") or "",
            ]
        )
    return rows


def log_experiment(experiment: dict[str, Any], *, project: str, entity: str | None = None) -> str:
    """Log an experiment's comparison: `rows` (a list of dicts, one per compared call or
    variant) become a table, `totals` (numbers, or dicts of numbers per variant) the summary,
    other keys the config. Returns the wandb run id. Blocks: call it from a thread, or use
    WandbLogger.submit_experiment."""
    import wandb

    rows = list(experiment.get("rows") or [])
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    config = {
        k: v for k, v in experiment.items() if k not in ("rows", "totals", "wandb_id", "group")
    }
    name = str(experiment.get("name") or f"experiment {experiment.get('id') or ''}".strip())
    run_id = experiment.get("wandb_id") or (
        f"agentops-exp-{experiment['id']}" if experiment.get("id") else None
    )
    # An experiment over a dataset is a run per variant (wandb_id, group given).
    group = experiment.get("group") or (
        f"experiment-{experiment['id']}" if experiment.get("id") else "experiments"
    )
    with wandb.init(
        project=project,
        entity=entity,
        id=run_id,
        resume="allow",
        name=name,
        group=group,
        job_type="experiment",
        config=config,
        settings=_settings(),
        reinit="create_new",
    ) as wb:
        for row in rows:  # one history row per replayed call, its numbers only
            numbers = {
                f"call/{k}": v
                for k, v in row.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "id"
            }
            if numbers:
                wb.log(numbers)
        wb.log(
            {
                "comparison": wandb.Table(
                    columns=list[str | int](columns),
                    data=[[_cell(row.get(c)) for c in columns] for row in rows],
                    allow_mixed_types=True,
                )
            }
        )
        for key, value in _flatten(experiment.get("totals") or {}).items():
            wb.summary[key] = value
        return wb.id


def _flatten(totals: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in totals.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return orjson.dumps(value, default=str).decode()


def _text(content: Any) -> str:
    if content is None:
        return ""
    text = content if isinstance(content, str) else orjson.dumps(content, default=str).decode()
    return text[:TEXT_LIMIT]


def _failed(exchange: dict[str, Any]) -> bool:
    status = exchange.get("status")
    return status is None or status >= 400 or exchange.get("state") != "complete"
