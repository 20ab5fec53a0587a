"""Weights & Biases in offline mode: a finished run is logged as one wandb run (config,
summary, exchanges table), read back from the offline run files; experiments log their
comparison table; a project without a key in online mode is one clear line, not a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.integrations import wandb_logger
from tests.clients import ENV, finished, get, latest_id, post, send, tool_loop
from tests.conftest import Upstream, make_settings, running, wait_until

PROJECT = "agentops-test"


def records(path: Path) -> list[Any]:
    """Records of an offline .wandb file: W&B's LevelDB-style log of protobuf records
    (7-byte file header, 32 KiB blocks, chunks framed by crc32, length and type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # block padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # still being written
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def finished_records(
    folder: Path, run_id: str = "*", timeout: float = 20
) -> tuple[Path, list[Any]]:
    """The offline run's records, once wandb's service has written its exit record (the file
    is written by another process, which may still be flushing after finish())."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(folder.glob(f"wandb/offline-run-*-{run_id}/run-*.wandb"))
        if found:
            (run_file,) = found
            got = records(run_file)
            if any(r.WhichOneof("record_type") == "exit" for r in got):
                return run_file, got
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished offline run in {folder}")
        time.sleep(0.05)


def offline_run(folder: Path, run_id: str = "*") -> dict[str, Any]:
    """Run, config, summary and history of the one offline run in `folder` (with that id)."""
    run_file, got = finished_records(folder, run_id)
    found: dict[str, Any] = {"dir": run_file.parent, "summary": {}, "history": []}
    for record in got:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["run"] = record.run
            found["config"] = {u.key: json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "summary":
            found["summary"].update(
                {u.key: json.loads(u.value_json) for u in record.summary.update if u.key}
            )
        elif kind == "history":
            found["history"].append(
                {
                    "/".join(i.nested_key) or i.key: json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return found


def table(found: dict[str, Any], key: str) -> dict[str, Any]:
    entry = next(h for h in found["history"] if f"{key}/path" in h)
    return json.loads((found["dir"] / "files" / entry[f"{key}/path"]).read_text())


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import wandb

    folder = tmp_path / "wandb-out"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    yield folder
    wandb.teardown()  # wandb keeps its settings (WANDB_DIR) in a process-wide singleton


async def test_finished_run_is_logged_to_wandb(upstream: Upstream, tmp_path: Path, offline: Path):
    # The writer process finishes the run 2 s after its last call; the evaluation comes first.
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'w.db'}", tmp_path, wandb_project=PROJECT, run_idle=2.0
    )
    async with running(settings) as gw:
        await asyncio.to_thread(tool_loop, gw, "Lyon", server_url=f"{gw.proxy_url}/r/nightly")
        await gw.recorder.drained(timeout=20)
        (run,) = await runs_of(gw)
        async with (
            aiohttp.ClientSession(gw.ui_url) as http,
            http.post(
                f"/api/runs/{run['id']}/evaluations",
                json={"metric_name": "success", "metric_value": 0.25},
            ) as resp,
        ):
            assert resp.status == 201

        async def logged() -> bool:
            stats = (await gw.recorder.call("integrations_drained"))["wandb"]
            assert stats["dropped"] == 0, stats
            return stats["sent"] == 1

        await wait_until(logged, timeout=30)
        # Experiments reach the writer process's logger through the gateway.
        assert (
            await gw.log_experiment(
                {"id": "7", "name": "sweep", "rows": [{"a": 1}], "totals": {"calls": 1}}
            )
            is True
        )
        stats = (await gw.recorder.call("integrations_drained"))["wandb"]
        assert stats["sent"] == 2, stats

    assert offline_run(offline, "agentops-exp-7")["summary"]["calls"] == 1
    found = offline_run(offline, f"agentops-{run['id']}")
    assert found["run"].project == PROJECT
    assert found["run"].run_group == "nightly"  # grouped by run name (the default)
    assert found["run"].display_name == "nightly"
    assert found["run"].run_id == f"agentops-{run['id']}"
    config = found["config"]
    assert config["agentops_run_id"] == run["id"] and config["source"] == "prefix"
    assert config["model"] == "mistral-large-latest" and config["tools"] == ["get_weather"]
    summary = found["summary"]
    assert summary["steps"] == 2 and summary["errors"] == 0 and summary["tool_calls"] == 1
    assert summary["total_tokens"] == run["total_tokens"] > 0
    assert summary["cost_usd"] == pytest.approx(run["total_cost_usd"])
    assert summary["latency_ms_total"] > 0 and summary["status"] == "ok"
    assert summary["eval/success"] == 0.25
    exchanges = table(found, "exchanges")
    assert exchanges["columns"] == list(wandb_logger.TABLE_COLUMNS)
    rows = [dict(zip(exchanges["columns"], row, strict=True)) for row in exchanges["data"]]
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[0]["tool_calls"] == "get_weather" and "Lyon" in rows[1]["output"]
    assert all(r["status"] == 200 and r["prompt_tokens"] > 0 for r in rows)
    # a history row per call: tokens, latency and cost per step
    calls = [h for h in found["history"] if "call/total_tokens" in h]
    assert [c["call/prompt_tokens"] for c in calls] == [r["prompt_tokens"] for r in rows]
    assert sum(c["call/total_tokens"] for c in calls) == run["total_tokens"]
    assert sum(c["call/cost_usd"] for c in calls) == pytest.approx(run["total_cost_usd"])
    assert all(c["call/latency_ms"] > 0 and c["call/failed"] == 0 for c in calls)


async def runs_of(gw: Any) -> list[dict[str, Any]]:
    """The runs as the API shows them (and as the logger receives them)."""
    from gateway.store.runs import RunFilter

    items, _ = await gw.run_store.list_runs(RunFilter(), 10, None)
    return [item.to_json() for item in items]


def test_experiment_comparison_table(offline: Path):
    experiment = {
        "id": "123",
        "name": "temperature sweep",
        "base_exchange_id": "42",
        "rows": [
            {
                "variant": "t=0",
                "model": "mistral-small-latest",
                "cost_usd": 0.001,
                "output": "hi",
                "score": 1,
            },
            {
                "variant": "t=1",
                "model": "mistral-small-latest",
                "cost_usd": 0.002,
                "output": {"text": "hey"},
                "score": None,
            },
        ],
        "totals": {"calls": 2, "by_variant": {"t=0": {"cost_usd": 0.001}}},
    }
    run_id = wandb_logger.log_experiment(experiment, project=PROJECT)
    found = offline_run(offline)
    assert run_id == "agentops-exp-123" == found["run"].run_id
    assert found["run"].display_name == "temperature sweep"
    assert found["run"].run_group == "experiment-123"  # a group per experiment
    assert found["config"]["base_exchange_id"] == "42"
    assert found["summary"]["calls"] == 2
    assert found["summary"]["by_variant/t=0/cost_usd"] == 0.001
    comparison = table(found, "comparison")
    assert comparison["columns"] == ["variant", "model", "cost_usd", "output", "score"]
    assert comparison["data"][1] == ["t=1", "mistral-small-latest", 0.002, '{"text":"hey"}', None]


async def test_online_without_a_key_is_one_line(
    upstream: Upstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'k.db'}", tmp_path, wandb_project=PROJECT
    )
    async with running(settings) as gw:
        assert await gw.recorder.call("integrations_drained") == {}
        assert await gw.log_experiment({"id": "1", "rows": [], "totals": {}}) is False
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                headers={"Authorization": "Bearer k"},
                json={
                    "model": "mistral-small-latest",
                    "messages": [{"role": "user", "content": "still works"}],
                },
            ) as resp,
        ):
            assert resp.status == 200
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "W&B logging is off" in line and "WANDB_API_KEY" in line


async def test_finished_experiment_is_logged(upstream: Upstream, tmp_path: Path, offline: Path):
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'x.db'}", tmp_path, wandb_project=PROJECT
    )
    async with running(settings, ENV) as gw:
        for n in range(2):
            await send(gw, n)
        status, created = await post(
            gw,
            "/api/experiments",
            {
                "filter": {"model": "mistral-large-latest"},
                "overrides": {"model": "mistral-small-latest"},
            },
        )
        assert status == 202, created
        report, _ = await finished(gw, created["id"])
        assert report["status"] == "done"

        async def logged() -> bool:
            return (await gw.recorder.call("integrations_drained"))["wandb"]["sent"] == 1

        await wait_until(logged, timeout=30)

    found = offline_run(offline, f"agentops-exp-{created['id']}")
    assert found["run"].display_name == f"experiment {created['id']}"
    assert found["run"].run_group == f"experiment-{created['id']}"
    history = [h for h in found["history"] if "call/tokens_after" in h]
    assert len(history) == 2 and all(h["call/cost_after"] > 0 for h in history)
    assert found["config"]["overrides"] == {"model": "mistral-small-latest"}
    comparison = table(found, "comparison")
    assert len(comparison["data"]) == 2 and "exchange_id" in comparison["columns"]
    assert found["summary"]  # the experiment's totals


async def test_dataset_experiment_is_a_run_per_variant(
    upstream: Upstream, tmp_path: Path, offline: Path
):
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'd.db'}", tmp_path, wandb_project=PROJECT
    )
    async with running(settings, ENV) as gw:
        for n in range(3):
            await send(gw, n, temperature=0)
        status, dataset = await post(gw, "/api/datasets", {"name": "wb"})
        assert status == 201
        status, page = await get(gw, "/api/exchanges", limit="10")
        ids = [i["id"] for i in page["items"]]
        status, _ = await post(gw, f"/api/datasets/{dataset['id']}/items", {"exchange_ids": ids})
        assert status == 201
        variants = [{"name": "large", "model": "mistral-large-latest"}]
        variants.append({"name": "small", "model": "mistral-small-latest"})
        status, created = await post(
            gw,
            "/api/experiments",
            {"dataset_id": dataset["id"], "variants": variants, "scorers": [{"type": "bleu"}]},
        )
        assert status == 202, created
        report, _ = await finished(gw, created["id"])
        assert report["status"] == "done"

        async def logged() -> bool:
            return (await gw.recorder.call("integrations_drained"))["wandb"]["sent"] == 2

        await wait_until(logged, timeout=30)

    for index, name in enumerate(("large", "small")):
        found = offline_run(offline, f"agentops-exp-{created['id']}-v{index}")
        assert found["run"].run_group == f"experiment-{created['id']}"
        assert found["run"].display_name == f"experiment {created['id']} · {name}"
        assert found["config"]["variant"]["name"] == name
        assert found["summary"]["scores/bleu/mean"] is not None
        assert found["summary"]["errors"] == 0 and found["summary"]["cost_usd"] > 0
        results = table(found, "comparison")
        assert len(results["data"]) == 3 and "score/bleu" in results["columns"]


def run_dirs(folder: Path, run_id: str) -> list[Path]:
    return sorted(folder.glob(f"wandb/offline-run-*-{run_id}"))


async def test_late_evaluation_and_replays(upstream: Upstream, tmp_path: Path, offline: Path):
    """Scoring after the run ended resumes its wandb run; a single replay is logged in the
    group `replays`; an experiment's replays are rows of the experiment, not runs."""
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 'l.db'}", tmp_path, wandb_project=PROJECT, run_idle=0.3
    )
    async with running(settings, ENV) as gw:
        await send(gw, 1)
        exchange_id = await latest_id(gw)

        async def sent(count: int) -> bool:
            stats = (await gw.recorder.call("integrations_drained"))["wandb"]
            assert stats["dropped"] == 0, stats
            return stats["sent"] == count

        await wait_until(lambda: sent(1), timeout=30)  # the run ended and was logged
        (run,) = await runs_of(gw)
        assert run["status"] == "ok"
        # wandb names an offline run's folder by the second it started: the resumed run gets
        # a folder of its own only in a later second (not a wait for the gateway)
        await asyncio.sleep(1.05 - time.time() % 1)
        status, _ = await post(
            gw,
            f"/api/runs/{run['id']}/evaluations",
            {"metric_name": "judge", "metric_value": 0.8},
        )
        assert status == 201
        await wait_until(lambda: sent(2), timeout=30)

        status, replayed = await post(gw, f"/api/exchanges/{exchange_id}/replay", {})
        assert status in (200, 201), replayed
        await wait_until(lambda: sent(3), timeout=30)  # the replay's run ended and was logged

        status, created = await post(
            gw, "/api/experiments", {"run_id": run["id"], "overrides": {"temperature": 0.1}}
        )
        assert status == 202, created
        await finished(gw, created["id"])
        await wait_until(lambda: sent(4), timeout=30)  # the experiment

        async def all_ended() -> bool:
            await gw.recorder.call("finish_idle_runs")
            return all(r["status"] != "running" for r in await runs_of(gw))

        await wait_until(all_ended, timeout=30)
        await gw.recorder.call("integrations_drained")
        assert (await gw.recorder.call("integrations_drained"))["wandb"]["sent"] == 4

    first, resumed = run_dirs(offline, f"agentops-{run['id']}")
    _, got = finished_records_in(first)
    assert not [
        r
        for r in got
        if r.WhichOneof("record_type") == "summary"
        and any(u.key == "eval/judge" for u in r.summary.update)
    ]
    _, got = finished_records_in(resumed)
    summary = {}
    for record in got:
        if record.WhichOneof("record_type") == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in record.summary.update})
    assert summary["eval/judge"] == 0.8
    replay_runs = [
        d for d in offline.glob("wandb/offline-run-*") if not d.name.endswith(f"-{run['id']}")
    ]
    groups = {}
    for folder in replay_runs:
        _, got = finished_records_in(folder)
        (record,) = [r.run for r in got if r.WhichOneof("record_type") == "run"]
        groups[record.run_id] = (record.run_group, record.display_name)
    assert groups.pop(f"agentops-exp-{created['id']}") == (
        f"experiment-{created['id']}",
        f"experiment {created['id']}",
    )
    ((group, name),) = groups.values()  # the single replay; none for the experiment's
    assert group == "replays" and name == f"replay of exchange {exchange_id}"


def finished_records_in(folder: Path, timeout: float = 20) -> tuple[Path, list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        (run_file,) = folder.glob("run-*.wandb")
        got = records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in got):
            return run_file, got
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished offline run in {folder}")
        time.sleep(0.05)
