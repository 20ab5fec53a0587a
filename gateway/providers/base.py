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


class Provider(Protocol):
    """Parses one exchange of a vendor's API."""

    name: str

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
