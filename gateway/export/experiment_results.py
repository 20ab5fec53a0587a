"""An experiment over a dataset as results to share: one row per item and variant (the
output, each scorer's value, cost, tokens, latency), written as a Hugging Face dataset
(`save_to_disk` folder or Parquet, as dataset exports are), and shaped as one W&B run per
variant in a W&B group per experiment (the scoreboard as summary, the rows as a table).

Works on the report of `GET /api/experiments/{id}` (gateway/replay/dataset_experiments.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import UserError
from gateway.export.dataset_files import _datasets

TEXT_LIMIT = 4000


def result_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A row per item and variant; a column `score/<name>` per scorer (None when unscored)."""
    if report.get("kind") != "dataset":
        raise UserError(f"experiment {report.get('id')} is not an experiment over a dataset")
    metrics = sorted({m for b in report["scoreboard"] for m in b["scores"]})
    rows = []
    for item in report["items"]:
        for variant in (v["name"] for v in report["variants"]):
            out = item["outputs"].get(variant)
            if out is None:
                continue
            rows.append(
                {
                    "experiment_id": str(report["id"]),
                    "item_id": str(item["item_id"]),
                    "variant": variant,
                    "status": out["status"],
                    "error": out["error"],
                    "exchange_id": out["exchange_id"],
                    "output_text": (out["output_text"] or "")[:TEXT_LIMIT],
                    "cost_usd": out["cost_usd"],
                    "latency_ms": out["latency_ms"],
                    **{f"score/{m}": out["scores"].get(m) for m in metrics},
                }
            )
    return rows


def write_results(report: dict[str, Any], out: str, shape: str) -> int:
    """The results as a `save_to_disk` folder (shape hf) or a Parquet file; how many rows."""
    if shape not in ("hf", "parquet"):
        raise UserError(f"format must be hf or parquet, got {shape!r}")
    rows = result_rows(report)
    if not rows:
        raise UserError(f"experiment {report['id']} has no results yet")
    columns = list(rows[0])
    datasets = _datasets()
    # Typed, not inferred: a column with no value in any row (no errors, a scorer that always
    # failed, unpriced calls) would be of type null, which no other export concatenates with.
    numbers = {"cost_usd", "latency_ms"}
    features = datasets.Features(
        {
            c: datasets.Value("float64" if c in numbers or c.startswith("score/") else "string")
            for c in columns
        }
    )
    table = datasets.Dataset.from_dict(
        {c: [r.get(c) for r in rows] for c in columns}, features=features
    )
    try:
        if shape == "parquet":
            table.to_parquet(out)
        else:
            table.save_to_disk(out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return len(rows)


def wandb_payloads(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One W&B run per variant (see wandb_logger.log_experiment): id agentops-exp-ID-vN,
    group experiment-ID, its scoreboard entry as summary, its rows as the table."""
    rows = result_rows(report)
    payloads = []
    for index, variant in enumerate(report["variants"]):
        board = next(b for b in report["scoreboard"] if b["variant"] == variant["name"])
        payloads.append(
            {
                "id": str(report["id"]),
                "wandb_id": f"agentops-exp-{report['id']}-v{index}",
                "group": f"experiment-{report['id']}",
                "name": f"experiment {report['id']} · {variant['name']}",
                "dataset_id": report["dataset_id"],
                "version": report["version"],
                "variant": orjson.loads(orjson.dumps(variant)),
                "scorers": [s.get("type") for s in report["scorers"]],
                "rows": [r for r in rows if r["variant"] == variant["name"]],
                "totals": {k: v for k, v in board.items() if k != "variant"},
            }
        )
    return payloads
