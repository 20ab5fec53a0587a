"""Grouping state every writer of every replica sees: the database, asked once per write batch.

Each writer keeps its grouper's memory (gateway/runs/grouper.py) as a cache of what it wrote;
what other writers wrote is looked up here, a batch at a time:

- a named run is claimed by name (run_names): one INSERT ... ON CONFLICT per batch that
  returns the open run of each name, or starts one when its last call is more than --run-idle
  old. The row lock of the upsert makes two writers agree on the run.
- a Conversations API conversation id is found in run_conversations;
- a chat step's parent is found by its thread key (exchanges.thread_key, indexed).

The 10-bit node of exchange ids (gateway/capture/exchange.py) is leased here too: one node per
process, claimed at start, renewed every few seconds, released at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.capture import exchange as ids
from gateway.capture import storable
from gateway.store.exchanges import Store, StoreError, describe_url

log = logging.getLogger("agentops.grouping")

NAME_CHARS = storable.limit("run_names", "name") or 200
LEASE_SECONDS = 60.0
RENEW_SECONDS = 5.0
WRITER = "writer"  # the role of a lease held by a writer process
ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class NameClaim:
    """One name's calls in a batch: their first and last start, and the run to open if the
    name has none open."""

    name: str
    first_at: float
    last_at: float
    proposed: int


@dataclass(frozen=True, slots=True)
class Parent:
    """A stored chat step another can continue (its thread key is its messages + reply)."""

    exchange_id: int
    run_id: int
    thread_key: str
    at: float


def clip_name(name: str) -> str:
    return storable.clip(name, NAME_CHARS)


async def claim_names(store: Store, claims: Sequence[NameClaim], idle: float) -> dict[str, Any]:
    """{name: (run id, last start)} for each claimed name, in one statement. A name whose open
    run saw no call for more than `idle` seconds before this batch's first gets the proposed
    run; the last start only moves forward, so records written out of order agree."""
    if not claims:
        return {}
    claims = sorted(claims, key=lambda c: c.name)  # one lock order for every writer
    marks = ", ".join("(?, ?, ?, ?)" for _ in claims)
    params: list[Any] = []
    for claim in claims:
        params += [claim.name, claim.proposed, claim.first_at, claim.last_at]
    restart = f"run_names.last_at < excluded.started_at - {float(idle)!r}"
    found = await store.rows(
        f"INSERT INTO run_names (name, run_id, started_at, last_at) VALUES {marks} "
        "ON CONFLICT (name) DO UPDATE SET "
        f"run_id = CASE WHEN {restart} THEN excluded.run_id ELSE run_names.run_id END, "
        f"started_at = CASE WHEN {restart} THEN excluded.started_at "
        "ELSE run_names.started_at END, "
        "last_at = CASE WHEN excluded.last_at > run_names.last_at THEN excluded.last_at "
        "ELSE run_names.last_at END "
        "RETURNING name, run_id, last_at",
        params,
    )
    return {row["name"]: (int(row["run_id"]), float(row["last_at"])) for row in found}


async def conversation_runs(store: Store, conversation_ids: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(conversation_ids))
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    found = await store.rows(
        f"SELECT conversation_id, run_id FROM run_conversations WHERE conversation_id IN ({marks})",
        wanted,
    )
    return {row["conversation_id"]: int(row["run_id"]) for row in found}


async def parents(store: Store, keys: Iterable[str]) -> list[Parent]:
    """Stored successful chat steps with one of these thread keys, oldest first."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    marks = ", ".join("?" * len(wanted))
    found = await store.rows(
        "SELECT id, run_id, thread_key, started_at FROM exchanges "
        f"WHERE thread_key IN ({marks}) AND status = 200 AND run_id IS NOT NULL ORDER BY id",
        wanted,
    )
    return [
        Parent(int(r["id"]), int(r["run_id"]), r["thread_key"], seconds(r["started_at"]))
        for r in found
    ]


async def entry_ids(store: Store, run_ids: Iterable[int]) -> dict[int, list[str | None]]:
    """Each run's Conversations API entry ids, in order, rebuilt from its memory snapshots
    (each keeps `carried` items of the state before it, then adds its own): what the grouper
    remembers of a conversation, for one whose previous step another writer stored."""
    wanted = sorted(set(run_ids))
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    found = await store.rows(
        "SELECT run_id, carried, appended FROM memory_snapshots "
        f"WHERE run_id IN ({marks}) AND appended_from IS NULL ORDER BY run_id, step, id",
        wanted,
    )
    states: dict[int, list[str | None]] = {run_id: [] for run_id in wanted}
    for row in found:
        try:
            items = orjson.loads(row["appended"])
        except orjson.JSONDecodeError:
            items = []
        added = [i.get("id") if isinstance(i, dict) else None for i in items]
        state = states[int(row["run_id"])]
        states[int(row["run_id"])] = state[: int(row["carried"])] + added
    return states


def seconds(value: Any) -> float:
    """A timestamp column's value (a datetime, or ISO text on SQLite) in epoch seconds."""
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


# -- node leases ------------------------------------------------------------------------------


class NodeLease:
    """This process's lease on a node of exchange ids. `claim` takes a free node (or one whose
    holder stopped renewing) and makes it this process's (exchange.set_node); a task renews it
    and counts the other writers alive; `release` gives it back."""

    def __init__(self, store: Store, role: str) -> None:
        self.store = store
        self.role = role
        self.holder = f"{role}:{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"[:200]
        self.node: int | None = None
        self.other_writers = 0
        self.orphans = 0  # steps stored without their parent, not merged yet
        self.shared_at: float | None = None  # time.monotonic() other writers were last seen
        self.counted_at = 0.0  # time.monotonic() of the last count
        self._task: asyncio.Task[None] | None = None

    async def claim(self) -> int:
        """Take a node; a database that cannot take the write (a full disk, a read-only
        file) is a StoreError saying so, which a command starting up reports in one line."""
        try:
            return await self._claim()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"cannot write to database {describe_url(self.store.url)}: "
                f"{type(exc).__name__}: {exc}".strip()
            ) from exc

    async def _claim(self) -> int:
        now = time.time()
        taken = {
            int(r["node"])
            for r in await self.store.rows(
                "SELECT node FROM node_leases WHERE expires_at >= ?", [now]
            )
        }
        free = [n for n in range(ids.NODES) if n not in taken]
        random.shuffle(free)
        for node in free[:ATTEMPTS]:
            got = await self.store.rows(
                "INSERT INTO node_leases (node, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (node) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE node_leases.expires_at < ? "
                "RETURNING node",
                [node, self.holder, now + LEASE_SECONDS, now],
            )
            if got:
                self.node = node
                ids.set_node(node)
                await self._count_writers()
                return node
        raise StoreError(
            f"no free node for exchange ids: {len(taken)} processes hold one (a lease ends "
            f"{LEASE_SECONDS:.0f} s after its process stops renewing it)"
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew(), name="agentops-node-lease")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await self.renew()
            except Exception as exc:  # the database is down: the node stays ours meanwhile
                log.warning("could not renew the lease of node %s: %s", self.node, exc)

    async def renew(self) -> None:
        kept = await self.store.rows(
            "UPDATE node_leases SET expires_at = ? WHERE node = ? AND holder = ? RETURNING node",
            [time.time() + LEASE_SECONDS, self.node, self.holder],
        )
        if not kept:  # expired and taken (the database was away longer than a lease)
            log.warning("the lease of node %s was lost; claiming another", self.node)
            await self.claim()
        else:
            await self._count_writers()

    async def recount(self, max_age: float) -> None:
        """Count the other writers again when the count is older than `max_age` seconds (a
        replica that just started is seen before the next renewal)."""
        if time.monotonic() - self.counted_at > max_age:
            await self._count_writers()

    async def _count_writers(self) -> None:
        found = await self.store.rows(
            "SELECT COUNT(*) AS n, (SELECT COUNT(*) FROM (SELECT 1 FROM run_orphans LIMIT 1) o) "
            "AS orphans "
            "FROM node_leases WHERE expires_at >= ? AND holder LIKE ? AND holder <> ?",
            [time.time(), f"{WRITER}:%", self.holder],
        )
        self.other_writers = int(found[0]["n"]) if found else 0
        if self.other_writers:
            self.shared_at = time.monotonic()
        # whether steps wait for a late parent (merging.py; 0 or 1, not a count: the table
        # is not scanned): while they do, writers look for their parents after each batch
        self.orphans = int(found[0]["orphans"] or 0) if found else 0
        self.counted_at = time.monotonic()

    def shared(self, within: float) -> bool:
        """Whether other writers run, or ran in the last `within` seconds (one that stopped
        may come back and store what it spooled)."""
        if self.other_writers > 0:
            return True
        return self.shared_at is not None and time.monotonic() - self.shared_at < within

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.node is not None:
            with contextlib.suppress(Exception):
                await self.store.rows(
                    "DELETE FROM node_leases WHERE node = ? AND holder = ? RETURNING node",
                    [self.node, self.holder],
                )
            self.node = None
