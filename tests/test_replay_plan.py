"""Replay planning through the provider: `Replayer.plan` asks the call's own provider's
`replay` (the Mistral one, or none for ElevenLabs) and turns its refusals into 409 and 400.
No gateway: a fake replay store answers the conversation history."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.providers import make_providers
from gateway.providers.base import Provider
from gateway.replay.replayer import Recorded, Replayer, ReplayError
from gateway.replay.run import RunReplayer
from gateway.settings import Settings
from gateway.store.records import StoredExchange
from gateway.store.stored import parse_stored
from tests.rows import exchange_row

PROVIDERS = make_providers(Settings())
START = {"model": "mistral-small-latest", "inputs": "first", "instructions": "be brief"}
HISTORY = [
    {"type": "message.input", "role": "user", "content": "first", "id": "e1"},
    {"type": "message.output", "role": "assistant", "content": "ok", "id": "e2"},
]


class FakeReplayStore:
    """Answers what `ReplayStore.conversation_history` would, and counts the questions."""

    def __init__(self, start: Any = None, history: list[Any] | None = None) -> None:
        self.answer = (start, history)
        self.asked: list[int] = []

    async def conversation_history(self, exchange_id: int) -> tuple[Any, list[Any] | None]:
        self.asked.append(exchange_id)
        return self.answer


def replayer(replay_store: FakeReplayStore | None = None) -> Replayer:
    store = replay_store or FakeReplayStore()
    return Replayer(None, store, None, None, PROVIDERS, None)  # type: ignore[arg-type]


def recorded(
    body: Any,
    path: str = "/v1/chat/completions",
    provider: str = "mistral",
    method: str = "POST",
    **item: Any,
) -> Recorded:
    """A stored call as `Replayer.load` gives it: its row, parsed by its own provider."""
    body_text = orjson.dumps(body).decode()
    row = exchange_row(
        id=7,
        provider=provider,
        method=method,
        path=path,
        client_path=path,
        request_body=body_text,
        response_body=None,
        response_body_encoding="none",
        **item,
    )
    chosen: Provider = PROVIDERS[provider]
    parsed = parse_stored(chosen, StoredExchange.from_row(row))
    row["endpoint"] = parsed.endpoint
    return Recorded(StoredExchange.from_row(row), parsed, chosen)


CHAT = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}


def test_each_provider_says_whether_it_replays():
    assert PROVIDERS["mistral"].replay is not None
    assert PROVIDERS["elevenlabs"].replay is None


async def test_a_chat_call_is_planned_by_its_provider():
    plan = await replayer().plan(recorded(CHAT), {"temperature": 0, "model": "mistral-large"})
    assert plan.path == "/v1/chat/completions"
    assert plan.body == {**CHAT, "temperature": 0, "model": "mistral-large"}


async def test_a_provider_without_replay_is_a_clear_409():
    tts = recorded({"text": "Hello"}, path="/v1/text-to-speech/voice1", provider="elevenlabs")
    with pytest.raises(ReplayError) as info:
        await replayer().plan(tts, {})
    assert info.value.status == 409
    assert info.value.message == (
        "exchange 7 cannot be replayed: only calls of mistral can be replayed, "
        "this one went to elevenlabs"
    )


@pytest.mark.parametrize(
    ("call", "overrides", "status", "words"),
    [
        (recorded(CHAT, method="GET"), {}, 409, "it is a GET request"),
        (recorded(CHAT, omitted=True), {}, 409, "bodies were not recorded"),
        (recorded(CHAT, path="/v1/models"), {}, 409, "not a Mistral API route"),
        (recorded(CHAT), {"temperature": "hot"}, 400, "temperature must be a number"),
        (recorded(CHAT), {"inputs": "x"}, 400, "inputs not accepted by /v1/chat/completions"),
        (recorded(CHAT), [1], 400, "overrides must be a JSON object"),
    ],
)
async def test_refusals_keep_their_status(
    call: Recorded, overrides: Any, status: int, words: str
) -> None:
    with pytest.raises(ReplayError) as info:
        await replayer().plan(call, overrides)
    assert info.value.status == status and words in info.value.message


async def test_a_conversation_start_needs_no_history():
    store = FakeReplayStore()
    plan = await replayer(store).plan(recorded(START, path="/v1/conversations"), {"top_p": 0.5})
    assert plan.body == {**START, "completion_args": {"top_p": 0.5}} and store.asked == []


async def test_an_append_is_replayed_as_a_new_conversation_from_its_history():
    store = FakeReplayStore(START, HISTORY)
    append = recorded({"inputs": "second", "stream": False}, path="/v1/conversations/conv_1")
    plan = await replayer(store).plan(append, {"temperature": 0})
    assert store.asked == [7] and plan.path == "/v1/conversations"
    assert plan.body == {
        "instructions": "be brief",
        "model": "mistral-small-latest",
        "stream": False,
        "inputs": [
            {"type": "message.input", "role": "user", "content": "first"},
            {"type": "message.output", "role": "assistant", "content": "ok"},
            {"type": "message.input", "role": "user", "content": "second"},
        ],
        "completion_args": {"temperature": 0},
    }
    with pytest.raises(ReplayError) as info:
        await replayer(FakeReplayStore()).plan(append, {})
    assert info.value.status == 409 and "start or history was not recorded" in info.value.message


def test_later_run_steps_are_built_by_the_provider():
    runs = RunReplayer(replayer(), None, None)  # type: ignore[arg-type]
    replied = {"role": "assistant", "content": "", "tool_calls": [{"id": "old", "type": "f"}]}
    first = recorded({**CHAT, "tools": []})
    second = recorded(
        {
            **CHAT,
            "tools": [],
            "messages": [*CHAT["messages"], replied, {"role": "tool", "tool_call_id": "old"}],
        }
    )
    last = recorded(CHAT)
    last.parsed.message_out = {"role": "assistant", "content": "again", "tool_calls": None}
    path, body = runs._next(first, second, last, {"temperature": 0, "messages": []}, {"old": "new"})
    assert path == "/v1/chat/completions"
    assert body == {
        "model": "mistral-small-latest",
        "tools": [],
        "temperature": 0,
        "messages": [
            *CHAT["messages"],
            {"role": "assistant", "content": "again"},
            {"role": "tool", "tool_call_id": "new"},
        ],
    }
    conversation = recorded({"inputs": "more", "store": True}, path="/v1/conversations/conv_1")
    last = recorded(START, path="/v1/conversations")
    last.parsed.conversation_id = "conv_new"
    path, body = runs._next(last, conversation, last, {"temperature": 0, "model": "x"}, {})
    assert path == "/v1/conversations/conv_new"
    assert body == {
        "store": True,
        "inputs": [{"type": "message.input", "role": "user", "content": "more"}],
        "completion_args": {"temperature": 0},
    }
    last.parsed.conversation_id = "../elsewhere"
    with pytest.raises(ReplayError) as info:
        runs._next(last, conversation, last, {}, {})
    assert info.value.status == 502
