"""The provider interface: bytes of one call in, the facts we index out.

Everything the gateway knows about a vendor's API shape lives behind this interface, so a
second upstream (ElevenLabs, another LLM vendor) is one more implementation, not edits
scattered through the proxy, writer and UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Parsed:
    """What a provider extracted from one exchange. Unknown facts stay None."""

    endpoint: str = "other"  # chat, fim, agents, embeddings, conversations, files, ocr, ...
    request_model: str | None = None
    model: str | None = None  # the response's model, else the request's
    streamed: bool = False
    request_json: Any = None  # the parsed request body, when it is JSON
    response_json: Any = None  # the parsed response body, when it is JSON (not for streams)
    parse_error: bool = False  # a body that should be JSON is not
    response_unparsed: bool = False  # a successful answer that should be JSON is not: a failure
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    connector_tokens: int | None = None
    finish_reason: str | None = None
    output_text: str | None = None
    first_content_chunk: int | None = None  # index of the chunk that carried the first token
    units: dict[str, float] = field(default_factory=dict)  # pages, audio_seconds, characters
    # A cost the provider knows itself (a vendor billing in credits at a configured rate);
    # when None, the price table prices the call from the model and the counts above.
    cost_usd: float | None = None
    # What the cost is for: "llm" (a model call), "tool" (a tool vendor: ElevenLabs) or
    # "fine-tuning" (a training job; priced by the price table's fine_tuning section).
    category: str = "llm"
    # A fine-tuning job's answer: whether it is the job's creation (the call the job's cost
    # is put on) and its trained tokens, once the job reports them.
    job_created: bool = False
    trained_tokens: int | None = None
    # The response body to store in place of the one received, when storing it as it came is
    # wrong (base64 audio inside JSON, replaced by its size and hash). None: store it as is.
    stored_response: bytes | None = None
    conversation_id: str | None = None  # the response's id, else the one in the path
    agent_id: str | None = None
    # Message-level facts (chat, agents, fim, conversations); see gateway/providers/mistral.py.
    messages_in: list[dict] | None = None  # chat/agents request `messages` (dict items only)
    message_out: dict | None = None  # {"role", "content", "tool_calls"}; streams reassembled
    entries_in: list[dict] | None = None  # conversations request `inputs` as a list of entries
    entries_out: list[dict] | None = None  # conversations `outputs`; streams reassembled
    conversation_op: str | None = None  # start, append, restart, history, get
    path_conversation_id: str | None = None  # the {id} in /v1/conversations/{id}/...
    request_params: dict | None = None  # request config without the bulky keys, + tool names


class NotReplayable(Exception):
    """The original cannot be sent again; the message says why (an HTTP 409)."""


class BadOverrides(ValueError):
    """An override the endpoint does not accept, or of the wrong type (an HTTP 400)."""


# A conversation's recorded start request and the entries that came before a call, as
# `ReplayStore.conversation_history` reads them (either None when not recorded).
History = tuple[Any, list[Any] | None]


class Replay(Protocol):
    """How a provider's recorded calls are sent again: which can be, which overrides each
    route accepts, how bodies are rebuilt. Methods raise NotReplayable or BadOverrides with a
    message for the user; replay (gateway/replay/replayer.py, run.py) only orchestrates."""

    def route(self, item: dict[str, Any], request_json: Any) -> str:
        """The path a replay of this stored call is sent to; NotReplayable says why none."""
        ...

    def validate(self, overrides: Any, route: str) -> None:
        """BadOverrides unless every override is a field `route` accepts, of the right type."""
        ...

    def needs_history(self, path: str, route: str) -> bool:
        """Whether the call continues a conversation, so `body` needs its recorded history."""
        ...

    def body(
        self,
        original: dict[str, Any],
        path: str,
        route: str,
        overrides: dict[str, Any],
        history: History | None,
    ) -> dict[str, Any]:
        """The body a replay sends: the original (rebuilt from `history` when it continued a
        conversation) with the overrides merged, null removing a key."""
        ...

    # A run, step by step: each later step continues the replay's own conversation or chat.

    def append_path(self, conversation_id: str) -> str | None:
        """The path that continues a replayed conversation; None for an id unfit for a path."""
        ...

    def append_body(
        self, recorded: dict[str, Any], overrides: dict[str, Any], id_map: dict[str, str]
    ) -> dict[str, Any]:
        """A later conversation step: the recorded inputs (tool results re-addressed by
        `id_map`) with the overrides that apply after the start."""
        ...

    def chat_body(
        self, recorded: dict[str, Any], path: str, overrides: dict[str, Any], messages: list[Any]
    ) -> dict[str, Any]:
        """A later chat step: the recorded request, the overrides but `messages`, and these
        messages."""
        ...

    def remap_tool_results(self, items: list[Any], id_map: dict[str, str]) -> list[Any]:
        """Tool results re-addressed to the tool call ids the replay's own response used."""
        ...


class Provider(Protocol):
    """Parses one exchange of a vendor's API (and, optionally, replays it)."""

    name: str
    genai_name: str  # gen_ai.provider.name in OpenTelemetry
    genai_operations: dict[str, str]  # endpoint kind -> gen_ai.operation.name

    @property
    def replay(self) -> Replay | None:
        """How this provider's calls are replayed; None when they cannot be."""
        ...

    def parse(
        self,
        method: str,
        path: str,
        request_headers: dict[str, str],
        request_body: bytes,
        status: int | None,
        response_headers: dict[str, str],
        response_chunks: list[bytes],
    ) -> Parsed:
        """Extract model, usage, output and timings hints.

        Header dicts have lower-cased names. `response_chunks` are already decoded
        (gzip removed), in arrival order. Must never raise on hostile or broken input.
        """
        ...

    def preview(self, request_json: Any) -> str | None:
        """The text a list of calls shows for one call (its last user message, say), from
        the parsed request body. Must never raise."""
        ...
