"""Runs assemble themselves from the traffic: which run each exchange belongs to, and what it
adds to that run (messages, tool calls, results, memory).

The rules, in order: a `/r/<name>` base-URL prefix, an `X-AgentOps-Run` header, the
Conversations API's conversation id, then automatic threading: a chat request whose messages
extend an earlier exchange's messages plus its reply continues that exchange's run. Messages
are compared in a canonical form and hashed prefix by prefix, so a lookup is a few dict probes,
never a scan. Each writer has its own grouper, so its state needs no locks; it is bounded
(the last 24 h or 100,000 exchanges) and rebuilt from the database at start. It is a cache:
what other writers (workers, replicas) stored, the writer looks up in the database once per
batch and teaches it (`wants`, `learn_*`; gateway/store/grouping.py), and the database
numbers the steps.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.capture import storable
from gateway.capture.exchange import new_id
from gateway.providers.base import Parsed

THREAD_LIMIT = 100_000
THREAD_SECONDS = 24 * 3600
RUN_MEMORY_LIMIT = 20_000
DONE_LIMIT = 10_000
DONE_BYTES = 8 * 1024 * 1024
ROW_BYTES = 64  # what RunChanges.weight counts for a row's values other than its long texts
# The prefix digests the grouper remembers (`Chains`): about this many bytes of messages
# (their texts, or canonical forms), each counted with CHAIN_ENTRY_BYTES more for the objects
# around it (key, entry, dict slot). 50 loops of 30 steps with 1.7 KB tool results need
# 5 MB: with half of it young, 8 MB found 87% of the digests, 16 MB all but the new ones.
CHAIN_BYTES = 16 * 1024 * 1024
CHAIN_ENTRY_BYTES = 400
THREADED_ENDPOINTS = ("chat", "agents")

# Calls the gateway's own tools make (X-AgentOps-Purpose; a replay's purpose comes with its
# replay_of): a run of their own, by source, never a thread a user's call continues (nor one
# they continue). A client that sends the header only takes its own calls out of threading.
PURPOSES = ("evaluator", "experiment", "finetune")
PREFIX, HEADER, CONVERSATION, THREAD, SINGLE, REPLAY = (
    "prefix",
    "header",
    "conversation",
    "thread",
    "single",
    "replay",
)


# -- canonical messages -------------------------------------------------------------------


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            c.get("text", "")
            for c in content
            if isinstance(c, dict) and isinstance(c.get("text"), str)
        )
    try:
        return orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # nested past orjson's depth limit: compared by its stored form
        return storable.json_text(content)


def parse_arguments(raw: Any) -> Any:
    """Tool-call arguments as JSON when they parse, else the raw string as sent."""
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    return raw


def canonical(message: Any) -> bytes:
    """What makes two messages the same, whatever SDK re-serialized them: role, text, tool
    calls (name, parsed arguments, id) and tool_call_id. Other keys and spacing are ignored."""
    if not isinstance(message, dict):
        return orjson.dumps(["?", repr(message)])
    get = message.get
    calls = []
    for call in get("tool_calls") or ():
        if isinstance(call, dict):
            function = call.get("function") or {}
            if not isinstance(function, dict):
                function = {}
            calls.append(
                [function.get("name"), parse_arguments(function.get("arguments")), call.get("id")]
            )
    content = get("content")
    text = content if content.__class__ is str else _text(content)
    key = [get("role"), text, calls, get("tool_call_id")]
    try:
        return orjson.dumps(key, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # arguments nested past orjson's depth limit
        return storable.json_text(key).encode()


def prefix_hashes(messages: list[Any], after: list[str] | None = None) -> list[str]:
    """h[i] identifies messages[: i + 1] (continuing the chain `after`, when given); equal
    hashes mean equal prefixes: h[i] = blake2b(h[i - 1] + canonical(messages[i])), 16 bytes,
    in hex."""
    digest = bytes.fromhex(after[-1]) if after else b""
    out = []
    blake2b = hashlib.blake2b
    for message in messages:
        hashed = blake2b(digest, digest_size=16)  # the same as hashing them joined,
        hashed.update(canonical(message))  # without copying a long message first
        digest = hashed.digest()
        out.append(digest.hex())
    return out


class Chains:
    """`prefix_hashes` with a memory. Each step of an agent loop resends its whole history,
    whose digests the step before computed already (its input, then its reply): finding
    them again costs a dict probe and a comparison, a fraction of hashing them. Exact: a
    digest is found by the previous digest and what `canonical` writes of the message (a
    plain message's role and tool_call_id, and its text, compared whole; else the canonical
    bytes), so a hit is what hashing gives.

    It holds about CHAIN_BYTES, in two generations: what was used since the last turn-over,
    and what was used in the turn before (kept while the young one fills to half, then
    dropped at once; a digest found there is used again, so it moves to the young one)."""

    def __init__(self, limit: int = CHAIN_BYTES) -> None:
        self.limit = limit
        # key -> (the text of a plain message (else None), the digest, in hex)
        self.young: dict[Any, tuple[str | None, bytes, str]] = {}
        self.old: dict[Any, tuple[str | None, bytes, str]] = {}
        self.size = 0  # the young generation's

    def hashes(
        self, messages: list[Any], after: list[str] | None = None, remember: bool = True
    ) -> list[str]:
        """What prefix_hashes(messages, after) gives. Without `remember` it is computed so,
        neither looked up nor kept: a single call's messages are rarely sent again, and
        looking them up and keeping them would only add to their hashing."""
        if not remember:
            return prefix_hashes(messages, after)
        digest = bytes.fromhex(after[-1]) if after else b""
        out = []
        plain = _PLAIN
        for message in messages:
            # The key of a message whose canonical form is its role, text and tool_call_id
            # alone (text content, no tool calls; role and tool_call_id strings or absent):
            # those, with only its text's length and head (hashing a long text costs a
            # fifth of blake2b). Written inline: this runs for every message of every step.
            key: Any = None
            if message.__class__ is dict and not message.get("tool_calls"):
                text = message.get("content")
                role, call = message.get("role"), message.get("tool_call_id")
                if text.__class__ is str and role.__class__ in plain and call.__class__ in plain:
                    key = (digest, role, call, len(text), text[:TEXT_HEAD])
            data: bytes | None = None
            if key is None:  # keyed by the very bytes hashed
                key = data = digest + canonical(message)
                text = None
            entry = young = self.young.get(key)
            if entry is None:
                entry = self.old.get(key)
            if entry is None or entry[0] != text:
                if data is None:
                    data = digest + canonical(message)
                digest = hashlib.blake2b(data, digest_size=16).digest()
                entry = (text, digest, digest.hex())  # the hex kept: a step asks for it again
                self._add(key, entry)
            elif young is None:
                self._add(key, entry)  # used again: young
            digest = entry[1]
            out.append(entry[2])
        return out

    def _add(self, key: Any, entry: tuple[str | None, bytes, str]) -> None:
        self.young[key] = entry
        self.size += _key_size(key) + CHAIN_ENTRY_BYTES
        if self.size > self.limit // 2:
            self.old, self.young, self.size = self.young, {}, 0


_PLAIN = (str, type(None))
TEXT_HEAD = 32  # characters of a plain message's text in its Chains key


def _continues(inputs: list[Any]) -> bool:
    """Whether a chat step's input holds an assistant message: it continues an earlier
    call, and its own next step, if any, will send it all again (with its reply)."""
    for message in inputs:
        if isinstance(message, dict) and message.get("role") == "assistant":
            return True
    return False


def _key_size(key: Any) -> int:
    """About how many bytes a Chains entry holds (a plain message's: its digest and text)."""
    return len(key) if key.__class__ is bytes else 16 + key[3]


def common_prefix(a: list[str], b: list[str]) -> int:
    """Length of the shared prefix of two prefix-hash lists (binary search: hashes chain)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[mid - 1] == b[mid - 1]:
            low = mid
        else:
            high = mid - 1
    return low


# -- what an exchange adds to its run -------------------------------------------------------


@dataclass(slots=True)
class RunChanges:
    """The rows one exchange adds; kept per exchange so a replayed batch re-emits the same."""

    run: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None
    conversations: list[tuple[str, int]] = field(default_factory=list)
    exchange: dict[str, Any] = field(default_factory=dict)  # run columns of the exchange
    # chat: how many leading request messages the run held already (its request extends the
    # run's previous one; only the rest is new)
    repeats: int = 0

    def weight(self) -> int:
        """About how many bytes these rows hold: their texts (ROW_BYTES for each row's
        short ones) and a snapshot's message texts."""
        size = 256
        for row in self.messages:
            size += ROW_BYTES + len(row["content"] or "") + len(row["tool_calls"] or "")
        for row in self.tool_calls:
            size += ROW_BYTES + len(row["args"] or "") + len(row["return_value"] or "")
        for row in self.tool_results:
            size += ROW_BYTES + len(row["return_value"] or "")
        for item in self.snapshot["appended"] if self.snapshot else ():
            content = item.get("content") if isinstance(item, dict) else None
            size += len(content) if isinstance(content, str) else 64
        return size


@dataclass(slots=True)
class RunMemory:
    step: int = 0  # the next step number
    hashes: list[str] = field(default_factory=list)  # chat: prefix hashes of the state
    entry_ids: list[str | None] = field(default_factory=list)  # conversations: entry ids
    unstored: bool = False  # the last step omitted its bodies: its state has no snapshot


@dataclass(slots=True)
class Candidate:
    exchange_id: int
    run_id: int
    at: float


@dataclass(slots=True)
class Wants:
    """What placing one exchange needs to know that another writer may have stored: the name
    of its named run, conversation ids not in memory, thread keys (longest first) longer
    than any in memory. `continues`: it continues something (an assistant message in its
    input, or a conversation it appends to), so finding nothing may mean its parent is not
    stored yet."""

    name: str | None = None
    conversations: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    continues: bool = False
    key: str | None = None  # the thread key it will have (its messages + reply)
    parent: str | None = None  # the thread key of its parent


PARENT_KEYS = 8  # thread keys looked up per exchange: its last assistant messages


CONVERSATION_ID_CHARS = storable.limit("run_conversations", "conversation_id") or 200


def _conversation_ids(parsed: Parsed) -> list[str]:
    """A call's conversation ids as stored (clipped like the run_conversations column), so
    the grouper's memory and one rebuilt from the database agree on every id."""
    return [
        storable.clip(c, CONVERSATION_ID_CHARS)
        for c in (parsed.path_conversation_id, parsed.conversation_id)
        if c
    ]


class Grouper:
    """Assigns exchanges to runs. `assign` must see exchanges in the order they started."""

    def __init__(self, run_idle: float) -> None:
        self.run_idle = run_idle
        self.names: dict[str, tuple[int, float]] = {}  # open named runs: name -> (id, seen)
        self.conversations: OrderedDict[str, int] = OrderedDict()
        self.threads: OrderedDict[str, list[Candidate]] = OrderedDict()
        self.extended: set[int] = set()
        self.memory: OrderedDict[int, RunMemory] = OrderedDict()
        self.done: OrderedDict[int, RunChanges] = OrderedDict()  # replays re-emit these
        self.done_bytes = 0
        self.done_weights: dict[int, int] = {}  # each one's weight(), counted once
        self.fresh: set[int] = set()  # named runs this writer's claim opened, not yet used
        # runs merged into others (a late parent: gateway/store/merging.py): where they went
        self.merged: OrderedDict[int, int] = OrderedDict()
        self.chains = Chains()  # prefix_hashes, remembered

    # -- state ------------------------------------------------------------------------------

    def _memory(self, run_id: int, step: int = 0) -> RunMemory:
        memory = self.memory.get(run_id)
        if memory is None:
            memory = self.memory[run_id] = RunMemory(step=step)
            while len(self.memory) > RUN_MEMORY_LIMIT:
                self.memory.popitem(last=False)
        else:
            self.memory.move_to_end(run_id)
        return memory

    def remember_thread(self, key: str, exchange_id: int, run_id: int, at: float) -> None:
        self.threads.setdefault(key, []).append(Candidate(exchange_id, run_id, at))
        self.threads.move_to_end(key)
        while len(self.threads) > THREAD_LIMIT:
            self._forget_oldest_thread()
        oldest = next(iter(self.threads.values()), None)
        while oldest and oldest[-1].at < at - THREAD_SECONDS:
            self._forget_oldest_thread()
            oldest = next(iter(self.threads.values()), None)

    def _forget_oldest_thread(self) -> None:
        """Drop the oldest thread key, and its calls from `extended`: that set is only read
        for candidates still in `threads`, and without this it grew by one id per step of
        every agent loop for the life of the writer (nothing else removes from it)."""
        _, candidates = self.threads.popitem(last=False)
        for candidate in candidates:
            self.extended.discard(candidate.exchange_id)

    def remember_conversation(self, conversation_id: str, run_id: int) -> None:
        self.conversations[conversation_id] = run_id
        self.conversations.move_to_end(conversation_id)
        while len(self.conversations) > THREAD_LIMIT:
            self.conversations.popitem(last=False)

    def moved(self, run_id: int, into: int) -> None:
        """Run `run_id` was merged into `into`: what this memory says of it goes there."""
        if run_id == into:
            return
        self.merged[run_id] = into
        self.merged.move_to_end(run_id)
        while len(self.merged) > THREAD_LIMIT:
            self.merged.popitem(last=False)
        self.memory.pop(run_id, None)
        for name, (open_id, seen) in list(self.names.items()):
            if open_id == run_id:
                self.names[name] = (into, seen)
        for conversation_id, linked in list(self.conversations.items()):
            if linked == run_id:
                self.conversations[conversation_id] = into

    def _now_in(self, run_id: int) -> int:
        """The run a remembered run is part of now (itself, unless merged)."""
        seen = 0
        while run_id in self.merged and seen < 16:
            run_id, seen = self.merged[run_id], seen + 1
        return run_id

    def forget_run(self, run_id: int) -> None:
        self.memory.pop(run_id, None)
        for name, (open_id, _) in list(self.names.items()):
            if open_id == run_id:
                del self.names[name]

    # -- what the database must tell (gateway/store/grouping.py) ----------------------------

    def wants(
        self,
        exchange: dict[str, Any],
        parsed: Parsed,
        hints: dict[str, str],
        coming: set[str] | frozenset[str] = frozenset(),
    ) -> Wants:
        """What to look up before placing an exchange (mirrors `_place`). `coming`: the
        thread keys of the exchanges placed before it in its batch (no need to ask for
        those)."""
        if exchange.get("replay_of") is not None or exchange["id"] in self.done:
            return Wants()
        name = hints.get("run_prefix") or hints.get("run")
        if hints.get("purpose") in PURPOSES:
            return Wants(name=name)
        if name:
            # a named run's step also waits for the call it continues (the tool results it
            # sends complete that call's tool calls), but only that one is looked up
            wants = self._chat_wants(exchange, parsed, coming)
            wants.name, wants.threads = name, wants.threads[:1]
            return wants
        if parsed.endpoint == "conversations":
            ids = _conversation_ids(parsed)
            if parsed.conversation_op == "start" or any(c in self.conversations for c in ids):
                return Wants()
            return Wants(
                conversations=ids,
                continues=bool(ids) and parsed.conversation_op != "start",
            )
        return self._chat_wants(exchange, parsed, coming)

    def _chat_wants(
        self, exchange: dict[str, Any], parsed: Parsed, coming: set[str] | frozenset[str]
    ) -> Wants:
        """A chat step's parent: the call that gave its last assistant message."""
        inputs = [m for m in (parsed.messages_in or []) if m is not None]
        if parsed.endpoint not in THREADED_ENDPOINTS or not inputs:
            return Wants()
        remember = _continues(inputs)
        hashes = self.chains.hashes(inputs, remember=remember)
        key = None
        if parsed.message_out is not None and exchange.get("status") == 200:
            key = self.chains.hashes([parsed.message_out], hashes, remember)[-1]
        keys: list[str] = []
        parent = None  # the key of the call that gave its last assistant message
        for index in range(len(inputs) - 2, -1, -1):  # a parent's reply, then more input
            message = inputs[index]
            if isinstance(message, dict) and message.get("role") == "assistant":
                parent = parent or hashes[index]
                known = hashes[index] in self.threads or hashes[index] in coming
                if known or len(keys) == PARENT_KEYS:
                    break
                keys.append(hashes[index])
        return Wants(
            threads=keys,
            hashes=hashes,
            continues=parent is not None and parent not in self.threads,
            key=key,
            parent=parent,
        )

    def learn_names(self, claimed: dict[str, tuple[int, float]], proposed: set[int]) -> None:
        """The runs the database holds open for these names (`proposed`: the ids this writer
        offered; a name that got one starts a run here)."""
        for name, (run_id, last_at) in claimed.items():
            self.names[name] = (run_id, last_at)
            if run_id in proposed:
                self.fresh.add(run_id)

    def learn_parents(self, parents: list[Any]) -> None:
        """Stored chat steps (grouping.Parent) other writers may have written."""
        for parent in parents:
            known = self.threads.get(parent.thread_key) or []
            if all(c.exchange_id != parent.exchange_id for c in known):
                self.remember_thread(
                    parent.thread_key, parent.exchange_id, parent.run_id, parent.at
                )

    def conversation_run(self, parsed: Parsed) -> int | None:
        """The run of a Conversations API call that adds to a known conversation."""
        if parsed.endpoint != "conversations" or parsed.conversation_op in ("start", None):
            return None
        if parsed.conversation_op in ("history", "get"):
            return None
        return self._conversation_run(parsed)

    def learn_entries(self, entries: dict[int, list[str | None]]) -> None:
        """Conversations' entry ids as stored (another writer may have added to them)."""
        for run_id, ids in entries.items():
            self._memory(run_id).entry_ids = list(ids)

    def has_parent(self, wants: Wants) -> bool:
        """Whether an exchange that continues something would now find it: a conversation's
        run, or the very call that gave its last assistant message (not only an earlier one:
        a step finds its own parent, not its grandparent, whichever writer stored it)."""
        if wants.conversations:
            return any(c in self.conversations for c in wants.conversations)
        if wants.parent is not None:
            match = self._thread_match(wants.hashes)
            return match is not None and wants.hashes[match[1] - 1] == wants.parent
        return True

    # -- assignment -----------------------------------------------------------------------

    async def assign(
        self,
        exchange: dict[str, Any],
        parsed: Parsed,
        hints: dict[str, str],
        steps: Callable[[int], Awaitable[int]],
        hashes: list[str] | None = None,
        key: str | None = None,
    ) -> RunChanges:
        """Place one exchange (its row dict, as built by capture) and say what it adds.

        `steps(run_id)` gives the next step of a run the grouper no longer remembers (the
        writer asks the database); it is only called on that rare miss. `hashes` and `key`:
        what `wants` found (its prefix hashes and thread key), not computed again.
        """
        previous = self.done.get(exchange["id"])
        if previous is not None:
            return previous
        at = exchange["started_at"].timestamp()
        inputs = [m for m in (parsed.messages_in or []) if m is not None]
        if hashes is None or len(hashes) != len(inputs):
            hashes, key = self.chains.hashes(inputs, remember=_continues(inputs)), None
        run_id, source, parent, created, carried_hint = self._place(
            exchange, parsed, hints, at, hashes
        )
        if created or run_id in self.memory:
            memory = self._memory(run_id)
        else:
            memory = self._memory(run_id, await steps(run_id))
        step = memory.step
        memory.step += 1
        changes = RunChanges(
            run=self._run_delta(run_id, source, created, exchange, parsed, hints, at)
        )
        changes.exchange = {
            "run_id": run_id,
            "run_source": source,
            "step": step,
            "parent_id": parent,
        }
        ended_ms = at * 1000 + (exchange.get("latency_ms") or 0)
        if parsed.endpoint == "conversations":
            self._conversation(changes, memory, exchange, parsed, run_id, step, ended_ms)
        else:
            self._chat(
                changes,
                memory,
                exchange,
                parsed,
                run_id,
                step,
                ended_ms,
                at,
                carried_hint,
                inputs,
                hashes,
                key,
            )
        if exchange.get("omitted"):
            # X-AgentOps-Omit: bodies. The call is placed (run, step, thread key: hashes),
            # but nothing of what it said is kept: no messages, tool calls, tool results or
            # memory snapshot, which would hold the bodies' text.
            changes.messages, changes.tool_calls, changes.tool_results = [], [], []
            changes.snapshot = None
            memory.unstored = True  # so the next step carries nothing: its memory is whole
        self._keep(exchange["id"], changes)
        return changes

    def _keep(self, exchange_id: int, changes: RunChanges) -> None:
        """Remember what an exchange added, so a batch that is written again re-emits it;
        the latest DONE_LIMIT or DONE_BYTES of them (they hold message texts: 10,000 calls
        of 100 KB used to keep 2 GB in the writer long after they were stored)."""
        weight = changes.weight()
        self.done[exchange_id] = changes
        self.done_bytes += weight - self.done_weights.get(exchange_id, 0)
        self.done_weights[exchange_id] = weight
        while len(self.done) > DONE_LIMIT or (self.done_bytes > DONE_BYTES and len(self.done) > 1):
            dropped, _ = self.done.popitem(last=False)
            self.done_bytes -= self.done_weights.pop(dropped)

    def _place(
        self,
        exchange: dict[str, Any],
        parsed: Parsed,
        hints: dict[str, str],
        at: float,
        hashes: list[str],
    ) -> tuple[int, str, int | None, bool, int | None]:
        """(run id, rule, parent exchange, run created?, matched prefix length)."""
        if exchange.get("replay_of") is not None:
            return self._replay_run(parsed, hints)
        name = hints.get("run_prefix") or hints.get("run")
        purpose = hints.get("purpose")
        if purpose in PURPOSES:
            run_id, created = self._named(name, at) if name else (new_id(), True)
            return run_id, str(purpose), None, created, None
        if name:
            source = PREFIX if hints.get("run_prefix") else HEADER
            run_id, created = self._named(name, at)
            self._link_conversations(parsed, run_id)
            return run_id, source, None, created, None
        if parsed.endpoint == "conversations":
            known = self._conversation_run(parsed)
            if known is not None:
                self._link_conversations(parsed, known)
                return known, CONVERSATION, None, False, None
            if parsed.conversation_id or parsed.conversation_op in ("start", "restart"):
                run_id = new_id()
                self._link_conversations(parsed, run_id)
                return run_id, CONVERSATION, None, True, None
        if parsed.endpoint in THREADED_ENDPOINTS and hashes:
            match = self._thread_match(hashes)
            if match is not None:
                candidate, length = match
                self.extended.add(candidate.exchange_id)
                run_id = self._now_in(candidate.run_id)
                return run_id, THREAD, candidate.exchange_id, False, length
        return new_id(), SINGLE, None, True, None

    def _replay_run(
        self, parsed: Parsed, hints: dict[str, str]
    ) -> tuple[int, str, int | None, bool, int | None]:
        """A replay never joins the original's run (nor any run by name or threading): it
        gets a run of its own, or the one its whole-run replay made. Only the replay code
        sets replay_of, so a client's headers cannot steer an exchange here."""
        try:
            run_id = int(hints.get("replay_run") or 0)
            step = int(hints.get("replay_step") or 0)
        except ValueError:
            run_id, step = 0, 0
        created = not run_id or step == 0
        run_id = run_id or new_id()
        self._link_conversations(parsed, run_id)
        # Calls the gateway makes for itself say what for (a judge's: `evaluator`).
        purpose = hints.get("purpose")
        return run_id, purpose if purpose in PURPOSES else REPLAY, None, created, None

    def _named(self, name: str, at: float) -> tuple[int, bool]:
        known = self.names.get(name)
        if known is not None and at - known[1] <= self.run_idle:
            self.names[name] = (known[0], max(at, known[1]))
            if known[0] in self.fresh:  # the database opened it for this writer's claim
                self.fresh.discard(known[0])
                return known[0], True
            return known[0], False
        run_id = new_id()
        self.names[name] = (run_id, at)
        return run_id, True

    def _conversation_run(self, parsed: Parsed) -> int | None:
        for conversation_id in _conversation_ids(parsed):
            if conversation_id in self.conversations:
                return self._now_in(self.conversations[conversation_id])
        return None

    def _link_conversations(self, parsed: Parsed, run_id: int) -> None:
        for conversation_id in _conversation_ids(parsed):
            self.remember_conversation(conversation_id, run_id)

    def _thread_match(self, hashes: list[str]) -> tuple[Candidate, int] | None:
        for length in range(len(hashes) - 1, 0, -1):  # longest earlier state first
            candidates = self.threads.get(hashes[length - 1])
            if candidates:
                fresh = [c for c in candidates if c.exchange_id not in self.extended]
                return (fresh or candidates)[-1], length
        return None

    def _run_delta(
        self,
        run_id: int,
        source: str,
        created: bool,
        exchange: dict[str, Any],
        parsed: Parsed,
        hints: dict[str, str],
        at: float,
    ) -> dict[str, Any]:
        status = exchange.get("status")
        failed = (status or 0) >= 400 or exchange.get("state") != "complete"
        failed = failed or bool(exchange.get("error"))  # an unparsable answer too
        # as the rollups count them: a model, no cost, an answer below 400
        unpriced = (
            exchange.get("cost_usd") is None
            and exchange.get("model") is not None
            and status is not None
            and status < 400
        )
        when = exchange["started_at"]  # capture makes it in UTC: `at` read back
        if when.tzinfo is not UTC:
            when = datetime.fromtimestamp(at, UTC)
        delta = {
            "id": run_id,
            "created": created,
            "source": source,
            "started_at": when,
            "last_seen_at": when,
            "last_failed": failed,
            "exchange_count": 1,
            "prompt_tokens": exchange.get("prompt_tokens") or 0,
            "completion_tokens": exchange.get("completion_tokens") or 0,
            "total_tokens": exchange.get("total_tokens") or 0,
            "total_cost_usd": exchange.get("cost_usd") or 0.0,
            "error_count": int(failed),
            "unpriced_calls": int(unpriced),
            "name": hints.get("run_prefix") or hints.get("run"),
            "agent_id": hints.get("agent") or parsed.agent_id,
            "user": hints.get("user"),
            "tags": parse_tags(hints.get("tags")),
            "config": None,
        }
        if created:
            config = dict(parsed.request_params or {})
            model = parsed.request_model or parsed.model
            if model:
                config["model"] = model
            delta["config"] = config or None
        return delta

    # -- chat and agents completions ----------------------------------------------------------

    def _chat(
        self,
        changes: RunChanges,
        memory: RunMemory,
        exchange: dict[str, Any],
        parsed: Parsed,
        run_id: int,
        step: int,
        ended_ms: float,
        at: float,
        carried_hint: int | None,
        inputs: list[Any],
        hashes: list[str],
        key: str | None = None,
    ) -> None:
        """`key`: the thread key `wants` found for these hashes and the reply, if it did."""
        carried = carried_hint if carried_hint is not None else common_prefix(memory.hashes, hashes)
        carried = 0 if memory.unstored else min(carried, len(inputs))
        memory.unstored = False
        changes.repeats = carried
        eid = exchange["id"]
        for position, message in enumerate(inputs[carried:], start=carried):
            changes.messages.append(_message_row(run_id, eid, step, position, "in", message))
            if isinstance(message, dict) and message.get("role") == "tool":
                changes.tool_results.append(
                    {
                        "run_id": run_id,
                        "call_id": message.get("tool_call_id"),
                        "return_value": _as_text(message.get("content")),
                        "result_exchange_id": eid,
                        "at_ms": at * 1000,
                    }
                )
        out = parsed.message_out
        state_added = inputs[carried:]
        if out is not None:
            row = _message_row(run_id, eid, step, len(inputs), "out", out)
            row.update(
                finish_reason=exchange.get("finish_reason"),
                prompt_tokens=exchange.get("prompt_tokens"),
                completion_tokens=exchange.get("completion_tokens"),
            )
            changes.messages.append(row)
            for call in out.get("tool_calls") or ():
                if isinstance(call, dict):
                    function = call["function"] if isinstance(call.get("function"), dict) else {}
                    changes.tool_calls.append(
                        _tool_row(
                            run_id,
                            eid,
                            step,
                            call.get("id"),
                            function.get("name"),
                            "function",
                            parse_arguments(function.get("arguments")),
                            asked_at_ms=ended_ms,
                        )
                    )
            state_added = [*state_added, out]
            if key is None:
                key = self.chains.hashes([out], hashes, _continues(inputs))[-1]
            full = [*hashes, key]
            # A replay is never a thread to continue: a later real call matching its messages
            # belongs with the original traffic, not in the replay's run.
            if exchange.get("replay_of") is None and changes.exchange["run_source"] not in PURPOSES:
                changes.exchange["thread_key"] = key
                if parsed.endpoint in THREADED_ENDPOINTS and exchange.get("status") == 200:
                    self.remember_thread(key, eid, run_id, at)
            memory.hashes = full
        else:
            memory.hashes = hashes
        changes.snapshot = {
            "run_id": run_id,
            "exchange_id": eid,
            "step": step,
            "taken_at": exchange["started_at"],
            "carried": carried,
            "appended": state_added,
        }

    # -- the Conversations API ------------------------------------------------------------

    def _conversation(
        self,
        changes: RunChanges,
        memory: RunMemory,
        exchange: dict[str, Any],
        parsed: Parsed,
        run_id: int,
        step: int,
        ended_ms: float,
    ) -> None:
        _add_conversation_links(changes, parsed, run_id)
        carried = _carried_entries(memory, exchange, parsed)
        if carried is None:
            return  # reading a conversation adds nothing to it
        eid = exchange["id"]
        inputs, outputs = _present(parsed.entries_in), _present(parsed.entries_out)
        at_ms = exchange["started_at"].timestamp() * 1000
        for position, entry in enumerate(inputs, start=carried):
            changes.messages.append(_entry_message(run_id, eid, step, position, "in", entry))
            result = _entry_result(run_id, eid, entry, at_ms)
            if result is not None:
                changes.tool_results.append(result)
        for position, entry in enumerate(outputs, start=carried + len(inputs)):
            changes.messages.append(_entry_message(run_id, eid, step, position, "out", entry))
            tool = _entry_tool(run_id, eid, step, entry, ended_ms)
            if tool is not None:
                changes.tool_calls.append(tool)
        memory.entry_ids = memory.entry_ids[:carried] + [_entry_id(e) for e in inputs + outputs]
        changes.snapshot = {
            "run_id": run_id,
            "exchange_id": eid,
            "step": step,
            "taken_at": exchange["started_at"],
            "carried": carried,
            "appended": inputs + outputs,
        }


def _add_conversation_links(changes: RunChanges, parsed: Parsed, run_id: int) -> None:
    """Every conversation id a call names joins its run (reads included), each pair once."""
    for conversation_id in _conversation_ids(parsed):
        if (conversation_id, run_id) not in changes.conversations:
            changes.conversations.append((conversation_id, run_id))


def _carried_entries(memory: RunMemory, exchange: dict[str, Any], parsed: Parsed) -> int | None:
    """How many remembered entries a Conversations API call keeps before its own: a restart
    keeps up to its from_entry_id (none when unknown), a start none, an append all; None for
    a read, which adds nothing."""
    op = parsed.conversation_op
    if op == "restart":
        wanted = _request_field(parsed, "from_entry_id")
        return memory.entry_ids.index(wanted) + 1 if wanted in memory.entry_ids else 0
    if op in ("history", "get") or exchange.get("method") == "GET":
        return None
    return 0 if op == "start" else len(memory.entry_ids)


def _present(entries: list[Any] | None) -> list[Any]:
    return [e for e in entries or [] if e is not None]


def _entry_id(entry: Any) -> str | None:
    return entry.get("id") if isinstance(entry, dict) else None


def _entry_result(run_id: int, exchange_id: int, entry: Any, at_ms: float) -> dict[str, Any] | None:
    """The tool result a `function.result` input entry delivers, else None."""
    if not isinstance(entry, dict) or entry.get("type") != "function.result":
        return None
    return {
        "run_id": run_id,
        "call_id": entry.get("tool_call_id"),
        "return_value": _as_text(entry.get("result")),
        "result_exchange_id": exchange_id,
        "at_ms": at_ms,
    }


def parse_tags(text: str | None) -> dict[str, str] | None:
    """`k=v,k2=v2` -> {"k": "v", "k2": "v2"}; a bare word becomes a tag with an empty value."""
    if not text:
        return None
    tags = {}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        if key.strip():
            tags[key.strip()] = value.strip()
    return tags or None


def _request_field(parsed: Parsed, name: str) -> Any:
    request = parsed.request_json
    return request.get(name) if isinstance(request, dict) else None


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return storable.json_text(value)


def _json(value: Any) -> str | None:
    return None if value is None else storable.json_text(value)


def message_fields(message: Any) -> dict[str, Any]:
    """A message's role, content, tool_calls and tool_call_id as the messages table holds
    them (content and tool calls as JSON text)."""
    if not isinstance(message, dict):
        message = {"content": message}
    role = message.get("role")
    return {
        "role": role if isinstance(role, str) else None,
        "content": _json(message.get("content")),
        "tool_calls": _json(message.get("tool_calls") or None),
        "tool_call_id": _clip(message.get("tool_call_id")),
    }


def _message_row(
    run_id: int, exchange_id: int, step: int, position: int, direction: str, message: Any
) -> dict[str, Any]:
    """A messages row: its place, then message_fields (built in place: one dict a row)."""
    if not isinstance(message, dict):
        message = {"content": message}
    get = message.get
    role, content = get("role"), get("content")
    return {
        "run_id": run_id,
        "exchange_id": exchange_id,
        "step": step,
        "position": position,
        "direction": direction,
        "role": role if isinstance(role, str) else None,
        "content": None if content is None else storable.json_text(content),
        "tool_calls": _json(get("tool_calls") or None),
        "tool_call_id": _clip(get("tool_call_id")),
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
    }


def _entry_message(
    run_id: int, exchange_id: int, step: int, position: int, direction: str, entry: Any
) -> dict[str, Any]:
    if not isinstance(entry, dict):
        return _message_row(run_id, exchange_id, step, position, direction, entry)
    kind = entry.get("type")
    if kind == "function.result":
        message = {
            "role": "tool",
            "tool_call_id": entry.get("tool_call_id"),
            "content": entry.get("result"),
        }
    elif kind == "function.call":
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": entry.get("tool_call_id"),
                    "type": "function",
                    "function": {"name": entry.get("name"), "arguments": entry.get("arguments")},
                }
            ],
        }
    elif kind == "tool.execution":
        message = {
            "role": "tool",
            "content": {
                "name": entry.get("name"),
                "arguments": entry.get("arguments"),
                "info": entry.get("info"),
            },
        }
    elif kind == "agent.handoff":
        message = {
            "role": "handoff",
            "content": {
                k: entry.get(k)
                for k in (
                    "previous_agent_id",
                    "previous_agent_name",
                    "next_agent_id",
                    "next_agent_name",
                )
            },
        }
    else:
        message = {
            "role": entry.get("role") or ("assistant" if direction == "out" else "user"),
            "content": entry.get("content"),
        }
    return _message_row(run_id, exchange_id, step, position, direction, message)


def _entry_tool(
    run_id: int, exchange_id: int, step: int, entry: Any, ended_ms: float
) -> dict[str, Any] | None:
    if not isinstance(entry, dict):
        return None
    kind = entry.get("type")
    if kind == "function.call":
        return _tool_row(
            run_id,
            exchange_id,
            step,
            entry.get("tool_call_id"),
            entry.get("name"),
            "function",
            parse_arguments(entry.get("arguments")),
            asked_at_ms=ended_ms,
        )
    if kind == "tool.execution":
        row = _tool_row(
            run_id,
            exchange_id,
            step,
            entry.get("id"),
            entry.get("name"),
            "builtin",
            parse_arguments(entry.get("arguments")),
            asked_at_ms=ended_ms,
        )
        row["return_value"] = _as_text(entry.get("info"))
        return row
    if kind == "agent.handoff":
        return _tool_row(
            run_id,
            exchange_id,
            step,
            entry.get("id"),
            entry.get("next_agent_name") or entry.get("next_agent_id"),
            "handoff",
            {
                "previous_agent_id": entry.get("previous_agent_id"),
                "next_agent_id": entry.get("next_agent_id"),
            },
            asked_at_ms=ended_ms,
        )
    return None


def _tool_row(
    run_id: int,
    exchange_id: int,
    step: int,
    call_id: Any,
    name: Any,
    kind: str,
    args: Any,
    *,
    asked_at_ms: float,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "exchange_id": exchange_id,
        "step": step,
        "call_id": _clip(call_id),
        "tool_name": _clip(name),
        "kind": kind,
        "args": _json(args),
        "return_value": None,
        "result_exchange_id": None,
        "asked_at_ms": asked_at_ms,
        "latency_ms": None,
    }


def _clip(value: Any, size: int = 200) -> str | None:
    return value[:size] if isinstance(value, str) else None
