"""The fine-tune loop end to end: failures recorded by a real gateway in front of the fake,
`agentops-studio finetune` as a process exporting them, uploading the file and creating the
job through that gateway, following it, settling its cost (category fine-tuning) and
registering the model; cost categories in /api/exchanges and /api/stats on both databases.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from tortoise.migrations.api import migrate

from gateway.app import Gateway
from gateway.capture.pricing import PriceTable
from gateway.export.failures import failures, problems_of
from gateway.providers.mistral import MistralProvider
from gateway.store.exchanges import Store
from gateway.store.failures import failing_calls
from gateway.store.urls import tortoise_config
from tests.conftest import (
    CLI,
    ROOT,
    Upstream,
    free_port,
    make_settings,
    migrated_sqlite,
    running,
    wait_until,
)

KEY = "sk-finetune-test-key-0000111122223333"
AUTH = {"Authorization": f"Bearer {KEY}"}
ENV = {"AGENTOPS_REPLAY_API_KEY": KEY}
# A training price of $1 per token and a $0.50 fee: the settled cost is the trained tokens
PRICES = """
[models]
[fine_tuning]
minimum_fee_usd = 0.5
[fine_tuning.models]
"open-mistral-nemo" = { training_per_mtok = 1000000, storage_per_month_usd = 2 }
"""


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "finetune",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "AGENTOPS_REPLAY_API_KEY": "", "MISTRAL_API_KEY": "", **(env or {})},
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


async def chat(
    gw: Gateway, http: aiohttp.ClientSession, text: str, run: str, **headers: str
) -> None:
    body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": text}]}
    async with http.post(
        f"{gw.proxy_url}/v1/chat/completions",
        json=body,
        headers={**AUTH, "X-AgentOps-Run": run, **headers},
    ) as resp:
        await resp.read()


async def exchanges(gw: Gateway, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with http.get(f"{gw.ui_url}/api/exchanges?limit=200") as resp:
        assert resp.status == 200
        return (await resp.json())["items"]


async def traffic(gw: Gateway) -> None:
    """An error then its retry; a reply scored low then a better one; an error never retried."""
    async with aiohttp.ClientSession() as http:
        await chat(gw, http, "what is our refund window?", "agent-a", **{"x-fake-status": "500"})
        await chat(gw, http, "what is our refund window?", "agent-a")
        await chat(gw, http, "summarise ticket 42", "agent-b")
        await gw.recorder.drained(timeout=20)
        scored = next(e for e in await exchanges(gw, http) if e["preview"] == "summarise ticket 42")
        async with http.post(
            f"{gw.ui_url}/api/exchanges/{scored['id']}/evaluations",
            json={"metric_name": "judge", "metric_value": 0.2},
        ) as resp:
            assert resp.status == 201
        await chat(gw, http, "summarise ticket 42", "agent-b")
        await chat(gw, http, "never answered", "agent-c", **{"x-fake-status": "503"})
        await gw.recorder.drained(timeout=20)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_finetune_loop_through_the_gateway(upstream: Upstream, db_url: str, tmp_path: Path):
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    settings = make_settings(upstream.url, db_url, tmp_path, prices=str(prices))
    async with running(settings, ENV) as gw, aiohttp.ClientSession() as http:
        await traffic(gw)
        before = await exchanges(gw, http)
        assert {e["category"] for e in before} == {"llm"}

        out = tmp_path / "failures.jsonl"
        common = ("--db", settings.db, "--prices", str(prices), "--min-score", "0.5")
        code, stdout, stderr = await run_cli(*common, "--dry-run", "--out", str(out))
        assert code == 0, stderr
        assert stdout.strip() == str(out)
        assert "2 training examples" in stderr and "1 failures without" in stderr
        lines = read_lines(out)
        assert [line["messages"][0]["content"] for line in lines] == [
            "what is our refund window?",  # the failing request itself, not a later turn
            "summarise ticket 42",
        ]
        assert all(line["messages"][-1]["role"] == "assistant" for line in lines)
        assert all(problems_of(line) == [] for line in lines)
        assert not [r for r in upstream.requests if "fine_tuning" in r["path"]]

        code, stdout, stderr = await run_cli(
            *common, "--gateway", gw.proxy_url, "--out", str(out), "--poll-every", "0.05",
            env=ENV,
        )  # fmt: skip
        assert code == 0, stderr
        assert "SUCCESS" in stdout and "RUNNING" in stderr
        paths = [(r["method"], r["path"]) for r in upstream.requests]
        assert ("POST", "/v1/files") in paths and ("POST", "/v1/fine_tuning/jobs") in paths
        job = next(r for r in upstream.requests if r["path"] == "/v1/fine_tuning/jobs")
        assert ["Authorization", f"Bearer {KEY}"] in [list(h) for h in job["headers"]]

        async with http.get(f"{gw.ui_url}/api/models") as resp:
            (model,) = (await resp.json())["items"]
        assert model["name"].startswith("ft:open-mistral-nemo:") and model["examples"] == 2
        assert model["name"] in stdout
        trained = model["trained_tokens"]
        assert trained > 0 and model["cost_usd"] == pytest.approx(trained * 1.0)

        await gw.recorder.drained(timeout=20)
        after = await exchanges(gw, http)
        ours = [e for e in after if e["id"] not in {b["id"] for b in before}]
        jobs = [e for e in ours if e["path"].startswith("/v1/fine_tuning/jobs")]
        assert len(jobs) >= 3 and {e["category"] for e in ours} == {"fine-tuning"}
        (upload,) = [e for e in ours if e["path"] == "/v1/files"]
        assert upload["cost_usd"] == 0.0  # the training file: part of the job, free
        created = [e for e in jobs if e["method"] == "POST"]
        assert [e["cost_usd"] for e in created] == [pytest.approx(trained * 1.0)]
        assert sum(e["cost_usd"] for e in jobs) == pytest.approx(trained * 1.0)  # looks are free
        assert len({e["run_id"] for e in ours}) == 1  # one run of its own
        async with http.get(f"{gw.ui_url}/api/runs/{ours[0]['run_id']}") as resp:
            run = await resp.json()
        assert run["source"] == "finetune"

        async with http.get(f"{gw.ui_url}/api/stats") as resp:
            totals = (await resp.json())["totals"]
        by_category = totals["cost_by_category"]
        assert by_category["fine-tuning"] == pytest.approx(trained * 1.0)
        llm = sum(e["cost_usd"] or 0 for e in after if e["category"] == "llm")
        assert by_category["llm"] == pytest.approx(llm) and by_category["tool"] == 0
        assert totals["cost_usd"] == pytest.approx(sum(by_category.values()))

        # the loop's own calls never feed the failures rule
        code, _, stderr = await run_cli(*common, "--dry-run", "--out", str(out))
        assert code == 0 and "2 training examples" in stderr


async def test_no_wait_leaves_the_minimum_fee(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'nw.db'}", tmp_path)
    async with running(settings, ENV) as gw, aiohttp.ClientSession() as http:
        await traffic(gw)
        code, stdout, stderr = await run_cli(
            "--db", settings.db, "--gateway", gw.proxy_url, "--out", str(tmp_path / "f.jsonl"),
            "--no-wait", env={"MISTRAL_API_KEY": KEY},
        )  # fmt: skip
        assert code == 0, stderr
        assert "QUEUED" in stdout and "model " not in stdout
        await gw.recorder.drained(timeout=20)
        tuning = [e for e in await exchanges(gw, http) if e["category"] == "fine-tuning"]
        # the training file's upload is fine-tuning too, at no cost; the job its minimum fee
        costs = {e["path"]: e["cost_usd"] for e in tuning}
        assert costs == {"/v1/files": 0.0, "/v1/fine_tuning/jobs": 4.0}
        async with http.get(f"{gw.ui_url}/api/models") as resp:
            assert (await resp.json())["items"] == []


@pytest.mark.parametrize(
    "args",
    [
        ("--min-score", "high"),
        ("--epochs", "0"),
        ("--poll-every", "-1"),
        ("--since", "yesterday-ish"),
        ("--model", " "),
        ("--bogus",),
        (),  # no API key and not a dry run
    ],
)
async def test_bad_options_exit_2(args: tuple[str, ...], tmp_path: Path):
    code, _, stderr = await run_cli("--db", f"sqlite://{tmp_path / 'x.db'}", *args)
    assert code == 2, stderr
    assert "Traceback" not in stderr


async def test_out_in_a_missing_folder_exits_2_as_export_does(tmp_path: Path):
    """`--out` in a folder that does not exist is refused before the database is read, with
    `export`'s message: a typo in the path makes no folders."""
    out = tmp_path / "no-such-folder" / "failures.jsonl"
    db = migrated_sqlite(tmp_path / "f.db")
    code, _, stderr = await run_cli("--db", db, "--dry-run", "--out", str(out))
    assert code == 2, stderr
    assert f"--out: the folder {out.parent} does not exist" in stderr
    assert "Traceback" not in stderr and not out.parent.exists()


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
CALL = {"id": "abcDEF123", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
U = {"role": "user", "content": "q"}
A = {"role": "assistant", "content": "a"}


def asks(**call: Any) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [{**CALL, **call}]}


def result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "content": "r", "tool_call_id": call_id}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"messages": [U, A]}, None),
        ({"messages": [U, asks(), result("abcDEF123"), A], "tools": TOOLS}, None),
        ({"messages": [U]}, "last message must be the assistant"),
        ({"messages": []}, "messages is empty"),
        ({"messages": [{"role": "robot", "content": "q"}, A]}, "role must be one of"),
        ({"messages": [{"role": "user", "content": ["x"]}, A]}, "content must be a string"),
        ({"messages": [U, result("zzz"), A]}, "answers no earlier tool call"),
        ({"messages": [U, asks(id="call_1")]}, "not 9 letters"),
        (
            {"messages": [U, asks(function={"name": "lookup", "arguments": "[1]"})]},
            "not a JSON object",
        ),
        ({"messages": [U, A], "tools": [{"type": "function"}]}, "tool 0"),
        ({"messages": [U, A], "extra": 1}, "unknown key"),
    ],
)
def test_training_lines_are_validated(line: dict[str, Any], problem: str | None):
    problems = problems_of(line)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


async def new_job(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    """Upload a one-line training file to the fake at `url` and start a job on it."""
    form = aiohttp.FormData()
    form.add_field("purpose", "fine-tune")
    form.add_field("file", b'{"messages": []}\n', filename="t.jsonl")
    async with http.post(f"{url}/v1/files", data=form) as resp:
        file_id = (await resp.json())["id"]
    body = {"model": "open-mistral-nemo", "training_files": [{"file_id": file_id}]}
    async with http.post(f"{url}/v1/fine_tuning/jobs", json=body) as resp:
        return resp.status, await resp.json()


async def test_fake_jobs_progress_and_refuse_like_mistral(upstream: Upstream):
    async with aiohttp.ClientSession(headers=AUTH) as http:
        status, job = await new_job(http, upstream.url)
        assert status == 200
        assert job["status"] == "QUEUED" and job["object"] == "job"
        assert job["fine_tuned_model"] is None and job["trained_tokens"] is None
        seen = []
        for _ in range(3):
            async with http.get(f"{upstream.url}/v1/fine_tuning/jobs/{job['id']}") as resp:
                seen.append(await resp.json())
        assert [s["status"] for s in seen] == ["RUNNING", "SUCCESS", "SUCCESS"]
        assert seen[-1]["fine_tuned_model"].startswith("ft:open-mistral-nemo:")
        assert seen[-1]["trained_tokens"] > 0
        missing = {"model": "open-mistral-nemo", "training_files": [{"file_id": "nope"}]}
        async with http.post(f"{upstream.url}/v1/fine_tuning/jobs", json=missing) as resp:
            assert resp.status == 404
        async with http.post(f"{upstream.url}/v1/fine_tuning/jobs", json={"model": "x"}) as resp:
            assert resp.status == 422
            assert (await resp.json())["message"]["detail"][0]["loc"] == ["body", "training_files"]


async def test_standalone_fake_serves_jobs_on_uploaded_files(tmp_path: Path):
    # `python -m tests.fake_mistral` (the benchmark and README upstream) runs the module as
    # __main__: the jobs routes must read the files the upload stored, not 500 with a KeyError
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.fake_mistral", "--port", str(port)],
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=AUTH) as http:

            async def up() -> bool:
                try:
                    async with http.get(f"{url}/v1/models") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(up)
            status, job = await new_job(http, url)
            assert status == 200 and job["status"] == "QUEUED", job
    finally:
        proc.terminate()
        await proc.wait()


async def test_migration_fills_categories_and_their_rollups(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        async with aiohttp.ClientSession() as http:
            for n in range(3):
                await chat(gw, http, f"old call {n}", "old")
        await gw.recorder.drained(timeout=10)
    url = Store(db_url).url
    await migrate(config=tortoise_config(url), target="models.0012_shared_grouping")
    store = Store(db_url)
    await store.open(migrate_schema=False)  # as 0012 left them: no category anywhere
    try:
        (row,) = await store.rows("SELECT MIN(id) AS id FROM exchanges")
        await store.rows(
            "UPDATE exchanges SET provider = 'elevenlabs', cost_usd = 0.25 WHERE id = ?",
            [row["id"]],
        )
    finally:
        await store.close()
    store = Store(db_url)
    await store.open()  # 0016 again: categories from the providers, their rollups rebuilt
    try:
        rows = await store.rows("SELECT provider, category, cost_usd FROM exchanges")
        assert sorted((r["provider"], r["category"]) for r in rows) == [
            ("elevenlabs", "tool"),
            ("mistral", "llm"),
            ("mistral", "llm"),
        ]
        llm = sum(r["cost_usd"] or 0 for r in rows if r["category"] == "llm")
        costs = (await store.stats(None, None))["totals"]["cost_by_category"]
        assert costs == {"llm": pytest.approx(llm), "tool": 0.25, "fine-tuning": 0.0}
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("method", "path", "status", "response", "expected"),
    [
        ("POST", "/v1/fine_tuning/jobs", 200, {"id": "j", "trained_tokens": None}, (True, None)),
        ("POST", "/v1/fine_tuning/jobs/", 200, {"id": "j", "trained_tokens": 7}, (True, 7)),
        ("POST", "/v1/fine_tuning/jobs", 422, {"detail": []}, (False, None)),
        ("GET", "/v1/fine_tuning/jobs/j", 200, {"id": "j", "trained_tokens": 9}, (False, 9)),
        ("POST", "/v1/fine_tuning/jobs/j/cancel", 200, {"id": "j"}, (False, None)),
    ],
)
def test_mistral_provider_tells_fine_tuning_calls(
    method: str, path: str, status: int, response: dict[str, Any], expected: tuple[Any, ...]
):
    body = orjson.dumps({"model": "open-mistral-nemo", "training_files": []})
    parsed = MistralProvider().parse(
        method,
        path,
        {"content-type": "application/json"},
        body if method == "POST" else b"",
        status,
        {"content-type": "application/json"},
        [orjson.dumps({"model": "open-mistral-nemo", **response})],
    )
    assert parsed.category == "fine-tuning" and parsed.endpoint == "fine_tuning"
    assert (parsed.job_created, parsed.trained_tokens) == expected
    cost = PriceTable.load().job_cost(parsed)
    assert cost == (PriceTable.load().fine_tuning.job_cost("open-mistral-nemo", expected[1])
                    if expected[0] else 0.0)  # fmt: skip
    chat = MistralProvider().parse("POST", "/v1/chat/completions", {}, b"{}", 200, {}, [b"{}"])
    assert chat.category == "llm"


async def test_a_failed_run_exports_its_failing_turn(upstream: Upstream, tmp_path: Path):
    """A run judged low without an error: its last step is the failing turn; with an error in
    the middle, that call is, not the successful turn after it."""
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'turn.db'}", tmp_path)
    async with running(settings, ENV) as gw, aiohttp.ClientSession() as http:
        await chat(gw, http, "step one", "judged")
        await chat(gw, http, "step two", "judged")
        await chat(gw, http, "mid one", "broken")
        await chat(gw, http, "mid two", "broken", **{"x-fake-status": "500"})
        await chat(gw, http, "mid three", "broken")
        await gw.recorder.drained(timeout=20)
        items = {e["preview"]: e for e in await exchanges(gw, http)}
        for name in ("step two", "mid three"):
            async with http.post(
                f"{gw.ui_url}/api/runs/{items[name]['run_id']}/evaluations",
                json={"metric_name": "task_success", "metric_value": 0.0},
            ) as resp:
                assert resp.status == 201
        found = await failing_calls(gw.store, min_score=0.5, metric="task_success")
        by_id = {str(c.exchange_id): c.reason for c in found}
        assert by_id == {
            items["step two"]["id"]: "run score task_success=0 < 0.5",
            items["mid two"]["id"]: "error: HTTP 500: Internal Server Error",
        }
        assert await failing_calls(gw.store, min_score=0.5, metric="other") != found
        provider = MistralProvider()
        got = [f async for f in failures(gw.store, provider, min_score=0.5)]
        assert [f.messages[-1]["content"] for f in got] == ["step two", "mid two"]


async def test_the_failures_dataset_fills_as_calls_arrive(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    settings = make_settings(upstream.url, db_url, tmp_path, failures_min_score=0.5)
    async with running(settings, ENV) as gw, aiohttp.ClientSession() as http:
        rule = gw.failures_rule
        assert rule is not None and rule.name == "failures"
        rule.settle = 0.0  # take calls at once (a retry has had 30 s to come by default)
        await traffic(gw)
        assert await rule.fill() == 3  # the 500, the low score, the 503
        assert await rule.fill() == 0  # never twice
        async with http.get(f"{gw.ui_url}/api/datasets") as resp:
            dataset = next(d for d in (await resp.json())["items"] if d["name"] == "failures")
        async with http.get(f"{gw.ui_url}/api/datasets/{dataset['id']}/items") as resp:
            items = (await resp.json())["items"]
    by_text = {i["input"]["messages"][-1]["content"]: i for i in items}
    assert set(by_text) == {"what is our refund window?", "summarise ticket 42", "never answered"}
    retried = by_text["what is our refund window?"]
    assert retried["metadata"]["reason"].startswith("error")
    assert retried["expected_output"]["role"] == "assistant"  # what its retry answered
    assert by_text["summarise ticket 42"]["metadata"]["reason"].startswith("score judge=0.2")
    assert by_text["never answered"]["expected_output"] is None


def test_failures_dataset_off(tmp_path: Path):
    settings = make_settings(
        "http://127.0.0.1:9", "sqlite://x.db", tmp_path, failures_dataset="off"
    )
    assert Gateway(settings).failures_rule is None
