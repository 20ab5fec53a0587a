"""How a recorded Mistral call is sent again: which calls can be, which overrides each
endpoint accepts, and how the new body is built (Conversations included).

Kept beside mistral.py (which reads recorded calls) because it is the same vendor knowledge,
used the other way round; the key sets follow /work/shared/mistral/openapi.yaml. The
provider's `replay` is a `MistralReplay`, the `Replay` interface over these functions.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.providers.base import BadOverrides, History, NotReplayable
from gateway.providers.mistral_paths import conversation_path


def _keys(text: str) -> frozenset[str]:
    return frozenset(text.split())


COMPLETION_ARGS = _keys(
    "frequency_penalty max_tokens prediction presence_penalty random_seed "
    "reasoning_effort response_format stop temperature tool_choice top_p"
)
CHAT = _keys(
    "model messages stream temperature top_p max_tokens stop random_seed "
    "presence_penalty frequency_penalty n response_format tools tool_choice "
    "parallel_tool_calls prediction reasoning_effort prompt_mode metadata guardrails "
    "prompt_cache_key service_tier safe_prompt"
)
CONVERSATION_START = _keys(
    "inputs stream store handoff_execution instructions tools "
    "completion_args name description metadata agent_id agent_version "
    "model guardrails"
)
CONVERSATION_APPEND = _keys(
    "inputs stream store handoff_execution completion_args tool_confirmations"
)
# Replayable routes: path -> (endpoint, accepted keys, required keys).
ROUTES: dict[str, tuple[str, frozenset[str], tuple[str, ...]]] = {
    "/v1/chat/completions": ("chat", CHAT, ("model", "messages")),
    "/v1/agents/completions": (
        "agents",
        (CHAT - {"model", "temperature", "top_p", "safe_prompt"}) | {"agent_id"},
        ("agent_id", "messages"),
    ),
    "/v1/fim/completions": (
        "fim",
        _keys(
            "model prompt suffix temperature top_p max_tokens min_tokens stop random_seed stream "
            "metadata prompt_cache_key"
        ),
        ("model", "prompt"),
    ),
    "/v1/embeddings": (
        "embeddings",
        _keys("model input output_dimension output_dtype encoding_format metadata"),
        ("model", "input"),
    ),
    "/v1/moderations": ("moderations", _keys("model input metadata"), ("model", "input")),
    "/v1/classifications": ("moderations", _keys("model input metadata"), ("model", "input")),
    "/v1/chat/moderations": ("moderations", _keys("model input"), ("model", "input")),
    "/v1/chat/classifications": ("moderations", _keys("model input"), ("model", "input")),
    "/v1/ocr": (
        "ocr",
        _keys(
            "model document pages include_image_base64 image_limit image_min_size "
            "bbox_annotation_format document_annotation_format document_annotation_prompt "
            "table_format extract_header extract_footer include_blocks "
            "confidence_scores_granularity"
        ),
        ("model", "document"),
    ),
    # Conversations: every replay is a start (an append or restart starts afresh).
    "/v1/conversations": ("conversations", CONVERSATION_START | COMPLETION_ARGS, ("inputs",)),
}
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
# Fields an input entry may carry, per type (the spec's entries forbid anything else); ids and
# timestamps are left out: they belong to the original conversation.
ENTRY_FIELDS = {
    "message.input": ("role", "content", "prefix"),
    "message.output": ("role", "content", "agent_id", "model"),
    "function.call": ("tool_call_id", "name", "arguments"),
    "function.result": ("tool_call_id", "result"),
    "tool.execution": ("name", "arguments", "info"),
    "agent.handoff": (
        "previous_agent_id",
        "previous_agent_name",
        "next_agent_id",
        "next_agent_name",
    ),
}


def route_of(path: str) -> str:
    """The replay route of a recorded path: exact routes, or any conversation operation."""
    if path in ROUTES:
        return path
    op, cid = (
        conversation_path("POST", path) if path.startswith("/v1/conversations/") else (None, None)
    )
    if op in ("append", "restart") and cid and CONVERSATION_ID.fullmatch(cid):
        return "/v1/conversations"
    raise NotReplayable(
        f"{path} is not a Mistral API route that can be replayed "
        f"(replayable: {', '.join(sorted(ROUTES))} and conversation appends "
        "and restarts)"
    )


def check(item: dict[str, Any], request_json: Any) -> str:
    """Raise NotReplayable saying why, else return the route to send the replay to."""
    if item.get("omitted"):
        raise NotReplayable("its bodies were not recorded (X-AgentOps-Omit: bodies)")
    if item.get("truncated"):
        raise NotReplayable(
            "its recorded body was truncated at --max-body-bytes, so the "
            "original request is not known in full"
        )
    headers = {k.lower(): v for k, v in item.get("request_headers") or []}
    if headers.get("content-type", "").lower().startswith("multipart/"):
        raise NotReplayable("it is a multipart upload; uploads are not replayed")
    if item.get("method") != "POST":
        raise NotReplayable(
            f"it is a {item.get('method')} request; only POST calls that "
            "generate something are replayed"
        )
    route = route_of(item.get("path") or "")
    if item.get("request_body_encoding") != "json" or not isinstance(request_json, dict):
        raise NotReplayable("its request body is not a JSON object")
    return route


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TYPE_CHECKS: dict[str, tuple[Any, str]] = {
    "model": (lambda v: isinstance(v, str) and v.strip(), "a model name"),
    "agent_id": (lambda v: isinstance(v, str) and v.strip(), "an agent id"),
    "temperature": (lambda v: _number(v) and 0 <= v <= 1.5, "a number from 0 to 1.5"),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "a number above 0, at most 1"),
    "max_tokens": (lambda v: _integer(v) and v >= 0, "an integer, 0 or more"),
    "random_seed": (lambda v: _integer(v) and v >= 0, "an integer, 0 or more"),
    "n": (lambda v: _integer(v) and v >= 1, "an integer, 1 or more"),
    "stream": (lambda v: isinstance(v, bool), "true or false"),
    "messages": (
        lambda v: isinstance(v, list) and v and all(isinstance(m, dict) for m in v),
        "a non-empty list of message objects",
    ),
    "tools": (lambda v: isinstance(v, list), "a list of tools"),
    "stop": (
        lambda v: (
            isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
        ),
        "a string or a list of strings",
    ),
    "inputs": (lambda v: isinstance(v, str | list), "a string or a list of entries"),
    "completion_args": (lambda v: isinstance(v, dict), "an object"),
}


def validate(overrides: Any, route: str) -> None:
    """Every override must be a field the endpoint accepts, of the right type."""
    if not isinstance(overrides, dict):
        raise BadOverrides('overrides must be a JSON object, e.g. {"temperature": 0}')
    _, accepted, required = ROUTES[route]
    unknown = sorted(k for k in overrides if k not in accepted)
    if unknown:
        raise BadOverrides(
            f"overrides: {', '.join(unknown)} not accepted by {route} "
            f"(it accepts {', '.join(sorted(accepted))})"
        )
    for key, value in overrides.items():
        if value is None:
            if key in required:
                raise BadOverrides(f"overrides: {key} cannot be removed, {route} requires it")
            continue
        check_value, expected = TYPE_CHECKS.get(key, (None, ""))
        if check_value is not None and not check_value(value):
            raise BadOverrides(f"overrides: {key} must be {expected}, got {value!r}")
    if route == "/v1/conversations" and isinstance(overrides.get("completion_args"), dict):
        validate({k: v for k, v in overrides["completion_args"].items()}, "/v1/conversations")
        wrong = sorted(k for k in overrides["completion_args"] if k not in COMPLETION_ARGS)
        if wrong:
            raise BadOverrides(f"overrides: completion_args.{', '.join(wrong)} not accepted")


def merge(body: dict[str, Any], overrides: dict[str, Any], route: str) -> dict[str, Any]:
    """Top-level merge, key by key; null removes a key. For the Conversations API the
    sampling fields go into completion_args (merged the same way)."""
    out = dict(body)
    if route == "/v1/conversations":
        args = dict(out.get("completion_args") or {})
        for key, value in overrides.items():
            if key in COMPLETION_ARGS:
                _put(args, key, value)
            elif key == "completion_args" and isinstance(value, dict):
                for inner, inner_value in value.items():
                    _put(args, inner, inner_value)
            else:
                _put(out, key, value)
        if args:
            out["completion_args"] = args
        else:
            out.pop("completion_args", None)
        return out
    for key, value in overrides.items():
        _put(out, key, value)
    return out


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


def input_entries(entries: list[Any]) -> list[dict[str, Any]]:
    """Recorded entries as inputs of a new conversation (only the fields the spec allows)."""
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kind = entry.get("type") or ("message.input" if "role" in entry else None)
        fields = ENTRY_FIELDS.get(kind or "")
        if fields is None:
            continue
        clean = {"type": kind, **{f: entry[f] for f in fields if entry.get(f) is not None}}
        if kind == "message.output" and not isinstance(clean.get("content"), str | list):
            clean["content"] = ""
        out.append(clean)
    return out


def conversation_start(
    original: dict[str, Any], path: str, start: dict[str, Any] | None, history: list[Any] | None
) -> dict[str, Any]:
    """The start request that replays a conversation call. A start is itself; an append or
    restart becomes a new conversation holding the recorded history plus its own inputs, with
    the model, agent, instructions and tools of the conversation's recorded start."""
    if path == "/v1/conversations":
        return dict(original)
    if start is None or history is None:
        raise NotReplayable(
            "the conversation's start or history was not recorded, so an "
            "append to it cannot be replayed"
        )
    body = {k: v for k, v in start.items() if k in CONVERSATION_START and k != "inputs"}
    for key in ("stream", "store", "handoff_execution"):
        if key in original:
            body[key] = original[key]
    if isinstance(original.get("completion_args"), dict):
        body["completion_args"] = {
            **(body.get("completion_args") or {}),
            **original["completion_args"],
        }
    new_inputs = original.get("inputs")
    if isinstance(new_inputs, str):
        new_inputs = [{"type": "message.input", "role": "user", "content": new_inputs}]
    body["inputs"] = input_entries(list(history) + list(new_inputs or []))
    return body


def append_body(
    recorded: dict[str, Any], overrides: dict[str, Any], inputs: list[Any]
) -> dict[str, Any]:
    """A later step of a replayed conversation run: the recorded append with the replay's
    inputs; of the overrides only the sampling fields apply (the rest was set at start)."""
    body = {k: v for k, v in recorded.items() if k in CONVERSATION_APPEND}
    body["inputs"] = inputs
    sampling = {k: v for k, v in overrides.items() if k in COMPLETION_ARGS}
    if isinstance(overrides.get("completion_args"), dict):
        sampling.update(overrides["completion_args"])
    if "stream" in overrides:
        body["stream"] = overrides["stream"]
    return merge(body, sampling, "/v1/conversations")


def remap_tool_results(items: list[Any], id_map: dict[str, str]) -> list[Any]:
    """Tool results (chat `tool` messages, conversation `function.result` entries) re-addressed
    to the tool_call_ids the replay's own response used."""
    out = []
    for item in items:
        if isinstance(item, dict) and item.get("tool_call_id") in id_map:
            item = {**item, "tool_call_id": id_map[item["tool_call_id"]]}
        out.append(item)
    return out


class MistralReplay:
    """The `Replay` of Mistral calls (see gateway/providers/base.py)."""

    def route(self, item: dict[str, Any], request_json: Any) -> str:
        return check(item, request_json)

    def validate(self, overrides: Any, route: str) -> None:
        validate(overrides, route)

    def needs_history(self, path: str, route: str) -> bool:
        """A conversation append or restart is replayed as a new conversation: it needs the
        recorded start and the entries before it."""
        return route == "/v1/conversations" and path != route

    def body(
        self,
        original: dict[str, Any],
        path: str,
        route: str,
        overrides: dict[str, Any],
        history: History | None,
    ) -> dict[str, Any]:
        if route == "/v1/conversations":
            start, entries = history or (None, None)
            original = conversation_start(original, path, start, entries)
        return merge(original, overrides, route)

    def append_path(self, conversation_id: str) -> str | None:
        if not CONVERSATION_ID.fullmatch(conversation_id):
            return None
        return f"/v1/conversations/{conversation_id}"

    def append_body(
        self, recorded: dict[str, Any], overrides: dict[str, Any], id_map: dict[str, str]
    ) -> dict[str, Any]:
        inputs = recorded.get("inputs")
        if isinstance(inputs, str):
            inputs = [{"type": "message.input", "role": "user", "content": inputs}]
        return append_body(recorded, overrides, remap_tool_results(list(inputs or []), id_map))

    def chat_body(
        self, recorded: dict[str, Any], path: str, overrides: dict[str, Any], messages: list[Any]
    ) -> dict[str, Any]:
        body = merge(recorded, {k: v for k, v in overrides.items() if k != "messages"}, path)
        body["messages"] = messages
        return body

    def remap_tool_results(self, items: list[Any], id_map: dict[str, str]) -> list[Any]:
        return remap_tool_results(items, id_map)
