"""Three real gateway processes behind a real HAProxy (round-robin), all on one PostgreSQL
database: agent tool loops, named runs and Conversations API conversations through the
balancer with the real mistralai SDK, so consecutive calls of one agent hit different
replicas. One replica is SIGTERMed mid-load and started again. Then every run is whole and
every call a client got an answer to is stored exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral

from gateway.writer.spool import Spool
from tests.conftest import CLI, ROOT, Upstream, free_port, wait_for_health, wait_until

HAPROXY = "/usr/sbin/haproxy"
KEY = "replicas-test-key-0000111122223333"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
LOOPS, NAMED, CONVERSATIONS = 24, 6, 12

pytestmark = pytest.mark.postgres


@dataclass
class Replica:
    index: int
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None


async def start(replica: Replica, upstream: Upstream, db: str, tmp_path: Path) -> None:
    log = (tmp_path / f"gateway-{replica.index}.log").open("ab")
    replica.proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--upstream",
        upstream.url,
        "--db",
        db,
        "--port",
        str(replica.port),
        "--ui-port",
        str(replica.ui_port),
        "--spool-dir",
        str(tmp_path / f"spool-{replica.index}"),
        "--shutdown-grace",
        "5",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    await wait_for_health(f"http://127.0.0.1:{replica.ui_port}", replica.proc)


async def stop(replica: Replica) -> None:
    """SIGTERM: the replica finishes its calls and stores (flushes) what it captured."""
    proc = replica.proc
    if proc is not None and proc.returncode is None:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 60) == 0


def haproxy_config(port: int, replicas: list[Replica]) -> str:
    servers = "\n".join(
        f"    server g{r.index} 127.0.0.1:{r.port} check port {r.ui_port} inter 100ms fall 1 rise 2"
        for r in replicas
    )
    return f"""
global
    maxconn 512

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
    retry-on conn-failure
    http-reuse never

frontend balancer
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /healthz
{servers}
"""


@contextlib.asynccontextmanager
async def balancer(replicas: list[Replica], tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(port, replicas))
    log = (tmp_path / "haproxy.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        HAPROXY, "-db", "-f", str(config), stdout=log, stderr=log
    )
    try:
        url = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    auth = {"Authorization": f"Bearer {KEY}"}
                    resp = await http.get(f"{url}/v1/models", headers=auth)
                    return resp.status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(up)
        yield url
    finally:
        proc.terminate()
        await proc.wait()
        log.close()


async def in_rotation(url: str, replica: Replica) -> bool:
    """Whether the balancer sends calls to the replica again (a call through it was stored
    by that replica)."""
    async with httpx.AsyncClient() as http:
        await http.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        health = await http.get(f"http://127.0.0.1:{replica.ui_port}/healthz")
        return bool(health.json()["written_records"] > 0)


class Answers:
    """The correlation id of every call the clients got an answer to (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_task: dict[str, list[str]] = {}

    def client(self, task: str) -> httpx.Client:
        def seen(response: httpx.Response) -> None:
            if response.status_code == 200:
                with self.lock:
                    self.by_task.setdefault(task, []).append(
                        response.headers["mistral-correlation-id"]
                    )

        return httpx.Client(event_hooks={"response": [seen]}, timeout=60)


def retried(call: Any) -> Any:
    """A real agent retries a call the balancer could not place (a replica going away)."""
    for attempt in range(5):
        try:
            return call()
        except Exception:
            if attempt == 4:
                raise


def tool_loop(url: str, answers: Answers, task: str, server: str | None = None) -> None:
    """user -> tool call -> tool result -> answer -> another tool round -> answer."""
    with (
        answers.client(task) as http,
        Mistral(api_key=KEY, server_url=server or url, client=http) as client,
    ):
        messages: list[Any] = [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": f"Weather in {task}?"},
        ]

        def complete() -> Any:
            return client.chat.complete(
                model="mistral-large-latest", messages=list(messages), tools=TOOLS
            )

        for _ in range(2):
            first = retried(complete)
            call = first.choices[0].message.tool_calls[0]
            messages += [
                first.choices[0].message,
                {"role": "tool", "tool_call_id": call.id, "name": "get_weather", "content": "sun"},
            ]
            answer = retried(complete)
            messages += [answer.choices[0].message, {"role": "user", "content": "And tomorrow?"}]


def chat_conversation(url: str, answers: Answers, task: str) -> str:
    with (
        answers.client(task) as http,
        Mistral(api_key=KEY, server_url=url, client=http) as client,
    ):
        started = retried(
            lambda: client.beta.conversations.start(
                model="mistral-medium-latest", inputs=f"Plan {task}"
            )
        )
        for n in range(2):
            retried(
                lambda n=n: client.beta.conversations.append(
                    conversation_id=started.conversation_id, inputs=f"more {n}"
                )
            )
        return str(started.conversation_id)


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason=f"no HAProxy at {HAPROXY}")
async def test_three_replicas_behind_haproxy_keep_every_run_whole(
    upstream: Upstream, pg_url: str, tmp_path: Path
):
    replicas = [Replica(n) for n in range(3)]
    await asyncio.gather(*(start(r, upstream, pg_url, tmp_path) for r in replicas))
    answers = Answers()
    try:
        async with balancer(replicas, tmp_path) as url:
            gate = asyncio.Semaphore(8)
            done = 0
            back = asyncio.Event()  # the second half of the load waits for the restart

            async def task(kind: str, n: int) -> Any:
                nonlocal done
                if n >= {"loop": LOOPS, "named": NAMED, "conv": CONVERSATIONS}[kind] // 2:
                    await back.wait()
                async with gate:
                    name = f"{kind}-{n}"
                    if kind == "loop":
                        result = await asyncio.to_thread(tool_loop, url, answers, name)
                    elif kind == "named":
                        server = f"{url}/r/{name}"
                        result = await asyncio.to_thread(tool_loop, url, answers, name, server)
                    else:
                        result = await asyncio.to_thread(chat_conversation, url, answers, name)
                    done += 1
                    return result

            work = [
                *(task("loop", n) for n in range(LOOPS)),
                *(task("named", n) for n in range(NAMED)),
                *(task("conv", n) for n in range(CONVERSATIONS)),
            ]
            load = asyncio.gather(*work)

            async def restart_one() -> None:
                await wait_until(lambda: _true(done >= 6), timeout=120)
                await stop(replicas[1])  # mid-load: it finishes its calls and flushes
                await start(replicas[1], upstream, pg_url, tmp_path)
                await wait_until(lambda: in_rotation(url, replicas[1]))
                back.set()

            results, _ = await asyncio.gather(load, restart_one())
            conversation_ids = [c for c in results if c]
    finally:
        await asyncio.gather(*(stop(r) for r in replicas))  # each flushes what it holds
    await check(pg_url, answers, conversation_ids)


async def check(db: str, answers: Answers, conversation_ids: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(db.replace("postgres://", "postgresql://"))
    try:
        stored = await conn.fetch(
            "SELECT id, correlation_id, run_id, step FROM exchanges WHERE status = 200"
        )
        by_correlation: dict[str, list[Any]] = {}
        for row in stored:
            by_correlation.setdefault(row["correlation_id"], []).append(row)
        # every answered call stored exactly once
        answered = [c for ids in answers.by_task.values() for c in ids]
        assert len(answered) == LOOPS * 4 + NAMED * 4 + CONVERSATIONS * 3
        assert all(len(by_correlation.get(c, [])) == 1 for c in answered)
        # every task's calls in one run, and a run holds one task's calls
        runs = {}
        for task, ids in answers.by_task.items():
            found = {by_correlation[c][0]["run_id"] for c in ids}
            if len(found) != 1:
                detail = await conn.fetch(
                    "SELECT id, run_id, run_source, parent_id, step, thread_key, correlation_id "
                    "FROM exchanges WHERE correlation_id = ANY($1) ORDER BY id",
                    ids,
                )
                raise AssertionError((task, [dict(r) for r in detail]))
            runs[task] = found.pop()
        assert len(runs) == LOOPS + NAMED + CONVERSATIONS
        assert len(set(runs.values())) == len(runs)
        # no step waits for a parent any more
        assert await conn.fetchval("SELECT COUNT(*) FROM run_orphans") == 0
        # each run's totals are its exchanges' (no writer counted one twice), steps unique
        for task, run_id in runs.items():
            run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
            rows = await conn.fetch(
                "SELECT step, total_tokens FROM exchanges WHERE run_id = $1 "
                "ORDER BY started_at, id",
                run_id,
            )
            assert run["exchange_count"] == len(rows), task
            assert run["total_tokens"] == sum(r["total_tokens"] or 0 for r in rows), task
            assert sorted(r["step"] for r in rows) == list(range(len(rows))), task
            if task.startswith("named"):
                assert run["name"] == task
            if not task.startswith("conv"):  # both tool calls of a loop got their results
                tools = await conn.fetch(
                    "SELECT return_value FROM tool_calls WHERE run_id = $1 ORDER BY id", run_id
                )
                # also for a loop running while a replica stopped and stored a step only at
                # its next start: a step placed without it merged in when it came, its tool
                # result linked (gateway/store/merging.py)
                assert [t["return_value"] for t in tools] == ["sun", "sun"], task
        named = await conn.fetch("SELECT name, COUNT(*) AS n FROM runs GROUP BY name")
        assert all(row["n"] == 1 for row in named if row["name"])
        linked = await conn.fetch(
            "SELECT conversation_id, run_id FROM run_conversations WHERE conversation_id = ANY($1)",
            conversation_ids,
        )
        assert len(linked) == CONVERSATIONS
        # the stopped replica's writer released its node; the running ones hold theirs
        assert await conn.fetchval("SELECT COUNT(*) FROM node_leases") == 0
    finally:
        await conn.close()


async def test_a_parent_a_replica_stores_from_its_spool_at_its_next_start_merges_the_run(
    upstream: Upstream, pg_url: str, tmp_path: Path
):
    """The late parent for real: replica 0 stops with step 1 in its spool; step 2 is answered
    through replica 1 meanwhile (a run of its own, its tool result unlinked); replica 0
    starts again, stores step 1 from its spool, and the two runs are one."""
    import asyncpg

    from tests.test_replicas_units import STEP_1_MESSAGES, STEP_1_REPLY, STEP_2_MESSAGES, chat

    first = chat(STEP_1_MESSAGES, STEP_1_REPLY, time.time() - 30)  # captured by a, earlier
    a, b = Replica(0), Replica(1)
    await start(a, upstream, pg_url, tmp_path)
    await start(b, upstream, pg_url, tmp_path)  # b's writer sees a's
    await stop(a)
    conn = await asyncpg.connect(pg_url.replace("postgres://", "postgresql://"))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.post(
                f"http://127.0.0.1:{b.port}/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                json={"model": "mistral-small-latest", "messages": STEP_2_MESSAGES},
            )
            assert resp.status_code == 200

        async def orphaned() -> bool:
            return bool(await conn.fetchval("SELECT COUNT(*) FROM run_orphans") == 1)

        await wait_until(orphaned)  # stored in a run of its own, waiting for its parent
        spool = Spool(tmp_path / "spool-0", 10_000_000)  # what a stopped at its end
        spool.append([first])
        spool.close()
        await start(a, upstream, pg_url, tmp_path)  # replays its spool: step 1 comes

        chats = "SELECT id, run_id, step, parent_id FROM exchanges WHERE endpoint = 'chat'"

        async def merged() -> bool:
            runs = {r["run_id"] for r in await conn.fetch(chats)}
            left = await conn.fetchval("SELECT COUNT(*) FROM run_orphans")
            return len(runs) == 1 and left == 0

        await wait_until(merged)
        rows = await conn.fetch(f"{chats} ORDER BY id")
        assert [r["step"] for r in rows] == [0, 1]
        assert rows[1]["parent_id"] == first.id == rows[0]["id"]
        run = await conn.fetchrow("SELECT * FROM runs WHERE id = $1", rows[0]["run_id"])
        sums = await conn.fetchrow(
            "SELECT COUNT(*) AS n, SUM(total_tokens) AS tokens FROM exchanges WHERE run_id = $1",
            run["id"],
        )
        assert (run["exchange_count"], run["total_tokens"]) == (sums["n"], sums["tokens"])
        assert sums["n"] == 2
        tools = await conn.fetch("SELECT return_value, result_exchange_id FROM tool_calls")
        assert [(t["return_value"], t["result_exchange_id"]) for t in tools] == [
            ("sunny", rows[1]["id"])
        ]
    finally:
        await conn.close()
        await asyncio.gather(stop(a), stop(b))


async def _true(value: bool) -> bool:
    return value


def test_haproxy_is_where_the_ci_installs_it():
    assert shutil.which("haproxy") or os.path.exists(HAPROXY)
