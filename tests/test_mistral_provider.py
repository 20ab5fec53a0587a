"""MistralProvider.parse: endpoint kinds, request/response JSON, SSE streams, hostile input."""

from __future__ import annotations

import orjson
import pytest

from gateway.providers.base import Parsed
from gateway.providers.mistral import MistralProvider, endpoint_of, request_messages

JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream; charset=utf-8"}


def parse(path, body=b"", resp=(), status=200, req_headers=JSON, resp_headers=JSON) -> Parsed:
    if isinstance(body, dict | list):
        body = orjson.dumps(body)
    if isinstance(resp, dict):
        resp = [orjson.dumps(resp)]
    resp = list(resp)
    return MistralProvider().parse("POST", path, req_headers, body, status, resp_headers, resp)


def sse(*events: dict | str, done: bool = True, nl: str = "\n") -> bytes:
    """An SSE body: dicts become `data:` events, a str is raw text (an `event:` line, a comment)."""
    out = []
    for e in events:
        out.append(e if isinstance(e, str) else f"data: {orjson.dumps(e).decode()}{nl}{nl}")
    if done:
        out.append(f"data: [DONE]{nl}{nl}")
    return "".join(out).encode()


def chunk(content=None, finish=None, usage=None, model="mistral-medium", **delta) -> dict:
    if content is not None:
        delta["content"] = content
    body = {"id": "x", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return body


def split_events(body: bytes) -> list[bytes]:
    """One chunk per event (the usual arrival pattern)."""
    parts = body.split(b"\n\n")
    return [p + b"\n\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def fields(p: Parsed, expected: dict) -> dict:
    return {k: getattr(p, k) for k in expected}


USAGE = {"prompt_tokens": 8, "total_tokens": 16, "completion_tokens": 8}
DOCS_STREAM = sse(
    chunk("", role="assistant"), chunk("1, 2, 3."), chunk("", finish="stop", usage=USAGE)
)


# -- endpoint kinds -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/chat/completions?x=1", "chat"),
        ("/v1/chat/completions/", "chat"),
        ("/v1/fim/completions", "fim"),
        ("/v1/agents/completions", "agents"),
        ("/v1/agents", "other"),
        ("/v1/agents/ag_1", "other"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/conversations", "conversations"),
        ("/v1/conversations/conv_1/restart", "conversations"),
        ("/v1/conversationsx", "other"),
        ("/v1/files", "files"),
        ("/v1/files/abc/content", "files"),
        ("/v1/ocr", "ocr"),
        ("/v1/moderations", "moderations"),
        ("/v1/chat/moderations", "moderations"),
        ("/v1/classifications", "moderations"),
        ("/v1/chat/classifications", "moderations"),
        ("/v1/audio/transcriptions", "audio"),
        ("/v1/audio/speech", "audio"),
        ("/v1/models", "other"),
        ("/v1/chat", "other"),
        ("/", "other"),
        ("", "other"),
        ("?/v1/ocr", "other"),
    ],
)
def test_endpoint_of(path, kind):
    assert endpoint_of(path) == kind
    assert parse(path).endpoint == kind


# -- request bodies -------------------------------------------------------------------------

MULTIPART = (
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n\xff\xfe'
    b'\r\n--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nvoxtral-mini-latest'
    b"\r\n--b--\r\n"
)
FORM = {"content-type": "multipart/form-data; boundary=b"}


@pytest.mark.parametrize(
    ("path", "headers", "body", "expected"),
    [
        ("/v1/chat/completions", JSON, b'{"model":"m","messages":[]}',
         {"parse_error": False, "request_model": "m", "model": "m"}),
        ("/v1/chat/completions", {}, b'  \n {"model":"m"}', {"parse_error": False, "model": "m"}),
        ("/v1/chat/completions", JSON, b'{"model":', {"parse_error": True, "request_json": None}),
        ("/v1/models", {}, b"[1, 2", {"parse_error": True}),
        ("/v1/chat/completions", {}, b"hello", {"parse_error": True}),
        ("/v1/ocr", {"content-type": "text/plain"}, b"hello", {"parse_error": True}),
        ("/v1/models", {"content-type": "text/plain"}, b"hello",
         {"parse_error": False, "request_json": None}),
        ("/v1/chat/completions", JSON, b"", {"parse_error": False, "request_json": None}),
        ("/v1/chat/completions", JSON, b"  \r\n", {"parse_error": False}),
        ("/v1/chat/completions", JSON, b"[1, 2]",
         {"parse_error": False, "request_json": [1, 2], "request_model": None}),
        ("/v1/chat/completions", JSON, b'{"model": 5}', {"parse_error": False, "model": None}),
        ("/v1/chat/completions", JSON, b'"str"', {"parse_error": False, "request_json": "str"}),
        ("/v1/chat/completions", JSON, b'{"model":"\xff\xfe"}', {"parse_error": True}),
        ("/v1/agents/completions", JSON, b'{"agent_id":"ag_1","messages":[]}',
         {"agent_id": "ag_1", "model": None}),
        ("/v1/audio/transcriptions", FORM, MULTIPART,
         {"parse_error": False, "request_model": "voxtral-mini-latest", "request_json": None}),
        ("/v1/files", FORM, b"--b\r\ngarbage", {"parse_error": False, "request_model": None}),
        ("/v1/audio/transcriptions", FORM, b'form-data; name="model"\r\n\r\n' + b"x" * 999,
         {"parse_error": False, "request_model": None}),
    ],
)
def test_request(path, headers, body, expected):
    p = parse(path, body, req_headers=headers, resp=[b"{}"])
    assert fields(p, expected) == expected


@pytest.mark.parametrize(
    ("request_json", "expected"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, [{"role": "user", "content": "hi"}]),
        ({"messages": "hi"}, None),
        ({"prompt": "x"}, None),
        ([{"messages": []}], None),
        (None, None),
    ],
)
def test_request_messages(request_json, expected):
    assert request_messages(request_json) == expected


# -- non-streamed responses -----------------------------------------------------------------

def completion(content="Hi", finish="stop", usage=None, model="mistral-large-2512") -> dict:
    return {"id": "c", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}],
            "usage": USAGE if usage is None else usage}


CONVERSATION = {
    "object": "conversation.response", "conversation_id": "conv_1",
    "outputs": [
        {"object": "entry", "type": "tool.execution", "name": "code_interpreter"},
        {"object": "entry", "type": "message.output", "role": "assistant", "content": "first",
         "agent_id": "ag_1", "model": "mistral-medium-latest"},
        {"object": "entry", "type": "message.output", "role": "assistant",
         "content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]},
                     {"type": "text", "text": "It printed 1."}],
         "agent_id": "ag_1", "model": "mistral-medium-latest"},
        {"object": "entry", "type": "function.call", "tool_call_id": "6TI17yZkV", "name": "f"},
    ],
    "usage": {"prompt_tokens": 95, "completion_tokens": 209, "total_tokens": 399,
              "connector_tokens": 95, "connectors": {"code_interpreter": 1}},
}
REQ = {"model": "mistral-large-latest", "messages": []}


@pytest.mark.parametrize(
    ("path", "req", "status", "resp", "expected"),
    [
        ("/v1/chat/completions", REQ, 200,
         completion(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 64}}),
         {"model": "mistral-large-2512", "request_model": "mistral-large-latest",
          "output_text": "Hi", "finish_reason": "stop", "prompt_tokens": 8,
          "completion_tokens": 8, "total_tokens": 16, "cached_tokens": 64, "streamed": False}),
        ("/v1/chat/completions", REQ, 200, completion(content=None, finish="tool_calls"),
         {"output_text": None, "finish_reason": "tool_calls"}),
        ("/v1/chat/completions", REQ, 200,
         completion(content=[{"type": "thinking", "thinking": [{"type": "text", "text": "no"}]},
                             {"type": "text", "text": "A"}, {"type": "text", "text": "B"}]),
         {"output_text": "AB"}),
        ("/v1/chat/completions", REQ, 200, completion(content={"weird": 1}),
         {"output_text": None, "finish_reason": "stop", "total_tokens": 16}),
        ("/v1/chat/completions", REQ, 200, completion(content=[1, None, {"text": 5}]),
         {"output_text": None}),
        ("/v1/chat/completions", REQ, 200, {"model": "m", "usage": USAGE},
         {"model": "m", "output_text": None, "prompt_tokens": 8}),
        ("/v1/chat/completions", REQ, 200, {"choices": "nope", "usage": "lots"},
         {"model": "mistral-large-latest", "prompt_tokens": None, "total_tokens": None}),
        ("/v1/chat/completions", REQ, 200, {"choices": [None], "usage": [1]},
         {"output_text": None, "prompt_tokens": None}),
        ("/v1/chat/completions", REQ, 200,
         completion(usage={"prompt_tokens": 3, "completion_tokens": 4,
                           "prompt_tokens_details": {"cached_tokens": None}}),
         {"total_tokens": 7, "cached_tokens": None}),
        ("/v1/chat/completions", REQ, 200,
         completion(usage={"prompt_tokens": "3", "completion_tokens": True, "total_tokens": 9,
                           "prompt_tokens_details": {"cached_tokens": 0}}),
         {"prompt_tokens": None, "completion_tokens": None, "total_tokens": 9,
          "cached_tokens": 0}),
        ("/v1/chat/completions", REQ, 200, completion(model=None),
         {"model": "mistral-large-latest"}),
        ("/v1/fim/completions", {"model": "codestral-latest", "prompt": "def f("}, 200,
         completion(content="n):\n    return n", model="codestral-2508"),
         {"endpoint": "fim", "output_text": "n):\n    return n", "model": "codestral-2508"}),
        ("/v1/agents/completions", {"agent_id": "ag_9", "messages": []}, 200, completion(),
         {"agent_id": "ag_9", "output_text": "Hi", "request_model": None}),
        ("/v1/embeddings", {"model": "mistral-embed", "input": ["a"]}, 200,
         {"object": "list", "model": "mistral-embed", "data": [{"embedding": [0.1]}],
          "usage": {"prompt_tokens": 15, "completion_tokens": 0, "total_tokens": 15}},
         {"output_text": None, "prompt_tokens": 15, "total_tokens": 15, "finish_reason": None}),
        ("/v1/conversations", {"agent_id": "ag_1", "inputs": "run it"}, 200, CONVERSATION,
         {"output_text": "It printed 1.", "conversation_id": "conv_1", "agent_id": "ag_1",
          "model": "mistral-medium-latest", "request_model": None, "prompt_tokens": 95,
          "completion_tokens": 209, "total_tokens": 399, "connector_tokens": 95,
          "finish_reason": None}),
        ("/v1/conversations/conv_1", {"inputs": "more"}, 200,
         {"conversation_id": "conv_1", "outputs": [{"type": "function.call"}], "usage": None},
         {"output_text": None, "conversation_id": "conv_1", "agent_id": None,
          "total_tokens": None}),
        ("/v1/conversations/conv_7", {"inputs": "more"}, 200, {"outputs": "x"},
         {"conversation_id": "conv_7"}),
        ("/v1/ocr", {"model": "mistral-ocr-latest", "document": {}}, 200,
         {"pages": [], "model": "mistral-ocr-2512",
          "usage_info": {"pages_processed": 3, "doc_size_bytes": 10}},
         {"units": {"pages": 3.0}, "model": "mistral-ocr-2512", "output_text": None}),
        ("/v1/ocr", {"model": "mistral-ocr-latest"}, 200, {"usage_info": "x"}, {"units": {}}),
        ("/v1/audio/transcriptions", b"", 200,
         {"model": "voxtral-mini-2602", "text": "hello", "language": "en",
          "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6,
                    "prompt_audio_seconds": 12}},
         {"units": {"audio_seconds": 12.0}, "output_text": "hello", "total_tokens": 6}),
        ("/v1/moderations", {"model": "mistral-moderation-latest", "input": "x"}, 200,
         {"id": "m", "model": "mistral-moderation-2603", "results": []},
         {"model": "mistral-moderation-2603", "output_text": None}),
        ("/v1/chat/completions", REQ, 401, {"message": "Unauthorized", "request_id": "r"},
         {"model": "mistral-large-latest", "output_text": None, "prompt_tokens": None,
          "response_json": {"message": "Unauthorized", "request_id": "r"}}),
        ("/v1/chat/completions", REQ, 500, completion(),
         {"model": "mistral-large-latest", "output_text": None, "total_tokens": None}),
        ("/v1/chat/completions", REQ, 200, [orjson.dumps([completion()])],
         {"output_text": None, "model": "mistral-large-latest", "response_json": [completion()]}),
        ("/v1/chat/completions", REQ, 200, [b'{"model": "m", "choi', b'ces": [], "usage": {}}'],
         {"model": "m", "response_json": {"model": "m", "choices": [], "usage": {}}}),
        ("/v1/chat/completions", REQ, 200, [b"<html>bad gateway</html>"],
         {"response_json": None, "parse_error": False, "model": "mistral-large-latest"}),
        ("/v1/chat/completions", REQ, 200, [b'{"model": "m", "choi'],
         {"response_json": None, "parse_error": False, "output_text": None}),
        ("/v1/chat/completions", REQ, None, [], {"model": "mistral-large-latest"}),
    ],
)
def test_response(path, req, status, resp, expected):
    p = parse(path, req, resp, status=status)
    assert fields(p, expected) == expected


# -- streams --------------------------------------------------------------------------------

def every(n: int, body: bytes) -> list[bytes]:
    return [body[i : i + n] for i in range(0, len(body), n)]


CONV_STREAM = (
    b"event: conversation.response.started\n"
    b'data: {"type":"conversation.response.started","conversation_id":"conv_s"}\n\n'
    b"event: message.output.delta\n"
    b'data: {"type":"message.output.delta","output_index":1,"id":"msg_1","content_index":0,'
    b'"model":"mistral-medium-latest","agent_id":"ag_s","role":"assistant","content":""}\n\n'
    b": ping\n\n"
    b"event: message.output.delta\n"
    b'data: {"type":"message.output.delta","id":"msg_1","content":"The"}\n\n'
    b"event: message.output.delta\n"
    b'data: {"type":"message.output.delta","id":"msg_1","content":{"type":"text","text":" end"}}'
    b"\n\n"
    b"event: conversation.response.done\n"
    b'data: {"type":"conversation.response.done","usage":{"prompt_tokens":18709,'
    b'"total_tokens":18892,"completion_tokens":183,"connector_tokens":null}}\n\n'
)
CONV_CALL_STREAM = (
    b"event: conversation.response.started\n"
    b'data: {"type":"conversation.response.started","conversation_id":"conv_f"}\n\n'
    b"event: function.call.delta\n"
    b'data: {"type":"function.call.delta","id":"fc_1","name":"f","tool_call_id":"t",'
    b'"arguments":"{}"}\n\n'
    b"event: conversation.response.error\n"
    b'data: {"type":"conversation.response.error","message":"boom","code":500}\n\n'
)
TRANSCRIPTION_STREAM = (
    b'event: transcription.text.delta\ndata: {"type":"transcription.text.delta","text":"Hel"}\n\n'
    b'event: transcription.text.delta\ndata: {"type":"transcription.text.delta","text":"lo"}\n\n'
    b'event: transcription.done\ndata: {"type":"transcription.done","model":"voxtral-mini-2602",'
    b'"text":"Hello","language":"en","usage":{"prompt_tokens":1,"completion_tokens":2,'
    b'"total_tokens":3,"prompt_audio_seconds":2.5}}\n\n'
)
DOCS_DONE = {"output_text": "1, 2, 3.", "finish_reason": "stop", "model": "mistral-medium",
             "prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16, "streamed": True,
             "response_json": None}
NO_USAGE = {"prompt_tokens": None, "total_tokens": None}
TOOL = [{"id": "D681PevKs", "type": "function", "index": 0,
         "function": {"name": "f", "arguments": "{}"}}]
THINK = {"type": "thinking", "thinking": [{"type": "text", "text": "x"}]}
BAD_UTF8 = b"data: \xff\xfe not json\n\n" + DOCS_STREAM


@pytest.mark.parametrize(
    ("path", "chunks", "expected"),
    [
        ("/v1/chat/completions", split_events(DOCS_STREAM),
         {**DOCS_DONE, "first_content_chunk": 1}),
        ("/v1/chat/completions", [DOCS_STREAM], {**DOCS_DONE, "first_content_chunk": 0}),
        # the first content event ends at byte 314 (see test_stream_offsets_in_table_are_right)
        ("/v1/chat/completions", every(3, DOCS_STREAM), {**DOCS_DONE, "first_content_chunk": 104}),
        ("/v1/chat/completions", every(1, DOCS_STREAM), {**DOCS_DONE, "first_content_chunk": 314}),
        ("/v1/chat/completions", [DOCS_STREAM.replace(b"\n", b"\r\n")], DOCS_DONE),
        ("/v1/chat/completions", every(7, DOCS_STREAM.replace(b"\n", b"\r\n")), DOCS_DONE),
        ("/v1/chat/completions", [DOCS_STREAM.replace(b"data: ", b"data:")], DOCS_DONE),
        ("/v1/chat/completions", [b": ping\n\n", b"event: x\n", DOCS_STREAM, b": ping\n\n"],
         {**DOCS_DONE, "first_content_chunk": 2}),
        ("/v1/chat/completions", split_events(DOCS_STREAM)[:-1], DOCS_DONE),  # no [DONE]
        ("/v1/chat/completions", [DOCS_STREAM + sse(chunk("late"), done=False)], DOCS_DONE),
        ("/v1/chat/completions", [DOCS_STREAM.replace(b"[DONE]", b" [DONE] ") + sse(chunk("late"))],
         DOCS_DONE),
        ("/v1/chat/completions", [DOCS_STREAM[:-60]],  # cut inside the final chunk
         {"output_text": "1, 2, 3.", "finish_reason": None, **NO_USAGE}),
        ("/v1/chat/completions", [DOCS_STREAM[:200]],  # cut inside the first content event
         {"output_text": "", "first_content_chunk": None, "model": "mistral-medium"}),
        ("/v1/chat/completions", [sse(chunk("a"), chunk("b"), done=False)[:-2]],
         {"output_text": "ab", "first_content_chunk": 0}),
        ("/v1/chat/completions",
         split_events(sse(chunk("", role="assistant"), chunk(tool_calls=TOOL),
                          chunk(finish="tool_calls", usage=USAGE))),
         {"output_text": "", "first_content_chunk": 1, "finish_reason": "tool_calls"}),
        ("/v1/chat/completions",
         split_events(sse(chunk([THINK]),
                          chunk([{"type": "text", "text": "A"}]), chunk("B", finish="stop"))),
         {"output_text": "AB", "first_content_chunk": 1, "finish_reason": "stop"}),
        ("/v1/chat/completions",
         [b"data: not json\n\ndata: [1,2]\n\ndata: \"s\"\n\ndata: {\"choices\": 5}\n\n",
          sse(chunk({"weird": 1}), {"choices": [None, {"delta": "x"}]}, chunk("ok"))],
         {"output_text": "ok", "first_content_chunk": 1, **NO_USAGE}),
        ("/v1/chat/completions", [sse(chunk("x", usage="lots", finish="stop"))],
         {"output_text": "x", **NO_USAGE}),
        ("/v1/chat/completions", every(5, BAD_UTF8), {**DOCS_DONE, "first_content_chunk": 66}),
        ("/v1/chat/completions", [b"\x00\xff garbage without newlines"],
         {"output_text": None, "first_content_chunk": None}),
        ("/v1/chat/completions", [], {"output_text": None, "streamed": True}),
        ("/v1/chat/completions", [b"data: [DONE]\n\n"], {"output_text": None}),
        ("/v1/chat/completions", [DOCS_STREAM, "not bytes"], DOCS_DONE),
        ("/v1/chat/completions", ["not bytes", DOCS_STREAM],
         {"output_text": None, "model": "mistral-large-latest"}),
        ("/v1/fim/completions", split_events(DOCS_STREAM), DOCS_DONE),
        ("/v1/agents/completions", split_events(DOCS_STREAM), DOCS_DONE),
        ("/v1/conversations", split_events(CONV_STREAM),
         {"output_text": "The end", "first_content_chunk": 3, "conversation_id": "conv_s",
          "agent_id": "ag_s", "model": "mistral-medium-latest", "prompt_tokens": 18709,
          "total_tokens": 18892, "connector_tokens": None, "finish_reason": None}),
        ("/v1/conversations", every(11, CONV_STREAM.replace(b"\n", b"\r\n")),
         {"output_text": "The end", "conversation_id": "conv_s", "total_tokens": 18892}),
        ("/v1/conversations/conv_f", split_events(CONV_CALL_STREAM),
         {"output_text": None, "first_content_chunk": 1, "conversation_id": "conv_f",
          "finish_reason": "error", **NO_USAGE}),
        ("/v1/conversations", [CONV_STREAM[:300]],  # cut inside the first delta
         {"output_text": None, "first_content_chunk": None, "conversation_id": "conv_s",
          **NO_USAGE}),
        ("/v1/audio/transcriptions", split_events(TRANSCRIPTION_STREAM),
         {"output_text": "Hello", "first_content_chunk": 0, "model": "voxtral-mini-2602",
          "units": {"audio_seconds": 2.5}, "total_tokens": 3}),
    ],
)
def test_stream(path, chunks, expected):
    p = parse(path, REQ, chunks, resp_headers=SSE)
    assert fields(p, expected) == expected


def completing_byte(body: bytes, marker: bytes) -> int:
    """Offset of the second LF of the blank line that ends the event holding marker."""
    return body.index(b"\n\n", body.index(marker)) + 1


def test_stream_offsets_in_table_are_right():
    assert completing_byte(DOCS_STREAM, b'"1, 2, 3."') == 314
    assert completing_byte(BAD_UTF8, b'"1, 2, 3."') // 5 == 66


def test_error_status_stream_is_not_parsed():
    p = parse("/v1/chat/completions", REQ, [DOCS_STREAM], status=503, resp_headers=SSE)
    assert (p.streamed, p.output_text, p.model, p.total_tokens) == (
        True, None, "mistral-large-latest", None)


# -- hostile input and speed ----------------------------------------------------------------

@pytest.mark.parametrize(
    "args",
    [
        ("POST", None, None, None, None, None, None),
        ("GET", "/v1/chat/completions", {}, b"", 200, {}, [b""]),
        ("POST", "/v1/chat/completions", JSON, b"{" * 100_000, 200, JSON, [b"[" * 100_000]),
        ("POST", "/v1/conversations", JSON, b'{"inputs":1}', 200, SSE, [b"\r\r\r\n\n\r"] * 50),
        ("POST", "/v1/chat/completions", JSON, b"{}", 200, {"content-type": 5}, [b"{}"]),
        ("POST", "/v1/chat/completions", JSON, b"{}", "200", JSON, [b'{"choices":[{}]}']),
        ("POST", "/v1/chat/completions", JSON, b"{}", 200, SSE, [b"data: " + b"9" * 10_000]),
    ],
)
def test_never_raises(args):
    assert isinstance(MistralProvider().parse(*args), Parsed)


def test_10k_chunk_stream():
    body = chunk("tok")
    chunks = [sse(body, done=False) for _ in range(10_000)]
    chunks.append(sse(chunk("", finish="stop", usage=USAGE)))
    p = parse("/v1/chat/completions", REQ, chunks, resp_headers=SSE)
    assert (len(p.output_text), p.first_content_chunk, p.total_tokens) == (30_000, 0, 16)


def test_one_event_in_10k_tiny_chunks():
    body = sse(chunk("x" * 50_000, finish="stop", usage=USAGE))
    chunks = every(max(1, len(body) // 10_000), body)
    assert len(chunks) >= 10_000
    p = parse("/v1/chat/completions", REQ, chunks, resp_headers=SSE)
    assert (len(p.output_text), p.total_tokens) == (50_000, 16)
