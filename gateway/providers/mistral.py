"""Mistral API shapes: one recorded exchange in, the facts the gateway indexes out.

Why this exists: the proxy forwards and records bytes without looking at them. Everything the
gateway knows about api.mistral.ai (which endpoint a path is, where the model and usage live,
how chat/FIM/agents chunks and conversation events stream, OCR pages, audio seconds) is kept
here, behind the `Provider` interface, so the proxy, writer and UI stay vendor-neutral.

It runs in the background writer, so it must be cheap (orjson, one join per body, a lazy SSE
parse) and must never raise: hostile or truncated input yields whatever could be read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import sseclient

from gateway.providers.base import Parsed, Replay
from gateway.providers.mistral_paths import FINE_TUNING_JOBS, conversation_path, endpoint_of
from gateway.providers.mistral_replay import MistralReplay

_COMPLETIONS = frozenset({"chat", "fim", "agents"})
_JSON_ENDPOINTS = _COMPLETIONS | {"embeddings", "conversations", "ocr", "moderations"}
_MULTIPART_MODEL = b'form-data; name="model"'
_MULTIPART_PURPOSE = b'form-data; name="purpose"'
# Request keys left out of `request_params`: content, not configuration.
_BULKY = frozenset({"messages", "inputs", "prompt", "suffix", "input", "tools", "documents"})
# Streamed conversation event type -> the entry type it builds, and that entry's plain fields.
_ENTRY_OF = {
    "message.output.delta": "message.output",
    "function.call.delta": "function.call",
    "tool.execution.started": "tool.execution",
    "tool.execution.delta": "tool.execution",
    "tool.execution.done": "tool.execution",
    "agent.handoff.started": "agent.handoff",
    "agent.handoff.done": "agent.handoff",
}
_ENTRY_FIELDS = {
    "message.output": ("role", "model", "agent_id"),
    "function.call": ("tool_call_id", "name"),
    "tool.execution": ("name",),
    "agent.handoff": (
        "previous_agent_id",
        "previous_agent_name",
        "next_agent_id",
        "next_agent_name",
    ),
}
# ... and the fields an entry gathers from pieces (or, for a tool, as sent).
_ENTRY_BODY = {
    "message.output": ("content",),
    "function.call": ("arguments",),
    "tool.execution": ("arguments", "info"),
    "agent.handoff": (),
}


def request_messages(request_json: Any) -> list | None:
    """The `messages` list of a chat/agents request body, else None."""
    if isinstance(request_json, dict):
        messages = request_json.get("messages")
        if isinstance(messages, list):
            return messages
    return None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int(v: Any) -> int | None:
    """A count (tokens, pages): an integer, never negative (a negative one from the wire
    would price a call below zero and take spend off a budget)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _text(content: Any) -> str | None:
    """Text of a message content: a string, one chunk, or a list of chunks (thinking excluded)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = (content,)
    elif not isinstance(content, list):
        return None
    parts = [
        c["text"]
        for c in content
        if isinstance(c, dict)
        and c.get("type", "text") == "text"
        and isinstance(c.get("text"), str)
    ]
    return "".join(parts) if parts else None


def _tool_names(tools: Any) -> list | None:
    """Function names of a request's tools, or the tool type for built-ins."""
    if not isinstance(tools, list):
        return None
    names = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            names.append(name)
        elif isinstance(tool.get("type"), str):
            names.append(tool["type"])
    return names or None


def _entries_in(inputs: Any) -> list[dict] | None:
    """Conversation `inputs` as entries: a string is one user message.input."""
    if isinstance(inputs, str):
        return [{"type": "message.input", "role": "user", "content": inputs}]
    if isinstance(inputs, dict):
        inputs = [inputs]
    elif not isinstance(inputs, list):
        return None
    out = []
    for entry in inputs:
        if isinstance(entry, dict):
            if "type" not in entry and "role" in entry:
                entry = {"type": "message.input", **entry}
            out.append(entry)
    return out


def _request_facts(p: Parsed, req: dict) -> None:
    """messages_in, entries_in and request_params of a chat/agents/fim/conversations body."""
    if p.endpoint in ("chat", "agents"):
        messages = req.get("messages")
        if isinstance(messages, list):
            p.messages_in = [m for m in messages if isinstance(m, dict)]
    elif p.endpoint == "conversations" and "inputs" in req:
        p.entries_in = _entries_in(req["inputs"])
    params = {k: v for k, v in req.items() if k not in _BULKY}
    if p.endpoint == "conversations":
        args = params.get("completion_args")
        if isinstance(args, dict):
            del params["completion_args"]
            for k, v in args.items():
                params.setdefault(k, v)
    names = _tool_names(req.get("tools"))
    if names:
        params["tools"] = names
    p.request_params = params


def _tool_call(call: dict) -> dict:
    fn = call.get("function")
    if not isinstance(fn, dict):
        fn = {}
    kind = call.get("type")
    return {
        "id": call.get("id"),
        "type": kind if isinstance(kind, str) else "function",
        "function": {"name": fn.get("name"), "arguments": fn.get("arguments")},
    }


def _message_out(message: Any) -> dict | None:
    if not isinstance(message, dict):
        return None
    calls = message.get("tool_calls")
    tool_calls = None
    if isinstance(calls, list):
        tool_calls = [_tool_call(c) for c in calls if isinstance(c, dict)] or None
    return {"role": "assistant", "content": message.get("content"), "tool_calls": tool_calls}


def _usage(p: Parsed, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    p.prompt_tokens = _int(usage.get("prompt_tokens"))
    p.completion_tokens = _int(usage.get("completion_tokens"))
    p.total_tokens = _int(usage.get("total_tokens"))
    if p.total_tokens is None and (p.prompt_tokens is not None or p.completion_tokens is not None):
        p.total_tokens = (p.prompt_tokens or 0) + (p.completion_tokens or 0)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        p.cached_tokens = _int(details.get("cached_tokens"))
    p.connector_tokens = _int(usage.get("connector_tokens"))
    seconds = usage.get("prompt_audio_seconds")
    if (
        isinstance(seconds, int | float)
        and not isinstance(seconds, bool)
        and math.isfinite(seconds)
        and seconds >= 0
    ):
        p.units["audio_seconds"] = float(seconds)


def _multipart_model(body: bytes, field: bytes = _MULTIPART_MODEL) -> str | None:
    at = body.find(field)
    if at < 0:
        return None
    start = body.find(b"\r\n\r\n", at)
    end = body.find(b"\r\n--", start + 4) if start >= 0 else -1
    if end < 0 or end - start > 260:
        return None
    return body[start + 4 : end].decode("utf-8", "replace").strip() or None


def _request(p: Parsed, headers: dict[str, str], body: bytes) -> None:
    ctype = headers.get("content-type", "").lower()
    if ctype.startswith("multipart/"):
        p.request_model = _multipart_model(body)
        if p.endpoint == "files" and _multipart_model(body, _MULTIPART_PURPOSE) == "fine-tune":
            p.category = "fine-tuning"  # a training file: free, but part of a job's work
        return
    head = body[:256].lstrip()[:1]
    if not head and not body.strip():
        return  # no body (a GET, or a POST without one) is never a parse error
    if not ("json" in ctype or head in (b"{", b"[") or p.endpoint in _JSON_ENDPOINTS):
        return
    try:
        p.request_json = orjson.loads(body)
    except orjson.JSONDecodeError:
        p.parse_error = True
        return
    if isinstance(p.request_json, dict):
        p.request_model = _str(p.request_json.get("model"))
        p.agent_id = _str(p.request_json.get("agent_id"))
        if p.endpoint in _COMPLETIONS or p.endpoint == "conversations":
            _request_facts(p, p.request_json)


def _response(p: Parsed, resp: dict) -> None:
    """Facts from a non-streamed 2xx/3xx JSON body."""
    p.model = _str(resp.get("model")) or p.model
    _usage(p, resp.get("usage"))
    if p.endpoint in _COMPLETIONS or "choices" in resp:
        _choices_response(p, resp)
        return
    facts = _RESPONSE_FACTS.get(p.endpoint)
    if facts is not None:
        facts(p, resp)


def _choices_response(p: Parsed, resp: dict) -> None:
    """Chat, FIM, agents (or any body with `choices`): the first choice's message."""
    choices = resp.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        return
    p.finish_reason = _str(choices[0].get("finish_reason"))
    message = choices[0].get("message")
    if isinstance(message, dict):
        p.output_text = _text(message.get("content"))
    if p.endpoint in _COMPLETIONS:
        p.message_out = _message_out(message)


def _conversation_response(p: Parsed, resp: dict) -> None:
    """Conversations: the output entries; text, agent and model from the last message."""
    p.conversation_id = _str(resp.get("conversation_id")) or p.conversation_id
    outputs = resp.get("outputs")
    if not isinstance(outputs, list):
        return
    p.entries_out = [e for e in outputs if isinstance(e, dict)]
    last = next((e for e in reversed(p.entries_out) if e.get("type") == "message.output"), None)
    if last is not None:
        p.output_text = _text(last.get("content"))
        p.agent_id = p.agent_id or _str(last.get("agent_id"))
        p.model = _str(resp.get("model")) or _str(last.get("model")) or p.model


def _ocr_response(p: Parsed, resp: dict) -> None:
    info = resp.get("usage_info")
    pages = _int(info.get("pages_processed")) if isinstance(info, dict) else None
    if pages is not None:
        p.units["pages"] = float(pages)


def _audio_response(p: Parsed, resp: dict) -> None:
    p.output_text = _str(resp.get("text"))


# Endpoint -> what its non-streamed body tells (bodies with `choices` go to _choices_response).
def _job_call(p: Parsed, method: str, path: str, status: int | None) -> None:
    """Fine-tuning jobs cost category `fine-tuning`; the job's creation carries its cost."""
    p.category = "fine-tuning"
    plain = path.split("?", 1)[0].rstrip("/")
    created = method.upper() == "POST" and plain == FINE_TUNING_JOBS
    p.job_created = created and status is not None and status < 400


def _job_response(p: Parsed, resp: dict) -> None:
    """A fine-tuning job (created, or looked at): its trained tokens once it reports them."""
    tokens = resp.get("trained_tokens")
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        p.trained_tokens = tokens


_RESPONSE_FACTS: dict[str, Callable[[Parsed, dict], None]] = {
    "fine_tuning": _job_response,
    "conversations": _conversation_response,
    "ocr": _ocr_response,
    "audio": _audio_response,
}


class _Acc:
    """What a stream parse gathered; applied to Parsed at the end."""

    __slots__ = (
        "agent_id",
        "by_id",
        "by_index",
        "call_at",
        "calls",
        "conv_id",
        "entries",
        "finish",
        "first",
        "model",
        "saw",
        "texts",
        "usage",
    )

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.saw = False
        self.model: str | None = None
        self.finish: str | None = None
        self.usage: Any = None
        self.first: int | None = None
        self.conv_id: str | None = None
        self.agent_id: str | None = None
        # tool calls of choice 0: [call, argument pieces]; call_at maps a delta's index to one
        self.calls: list[list] = []
        self.call_at: dict[int, list] = {}
        # conversation entries: [entry, text pieces]; looked up by entry id, else output_index
        self.entries: list[list] = []
        self.by_id: dict[str, list] = {}
        self.by_index: dict[tuple, list] = {}

    def message_out(self) -> dict | None:
        if not self.saw:
            return None
        calls = []
        for call, pieces in self.calls:
            if pieces:
                call["function"]["arguments"] = "".join(pieces)
            calls.append(call)
        return {"role": "assistant", "content": "".join(self.texts), "tool_calls": calls or None}

    def entries_out(self) -> list[dict] | None:
        out = []
        for entry, pieces in self.entries:
            if entry["type"] == "message.output":
                entry["content"] = "".join(pieces)
                entry["role"] = entry["role"] or "assistant"
            elif pieces:
                entry["arguments"] = "".join(pieces)
            out.append(entry)
        return out or None


def _feed(chunks: list[bytes], pos: list[int]) -> Iterator[bytes]:
    """Yield chunks to sseclient, recording in pos[0] the index of the last one yielded.

    Runs of chunks without a line break are joined first: sseclient grows its buffer with
    `bytes +=` per line, which is quadratic when one event is split into many tiny chunks.
    """
    pending: list[bytes] = []
    for i, chunk in enumerate(chunks):
        if 10 not in chunk and 13 not in chunk:  # no LF, no CR (int lookups are memchr)
            pending.append(chunk)
            continue
        if pending:
            pending.append(chunk)
            chunk = b"".join(pending)
            pending = []
        pos[0] = i
        yield chunk
    if pending:
        pos[0] = len(chunks) - 1
        yield b"".join(pending)


def _merge_calls(acc: _Acc, tool_calls: Any) -> None:
    """Merge streamed tool-call deltas by `index`: Mistral sends each call whole, OpenAI-style
    streams send the id and name first and the arguments in pieces."""
    if type(tool_calls) is not list:
        return
    for tc in tool_calls:
        if type(tc) is dict:
            _merge_call(acc, tc)


def _merge_call(acc: _Acc, tc: dict) -> None:
    index = tc.get("index")
    if type(index) is not int:
        index = None
    tid = tc.get("id") or None
    fn = tc.get("function")
    _fill_call(_call_slot(acc, index, tid, tc), tid, fn if type(fn) is dict else {})


def _call_slot(acc: _Acc, index: int | None, tid: Any, tc: dict) -> list:
    """The [call, argument pieces] a delta continues: the one at its index; without index nor
    id, the last call. A new non-empty id at a used index starts a new call (some servers give
    every parallel call index 0)."""
    slot = None
    if index is not None:
        slot = acc.call_at.get(index)
    elif acc.calls and tid is None:
        slot = acc.calls[-1]  # no index, no id: a continuation of the last call
    if slot is not None and tid is not None and slot[0]["id"] and slot[0]["id"] != tid:
        slot = None
    if slot is None:
        kind = tc.get("type")
        call = {
            "id": None,
            "type": kind if type(kind) is str else "function",
            "function": {"name": None, "arguments": None},
        }
        slot = [call, []]
        acc.calls.append(slot)
        if index is not None:
            acc.call_at[index] = slot
    return slot


def _fill_call(slot: list, tid: Any, fn: dict) -> None:
    """The first id and name win; string arguments are pieces, any other kept as sent."""
    call, pieces = slot
    if tid is not None and not call["id"]:
        call["id"] = tid
    name = fn.get("name")
    if name and not call["function"]["name"]:
        call["function"]["name"] = name
    args = fn.get("arguments")
    if type(args) is str:
        pieces.append(args)
    elif args is not None and not pieces:
        call["function"]["arguments"] = args  # not a string: kept as sent


def _on_entry(acc: _Acc, obj: dict, kind: str, etype: str) -> None:
    """One streamed conversation entry event, merged into its entry."""
    eid = obj.get("id")
    if type(eid) is not str or not eid:
        eid = None
    index = obj.get("output_index")
    key = (etype, index if type(index) is int else None)
    slot = _entry_slot(acc, eid, key, etype)
    if eid is not None:
        if slot[0]["id"] is None:
            slot[0]["id"] = eid
        acc.by_id.setdefault(eid, slot)
    acc.by_index[key] = slot
    _fill_entry(slot, obj, kind, etype)


def _entry_slot(acc: _Acc, eid: str | None, key: tuple, etype: str) -> list:
    """The [entry, text pieces] an event continues: the one with its id, else the last at its
    (type, output_index) unless that one has another id; a new entry when none is of its type."""
    slot = acc.by_id.get(eid) if eid is not None else None
    if slot is None:
        cand = acc.by_index.get(key)
        if cand is not None and (eid is None or cand[0]["id"] is None):
            slot = cand
    if slot is None or slot[0]["type"] != etype:
        entry = {"type": etype, "id": None}
        entry.update(dict.fromkeys(_ENTRY_FIELDS[etype]))
        entry.update(dict.fromkeys(_ENTRY_BODY[etype]))
        slot = [entry, []]
        acc.entries.append(slot)
    return slot


def _fill_entry(slot: list, obj: dict, kind: str, etype: str) -> None:
    """The first non-empty value of each plain field wins; text and arguments are pieces."""
    entry, pieces = slot
    for f in _ENTRY_FIELDS[etype]:
        v = obj.get(f)
        if v is not None and v != "" and entry[f] is None:
            entry[f] = v
    if etype == "message.output":
        text = _text(obj.get("content"))
        if text:
            pieces.append(text)
    elif etype != "agent.handoff":
        _fill_arguments(entry, pieces, obj, kind == "tool.execution.done")


def _fill_arguments(entry: dict, pieces: list, obj: dict, done: bool) -> None:
    """Function calls and tool executions: string arguments are pieces (a done event repeats
    them whole, so it counts only when no piece came), any other kept as sent; a tool's info."""
    args = obj.get("arguments")
    if type(args) is str:
        if not done or not pieces:
            pieces.append(args)
    elif args is not None and not pieces:
        entry["arguments"] = args
    info = obj.get("info")
    if entry["type"] == "tool.execution" and info is not None:
        entry["info"] = info


def _on_chunk(acc: _Acc, obj: dict, choices: Any) -> bool:
    """One chat/FIM/agents chunk; True when it carried content or a tool call. (Hot loop.)"""
    if acc.model is None:
        acc.model = _str(obj.get("model"))
    if "usage" in obj:
        acc.usage = obj["usage"]
    if type(choices) is not list:
        return False
    content = False
    for choice in choices:
        if type(choice) is not dict:
            continue
        first = choice.get("index", 0) in (0, None)
        finish = choice.get("finish_reason")
        if finish is not None and first and type(finish) is str:
            acc.finish = finish
        delta = choice.get("delta")
        if type(delta) is not dict:
            continue
        acc.saw = True
        text = delta.get("content")
        if type(text) is not str:
            text = _text(text)
        calls = delta.get("tool_calls")
        if calls and first:
            _merge_calls(acc, calls)
        if text:
            content = True
            if first:
                acc.texts.append(text)
        elif calls:
            content = True
    return content


def _on_event(acc: _Acc, obj: dict, kind: str) -> bool:
    """One typed event (conversations, transcriptions); True when it carried content."""
    etype = _ENTRY_OF.get(kind)
    if etype is not None:
        _on_entry(acc, obj, kind, etype)
    if kind in ("message.output.delta", "transcription.text.delta"):
        acc.saw = True
        delta = obj.get("content") if kind == "message.output.delta" else obj.get("text")
        text = _text(delta)
        acc.model = _str(obj.get("model")) or acc.model
        acc.agent_id = acc.agent_id or _str(obj.get("agent_id"))
        if text:
            acc.texts.append(text)
        return bool(text)
    if kind == "function.call.delta":
        return True
    if kind == "conversation.response.started":
        acc.conv_id = _str(obj.get("conversation_id"))
    elif kind in ("conversation.response.done", "transcription.done"):
        acc.usage = obj.get("usage")
        acc.model = _str(obj.get("model")) or acc.model
    elif kind == "conversation.response.error":
        acc.finish = "error"
    return False


def _stream(chunks: list[bytes]) -> _Acc:
    """Walk the SSE events. sseclient decodes as latin-1 (never fails, bytes round-trip) and
    orjson checks the UTF-8, so a bad byte costs one event, not the rest of the stream."""
    acc, pos = _Acc(), [-1]
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    try:
        for event in sseclient.SSEClient(_feed(chunks, pos), "latin-1").events():
            try:
                obj = loads(event.data.encode("latin-1"))
            except decode_error:
                if event.data.strip() == "[DONE]":
                    break
                continue
            if type(obj) is not dict:  # orjson makes exact dicts
                continue
            choices = obj.get("choices")
            if choices is not None:
                content = _on_chunk(acc, obj, choices)
            else:
                content = _on_event(acc, obj, _str(obj.get("type")) or event.event)
            if content and acc.first is None:
                acc.first = pos[0]
    except Exception:  # hostile bytes: keep what was read
        pass
    return acc


class MistralProvider:
    """Parses exchanges with api.mistral.ai (see /work/shared/mistral/API_NOTES.md)."""

    name = "mistral"
    replay: Replay | None = MistralReplay()  # stateless: one for every instance
    # OpenTelemetry GenAI names (semantic conventions' well-known values); conversations are
    # `chat`, or `invoke_agent` when they name an agent.
    genai_name = "mistral_ai"
    genai_operations = {
        "chat": "chat",
        "conversations": "chat",
        "fim": "text_completion",
        "embeddings": "embeddings",
        "agents": "invoke_agent",
        "ocr": "generate_content",
        "audio": "generate_content",
    }

    def preview(self, request_json: Any) -> str | None:
        """The last user message (chat, agents), the last user input (conversations), the
        prompt (FIM) or the first input (embeddings, moderations)."""
        if not isinstance(request_json, dict):
            return None
        messages = request_json.get("messages")
        if not isinstance(messages, list):
            messages = _entries_in(request_json.get("inputs"))
        for message in reversed(messages or []):
            if isinstance(message, dict) and message.get("role") == "user":
                text = _text(message.get("content"))
                if text:
                    return text
        for key in ("prompt", "input"):
            value = request_json.get(key)
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, str):
                return value
        return None

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
        p = Parsed()
        try:
            p.endpoint = endpoint_of(path or "")
            if p.endpoint == "conversations":
                op, cid = conversation_path(method, path)
                p.conversation_op, p.path_conversation_id = op, cid
                if cid is not None and cid.startswith("conv_"):
                    p.conversation_id = cid
            _request(p, request_headers or {}, request_body or b"")
            p.model = p.request_model
            if p.endpoint == "fine_tuning":
                _job_call(p, method, path, status)
            ctype = (response_headers or {}).get("content-type", "").lower()
            p.streamed = "text/event-stream" in ctype
            chunks = response_chunks or []
            if p.streamed:
                if status is None or status < 400:
                    self._apply_stream(p, _stream(chunks))
                return p
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            ok = status is None or status < 400
            if "json" in ctype or body[:256].lstrip()[:1] in (b"{", b"["):
                try:
                    p.response_json = orjson.loads(body)
                except orjson.JSONDecodeError:
                    p.response_unparsed = ok and bool(body.strip())
                    return p
            elif ok and p.endpoint in _JSON_ENDPOINTS and body.strip():
                p.response_unparsed = True  # a JSON endpoint answered something else
            if isinstance(p.response_json, dict) and (status is None or status < 400):
                _response(p, p.response_json)
        except Exception:  # never raise: return what was gathered
            pass
        return p

    @staticmethod
    def _apply_stream(p: Parsed, acc: _Acc) -> None:
        p.model = acc.model or p.model
        p.finish_reason = acc.finish
        p.first_content_chunk = acc.first
        p.conversation_id = acc.conv_id or p.conversation_id
        p.agent_id = p.agent_id or acc.agent_id
        if acc.saw or acc.texts:
            p.output_text = "".join(acc.texts)
        if p.endpoint in _COMPLETIONS:
            p.message_out = acc.message_out()
        elif p.endpoint == "conversations":
            p.entries_out = acc.entries_out()
        _usage(p, acc.usage)
