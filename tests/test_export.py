"""`agentops-studio export`: Mistral fine-tuning JSONL with tool calls, flat JSONL/CSV/Parquet,
a Hugging Face dataset (up to the push), the failures preset, API filters, CSV formula
neutralisation, and one-line errors. Data comes from the real gateway on both databases.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import io
import os
import sys
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from mistralai.client import Mistral

from gateway.cli import main
from gateway.export.exporter import (
    EXCHANGE_COLUMNS,
    RUN_COLUMNS,
    ExportError,
    ExportRequest,
    neutralise,
    run_export,
)
from gateway.export.failures import problems_of
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.exports import Failures
from gateway.store.runs import RunFilter, RunStore
from tests.clients import RUNS_KEY as KEY
from tests.clients import tool_loop
from tests.conftest import CLI, Upstream, make_settings, migrated_sqlite, running

ROOT = Path(__file__).resolve().parent.parent


def chat(
    server_url: str, text: str, *, stream: bool = False, headers: dict[str, str] | None = None
) -> None:
    with Mistral(api_key=KEY, server_url=server_url) as client:
        messages: Any = [{"role": "user", "content": text}]
        if stream:
            for _ in client.chat.stream(model="mistral-small-latest", messages=messages):
                pass
        else:
            client.chat.complete(
                model="mistral-small-latest", messages=messages, http_headers=headers
            )


async def populate(upstream: Upstream, db: str, tmp_path: Path) -> dict[str, str]:
    """A good tool loop, a low-scored run with a formula for a name, a failed call, a stream."""
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        await asyncio.to_thread(tool_loop, gw, "Nice", server_url=f"{gw.proxy_url}/r/good")
        await asyncio.to_thread(
            chat, gw.proxy_url, "tell me a joke", headers={"X-AgentOps-Run": "=SUM(1+1)"}
        )
        await asyncio.to_thread(chat, gw.proxy_url, "stream a poem", stream=True)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                headers={"x-fake-status": "429", "Authorization": f"Bearer {KEY}"},
                json={
                    "model": "mistral-small-latest",
                    "messages": [{"role": "user", "content": "too fast"}],
                },
            ) as resp,
        ):
            assert resp.status == 429
        await gw.recorder.drained(timeout=20)
    # Evaluations, and the runs finished as the idle timer would, straight in the store.
    store = Store(db)
    await store.open()
    try:
        run_store = RunStore(store)
        runs = {r.name: str(r.id) for r in (await run_store.list_runs(RunFilter(), 10, None))[0]}
        for name, score in (("good", 1.0), ("=SUM(1+1)", 0.1)):
            await run_store.add_evaluation(int(runs[name]), None, "success", score)
        finished = await run_store.finish_idle(datetime.now(UTC) + timedelta(seconds=1))
        assert len(finished) == 4
    finally:
        await store.close()
    return runs


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines()]


async def export(db: str, out: Path, fmt: str, **extra: Any) -> tuple[int, int]:
    result = await run_export(
        db,
        ExportRequest(
            format=fmt, out=str(out), filter=extra.pop("filter", ExchangeFilter()), **extra
        ),
    )
    return result.written, result.skipped


async def test_mistral_format_leaves_out_lines_mistral_would_refuse(
    upstream: Upstream, tmp_path: Path
):
    # An OpenAI-compatible upstream (an --upstream-alt vLLM, say) names tool calls its own way:
    # Mistral's fine-tuning takes 9-letter-or-digit ids only, so such a line is left out and
    # counted, never written for the upload to refuse.
    db = f"sqlite://{tmp_path / 'unfit.db'}"
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        await asyncio.to_thread(tool_loop, gw, "Nice")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                headers={"x-fake-tool-call-id": "call_1", "Authorization": f"Bearer {KEY}"},
                json={
                    "model": "mistral-small-latest",
                    "messages": [{"role": "user", "content": "Weather in Bern?"}],
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            ) as resp,
        ):
            assert (await resp.json())["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"
        await gw.recorder.drained(timeout=20)
    out = tmp_path / "ft.jsonl"
    result = await run_export(
        db, ExportRequest(format="mistral", out=str(out), filter=ExchangeFilter())
    )
    examples = lines(out)
    assert [problems_of(example) for example in examples] == [[], []]  # the loop's two calls
    assert (result.written, result.skipped, result.unfit) == (2, 0, 1)
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "export",
        "--format",
        "mistral",
        "--out",
        str(out),
        "--db",
        db,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b"1 unfit for Mistral fine-tuning left out" in err
    assert b"'call_1' is not 9 letters or digits" in err


async def test_export_formats_presets_and_filters(upstream: Upstream, db_url: str, tmp_path: Path):
    runs = await populate(upstream, db_url, tmp_path)

    # Mistral fine-tuning JSONL: every call with a reply; the failed one is left out.
    assert await export(db_url, tmp_path / "ft.jsonl", "mistral") == (4, 1)
    examples = lines(tmp_path / "ft.jsonl")
    loop = examples[1]
    assert [m["role"] for m in loop["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    call = loop["messages"][2]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Weather in Nice?"}
    assert loop["messages"][3]["tool_call_id"] == call["id"]
    assert loop["tools"][0]["function"]["name"] == "get_weather"
    streamed = examples[3]["messages"]
    assert streamed[0]["content"] == "stream a poem" and streamed[-1]["content"]
    assert all(isinstance(m.get("content", ""), str) for e in examples for m in e["messages"])

    # The failures preset, per run: the low-scored run, and the failed call's run (which has
    # no reply to learn from, so it is counted as skipped).
    assert await export(
        db_url, tmp_path / "fail.jsonl", "mistral", runs=True, failures=Failures()
    ) == (1, 1)
    (failure,) = lines(tmp_path / "fail.jsonl")
    assert failure["messages"][0]["content"] == "tell me a joke"
    # ... and per call, with a metric bound: the 429 and the low-scored run's call.
    assert await export(
        db_url, tmp_path / "fail-calls.jsonl", "jsonl", failures=Failures(0.5, "success")
    ) == (2, 0)
    assert sorted(r["status"] for r in lines(tmp_path / "fail-calls.jsonl")) == [200, 429]

    # Flat JSONL with an API filter.
    assert await export(
        db_url, tmp_path / "429.jsonl", "jsonl", filter=ExchangeFilter(status_class=4)
    ) == (1, 0)
    (record,) = lines(tmp_path / "429.jsonl")
    assert record["status"] == 429 and record["cost_usd"] is None
    # A failed call's record has the messages it sent (no reply to append).
    assert record["messages"] == [{"role": "user", "content": "too fast"}]
    assert orjson.loads(record["request_body"])["messages"][0]["content"] == "too fast"
    # The failure's kind beside its message (the fake sends Mistral's rate-limit body).
    assert (record["error_type"], record["error_code"]) == ("rate_limited", "1300")
    assert record["error"] == "HTTP 429: Rate limit exceeded"

    # CSV of calls: the columns as before, error_type and error_code added at the end.
    assert await export(
        db_url, tmp_path / "429.csv", "csv", filter=ExchangeFilter(status_class=4)
    ) == (1, 0)
    (row,) = list(csv.DictReader(io.StringIO((tmp_path / "429.csv").read_text())))
    assert list(row) == list(EXCHANGE_COLUMNS)
    assert EXCHANGE_COLUMNS[-3:] == ("response_body", "error_type", "error_code")
    assert EXCHANGE_COLUMNS.index("error") == 11  # where readers of older files find it
    assert (row["error_type"], row["error_code"]) == ("rate_limited", "1300")

    # CSV of runs: a name a spreadsheet would run as a formula is neutralised.
    assert await export(db_url, tmp_path / "runs.csv", "csv", runs=True) == (4, 0)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "runs.csv").read_text())))
    names = {row["id"]: row["name"] for row in rows}
    assert names[runs["=SUM(1+1)"]] == "'=SUM(1+1)" and names[runs["good"]] == "good"
    good = next(row for row in rows if row["name"] == "good")
    assert good["exchange_count"] == "2" and orjson.loads(good["evaluations"]) == {"success": 1.0}
    assert [m["role"] for m in orjson.loads(good["messages"])][-1] == "assistant"

    # Parquet, typed, with the messages as nested structs.
    import pyarrow.parquet as pq

    assert await export(db_url, tmp_path / "calls.parquet", "parquet") == (5, 0)
    table = pq.read_table(tmp_path / "calls.parquet")
    assert table.num_rows == 5 and str(table.schema.field("status").type) == "int64"
    second = table.to_pylist()[1]
    assert second["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second["run_id"] == runs["good"]
    assert not list(tmp_path.glob(".agentops-export-*"))  # no work files left behind


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\uff1dSUM(A1)", "'\uff1dSUM(A1)"),
        ("\uff0b1", "'\uff0b1"),
        ("\uff0d1", "'\uff0d1"),
        ("\uff20A1", "'\uff20A1"),
        ("\ufe66A1", "'\ufe66A1"),
        (" =1+1", "' =1+1"),
        ("\n=1+1", "'\n=1+1"),
        ("\u00a0\u200b+1", "'\u00a0\u200b+1"),
        ("  fine", "  fine"),
        ("fine", "fine"),
        ("a=b", "a=b"),
        (-1, -1),
        (None, None),
    ],
)
def test_csv_formula_cells_are_neutralised(value, cell):
    assert neutralise(value) == cell


FORMULA_CHARS = "=+-@\uff1d\uff0b\uff0d\uff20\ufe62\ufe63\ufe66"
LEADING = st.text(alphabet=" \t\r\n\u00a0\u2003\u3000\u200b\ufeff", max_size=4)


@given(LEADING, st.sampled_from(FORMULA_CHARS), st.text(max_size=20))
def test_csv_any_formula_is_quoted(lead, char, rest):
    """Whatever comes before (whitespace, newlines, invisible characters) and whatever width
    the formula character has, the cell is quoted."""
    assert neutralise(lead + char + rest) == "'" + lead + char + rest


@given(st.text(max_size=30))
def test_csv_cells_are_kept_or_quoted_never_changed(text):
    """Neutralising only ever adds a leading quote; what it leaves alone reads as text."""
    cell = neutralise(text)
    assert cell in (text, "'" + text)
    if cell == text:
        skipped = ("Zs", "Zl", "Zp", "Cc", "Cf")
        meaningful = [c for c in text if unicodedata.category(c) not in skipped]
        if meaningful:
            assert unicodedata.normalize("NFKC", meaningful[0])[:1] not in "=+-@"
        assert not text.startswith(("\t", "\r", "\n"))


async def test_hf_dataset_saved_and_push_tried(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'hf.db'}"
    await populate(upstream, db, tmp_path)
    out = tmp_path / "dataset"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "export",
        "--format",
        "hf",
        "--out",
        str(out),
        "--db",
        db,
        "--push-to-hub",
        "someone/agent-calls",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    message = err.decode().strip()
    # Pushing needs the network: here it fails in one line, after the dataset was saved.
    assert proc.returncode == 2 and len(message.splitlines()) == 1, message
    assert "pushing to the Hub as someone/agent-calls failed" in message

    import datasets

    dataset = datasets.load_from_disk(str(out))
    assert len(dataset) == 5 and "messages" in dataset.features
    assert dataset[1]["messages"][-1]["role"] == "assistant"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "csv", "--out", "{tmp}/x.csv", "--status", "teapot"], "--status must be"),
        (["--format", "csv", "--out", "{tmp}/x.csv", "--since", "yesterday"], "--since must be"),
        (["--format", "csv", "--out", "{tmp}/missing/x.csv"], "does not exist"),
        (["--format", "csv", "--out", "{tmp}"], "is a folder"),
        (["--format", "csv", "--out", "{tmp}/x.csv", "--push-to-hub", "a/b"], "needs --format hf"),
        (["--format", "parquet", "--out", "-"], "cannot go to standard output"),
        (["--format", "csv", "--out", "{tmp}/x.csv", "--metric", "m"], "--preset failures"),
    ],
)
def test_bad_export_flags_are_one_line(tmp_path: Path, args: list[str], expected: str):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["export", *args, "--db", f"sqlite://{tmp_path / 'e.db'}"])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def test_export_to_stdout(tmp_path: Path):
    result = CliRunner().invoke(
        main,
        [
            "export",
            "--format",
            "jsonl",
            "--out",
            "-",
            "--db",
            migrated_sqlite(tmp_path / "empty.db"),
        ],
    )
    assert result.exit_code == 0 and result.stdout == ""
    assert "exported 0 calls to -" in result.stderr


@pytest.mark.parametrize(("runs", "columns"), [(False, EXCHANGE_COLUMNS), (True, RUN_COLUMNS)])
async def test_an_empty_export_is_a_csv_header(
    tmp_path: Path, runs: bool, columns: tuple[str, ...]
):
    out = tmp_path / "empty.csv"
    assert await export(migrated_sqlite(tmp_path / "e.db"), out, "csv", runs=runs) == (0, 0)
    assert out.read_text().splitlines() == [",".join(columns)]
    assert not list(tmp_path.glob(".agentops-export-*"))


@pytest.mark.parametrize(
    ("fmt", "missing", "expected"),
    [
        ("parquet", {"pyarrow"}, "--format parquet needs the pyarrow package"),
        ("hf", {"pyarrow", "datasets"}, "--format hf needs the pyarrow package"),
        ("hf", {"datasets"}, "--format hf needs the datasets package"),
    ],
)
async def test_export_names_a_missing_optional_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, missing: set[str], expected: str
):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in missing else find_spec(name)
    )
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=expected):
        await export(f"sqlite://{tmp_path / 'e.db'}", out, fmt)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the database


@pytest.mark.parametrize(
    ("fmt", "out", "push", "expected"),
    [
        ("jsonl", "x.jsonl", "a/b", "--push-to-hub needs --format hf"),
        ("hf", "-", None, "--out -: hf cannot go to standard output"),
        ("parquet", "-", None, "--out -: parquet cannot go to standard output"),
    ],
)
async def test_export_refuses_impossible_targets_before_reading(
    tmp_path: Path, fmt: str, out: str, push: str | None, expected: str
):
    target = out if out == "-" else str(tmp_path / out)
    request = ExportRequest(format=fmt, out=target, filter=ExchangeFilter(), push_to_hub=push)
    with pytest.raises(ExportError, match=expected):
        await run_export(f"sqlite://{tmp_path / 'e.db'}", request)
    assert list(tmp_path.iterdir()) == []
