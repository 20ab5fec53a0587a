"""`agentops-studio dataset create | add | list | export` as a user runs it, on a database the
real gateway recorded into: from calls, JSONL (ours and Mistral's records) and a local
Hugging Face dataset (save_to_disk folder and Parquet), exported to each format and read
back; the Hub offline and every mistake is one line and exit status 2.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson

from tests.conftest import CLI, ROOT, Upstream, calls, free_port, make_settings, running

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_TOKEN": ""}


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **OFFLINE, **(env or {})},
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_dataset_commands_round_trip(upstream: Upstream, tmp_path: Path):
    db = f"sqlite://{tmp_path / 'cli.db'}"
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        await calls(gw, 2, "cli question")
        await gw.recorder.drained(timeout=10)
        ids = [str(r["id"]) for r in await gw.store.rows("SELECT id FROM exchanges ORDER BY id")]

    code, out, err = await run("dataset", "create", "evals", "--description", "d", "--db", db)
    assert code == 0, err
    assert out.endswith("evals  version 0  0 items\n")
    code, out, err = await run(
        "dataset", "add", "evals", "--exchange", ids[0], "--exchange", ids[1], "--db", db
    )
    assert code == 0 and "added 2 items" in out and "version 1" in out, err

    given = tmp_path / "given.jsonl"
    given.write_text(
        orjson.dumps({"input": {"messages": [{"role": "user", "content": "a"}]}}).decode()
        + "\n"
        + orjson.dumps(
            {
                "payload": {
                    "messages": [
                        {"role": "user", "content": "b"},
                        {"role": "assistant", "content": "B"},
                    ]
                },
                "properties": {"k": 1},
            }
        ).decode()
        + "\n"
    )
    code, out, err = await run("dataset", "add", "evals", "--jsonl", str(given), "--db", db)
    assert code == 0 and "added 2 items" in out and "version 2  4 items" in out, err

    exported = {}
    for shape in ("jsonl", "mistral"):
        target = tmp_path / f"{shape}.jsonl"
        code, _, err = await run(
            "dataset", "export", "evals", "--format", shape, "--out", str(target), "--db", db
        )
        assert code == 0 and "exported 4 items of evals version 2" in err, err
        exported[shape] = [orjson.loads(line) for line in target.read_text().splitlines()]
    assert exported["mistral"][3] == {
        "payload": {
            "messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "B"}]
        },
        "properties": {"k": 1},
    }
    assert exported["jsonl"][3]["expected_output"] == {"role": "assistant", "content": "B"}
    code, _, err = await run(
        "dataset",
        "export",
        "evals",
        "--version",
        "1",
        "--out",
        str(tmp_path / "v1.jsonl"),
        "--db",
        db,
    )
    assert code == 0 and len((tmp_path / "v1.jsonl").read_text().splitlines()) == 2

    # Hugging Face: a save_to_disk folder and a Parquet file, each read back into a dataset
    for shape, target in (("hf", tmp_path / "hf"), ("parquet", tmp_path / "d.parquet")):
        code, _, err = await run(
            "dataset", "export", "evals", "--format", shape, "--out", str(target), "--db", db
        )
        assert code == 0, err
        name = f"from-{shape}"
        assert (await run("dataset", "create", name, "--db", db))[0] == 0
        code, out, err = await run("dataset", "add", name, "--hf", str(target), "--db", db)
        assert code == 0 and "added 4 items" in out, err
        await run("dataset", "export", name, "--out", str(tmp_path / f"{name}.jsonl"), "--db", db)
        again = [orjson.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert again == exported["jsonl"]

    code, out, _ = await run("dataset", "list", "--db", db)
    assert code == 0 and [line.split("  ")[1] for line in out.splitlines()] == [
        "from-parquet",
        "from-hf",
        "evals",
    ]


async def test_dataset_mistakes_are_one_line(tmp_path: Path):
    from tests.conftest import migrated_sqlite

    db = migrated_sqlite(tmp_path / "m.db")
    assert (await run("dataset", "create", "d", "--db", db))[0] == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": {"messages": []}}\nnot json\n')
    cases = [
        (("create", "d"), "exists already"),
        (("add", "nope", "--jsonl", str(bad)), "dataset 'nope' not found"),
        (("add", "d"), "exactly one of"),
        (("add", "d", "--jsonl", str(bad)), "line 2: not JSON"),
        (("add", "d", "--jsonl", str(tmp_path / "missing.jsonl")), "cannot read"),
        (("add", "d", "--exchange", "12"), "exchange 12 not found"),
        (("add", "d", "--filter", "colour"), "key=value"),
        (("add", "d", "--hf", "someone/some-dataset"), "Hugging Face Hub"),
        (("export", "d", "--out", str(tmp_path / "x"), "--version", "3"), "does not exist"),
        (("export", "d", "--out", str(tmp_path / "x"), "--push-to-hub", "me/d"), "needs --format"),
        (
            (
                "export",
                "d",
                "--format",
                "hf",
                "--out",
                str(tmp_path / "h"),
                "--push-to-hub",
                "me/d",
            ),
            "needs a token",
        ),
    ]
    closed = f"http://127.0.0.1:{free_port()}"  # a Hub nobody answers for, as offline
    hub_down = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": closed}
    cases += [
        (("add", "d", "--hf", "someone/some-dataset"), "(127.0.0.1) is unreachable", hub_down),
        (
            (
                "export",
                "d",
                "--format",
                "hf",
                "--out",
                str(tmp_path / "p"),
                "--push-to-hub",
                "me/d",
            ),
            "cannot push to me/d: the Hugging Face Hub (127.0.0.1) is unreachable",
            {**hub_down, "HF_TOKEN": "hf_not_a_real_token"},
        ),
    ]
    for args, words, *env in cases:
        code, _, err = await run("dataset", *args, "--db", db, env=env[0] if env else None)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], (args, err)
        assert lines[0].startswith("agentops-studio: error: ")
