"""Fill a database with realistic traffic in bulk, for measuring the UI at scale.

    .venv/bin/python bench/seed.py --db sqlite:///tmp/agentops-1m.db --exchanges 1000000
    .venv/bin/python bench/seed.py --db postgres://postgres@127.0.0.1:5432/agentops_1m

The schema comes from the gateway's own migrations; rows are then written with bulk inserts
(SQLite executemany in large transactions; PostgreSQL COPY), not through the proxy: a million
calls through the proxy would take hours. What is written looks like real traffic: chat calls
(some streamed, some with tools, some embeddings and FIM) over the last --days days, bodies of
1 to 6 KB of text drawn from a Zipf-distributed vocabulary (so full-text search sees common and
rare words), a few percent of 4xx/5xx and faults, unpriced models, and runs of 1 to 12 steps,
named, by agent or threaded. The search index and the per-hour rollups are filled the same way
the writer fills them. Runs carry no message or tool-call rows (the list and dashboard do not
read them). It refuses a database that already holds exchanges.

It is CPU-heavy for a few minutes: run it once per database, outside the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.capture.exchange import _EPOCH_MS
from gateway.capture.pricing import PriceTable
from gateway.providers.mistral import MistralProvider
from gateway.store.exchanges import BODY_COLUMNS, EXCHANGE_COLUMNS, Store
from gateway.store.rollups import VALUES, Fact, aggregate
from gateway.store.search import json_words, pg_document, search_text

MODELS = [
    ("mistral-small-latest", 45),
    ("mistral-large-latest", 18),
    ("codestral-latest", 10),
    ("mistral-medium-latest", 10),
    ("ministral-8b-latest", 8),
    ("mistral-embed", 5),
    ("ft:open-mistral-7b:acme:support", 2),
    ("magistral-medium-latest", 2),
]
CONTEXT_MESSAGES = 5  # the system prompt plus the last five messages
RUN_NAMES = [
    "nightly-eval",
    "support-bot",
    "code-review",
    "doc-summariser",
    "triage",
    "sql-agent",
    "research-assistant",
    "translation",
    "onboarding-bot",
    "rag-qa",
]
AGENTS = ["ag_support_v3", "ag_research_2", "ag_coder_7", "ag_triage_1"]
COMMON_TEXT = """
the of and to a in is it you that he was for on are with as his they be at one have this
from or had by hot word but what some we can out other were all there when up use your
how said an each she which do their time if will way about many then them write would
like so these her long make thing see him two has look more day could go come did number
sound no most people my over know water than call first who may down side been now find
any new work part take get place made live where after back little only round man year
came show every good me give our under name very through just form sentence great think
say help low line differ turn cause much mean before move right boy old too same tell
does set three want air well also play small end put home read hand port large spell add
even land here must big high such follow act why ask men change went light kind off need
house picture try us again animal point mother world near build self earth father
customer order invoice refund account error timeout database query function python
request response model token latency weather paris berlin summary report contract clause
policy ticket user agent tool result search document page"""
COMMON = COMMON_TEXT.split()
SYSTEM_PROMPTS = [
    "You are a helpful support assistant for an online store. Answer politely, cite the order "
    "number, and never promise refunds without checking the policy.",
    "You are a senior code reviewer. Point out bugs, security issues and unclear names. Keep "
    "each remark short and actionable.",
    "You summarise long documents into five bullet points for busy executives.",
    "You are a SQL expert. Write one PostgreSQL query that answers the question; explain it "
    "in one sentence.",
    "You translate the user's text into French, keeping technical terms in English.",
    "You triage incoming tickets into billing, bug, feature request or other, and give a "
    "priority from P0 to P3.",
]
HEADERS_IN = [
    ["content-type", "application/json"],
    ["authorization", "[redacted]"],
    ["user-agent", "mistral-client-python/3.7.0"],
    ["accept", "application/json"],
]
HEADERS_OUT = [
    ["content-type", "application/json"],
    ["mistral-correlation-id", ""],
    ["x-ratelimit-remaining-tokens-minute", "1999000"],
]


class Words:
    """A long run of words (Zipf over a common list and a generated tail) to slice text from."""

    def __init__(self, rng: random.Random, size: int = 3_000_000) -> None:
        syllables = [
            "ka",
            "lo",
            "mi",
            "ren",
            "tas",
            "vo",
            "qui",
            "bel",
            "dor",
            "nu",
            "sha",
            "pri",
            "gen",
            "tor",
            "lix",
            "ma",
            "ve",
            "zan",
            "o",
            "ru",
        ]
        tail = [
            "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(20_000)
        ]
        vocabulary = COMMON + tail
        weights = [1 / (rank + 1) ** 1.05 for rank in range(len(vocabulary))]
        self.text = " ".join(rng.choices(vocabulary, weights, k=size))
        self.rng = rng

    def take(self, chars: int) -> str:
        start = self.rng.randrange(0, len(self.text) - chars - 50)
        start = self.text.index(" ", start) + 1
        end = self.text.rfind(" ", start, start + chars)
        return self.text[start : end if end > start else start + chars].capitalize() + "."


def iso(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Generator:
    """Exchanges in time order, grouped into runs; also their rollup facts."""

    def __init__(self, count: int, days: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = Words(self.rng)
        self.prices = PriceTable.load(None)
        self.provider = MistralProvider()
        self.count = count
        now_ms = int(time.time() * 1000)
        self.start_ms = now_ms - int(days * 86_400_000)
        self.step_ms = max(1, (now_ms - self.start_ms) // max(1, count))
        self.models = [m for m, _ in MODELS]
        self.model_weights = [w for _, w in MODELS]
        self.runs: list[dict[str, Any]] = []
        self.facts: list[Fact] = []

    def exchanges(self) -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
        rng = self.rng
        made = 0
        seq = 0
        at = self.start_ms
        while made < self.count:
            steps = min(self.count - made, rng.choice((1, 1, 1, 2, 3, 4, 6, 8, 12)))
            kind = rng.random()
            name = rng.choice(RUN_NAMES) if kind < 0.4 else None
            agent = rng.choice(AGENTS) if rng.random() < 0.25 else None
            source = "prefix" if name else ("thread" if steps > 1 else "single")
            model = rng.choices(self.models, self.model_weights)[0]
            system = rng.choice(SYSTEM_PROMPTS)
            history: list[dict[str, Any]] = []
            run: dict[str, Any] | None = None
            for step in range(steps):
                at += rng.randint(1, 2 * self.step_ms)
                seq = (seq + 1) & 0xFFF
                exchange_id = ((at - _EPOCH_MS) << 22) | (7 << 12) | seq
                row, body, search, fact = self.one(
                    exchange_id, at, model, system, history, step, name, agent
                )
                if run is None:
                    run = {
                        "id": exchange_id,
                        "name": name,
                        "agent_id": agent,
                        "user": None,
                        "tags": None,
                        "source": source,
                        "started_at": iso(at),
                        "last_seen_at": iso(at),
                        "ended_at": iso(at),
                        "status": "ok",
                        "last_failed": False,
                        "exchange_count": 0,
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "total_tokens": 0,
                        "total_cost_usd": 0.0,
                        "config": orjson.dumps({"model": model}).decode(),
                    }
                    self.runs.append(run)
                row["run_id"], row["run_source"], row["step"] = run["id"], source, step
                run["exchange_count"] += 1
                for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    run[key] += row[key] or 0
                run["total_cost_usd"] += row["cost_usd"] or 0.0
                run["last_seen_at"] = run["ended_at"] = iso(at)
                failed = row["status"] is None or row["status"] >= 400
                run["last_failed"] = failed
                run["status"] = "error" if failed else "ok"
                self.facts.append(fact)
                made += 1
                yield row, body, search

    def one(
        self,
        exchange_id: int,
        at: int,
        model: str,
        system: str,
        history: list[dict[str, Any]],
        step: int,
        name: str | None,
        agent: str | None,
    ) -> tuple[dict[str, Any], dict[str, Any], str, Fact]:
        rng = self.rng
        embed = model == "mistral-embed"
        endpoint = (
            "embeddings"
            if embed
            else ("fim" if model == "codestral-latest" and rng.random() < 0.3 else "chat")
        )
        streamed = endpoint == "chat" and rng.random() < 0.4
        roll = rng.random()
        status = 200 if roll < 0.965 else (429 if roll < 0.985 else (400 if roll < 0.995 else 500))
        state = "complete"
        if status == 200 and streamed and rng.random() < 0.01:
            state = "client_disconnected"
        question = self.words.take(rng.randint(40, 700))
        if endpoint == "chat":
            if not history:
                history.append({"role": "system", "content": system})
            history.append({"role": "user", "content": question})
            context = history[:1] + history[1:][-CONTEXT_MESSAGES:]  # agents trim context
            request = {"model": model, "messages": context, "temperature": 0.3, "stream": streamed}
        elif endpoint == "fim":
            request = {"model": model, "prompt": "def " + question[:400], "suffix": "\n"}
        else:
            request = {"model": model, "input": [question]}
        answer = self.words.take(rng.randint(60, 1200)) if status == 200 else None
        prompt = max(5, len(orjson.dumps(request)) // 4)
        completion = len(answer) // 4 if answer and not embed else (0 if embed else None)
        if status != 200:
            prompt = completion = None
        if answer and endpoint == "chat":
            history.append({"role": "assistant", "content": answer})
        cost = self.prices.cost(model, prompt, completion, None, None)
        latency = rng.lognormvariate(6.9, 0.6) if not embed else rng.uniform(40, 200)
        if status == 429:
            latency = rng.uniform(5, 40)
        ttft = latency * rng.uniform(0.08, 0.3) if streamed and answer else None
        correlation = uuid.UUID(int=rng.getrandbits(128)).hex
        response = (
            {
                "id": f"cmpl-{correlation[:16]}",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": answer},
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": (prompt or 0) + (completion or 0),
                },
            }
            if status == 200
            else {
                "object": "error",
                "message": "Rate limit exceeded",
                "type": "rate_limited",
                "code": str(status),
            }
        )
        request_text = orjson.dumps(request).decode()
        response_text = orjson.dumps(response).decode()
        path = (
            "/v1/chat/completions"
            if endpoint == "chat"
            else f"/v1/{endpoint}"
            if endpoint == "embeddings"
            else "/v1/fim/completions"
        )
        row = {
            "id": exchange_id,
            "started_at": iso(at),
            "provider": "mistral",
            "method": "POST",
            "path": path,
            "client_path": f"/r/{name}{path}" if name else path,
            "query": "",
            "status": status,
            "model": model,
            "request_model": model,
            "endpoint": endpoint,
            "streamed": streamed,
            "state": state,
            "error": None,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": None if prompt is None else prompt + (completion or 0),
            "cached_tokens": None,
            "connector_tokens": None,
            "units": None,
            "finish_reason": "stop" if answer else None,
            "output_text": answer,
            "cost_usd": cost,
            "latency_ms": round(latency, 3),
            "ttfb_ms": round(latency * 0.05 if streamed else latency * 0.98, 3),
            "ttft_ms": round(ttft, 3) if ttft else None,
            "correlation_id": correlation,
            "key_fingerprint": "sha256:5d41402abc4b...9f2c",
            "truncated": False,
            "parse_error": False,
            "omitted": False,
            "run_id": None,
            "replay_of": None,
            "run_source": None,
            "step": step,
            "parent_id": None,
            "thread_key": None,
            "clipped": None,
            "preview": (self.provider.preview(request) or "")[:300],  # as the writer makes it
        }
        body = {
            "exchange_id": exchange_id,
            "request_headers": orjson.dumps(HEADERS_IN).decode(),
            "request_body": request_text,
            "request_body_encoding": "json",
            "response_headers": orjson.dumps(HEADERS_OUT).decode(),
            "response_body": response_text,
            "response_body_encoding": "json",
            # seeded rows are in the older text form (bodies.py reads both)
            "data": None,
            "data_base": None,
        }
        search = search_text(
            json_words(request),
            json_words(response),  # as the writer does
            correlation,
        )
        fact = Fact(
            exchange_id,
            model,
            status,
            state,
            prompt,
            completion,
            row["total_tokens"],
            cost,
            row["latency_ms"],
            row["provider"],
            name,
            agent,
        )
        return row, body, search, fact

    def rollup_rows(self) -> list[list[Any]]:
        return [[*key, *values] for key, values in aggregate(self.facts).items()]


RUN_COLUMNS = (
    "id",
    "name",
    "agent_id",
    "user",
    "tags",
    "source",
    "started_at",
    "last_seen_at",
    "ended_at",
    "status",
    "last_failed",
    "exchange_count",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "total_cost_usd",
    "config",
)
ROLLUP_COLUMNS = ("dim", "hour", "value", *VALUES)


def sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, bool):
        return int(value)
    return value


def seed_sqlite(path: str, gen: Generator, batch: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-800000")
    ex_sql = (
        f"INSERT INTO exchanges ({', '.join(EXCHANGE_COLUMNS)}) VALUES "
        f"({', '.join('?' * len(EXCHANGE_COLUMNS))})"
    )
    body_sql = (
        f"INSERT INTO exchange_bodies ({', '.join(BODY_COLUMNS)}) VALUES "
        f"({', '.join('?' * len(BODY_COLUMNS))})"
    )
    rows, bodies, search = [], [], []

    def flush() -> None:
        db.executemany(ex_sql, rows)
        db.executemany(body_sql, bodies)
        db.executemany("INSERT INTO exchange_fts (rowid, body) VALUES (?, ?)", search)
        db.commit()
        for done in (rows, bodies, search):
            done.clear()

    progress = Progress(gen.count)
    for row, body, text in gen.exchanges():
        rows.append([sqlite_value(row[c]) for c in EXCHANGE_COLUMNS])
        bodies.append([body[c] for c in BODY_COLUMNS])
        search.append((row["id"], text))
        if len(rows) >= batch:
            flush()
            progress.show(len(gen.facts))
    flush()
    names = ", ".join('"user"' if c == "user" else c for c in RUN_COLUMNS)
    run_sql = f"INSERT INTO runs ({names}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
    db.executemany(run_sql, ([sqlite_value(r[c]) for c in RUN_COLUMNS] for r in gen.runs))
    db.executemany(
        f"INSERT INTO rollups ({', '.join(ROLLUP_COLUMNS)}) VALUES "
        f"({', '.join('?' * len(ROLLUP_COLUMNS))})",
        gen.rollup_rows(),
    )
    db.commit()
    print("analyze ...", flush=True)
    db.execute("ANALYZE")
    db.commit()
    db.close()


async def seed_postgres(url: str, gen: Generator, batch: int) -> None:
    import asyncpg

    db = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    await db.execute("DROP INDEX IF EXISTS exchange_search_doc")  # rebuilt once at the end
    await db.execute("CREATE UNLOGGED TABLE seed_search (exchange_id BIGINT, body TEXT)")
    rows, bodies, search = [], [], []

    async def flush() -> None:
        await db.copy_records_to_table("exchanges", records=rows, columns=EXCHANGE_COLUMNS)
        await db.copy_records_to_table("exchange_bodies", records=bodies, columns=BODY_COLUMNS)
        await db.copy_records_to_table("seed_search", records=search)
        for done in (rows, bodies, search):
            done.clear()

    progress = Progress(gen.count)
    for row, body, text in gen.exchanges():
        rows.append(tuple(row[c] for c in EXCHANGE_COLUMNS))
        bodies.append(tuple(body[c] for c in BODY_COLUMNS))
        search.append(
            (row["id"], pg_document(text))
        )  # as the writer does (gateway/store/search.py)
        if len(rows) >= batch:
            await flush()
            progress.show(len(gen.facts))
    await flush()
    await db.copy_records_to_table(
        "runs", columns=RUN_COLUMNS, records=[tuple(r[c] for c in RUN_COLUMNS) for r in gen.runs]
    )
    await db.copy_records_to_table(
        "rollups", columns=ROLLUP_COLUMNS, records=[tuple(v) for v in gen.rollup_rows()]
    )
    print("search vectors ...", flush=True)
    await db.execute(
        "INSERT INTO exchange_search (exchange_id, doc) SELECT exchange_id, "
        "body::tsvector FROM seed_search"
    )
    await db.execute("DROP TABLE seed_search")
    print("search index ...", flush=True)
    await db.execute("SET maintenance_work_mem = '1GB'")
    await db.execute("CREATE INDEX exchange_search_doc ON exchange_search USING GIN (doc)")
    print("analyze ...", flush=True)
    await db.execute("VACUUM ANALYZE")
    await db.close()


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()

    def show(self, done: int) -> None:
        rate = done / max(1e-9, time.monotonic() - self.started)
        print(f"  {done:>9,} / {self.total:,} exchanges  ({rate:,.0f}/s)", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="sqlite://PATH or postgres://... URL")
    parser.add_argument("--exchanges", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0, help="spread over this many days")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args()

    store = Store(args.db)
    await store.open()  # creates and migrates the schema
    try:
        if await store.count():
            sys.exit(f"{args.db} already holds exchanges: seed an empty database")
    finally:
        await store.close()
    started = time.monotonic()
    gen = Generator(args.exchanges, args.days, args.seed)
    if store.dialect == "sqlite":
        seed_sqlite(store.url[len("sqlite://") :], gen, args.batch)
    else:
        await seed_postgres(store.url, gen, args.batch)
    print(
        f"seeded {args.exchanges:,} exchanges in {len(gen.runs):,} runs into "
        f"{store.dialect} in {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
