"""Experiments over datasets through the real gateway and the fake Mistral, on SQLite and
PostgreSQL: a dataset of recorded calls sent to two variants, scored, summed up per variant
(bootstrap intervals, cost, tokens, latency), compared item by item; the calls are recorded in
runs of their own (source `experiment`); a stopped experiment goes on after a restart; bad
requests are 400/404 with a message.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.replay.dataset_experiments import bootstrap_ci, percentile, retry_after
from gateway.settings import ConfigError, Settings
from tests.clients import ENV, finished, get, post, send
from tests.conftest import CLI, ROOT, Upstream, make_settings, running
from tests.fake_mistral import IN_FLIGHT, REQUESTS, THROTTLE, start_fake
from tests.test_dataset_pages import TOKEN
from tests.test_evaluators import REGRESSION

VARIANTS = [
    {"name": "large", "model": "mistral-large-latest", "params": {"temperature": 0}},
    {
        "name": "small-terse",
        "model": "mistral-small-latest",
        "params": {"temperature": 0.9, "max_tokens": 64, "random_seed": 3},
        "system": "Answer in one short sentence.",
    },
]
JUDGE = {**REGRESSION, "name": "quality-judge"}
SCORERS = [{"type": "bleu"}, {"type": "exact_match"}, {"type": "rouge_l"}]


async def dataset_of_calls(gw: Any, count: int) -> str:
    for n in range(count):
        await send(gw, n, temperature=0)
    status, page = await get(gw, "/api/exchanges", limit="50")
    assert status == 200
    ids = [i["id"] for i in page["items"]]
    status, created = await post(gw, "/api/datasets", {"name": "calls", "description": ""})
    assert status == 201, created
    status, added = await post(gw, f"/api/datasets/{created['id']}/items", {"exchange_ids": ids})
    assert status == 201, added
    return str(created["id"])


async def test_two_variants_scoreboard_and_what_got_worse(
    upstream: Upstream, db_url: str, tmp_path: Path
):
    async with running(make_settings(upstream.url, db_url, tmp_path), ENV) as gw:
        dataset_id = await dataset_of_calls(gw, 4)
        status, created = await post(
            gw,
            "/api/experiments",
            {"dataset_id": dataset_id, "variants": VARIANTS, "scorers": SCORERS, "concurrency": 2},
        )
        assert status == 202, created
        assert created["total"] == 8
        report, _ = await finished(gw, created["id"])
        assert report["status"] == "done" and report["kind"] == "dataset"
        assert report["progress"]["ok"] == 8 and report["progress"]["fraction"] == 1.0
        board = {b["variant"]: b for b in report["scoreboard"]}
        assert set(board) == {"large", "small-terse"}
        for name, entry in board.items():
            assert entry["items"] == 4 and entry["errors"] == 0
            assert entry["tokens"] > 0 and entry["cost_usd"] > 0
            assert entry["latency_p50_ms"] <= entry["latency_p95_ms"]
            for metric in ("bleu", "exact_match", "rouge_l"):
                figures = entry["scores"][metric]
                assert figures["n"] == 4, (name, metric)
                assert figures["ci_low"] <= figures["mean"] <= figures["ci_high"]
        # the same model at temperature 0 answers as it did: exact matches everywhere
        assert board["large"]["scores"]["exact_match"]["mean"] == 1.0
        assert board["small-terse"]["scores"]["bleu"]["mean"] < 100
        assert board["small-terse"]["cost_usd"] < board["large"]["cost_usd"]

        # every call is recorded, with the variant's request, in a run of its own
        rows = report["rows"]
        first_small = next(r for r in rows if r["variant"] == "small-terse")
        status, call = await get(gw, f"/api/exchanges/{first_small['replay_id']}")
        assert status == 200
        assert call["model"] == "mistral-small-latest"
        bodies = [orjson.loads(r["body"]) for r in upstream.requests if r["body"]]
        small_requests = [b for b in bodies if b.get("model") == "mistral-small-latest"]
        assert len(small_requests) == 4
        for body in small_requests:
            assert body["messages"][0] == {
                "role": "system",
                "content": "Answer in one short sentence.",
            }
            assert (body["temperature"], body["max_tokens"], body["random_seed"]) == (0.9, 64, 3)
            assert "stream" not in body
        status, run = await get(gw, f"/api/runs/{call['run_id']}")
        assert status == 200, run
        assert run["source"] == "experiment", run

        # items side by side, and what got worse from large to small-terse
        item = report["items"][0]
        assert set(item["outputs"]) == {"large", "small-terse"}
        assert item["question"] in {f"question {n}" for n in range(4)} and item["expected"]
        large = item["outputs"]["large"]
        status, made = await get(gw, f"/api/exchanges/{large['exchange_id']}")
        assert large["output_text"] and large["output_text"] == made["output_text"]
        status, worse = await get(
            gw, f"/api/experiments/{created['id']}/worse", base="large", variant="small-terse"
        )
        assert status == 200, worse
        assert worse["items"], "a terse cheaper model loses exact matches"
        assert all(w["after"] < w["before"] for w in worse["items"])
        drops = [w["drop"] for w in worse["items"]]
        assert drops == sorted(drops, reverse=True)

        # the old shapes still work, listed with the new one
        status, listed = await get(gw, "/api/experiments")
        assert created["id"] in [i["id"] for i in listed["items"]]

        # bad requests: clear 400/404s, never a 500
        bad: list[tuple[dict[str, Any], int, str]] = [
            ({"dataset_id": "123", "variants": VARIANTS}, 404, "not found"),
            ({"dataset_id": "x", "variants": VARIANTS}, 400, "not an id"),
            ({"dataset_id": dataset_id, "version": 9, "variants": VARIANTS}, 404, "no version"),
            ({"dataset_id": dataset_id, "variants": []}, 400, "variants must be"),
            ({"dataset_id": dataset_id, "variants": [{"model": "m"}]}, 400, "name"),
            (
                {"dataset_id": dataset_id, "variants": [{"name": "a", "params": {"tempo": 1}}]},
                400,
                "unknown parameter",
            ),
            (
                {"dataset_id": dataset_id, "variants": [{"name": "a"}, {"name": "a"}]},
                400,
                "own name",
            ),
            (
                {"dataset_id": dataset_id, "variants": VARIANTS, "scorers": [{"type": "nope"}]},
                400,
                "nope",
            ),
            ({"dataset_id": dataset_id, "variants": VARIANTS, "url": "http://x"}, 400, "url"),
            (
                {"dataset_id": dataset_id, "variants": VARIANTS, "concurrency": 99},
                400,
                "concurrency",
            ),
        ]
        status, empty = await post(gw, "/api/datasets", {"name": "empty"})
        assert status == 201
        bad.append(({"dataset_id": empty["id"], "variants": VARIANTS}, 400, "no items yet"))
        bad.append(
            ({"dataset_id": dataset_id, "variants": [{"name": "a", "tools": {}}]}, 400, "tools")
        )
        for body, code, words in bad:
            status, answer = await post(gw, "/api/experiments", body)
            assert status == code, (body, answer)
            assert words in answer["error"], (words, answer)
        status, answer = await get(
            gw, f"/api/experiments/{created['id']}/worse", base="large", variant="nope"
        )
        assert status == 404 and "nope" in answer["error"]


async def test_resumes_after_a_restart(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'x.db'}", tmp_path)
    async with running(settings, ENV) as gw:
        dataset_id = await dataset_of_calls(gw, 12)
        status, created = await post(
            gw,
            "/api/experiments",
            {"dataset_id": dataset_id, "variants": VARIANTS[:1], "concurrency": 1},
        )
        assert status == 202, created
        experiment_id = created["id"]
    # stopped at once: some rows are still to send
    with sqlite3.connect(tmp_path / "x.db") as db:
        (pending,) = db.execute(
            "SELECT COUNT(*) FROM experiment_rows WHERE status = 'pending'"
        ).fetchone()
    assert pending > 0
    async with running(settings, ENV) as gw:
        report, _ = await finished(gw, experiment_id)
        assert report["status"] == "done", report["progress"]
        assert report["progress"]["ok"] == 12
        assert all(r["replay_id"] for r in report["rows"])


async def test_cli_runs_an_experiment_with_a_progress_bar(upstream: Upstream, tmp_path: Path):
    async with running(
        make_settings(upstream.url, f"sqlite://{tmp_path / 'x.db'}", tmp_path), ENV
    ) as gw:
        await dataset_of_calls(gw, 3)
        code, out, err = await run_cli(
            "dataset", "experiment", "calls",
            "--variant", "large=mistral-large-latest",
            "--variant", orjson.dumps(SMALL).decode(),
            "--scorer", "bleu", "--url", gw.ui_url,
        )  # fmt: skip
        assert code == 0, err
        assert "calls [" in err and "6/6 100%" in err  # progress, on stderr
        lines = out.splitlines()
        assert lines[0].startswith("large: bleu ") and lines[1].startswith("small: bleu ")
        assert "0 errors" in lines[1]
        experiment_id = err.split(":")[0].split()[-1]
        for shape, target in (("hf", tmp_path / "results"), ("parquet", tmp_path / "r.parquet")):
            code, out, err = await run_cli(
                "dataset", "experiment-export", experiment_id, "--format", shape,
                "--out", str(target), "--url", gw.ui_url,
            )  # fmt: skip
            assert code == 0, err
            assert out.strip() == f"6 rows written to {target}"
        import datasets

        saved = datasets.load_from_disk(str(tmp_path / "results"))
        assert len(saved) == 6 and set(saved["variant"]) == {"large", "small"}
        assert all(isinstance(v, float) for v in saved["score/bleu"])
        assert all(saved["output_text"])
        # typed columns, also those with no value in any row (no errors here): the results of
        # two experiments, one with errors, must concatenate
        assert saved.features["error"].dtype == "string"
        assert saved.features["cost_usd"].dtype == saved.features["score/bleu"].dtype == "float64"
        parquet = datasets.Dataset.from_parquet(str(tmp_path / "r.parquet"))
        assert parquet.features == saved.features
        assert parquet["item_id"] == saved["item_id"]
        code, _, err = await run_cli(
            "dataset", "experiment", "calls", "--variant", "x=m", "--scorer", "nope",
            "--url", gw.ui_url,
        )  # fmt: skip
        assert code == 2 and "nope" in err and len(err.strip().splitlines()) == 1
        code, _, err = await run_cli(
            "dataset", "experiment", "other", "--variant", "x=m", "--url", gw.ui_url
        )
        assert code == 2 and "dataset 'other' not found" in err


SMALL = {"name": "small", "model": "mistral-small-latest", "params": {"temperature": 0}}


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_concurrency_is_a_limit(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'c.db'}", tmp_path)
    async with running(settings, ENV) as gw:
        dataset_id = await dataset_of_calls(gw, 8)
        flight = upstream.app[IN_FLIGHT]
        for concurrency in (1, 3):
            flight.update(max=0, delay=0.05)
            status, created = await post(
                gw,
                "/api/experiments",
                {"dataset_id": dataset_id, "variants": VARIANTS, "concurrency": concurrency},
            )
            assert status == 202, created
            report, _ = await finished(gw, created["id"])
            assert report["progress"]["ok"] == 16
            assert flight["max"] == concurrency
        flight.update(delay=0.0)


async def test_a_429_is_retried_after_its_retry_after(upstream: Upstream, tmp_path: Path):
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'r.db'}", tmp_path)
    async with running(settings, ENV) as gw:
        dataset_id = await dataset_of_calls(gw, 1)
        upstream.app[THROTTLE].update(remaining=2, retry_after="1")
        started = time.monotonic()
        status, created = await post(
            gw,
            "/api/experiments",
            {
                "dataset_id": dataset_id,
                "variants": VARIANTS[:1],
                "scorers": [{"type": "judge", "definition": JUDGE}],
            },
        )
        assert status == 202, created
        report, _ = await finished(gw, created["id"])
        assert time.monotonic() - started >= 2.0  # waited Retry-After twice
        assert report["status"] == "done" and report["progress"]["ok"] == 1
        assert report["scoreboard"][0]["scores"]["judge:quality-judge"]["n"] == 1
        status, page = await get(gw, "/api/exchanges", limit="10", status="429")
        assert status == 200 and len(page["items"]) == 2  # both tries are recorded too
        assert upstream.app[THROTTLE]["remaining"] == 0


def test_statistics():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    low, high = bootstrap_ci(values)
    assert low < statistics.fmean(values) < high
    assert bootstrap_ci(values) == (low, high)  # a fixed seed
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5) == 5
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.95) == 10
    assert percentile([], 0.5) is None
    assert retry_after([("Retry-After", "7")], 0) == 7.0
    assert retry_after([("retry-after", "999")], 0) == 30.0
    assert retry_after([], 2) == 2.0


ALT_KEY = "alt-upstream-key-7777"


def _auth(request: dict[str, Any]) -> str:
    return next(v for k, v in request["headers"] if k.lower() == "authorization")


async def test_a_variant_on_an_alternative_upstream(upstream: Upstream, tmp_path: Path):
    """--upstream-alt names a second OpenAI-compatible server: the variant that names it is
    sent there (with its own key), the other to the default upstream, both recorded."""
    runner, alt_url, alt_app = await start_fake()
    try:
        settings = make_settings(
            upstream.url,
            f"sqlite://{tmp_path / 'x.db'}",
            tmp_path,
            upstream_alt=f"self-hosted={alt_url}/",
        )
        env = {**ENV, "AGENTOPS_UPSTREAM_ALT_KEY_SELF_HOSTED": ALT_KEY}
        async with running(settings, env) as gw:
            dataset_id = await dataset_of_calls(gw, 3)
            before = len(upstream.requests)
            variants = [
                {"name": "hosted", "model": "mistral-large-latest"},
                {"name": "local", "model": "mistral-small-latest", "upstream": "self-hosted"},
            ]
            status, answer = await post(
                gw,
                "/api/experiments",
                {"dataset_id": dataset_id, "variants": [{"name": "x", "upstream": "nope"}]},
            )
            assert status == 400 and "self-hosted" in answer["error"], answer
            status, created = await post(
                gw, "/api/experiments", {"dataset_id": dataset_id, "variants": variants}
            )
            assert status == 202, created
            report, _ = await finished(gw, created["id"])
            assert report["progress"]["ok"] == 6, report["progress"]
            board = {b["variant"]: b for b in report["scoreboard"]}
            assert (board["hosted"]["upstream"], board["local"]["upstream"]) == (
                None,
                "self-hosted",
            )
            assert [v["upstream"] for v in report["variants"]] == [None, "self-hosted"]

            alt_calls = [r for r in alt_app[REQUESTS] if r["path"] == "/v1/chat/completions"]
            main_calls = [
                r for r in upstream.requests[before:] if r["path"] == "/v1/chat/completions"
            ]
            assert [orjson.loads(r["body"])["model"] for r in alt_calls] == [
                "mistral-small-latest"
            ] * 3
            assert {orjson.loads(r["body"])["model"] for r in main_calls} == {
                "mistral-large-latest"
            }
            assert len(main_calls) == 3
            assert {_auth(r) for r in alt_calls} == {f"Bearer {ALT_KEY}"}
            assert ALT_KEY not in {_auth(r) for r in main_calls}.pop()

            local = next(r for r in report["rows"] if r["variant"] == "local")
            status, call = await get(gw, f"/api/exchanges/{local['replay_id']}")
            assert status == 200 and call["model"] == "mistral-small-latest"
            assert ALT_KEY not in orjson.dumps(call).decode()
            status, run = await get(gw, f"/api/runs/{call['run_id']}")
            assert run["source"] == "experiment", run

            # the dataset page's form offers the configured names, and sends the choice
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(gw.ui_url, cookie_jar=jar) as http:
                async with http.get(f"/datasets/{dataset_id}") as resp:
                    html = await resp.text()
                assert '<option value="self-hosted">self-hosted</option>' in html
                form = {
                    "csrf_token": TOKEN.search(html)[1],  # type: ignore[index]
                    "v1-name": "via-page",
                    "v1-model": "mistral-small-latest",
                    "v1-upstream": "self-hosted",
                }
                path = f"/datasets/{dataset_id}/experiment"
                async with http.post(path, data=form, allow_redirects=False) as resp:
                    assert resp.status == 303, await resp.text()
                    page_id = resp.headers["Location"].rsplit("/", 1)[1]
            report, _ = await finished(gw, page_id)
            assert report["scoreboard"][0]["upstream"] == "self-hosted"
            assert report["progress"]["ok"] == 3
            assert len([r for r in alt_app[REQUESTS] if r["path"] == "/v1/chat/completions"]) == 6
    finally:
        await runner.cleanup()


def test_a_bad_upstream_alt_is_refused_at_start(tmp_path: Path):
    for value, words in (
        ("self-hosted", "NAME=URL"),
        ("local=ftp://10.0.0.5", "http(s)"),
        ("a=http://x,a=http://y", "twice"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            Settings.build({"upstream_alt": value}, {})
    assert Settings.build(
        {}, {"AGENTOPS_UPSTREAM_ALT": "a=http://x/,b-2=https://y"}
    ).upstream_alts() == {
        "a": "http://x",
        "b-2": "https://y",
    }
    proc = subprocess.run(
        [*CLI, "serve", "--upstream-alt", "x=ftp://h", "--db", f"sqlite://{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--upstream-alt" in proc.stderr and "Traceback" not in proc.stderr
