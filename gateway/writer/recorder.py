"""The recorder: a bounded queue between the proxy and the one writer that stores records.

`submit` is all the proxy ever calls: a non-blocking put, or an append to the disk spool when
the queue is full. The writer drains the queue in batches, builds rows (parsing happens here,
not in the proxy), and writes each batch in one transaction. When the database fails, batches
go to the spool and a recovery loop replays it once the database answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.capture.exchange import Exchange, new_id
from gateway.capture.pricing import PriceTable
from gateway.capture.rows import Rows, build_rows
from gateway.providers.base import Provider
from gateway.runs.grouper import Grouper, RunChanges, Wants
from gateway.store import grouping, merging
from gateway.store.exchanges import Store, micros
from gateway.store.run_refs import Sources
from gateway.store.runs import RunStore, Written
from gateway.writer.health import WriterHealth
from gateway.writer.memory import collections_deferred
from gateway.writer.protocol import body_bytes, bounded
from gateway.writer.quarantine import database_down, describe, encode
from gateway.writer.spool import Spool

log = logging.getLogger("agentops.recorder")

BATCH_SIZE = 500
# A batch is bounded by its bodies' bytes too: what a batch builds (parsed JSON, search text,
# frames, message rows) is a few times its bodies, and 500 records of 100 KB made the writer's
# heap grow by hundreds of MiB, which glibc keeps (gateway/writer/memory.py).
BATCH_BYTES = 8 * 1024 * 1024
LINGER_SECONDS = 0.05
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
# The writer process's loop also answers the proxy's calls (drained, metrics) and takes in
# new records: let them in every few dozen records rather than after each (a yield costs a
# loop turn, about as much as building a small record's rows).
YIELD_EVERY = 50
# With other writers on the database (replicas, workers), a step whose parent is not stored
# yet (another writer has it in its queue) waits for it this long after it ended, retried
# every HOLD_RETRY: then it is placed with what is known (a run of its own).
HOLD_SECONDS = 5.0
HOLD_RETRY = 0.1
SWEEP_SECONDS = 1.0  # while steps wait for a late parent, how often to look for them
# A writer that stores a parent looks for its orphans itself once its count of them (renewed
# every RENEW_SECONDS) says some wait: the sweep need only look at orphans younger than this,
# but looks at all of them every FULL_SWEEP_EVERY sweeps (and prunes those too old).
SWEEP_WINDOW = 60.0
SHARED_SECONDS = 3600.0
FULL_SWEEP_EVERY = 300
RECOUNT_SECONDS = 1.0  # how old the count of other writers may be when a step may wait

Refusal = tuple[Exchange, str]  # a record the database refused, and why


async def _no_step(run_id: int) -> int:
    """Steps are numbered by the database when the batch is written (RunStore.write)."""
    return 0


def _young(row: Rows, now: float, hold: float | None = None) -> bool:
    """Whether a record ended less than HOLD_SECONDS ago (its parent may still come)."""
    ended: float = row.exchange["started_at"].timestamp()
    ended += (row.exchange.get("latency_ms") or 0) / 1000
    return now < ended + (HOLD_SECONDS if hold is None else hold)


def _orphan(row: Rows, change: RunChanges, want: Wants) -> merging.Orphan:
    """What a step placed without its parent leaves for that parent's writer: the key it
    waited for, how many of its messages the parent's state holds, its tool results."""
    carried = want.hashes.index(want.parent) + 1 if want.parent in want.hashes else 0
    # a chat step's tool results, in the order of its tool messages (where they are)
    tools = [m for m in change.messages if m["direction"] == "in" and m["role"] == "tool"]
    places = [m["position"] for m in tools] if len(tools) == len(change.tool_results) else []
    results = [
        {
            "call_id": r.get("call_id"),
            "return_value": r.get("return_value"),
            "at_ms": r.get("at_ms"),
            "position": places[n] if places else None,
        }
        for n, r in enumerate(change.tool_results)
        if r.get("call_id")
    ]
    return merging.Orphan(row.exchange["id"], str(want.parent), carried, results)


class Recorder:
    def __init__(
        self,
        store: Store,
        spool: Spool,
        providers: Callable[[str], Provider],
        prices: PriceTable,
        *,
        max_body_bytes: int,
        queue_size: int,
        grouper: Grouper,
        run_store: RunStore,
        hold_seconds: float | None = None,
    ) -> None:
        self.store = store
        self.grouper = grouper
        self.run_store = run_store
        self.spool = spool
        self.providers = providers
        self.prices = prices
        self.max_body_bytes = max_body_bytes
        self.queue: asyncio.Queue[Exchange] = asyncio.Queue(maxsize=queue_size)
        self.written = 0
        self.failed = 0
        self.db_errors = 0
        self.quarantined = 0  # records this writer set aside
        self.db_ok = True
        self.last_db_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.on_written: list[Callable[[list[Rows]], Any]] = []
        self.on_settled: Callable[[list[int]], None] | None = None  # ids stored or spooled
        # Records built and waiting for their parent to be stored by another writer.
        self.waiting: dict[int, tuple[Rows, Exchange]] = {}
        self.lease: grouping.NodeLease | None = None  # tells how many other writers run
        self.holding = True  # False once stopping: nothing waits any more
        self.collisions = 0  # records whose id another record had: stored with a new id
        # how long a step waits for its parent (None: HOLD_SECONDS); tests shorten it
        self.hold_seconds = hold_seconds
        self.merges = 0  # runs this writer merged into another (a late parent)
        self._sweeper: asyncio.Task[None] | None = None
        # False while the writer replays a file into the queue: nothing more comes meanwhile.
        self.lingers = True

    # -- the hot path -----------------------------------------------------------------------

    def submit(self, exchange: Exchange) -> bool:
        """Queue a record; False when the queue was full and it went to the spool instead."""
        try:
            self.queue.put_nowait(exchange)
            return True
        except asyncio.QueueFull:
            self.spool.append([exchange])
            self._ensure_recovery()
            return False

    # -- the writer ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agentops-writer")
        if self.lease is not None:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="agentops-late-parents")
        if self.spool.pending():
            self._ensure_recovery()

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            ids = [exchange.id for exchange in batch]
            before = set(self.waiting)
            try:
                with collections_deferred():  # the batch's objects die with it (memory.py)
                    await self._write(batch)
            except Exception:  # the writer must outlive any single bad batch
                log.exception("writer failed on a batch of %d", len(batch))
                self.failed += len(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()
                settled = [i for i in (*ids, *before) if i not in self.waiting]
                if self.on_settled is not None and settled:
                    self.on_settled(settled)
            # Not kept while waiting for the next batch: the last one would stay in memory.
            del batch, ids, before, settled

    async def _next_batch(self) -> list[Exchange]:
        """The next records (none when records wait for a parent and it is time to retry)."""
        if self.waiting:
            try:
                batch = [await asyncio.wait_for(self.queue.get(), HOLD_RETRY)]
            except TimeoutError:
                return []
        else:
            batch = [await self.queue.get()]
        size = self._fill(batch, body_bytes(batch[0]))
        if self.lingers and len(batch) < BATCH_SIZE and size < BATCH_BYTES:
            # Linger briefly so a batch amortises its commit, and so the writer wakes
            # rarely instead of competing with the proxy after every call.
            await asyncio.sleep(LINGER_SECONDS)
            self._fill(batch, size)
        return batch

    def _fill(self, batch: list[Exchange], size: int) -> int:
        """Add queued records while the batch holds under BATCH_SIZE records and BATCH_BYTES
        of bodies; the bytes it then holds."""
        while len(batch) < BATCH_SIZE and size < BATCH_BYTES and not self.queue.empty():
            batch.append(record := self.queue.get_nowait())
            size += body_bytes(record)
        return size

    async def _build(self, batch: list[Exchange]) -> tuple[list[Rows], list[Refusal]]:
        """Rows of each record; a record whose rows cannot be built is refused (quarantined)
        rather than lost."""
        rows, refused = [], []
        providers, prices, limit = self.providers, self.prices, self.max_body_bytes
        for n, exchange in enumerate(batch, 1):
            try:
                rows.append(build_rows(exchange, providers(exchange.provider), prices, limit))
            except Exception as exc:
                log.exception("could not build rows for exchange %s", exchange.id)
                refused.append((exchange, f"could not build rows: {describe(exc)}"))
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return rows, refused

    async def _write(self, batch: list[Exchange]) -> None:
        if not batch and not self.waiting:
            return
        if not self.db_ok or self.spool.pending():
            if not batch:
                return
            self.spool.append(batch)  # keep order: older spooled records go in first
            self._ensure_recovery()
            return
        try:
            await self._store_records(batch)
        except Exception as exc:
            self._db_failed(exc)
            self.spool.append(batch)  # what was stored already is skipped on replay
            self._ensure_recovery()

    async def _store_records(self, records: list[Exchange]) -> None:
        """Store records. Those the database refuses are quarantined and the rest stored;
        raises only when the database is down."""
        rows, refused = await self._build(records)
        if refused:
            await self._quarantine(refused)
        by_id = {record.id: record for record in records}
        for _row, record in self.waiting.values():  # older: first
            by_id[record.id] = record
        waiting = [row for row, _ in self.waiting.values()]
        await self._store_or_split([*waiting, *rows], by_id)

    async def _store_or_split(self, rows: list[Rows], by_id: dict[int, Exchange]) -> None:
        """Store a batch; when the database refuses it (a data error, not an outage), store
        each half on its own, down to the record(s) it refuses, which are quarantined."""
        if not rows:
            return
        try:
            await self._store(rows, by_id)
        except Exception as exc:
            if database_down(exc):
                raise
            if len(rows) == 1:
                await self._quarantine([(by_id[rows[0].exchange["id"]], describe(exc))])
                return
            half = len(rows) // 2
            await self._store_or_split(rows[:half], by_id)
            await self._store_or_split(rows[half:], by_id)
            return
        self.written += len(rows)
        self._notify(rows)

    async def _quarantine(self, refused: list[Refusal]) -> None:
        """Set refused records aside in the database's quarantine table. If even that fails,
        the database is not usable: raise, and the batch is spooled and retried."""
        for exchange, error in refused:
            log.error("exchange %s refused by the database, quarantined: %s", exchange.id, error)
            self.waiting.pop(exchange.id, None)
        await self.store.quarantine_add(
            [
                (exchange.id, exchange.started_at, error, encode(exchange))
                for exchange, error in refused
            ]
        )
        self.quarantined += len(refused)

    def _notify(self, rows: list[Rows]) -> None:
        """Tell the integrations (metrics, OpenTelemetry) what was stored; they only queue."""
        for callback in self.on_written:
            try:
                callback(rows)
            except Exception:
                log.exception("on_written callback failed")

    async def _store(self, rows: list[Rows], by_id: dict[int, Exchange]) -> None:
        """Place new exchanges in runs, then write exchanges and run rows in one transaction.

        Ids already stored (a spool replayed after a crash) are left out before grouping, so
        run totals never count an exchange twice; a different record with a stored id gets a
        new one. What other writers stored is looked up first (gateway/store/grouping.py); a
        step whose parent no writer stored yet waits for it (HOLD_SECONDS)."""
        rows = await self._new_rows(rows, by_id)
        wants: dict[int, Wants] = {}
        coming: set[str] = set()  # thread keys of the batch's rows so far
        for row in rows:
            want = wants[row.exchange["id"]] = self._wants(row, coming)
            if want.key is not None:
                coming.add(want.key)
        await self._look_up(rows, wants)
        hold = self.holding and self.lease is not None
        if hold and self.lease is not None and any(w.continues for w in wants.values()):
            # a replica may have started since the count; one taken when this writer
            # started may predate the others, so while it says "alone", a step whose parent
            # is not known counts again at once
            alone = self.lease.other_writers == 0 and any(
                w.continues and not self.grouper.has_parent(w) for w in wants.values()
            )
            await self.lease.recount(0.0 if alone else RECOUNT_SECONDS)
        hold = hold and self.lease is not None and self.lease.other_writers > 0
        now = time.time()
        changes, placed, held = [], [], []
        orphans: list[tuple[Rows, RunChanges, Wants]] = []
        # a step placed without its parent is remembered while other writers run, and for an
        # hour after the last one stopped (it may store the parent from its spool at its start)
        shared = self.lease is not None and self.lease.shared(SHARED_SECONDS)
        for n, row in enumerate(rows, 1):
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            want = wants[row.exchange["id"]]
            wait = hold and want.continues and _young(row, now, self.hold_seconds)
            if wait and not self.grouper.has_parent(want):
                held.append(row)
                continue
            # placed without the call it continues: remembered, so that call merges it
            # when another writer stores it, however late (gateway/store/merging.py)
            orphan = (
                shared
                and want.continues
                and want.parent is not None
                and not self.grouper.has_parent(want)
            )
            try:
                change = await self.grouper.assign(
                    row.exchange, row.parsed, row.hints, _no_step, want.hashes or None, want.key
                )
            except Exception:  # a grouping bug must not lose the exchange itself
                log.exception("could not place exchange %s in a run", row.exchange["id"])
                placed.append(row)
                continue
            row.exchange.update(change.exchange)
            row.repeats = change.repeats
            changes.append((row, change))
            placed.append(row)
            if orphan:
                orphans.append((row, change, want))
        sources = {row.exchange["id"]: Sources.of(row) for row in placed}
        written = Written()

        async def write_runs(tx: Any) -> None:
            nonlocal written
            written = await self.run_store.write(
                tx, [change for _, change in changes], sources, shared
            )
            for row, change in changes:  # the steps the database numbered
                row.exchange["step"] = change.exchange["step"]
            await merging.add_orphans(self.store, tx, [_orphan(*orphan) for orphan in orphans])

        await self.store.insert(placed, write_runs)
        for row in placed:
            self.waiting.pop(row.exchange["id"], None)
        for row in held:
            eid = row.exchange["id"]
            self.waiting.setdefault(eid, (row, by_id[eid]))
        if orphans and self.lease is not None:
            self.lease.orphans += len(orphans)
        if placed:
            await self._converge(placed, [change for _, change in changes], written)

    # -- late parents (gateway/store/merging.py) ---------------------------------------------

    async def _converge(
        self, placed: list[Rows], changes: list[RunChanges], written: Written
    ) -> None:
        """After a batch: merge what it showed split. Runs it brought back (merged away while
        this writer's memory named them), conversations it found in two runs, and, while
        steps wait for a late parent, those whose parent this batch stored. Nothing to do,
        and no query, in the usual case."""
        try:
            wanted: list[merging.Merge] = []
            if written.revived:
                found = await merging.moved(self.store, written.revived)
                for run, into in found.items():
                    results = tuple(
                        (r["result_exchange_id"], r["call_id"], r["return_value"], r["at_ms"])
                        for change in changes
                        if change.run["id"] == run
                        for r in change.tool_results
                        if r.get("call_id")
                    )
                    wanted.append(merging.Merge(run, into, results=results))
            if written.split:
                wanted += await merging.conversation_runs(
                    self.store, [(cid, ours) for cid, ours, _ in written.split]
                )
            keys = [row.exchange.get("thread_key") for row in placed]
            if self.lease is not None and self.lease.orphans > 0 and any(keys):
                wanted += await merging.found_parents(self.store, [k for k in keys if k])
            await self._merge(wanted)
        except Exception:  # the batch is stored; a sweep or a later batch merges the rest
            log.exception("could not merge runs after a batch")

    async def _merge(self, wanted: list[merging.Merge]) -> None:
        for merge in wanted:
            done = await merging.merge(self.store, merge)
            if done is None:
                continue
            if done.source != done.target:
                self.merges += 1
                self.grouper.moved(done.source, done.target)
                log.info("merged run %s into run %s (a late parent)", done.source, done.target)

    async def sweep(self, window: float | None = None) -> None:
        """Merge the steps whose late parent is stored now (whichever writer stored it):
        those that became orphans in the last `window` seconds, or all."""
        since = None if window is None else time.time() - window
        await self._merge(await merging.found_parents(self.store, since=since))
        if self.lease is not None:
            self.lease.orphans = await merging.pending(self.store)

    async def _sweep_loop(self) -> None:
        """While steps wait for a late parent: a sweep every SWEEP_SECONDS (a parent whose
        writer did not know orphans were waiting when it stored it is found here)."""
        sweeps = 0
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            if self.lease is None or self.lease.orphans <= 0 or not self.db_ok:
                continue
            try:
                sweeps += 1
                if sweeps % FULL_SWEEP_EVERY == 0:
                    await merging.prune(self.store)
                    await self.sweep()
                else:
                    await self.sweep(SWEEP_WINDOW)
            except Exception:
                log.exception("could not look for late parents")

    async def _new_rows(self, rows: list[Rows], by_id: dict[int, Exchange]) -> list[Rows]:
        """The rows not stored yet. A record stored already is written again (a replay) and
        left out; another record that has its id (two processes that made the same id) is
        never dropped: it gets a new id."""
        stored = await self.store.identities([r.exchange["id"] for r in rows])
        fresh = []
        for row in rows:
            eid = row.exchange["id"]
            if eid not in stored:
                fresh.append(row)
                continue
            self.waiting.pop(eid, None)
            started = micros(row.exchange["started_at"])
            if stored[eid] == (started, row.exchange["client_path"]):
                continue
            record = by_id[eid]
            record.id = new_id()
            by_id[record.id] = record
            self.collisions += 1
            log.warning("exchange id %s was taken by another record; stored as %s", eid, record.id)
            fresh.append(
                build_rows(
                    record, self.providers(record.provider), self.prices, self.max_body_bytes
                )
            )
        return fresh

    def _wants(self, row: Rows, coming: set[str]) -> Wants:
        try:
            return self.grouper.wants(row.exchange, row.parsed, row.hints, coming)
        except Exception:  # placing it without help beats not storing it
            log.exception("could not tell what exchange %s continues", row.exchange["id"])
            return Wants()

    async def _look_up(self, rows: list[Rows], wants: dict[int, Wants]) -> None:
        """Ask the database, once per kind for the whole batch, what other writers stored:
        the open run of each name (claimed), conversations' runs, steps' parents."""
        claims: dict[str, grouping.NameClaim] = {}
        names: dict[str, list[str]] = {}
        for row in rows:
            name = wants[row.exchange["id"]].name
            if not name:
                continue
            key = grouping.clip_name(name)
            names.setdefault(key, [])
            if name not in names[key]:
                names[key].append(name)
            at = row.exchange["started_at"].timestamp()
            seen = claims.get(key)
            claims[key] = grouping.NameClaim(
                key,
                min(at, seen.first_at) if seen else at,
                max(at, seen.last_at) if seen else at,
                seen.proposed if seen else new_id(),
            )
        if claims:
            claimed = await grouping.claim_names(
                self.store, list(claims.values()), self.grouper.run_idle
            )
            self.grouper.learn_names(
                {full: claimed[key] for key, fulls in names.items() for full in fulls},
                {claim.proposed for claim in claims.values()},
            )
        conversations = [c for want in wants.values() for c in want.conversations]
        if conversations:
            found = await grouping.conversation_runs(self.store, conversations)
            for conversation_id, run_id in found.items():
                self.grouper.remember_conversation(conversation_id, run_id)
        keys = [k for want in wants.values() for k in want.threads]
        if keys:
            self.grouper.learn_parents(await grouping.parents(self.store, keys))
        if self.lease is not None and self.lease.other_writers > 0:
            # another writer may have added the previous turn of a conversation
            runs = {self.grouper.conversation_run(row.parsed) for row in rows}
            runs.discard(None)
            if runs:
                entries = await grouping.entry_ids(self.store, [r for r in runs if r is not None])
                self.grouper.learn_entries(entries)

    def _db_failed(self, exc: BaseException) -> None:
        self.db_errors += 1
        self.db_ok = False
        self.last_db_error = f"{type(exc).__name__}: {exc}"
        log.error(
            "database write failed, spooling to %s: %s", self.spool.folder, self.last_db_error
        )

    def _ensure_recovery(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="agentops-spool-replay")

    async def _recover(self) -> None:
        """Replay the spool into the database until it is empty. After a pass that made no
        progress (the database is down, a file cannot be removed) it waits, longer each time
        up to 5 s, so it never holds the writer's loop."""
        attempt = 0
        while self.spool.pending():  # records spilled while replaying are replayed too
            try:
                progressed = await self._replay_spool()
            except Exception:  # a spool bug must not end recovery for good
                log.exception("spool replay failed")
                progressed = False
            if progressed:
                attempt = 0
                await asyncio.sleep(0)
                continue
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1
        self.db_ok = True

    async def _replay_spool(self) -> bool:
        """One pass over the spool files, oldest first; True when it removed at least one."""
        progressed = False
        for path, records in self.spool.drain():
            for batch in bounded(records, BATCH_SIZE, BATCH_BYTES):
                try:
                    await self._store_records(batch)
                except Exception as exc:
                    self._db_failed(exc)
                    return False
            if self.spool.done(path):
                progressed = True
                log.info("replayed %d spooled records from %s", len(records), path.name)
        self.db_ok = True
        return progressed

    # -- life cycle -----------------------------------------------------------------------

    async def drained(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far is stored (or spooled and replayed)."""
        await asyncio.wait_for(self._wait_idle(), timeout)

    async def _wait_idle(self) -> None:
        while True:
            await self.queue.join()
            while self.waiting:  # a step waiting for its parent: stored within HOLD_SECONDS
                await asyncio.sleep(HOLD_RETRY / 2)
            if self._recovery is not None and not self._recovery.done():
                await asyncio.shield(self._recovery)
            if (
                self.queue.empty()
                and not self.waiting
                and (self._recovery is None or self._recovery.done())
            ):
                return

    async def stop(self, timeout: float) -> None:
        """Flush the queue; whatever cannot be written in time is spooled, never lost."""
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
        except TimeoutError:
            log.warning("writer did not finish in %.0fs; spooling the rest", timeout)
        # A step waiting for its parent (another replica's writer may be storing it now)
        # keeps waiting while the grace lasts, at most HOLD_SECONDS.
        until = min(deadline, time.monotonic() + HOLD_SECONDS)
        while self.waiting and time.monotonic() < until and self.db_ok:
            await asyncio.sleep(HOLD_RETRY / 2)
        for task in (self._task, self._recovery, self._sweeper):
            if task is not None:
                task.cancel()
        await self._flush_waiting()
        if self.lease is not None and self.db_ok:
            # a step stored now may find the parent another writer just stored
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("could not look for late parents at stop: %s", exc)
        leftover = []
        while not self.queue.empty():
            leftover.append(self.queue.get_nowait())
        if leftover:
            self.spool.append(leftover)
        self.spool.close()

    async def _flush_waiting(self) -> None:
        """Stopping: records waiting for a parent are stored as they are (or spooled)."""
        self.holding = False
        if not self.waiting:
            return
        records = [record for _, record in self.waiting.values()]
        try:
            if not self.db_ok or self.spool.pending():
                raise ConnectionError("the database is down")
            await self._store_records([])
        except Exception as exc:
            log.warning("spooling %d records that waited for a parent: %s", len(records), exc)
            self.spool.append(records)
        if self.on_settled is not None:
            self.on_settled([record.id for record in records])
        self.waiting.clear()

    def health(self) -> WriterHealth:
        """This recorder's part of the writer's health report (integrations: the child's)."""
        return WriterHealth(
            queue_depth=self.queue.qsize(),
            queue_size=self.queue.maxsize,
            spool_bytes=self.spool.size,
            spooled_records=self.spool.spooled,
            dropped_records=self.spool.dropped + self.failed,
            written_records=self.written,
            database="ok" if self.db_ok else "down",
            database_errors=self.db_errors,
            quarantined_by_writer=self.quarantined,
            last_database_error=self.last_db_error,
            checked_at=time.time(),
            waiting_for_parent=len(self.waiting),
            id_collisions=self.collisions,
        )
