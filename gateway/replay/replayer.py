"""Replays one recorded call with changed parameters and diffs the answer with the original.

The new request goes through the proxy's own forwarding code (`Proxy.send`), so it is
captured, parsed, priced and stored like any call, with `replay_of` set; only the configured
upstream is ever reached. The API key is the gateway's replay key or one given for this
replay alone: it lives in memory for the call and is never stored or logged (the recorded
headers carry `[redacted]`, as for every call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.capture.redact import REDACTED
from gateway.errors import AgentOpsError
from gateway.providers import UnknownProvider, provider_named
from gateway.providers.base import BadOverrides, NotReplayable, Parsed, Provider, Replay
from gateway.proxy.forward import HINT_PREFIX, HOP_BY_HOP, Proxy
from gateway.replay import diff as diffs
from gateway.store.exchanges import Store
from gateway.store.records import StoredExchange
from gateway.store.replays import ReplayStore
from gateway.store.stored import parse_stored
from gateway.writer import WriterError, WriterProcess

log = logging.getLogger("agentops.replay")

KEY_VARIABLES = ("AGENTOPS_REPLAY_API_KEY", "MISTRAL_API_KEY")
STORED_WAIT_SECONDS = 30.0
MODELS_TTL_SECONDS = 600.0
# Headers of the original that a replay does not copy: the transport's, the caller's
# credentials (stored redacted anyway) and those the replay sets itself.
NOT_COPIED = HOP_BY_HOP | {
    "content-length",
    "content-encoding",  # the stored request body is decoded (rows.decode_request)
    "content-type",
    "authorization",
    "cookie",
    "accept",
    "accept-encoding",
}


class ReplayError(AgentOpsError):
    """A replay refused before anything was sent: the HTTP status and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.exit_code = 2


class SecretKey:
    """An API key held in memory only; its repr never shows it (logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretKey('***')"


def key_from_environ(environ: Mapping[str, str]) -> SecretKey | None:
    for name in KEY_VARIABLES:
        value = (environ.get(name) or "").strip()
        if value:
            return SecretKey(value)
    return None


@dataclass
class Recorded:
    """A stored exchange, decoded, with its provider and what that provider parses from it."""

    item: StoredExchange
    parsed: Parsed
    provider: Provider

    @property
    def id(self) -> int:
        return self.item.id

    def side(self) -> diffs.Side:
        return diffs.Side(self.item, self.parsed)

    def list_item(self) -> dict[str, Any]:
        """The exchange as /api/exchanges lists it."""
        return self.item.summary().to_json()


@dataclass
class Plan:
    """What a replay sends: the route and the merged body."""

    path: str
    body: dict[str, Any]
    original: Recorded


def replay_headers(
    original: list[tuple[str, str]], key: str, stream: bool
) -> list[tuple[str, str]]:
    """The original's headers (its SDK, its x- options) without credentials or transport
    headers, plus our JSON content type and the replay key."""
    pairs = [
        (k, v)
        for k, v in original
        if k.lower() not in NOT_COPIED and not k.lower().startswith(HINT_PREFIX) and v != REDACTED
    ]
    pairs += [
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream" if stream else "application/json"),
        ("Authorization", f"Bearer {key}"),
    ]
    return pairs


class Replayer:
    def __init__(
        self,
        store: Store,
        replay_store: ReplayStore,
        recorder: WriterProcess,
        proxy: Proxy,
        providers: dict[str, Provider],
        key: SecretKey | None,
    ) -> None:
        self.store = store
        self.replay_store = replay_store
        self.proxy = proxy
        self.providers = providers
        self._key = key
        self._models: tuple[float, list[str]] | None = None
        self.recorder = recorder

    # -- keys -----------------------------------------------------------------------------------

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def key(self, given: Any = None) -> SecretKey:
        """The key for one replay: the one given in the request, else the gateway's."""
        if given is not None:
            if not isinstance(given, str) or not given.strip():
                raise ReplayError(400, "api_key must be a non-empty string")
            return SecretKey(given.strip())
        if self._key is None:
            raise ReplayError(
                400,
                "no API key to replay with: set AGENTOPS_REPLAY_API_KEY (or "
                "MISTRAL_API_KEY) in the gateway's environment, or send "
                '"api_key" in the request body (used for this replay only, '
                "never stored)",
            )
        return self._key

    # -- reading and planning -------------------------------------------------------------

    async def load(self, exchange_id: int) -> Recorded | None:
        item = await self.store.get_exchange(exchange_id)
        if item is None:
            return None
        try:
            provider = provider_named(self.providers, item.provider)
        except UnknownProvider as exc:
            raise ReplayError(409, f"exchange {exchange_id} cannot be replayed: {exc}") from None
        return Recorded(item, parse_stored(provider, item), provider)

    async def original(self, exchange_id: int) -> Recorded:
        recorded = await self.load(exchange_id)
        if recorded is None:
            raise ReplayError(404, f"exchange {exchange_id} not found")
        return recorded

    def replay_of(self, recorded: Recorded) -> Replay:
        """The replay of the call's own provider, or a 409 when that provider has none."""
        if recorded.provider.replay is None:
            able = ", ".join(sorted(n for n, p in self.providers.items() if p.replay))
            raise ReplayError(
                409,
                f"exchange {recorded.id} cannot be replayed: only calls of {able} can be "
                f"replayed, this one went to {recorded.provider.name}",
            )
        return recorded.provider.replay

    async def plan(self, original: Recorded, overrides: Any) -> Plan:
        """The request a replay sends, or a ReplayError (409 not replayable, 400 overrides)."""
        replay = self.replay_of(original)
        path, request_json = original.item.path, original.parsed.request_json
        try:
            route = replay.route(original.item.to_json(), request_json)  # as the API shows it
        except NotReplayable as exc:
            raise ReplayError(409, f"exchange {original.id} cannot be replayed: {exc}") from None
        try:
            replay.validate(overrides, route)
        except BadOverrides as exc:
            raise ReplayError(400, str(exc)) from None
        history = None
        if replay.needs_history(path, route):
            history = await self.replay_store.conversation_history(original.id)
        try:
            body = replay.body(request_json, path, route, overrides, history)
        except NotReplayable as exc:
            raise ReplayError(409, f"exchange {original.id} cannot be replayed: {exc}") from None
        return Plan(route, body, original)

    # -- sending ------------------------------------------------------------------------------

    async def send(
        self,
        path: str,
        body: dict[str, Any],
        key: SecretKey,
        *,
        replay_of: Recorded,
        hints: dict[str, str],
    ) -> Recorded:
        """Send through the proxy's forwarding code and wait until the record is stored."""
        pairs = replay_headers(
            list(replay_of.item.request_headers), key.reveal(), bool(body.get("stream"))
        )
        exchange = await self.proxy.send(
            "POST", path, pairs, orjson.dumps(body), replay_of=replay_of.id, hints=hints
        )
        # Spooled (database down) or failed to build: either way, look in the store once more.
        with contextlib.suppress(TimeoutError, WriterError):
            await self.recorder.wait_settled(exchange.id, STORED_WAIT_SECONDS)
        recorded = await self.load(exchange.id)
        if recorded is None:
            raise ReplayError(
                503,
                f"the replay was sent (exchange {exchange.id}) but is not "
                "stored yet: is the database down? See /healthz",
            )
        return recorded

    async def replay(
        self, exchange_id: int, overrides: Any, key: SecretKey, tags: dict[str, str] | None = None
    ) -> tuple[Recorded, dict[str, Any]]:
        """Replay one exchange into a run of its own; returns it with its stored diff."""
        original = await self.original(exchange_id)
        plan = await self.plan(original, overrides if overrides is not None else {})
        tag_text = ",".join(
            f"{k}={v}" for k, v in {"replay_of": exchange_id, **(tags or {})}.items()
        )
        replayed = await self.send(
            plan.path, plan.body, key, replay_of=original, hints={"tags": tag_text}
        )
        return replayed, await self.diff(original, replayed, save=True)

    async def diff(
        self, a: Recorded, b: Recorded, *, save: bool, run_id: int | None = None
    ) -> dict[str, Any]:
        computed = await asyncio.to_thread(diffs.compare, a.side(), b.side())
        if not save:
            return {"id": None, **computed}
        return await self.replay_store.save_diff(computed, run_id)

    # -- the model picker -------------------------------------------------------------------------

    async def models(self) -> list[str]:
        """Model ids the upstream offers (its /v1/models, with the replay key; cached), or []
        when there is no key or it cannot be asked."""
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < MODELS_TTL_SECONDS:
            return self._models[1]
        if self._key is None:
            return []
        try:
            async with self.proxy.session.get(
                f"{self.proxy.upstream}/v1/models",
                allow_redirects=False,
                headers={"Authorization": f"Bearer {self._key.reveal()}"},
                skip_auto_headers=("Accept-Encoding",),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    return []
                data = orjson.loads(raw).get("data") or []
        except (
            aiohttp.ClientError,
            OSError,
            TimeoutError,
            orjson.JSONDecodeError,
            AttributeError,
        ) as exc:
            log.info("could not list the upstream's models: %s", type(exc).__name__)
            return []
        models = sorted(
            {m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}
        )
        self._models = (now, models)
        return models
