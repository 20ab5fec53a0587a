"""Dataset items from what was recorded (an exchange, a run, the exchanges a search selects)
or from what a user gives (JSON objects), checked into one shape:

    {"input": {"messages": [...], "tools": [...], "parameters": {...}},
     "expected_output": <the reply message, any JSON, or null>,
     "metadata": {...}}

An exchange gives its request's messages, tools and other parameters (model, temperature,
...) and its reply as the expected output (none when it failed). A run gives its task (the
first call's input) and its final answer (the last call's reply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.capture.exchange import is_id
from gateway.errors import NotFound, UserError
from gateway.export.finetune import message
from gateway.providers import UnknownProvider
from gateway.providers.base import Parsed, Provider
from gateway.store.datasets import NewItem
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.query import EXCHANGE_FILTER_FIELDS, exchange_filter, parse_int
from gateway.store.records import StoredExchange
from gateway.store.runs import RunStore
from gateway.store.stored import parse_stored, stored_body

MAX_ITEMS = 1000
FILTER_FIELDS = EXCHANGE_FILTER_FIELDS | {"limit"}
# Request fields that are how the call was sent, not what it asked: left out of parameters.
TRANSPORT = {"messages", "tools", "stream", "stream_options", "inputs"}
ITEM_FIELDS = {"input", "expected_output", "metadata"}

Providers = Callable[[str], Provider]


class ItemSource:
    """Builds items from the store; the API, the pages and the command line share it."""

    def __init__(self, store: Store, runs: RunStore, providers: Providers) -> None:
        self.store = store
        self.runs = runs
        self.providers = providers

    async def parsed(self, exchange_id: int) -> tuple[StoredExchange, Parsed]:
        item = await self.store.get_exchange(exchange_id)
        if item is None:
            raise NotFound(f"exchange {exchange_id} not found")
        if item.omitted or not stored_body(item, "request"):
            raise UserError(f"exchange {exchange_id} was recorded without its request body")
        try:
            provider = self.providers(item.provider)
        except UnknownProvider:
            raise UserError(f"exchange {exchange_id}: unknown provider {item.provider!r}") from None
        return item, parse_stored(provider, item)

    async def from_exchange(self, exchange_id: int) -> NewItem:
        item, parsed = await self.parsed(exchange_id)
        return NewItem(
            input=call_input(exchange_id, parsed),
            expected_output=reply(parsed),
            metadata=exchange_metadata(item),
            exchange_id=exchange_id,
            run_id=item.run_id,
        )

    async def from_exchanges(self, ids: list[int]) -> list[NewItem]:
        return [await self.from_exchange(i) for i in ids]

    async def from_run(self, run_id: int) -> NewItem:
        run = (await self.runs.names([run_id])).get(run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        steps, _ = await self.store.list_exchanges(ExchangeFilter(run=run_id), MAX_ITEMS, None)
        calls = sorted(s.id for s in steps if s.endpoint in ("chat", "agents", "conversations"))
        if not calls:
            raise UserError(f"run {run_id} has no chat, agents or conversations call")
        first_item, first = await self.parsed(calls[0])
        last = first if len(calls) == 1 else (await self.parsed(calls[-1]))[1]
        return NewItem(
            input=call_input(calls[0], first),
            expected_output=reply(last),
            metadata={
                "run_id": str(run_id),
                "run_name": run["name"],
                "agent": run["agent_id"],
                "source": run["source"],
                "steps": len(calls),
                "model": first_item.model,
            },
            exchange_id=calls[0],
            run_id=run_id,
        )

    async def from_runs(self, ids: list[int]) -> list[NewItem]:
        return [await self.from_run(i) for i in ids]

    async def from_filter(self, value: Any) -> list[NewItem]:
        """The exchanges a search selects (the /api/exchanges parameters, newest first, up to
        `limit`, default 50), oldest first in the dataset; replays left out."""
        if not isinstance(value, dict):
            raise UserError('filter must be an object of /api/exchanges parameters: {"q": "x"}')
        unknown = sorted(set(value) - FILTER_FIELDS)
        if unknown:
            raise UserError(
                f"filter: unknown parameter(s) {', '.join(unknown)} "
                f"(accepted: {', '.join(sorted(FILTER_FIELDS))})"
            )
        query = {k: str(v) for k, v in value.items() if v not in (None, "")}
        limit = parse_int("filter.limit", query.get("limit"), low=1, high=MAX_ITEMS) or 50
        found, _ = await self.store.list_exchanges(exchange_filter(query), limit, None)
        ids = sorted(
            s.id for s in found if s.replay_of is None and not s.omitted and s.endpoint != "other"
        )
        if not ids:
            raise UserError("the filter selects no recorded calls")
        return await self.from_exchanges(ids)


def call_input(exchange_id: int, parsed: Parsed) -> dict[str, Any]:
    body = parsed.request_json if isinstance(parsed.request_json, dict) else None
    messages = parsed.messages_in if parsed.messages_in is not None else parsed.entries_in
    if body is None or messages is None:
        raise UserError(
            f"exchange {exchange_id} has no input messages to keep "
            f"(a {parsed.endpoint} call, or a body that is not JSON)"
        )
    out: dict[str, Any] = {"messages": messages}
    if isinstance(body.get("tools"), list) and body["tools"]:
        out["tools"] = body["tools"]
    parameters = {k: v for k, v in body.items() if k not in TRANSPORT}
    if parameters:
        out["parameters"] = parameters
    return out


def reply(parsed: Parsed) -> Any:
    """The reply as an assistant message (Mistral's fine-tuning shape), else its text."""
    if parsed.message_out is not None:
        return message(parsed.message_out)
    return parsed.output_text


def exchange_metadata(item: StoredExchange) -> dict[str, Any]:
    return {
        "exchange_id": str(item.id),
        "run_id": None if item.run_id is None else str(item.run_id),
        "model": item.model,
        "status": item.status,
        "endpoint": item.endpoint,
    }


def parse_ids(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not value or len(value) > MAX_ITEMS:
        raise UserError(f"{what} must be a list of 1 to {MAX_ITEMS} ids")
    ids = []
    for v in value:
        text = str(v) if isinstance(v, int | str) and not isinstance(v, bool) else ""
        if not is_id(text):
            raise UserError(f"{what}: not an id: {v!r}")
        ids.append(int(text))
    return list(dict.fromkeys(ids))  # each once, in the order given


def given_item(value: Any, where: str) -> NewItem:
    """One item as a user wrote it: `input` an object with `messages` (a list), optional
    `tools` (a list) and `parameters` (an object); `metadata` an object."""
    if not isinstance(value, dict):
        raise UserError(f"{where}: an item must be an object with input, expected_output, metadata")
    unknown = sorted(set(value) - ITEM_FIELDS)
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}")
    given = value.get("input")
    if not isinstance(given, dict) or not isinstance(given.get("messages"), list):
        raise UserError(f'{where}: input must be an object with "messages" (a list)')
    if "tools" in given and not isinstance(given["tools"], list):
        raise UserError(f"{where}: input.tools must be a list")
    if "parameters" in given and not isinstance(given["parameters"], dict):
        raise UserError(f"{where}: input.parameters must be an object")
    extra = sorted(set(given) - {"messages", "tools", "parameters"})
    if extra:
        raise UserError(f"{where}: input has unknown field(s) {', '.join(extra)}")
    metadata = value.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise UserError(f"{where}: metadata must be an object")
    return NewItem(input=given, expected_output=value.get("expected_output"), metadata=metadata)


def given_items(value: Any) -> list[NewItem]:
    if not isinstance(value, list) or not value or len(value) > MAX_ITEMS:
        raise UserError(f"items must be a list of 1 to {MAX_ITEMS} items")
    return [given_item(v, f"items[{n}]") for n, v in enumerate(value)]
