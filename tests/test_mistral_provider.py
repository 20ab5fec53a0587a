"""MistralProvider.parse: endpoint kinds, request/response JSON, SSE streams, hostile input."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    body = {
        "id": "x",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
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
        (
            "/v1/chat/completions",
            JSON,
            b'{"model":"m","messages":[]}',
            {"parse_error": False, "request_model": "m", "model": "m"},
        ),
        ("/v1/chat/completions", {}, b'  \n {"model":"m"}', {"parse_error": False, "model": "m"}),
        ("/v1/chat/completions", JSON, b'{"model":', {"parse_error": True, "request_json": None}),
        ("/v1/models", {}, b"[1, 2", {"parse_error": True}),
        ("/v1/chat/completions", {}, b"hello", {"parse_error": True}),
        ("/v1/ocr", {"content-type": "text/plain"}, b"hello", {"parse_error": True}),
        (
            "/v1/models",
            {"content-type": "text/plain"},
            b"hello",
            {"parse_error": False, "request_json": None},
        ),
        ("/v1/chat/completions", JSON, b"", {"parse_error": False, "request_json": None}),
        ("/v1/chat/completions", JSON, b"  \r\n", {"parse_error": False}),
        (
            "/v1/chat/completions",
            JSON,
            b"[1, 2]",
            {"parse_error": False, "request_json": [1, 2], "request_model": None},
        ),
        ("/v1/chat/completions", JSON, b'{"model": 5}', {"parse_error": False, "model": None}),
        ("/v1/chat/completions", JSON, b'"str"', {"parse_error": False, "request_json": "str"}),
        ("/v1/chat/completions", JSON, b'{"model":"\xff\xfe"}', {"parse_error": True}),
        (
            "/v1/agents/completions",
            JSON,
            b'{"agent_id":"ag_1","messages":[]}',
            {"agent_id": "ag_1", "model": None},
        ),
        (
            "/v1/audio/transcriptions",
            FORM,
            MULTIPART,
            {"parse_error": False, "request_model": "voxtral-mini-latest", "request_json": None},
        ),
        ("/v1/files", FORM, b"--b\r\ngarbage", {"parse_error": False, "request_model": None}),
        (
            "/v1/audio/transcriptions",
            FORM,
            b'form-data; name="model"\r\n\r\n' + b"x" * 999,
            {"parse_error": False, "request_model": None},
        ),
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
    return {
        "id": "c",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": USAGE if usage is None else usage,
    }


CONVERSATION = {
    "object": "conversation.response",
    "conversation_id": "conv_1",
    "outputs": [
        {"object": "entry", "type": "tool.execution", "name": "code_interpreter"},
        {
            "object": "entry",
            "type": "message.output",
            "role": "assistant",
            "content": "first",
            "agent_id": "ag_1",
            "model": "mistral-medium-latest",
        },
        {
            "object": "entry",
            "type": "message.output",
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]},
                {"type": "text", "text": "It printed 1."},
            ],
            "agent_id": "ag_1",
            "model": "mistral-medium-latest",
        },
        {"object": "entry", "type": "function.call", "tool_call_id": "6TI17yZkV", "name": "f"},
    ],
    "usage": {
        "prompt_tokens": 95,
        "completion_tokens": 209,
        "total_tokens": 399,
        "connector_tokens": 95,
        "connectors": {"code_interpreter": 1},
    },
}
REQ = {"model": "mistral-large-latest", "messages": []}


@pytest.mark.parametrize(
    ("path", "req", "status", "resp", "expected"),
    [
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 64}}),
            {
                "model": "mistral-large-2512",
                "request_model": "mistral-large-latest",
                "output_text": "Hi",
                "finish_reason": "stop",
                "prompt_tokens": 8,
                "completion_tokens": 8,
                "total_tokens": 16,
                "cached_tokens": 64,
                "streamed": False,
            },
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(content=None, finish="tool_calls"),
            {"output_text": None, "finish_reason": "tool_calls"},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(
                content=[
                    {"type": "thinking", "thinking": [{"type": "text", "text": "no"}]},
                    {"type": "text", "text": "A"},
                    {"type": "text", "text": "B"},
                ]
            ),
            {"output_text": "AB"},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(content={"weird": 1}),
            {"output_text": None, "finish_reason": "stop", "total_tokens": 16},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(content=[1, None, {"text": 5}]),
            {"output_text": None},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            {"model": "m", "usage": USAGE},
            {"model": "m", "output_text": None, "prompt_tokens": 8},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            {"choices": "nope", "usage": "lots"},
            {"model": "mistral-large-latest", "prompt_tokens": None, "total_tokens": None},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            {"choices": [None], "usage": [1]},
            {"output_text": None, "prompt_tokens": None},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(
                usage={
                    "prompt_tokens": 3,
                    "completion_tokens": 4,
                    "prompt_tokens_details": {"cached_tokens": None},
                }
            ),
            {"total_tokens": 7, "cached_tokens": None},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(
                usage={
                    "prompt_tokens": "3",
                    "completion_tokens": True,
                    "total_tokens": 9,
                    "prompt_tokens_details": {"cached_tokens": 0},
                }
            ),
            {
                "prompt_tokens": None,
                "completion_tokens": None,
                "total_tokens": 9,
                "cached_tokens": 0,
            },
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            completion(model=None),
            {"model": "mistral-large-latest"},
        ),
        (
            "/v1/fim/completions",
            {"model": "codestral-latest", "prompt": "def f("},
            200,
            completion(content="n):\n    return n", model="codestral-2508"),
            {"endpoint": "fim", "output_text": "n):\n    return n", "model": "codestral-2508"},
        ),
        (
            "/v1/agents/completions",
            {"agent_id": "ag_9", "messages": []},
            200,
            completion(),
            {"agent_id": "ag_9", "output_text": "Hi", "request_model": None},
        ),
        (
            "/v1/embeddings",
            {"model": "mistral-embed", "input": ["a"]},
            200,
            {
                "object": "list",
                "model": "mistral-embed",
                "data": [{"embedding": [0.1]}],
                "usage": {"prompt_tokens": 15, "completion_tokens": 0, "total_tokens": 15},
            },
            {"output_text": None, "prompt_tokens": 15, "total_tokens": 15, "finish_reason": None},
        ),
        (
            "/v1/conversations",
            {"agent_id": "ag_1", "inputs": "run it"},
            200,
            CONVERSATION,
            {
                "output_text": "It printed 1.",
                "conversation_id": "conv_1",
                "agent_id": "ag_1",
                "model": "mistral-medium-latest",
                "request_model": None,
                "prompt_tokens": 95,
                "completion_tokens": 209,
                "total_tokens": 399,
                "connector_tokens": 95,
                "finish_reason": None,
            },
        ),
        (
            "/v1/conversations/conv_1",
            {"inputs": "more"},
            200,
            {"conversation_id": "conv_1", "outputs": [{"type": "function.call"}], "usage": None},
            {
                "output_text": None,
                "conversation_id": "conv_1",
                "agent_id": None,
                "total_tokens": None,
            },
        ),
        (
            "/v1/conversations/conv_7",
            {"inputs": "more"},
            200,
            {"outputs": "x"},
            {"conversation_id": "conv_7"},
        ),
        (
            "/v1/ocr",
            {"model": "mistral-ocr-latest", "document": {}},
            200,
            {
                "pages": [],
                "model": "mistral-ocr-2512",
                "usage_info": {"pages_processed": 3, "doc_size_bytes": 10},
            },
            {"units": {"pages": 3.0}, "model": "mistral-ocr-2512", "output_text": None},
        ),
        ("/v1/ocr", {"model": "mistral-ocr-latest"}, 200, {"usage_info": "x"}, {"units": {}}),
        (
            "/v1/audio/transcriptions",
            b"",
            200,
            {
                "model": "voxtral-mini-2602",
                "text": "hello",
                "language": "en",
                "usage": {
                    "prompt_tokens": 4,
                    "completion_tokens": 2,
                    "total_tokens": 6,
                    "prompt_audio_seconds": 12,
                },
            },
            {"units": {"audio_seconds": 12.0}, "output_text": "hello", "total_tokens": 6},
        ),
        (
            "/v1/moderations",
            {"model": "mistral-moderation-latest", "input": "x"},
            200,
            {"id": "m", "model": "mistral-moderation-2603", "results": []},
            {"model": "mistral-moderation-2603", "output_text": None},
        ),
        (
            "/v1/chat/completions",
            REQ,
            401,
            {"message": "Unauthorized", "request_id": "r"},
            {
                "model": "mistral-large-latest",
                "output_text": None,
                "prompt_tokens": None,
                "response_json": {"message": "Unauthorized", "request_id": "r"},
            },
        ),
        (
            "/v1/chat/completions",
            REQ,
            500,
            completion(),
            {"model": "mistral-large-latest", "output_text": None, "total_tokens": None},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            [orjson.dumps([completion()])],
            {"output_text": None, "model": "mistral-large-latest", "response_json": [completion()]},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            [b'{"model": "m", "choi', b'ces": [], "usage": {}}'],
            {"model": "m", "response_json": {"model": "m", "choices": [], "usage": {}}},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            [b"<html>bad gateway</html>"],
            {"response_json": None, "parse_error": False, "model": "mistral-large-latest"},
        ),
        (
            "/v1/chat/completions",
            REQ,
            200,
            [b'{"model": "m", "choi'],
            {"response_json": None, "parse_error": False, "output_text": None},
        ),
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
DOCS_DONE = {
    "output_text": "1, 2, 3.",
    "finish_reason": "stop",
    "model": "mistral-medium",
    "prompt_tokens": 8,
    "completion_tokens": 8,
    "total_tokens": 16,
    "streamed": True,
    "response_json": None,
}
NO_USAGE = {"prompt_tokens": None, "total_tokens": None}
TOOL = [
    {
        "id": "D681PevKs",
        "type": "function",
        "index": 0,
        "function": {"name": "f", "arguments": "{}"},
    }
]
THINK = {"type": "thinking", "thinking": [{"type": "text", "text": "x"}]}
BAD_UTF8 = b"data: \xff\xfe not json\n\n" + DOCS_STREAM


@pytest.mark.parametrize(
    ("path", "chunks", "expected"),
    [
        (
            "/v1/chat/completions",
            split_events(DOCS_STREAM),
            {**DOCS_DONE, "first_content_chunk": 1},
        ),
        ("/v1/chat/completions", [DOCS_STREAM], {**DOCS_DONE, "first_content_chunk": 0}),
        # the first content event ends at byte 314 (see test_stream_offsets_in_table_are_right)
        ("/v1/chat/completions", every(3, DOCS_STREAM), {**DOCS_DONE, "first_content_chunk": 104}),
        ("/v1/chat/completions", every(1, DOCS_STREAM), {**DOCS_DONE, "first_content_chunk": 314}),
        ("/v1/chat/completions", [DOCS_STREAM.replace(b"\n", b"\r\n")], DOCS_DONE),
        ("/v1/chat/completions", every(7, DOCS_STREAM.replace(b"\n", b"\r\n")), DOCS_DONE),
        ("/v1/chat/completions", [DOCS_STREAM.replace(b"data: ", b"data:")], DOCS_DONE),
        (
            "/v1/chat/completions",
            [b": ping\n\n", b"event: x\n", DOCS_STREAM, b": ping\n\n"],
            {**DOCS_DONE, "first_content_chunk": 2},
        ),
        ("/v1/chat/completions", split_events(DOCS_STREAM)[:-1], DOCS_DONE),  # no [DONE]
        ("/v1/chat/completions", [DOCS_STREAM + sse(chunk("late"), done=False)], DOCS_DONE),
        (
            "/v1/chat/completions",
            [DOCS_STREAM.replace(b"[DONE]", b" [DONE] ") + sse(chunk("late"))],
            DOCS_DONE,
        ),
        (
            "/v1/chat/completions",
            [DOCS_STREAM[:-60]],  # cut inside the final chunk
            {"output_text": "1, 2, 3.", "finish_reason": None, **NO_USAGE},
        ),
        (
            "/v1/chat/completions",
            [DOCS_STREAM[:200]],  # cut inside the first content event
            {"output_text": "", "first_content_chunk": None, "model": "mistral-medium"},
        ),
        (
            "/v1/chat/completions",
            [sse(chunk("a"), chunk("b"), done=False)[:-2]],
            {"output_text": "ab", "first_content_chunk": 0},
        ),
        (
            "/v1/chat/completions",
            split_events(
                sse(
                    chunk("", role="assistant"),
                    chunk(tool_calls=TOOL),
                    chunk(finish="tool_calls", usage=USAGE),
                )
            ),
            {"output_text": "", "first_content_chunk": 1, "finish_reason": "tool_calls"},
        ),
        (
            "/v1/chat/completions",
            split_events(
                sse(
                    chunk([THINK]),
                    chunk([{"type": "text", "text": "A"}]),
                    chunk("B", finish="stop"),
                )
            ),
            {"output_text": "AB", "first_content_chunk": 1, "finish_reason": "stop"},
        ),
        (
            "/v1/chat/completions",
            [
                b'data: not json\n\ndata: [1,2]\n\ndata: "s"\n\ndata: {"choices": 5}\n\n',
                sse(chunk({"weird": 1}), {"choices": [None, {"delta": "x"}]}, chunk("ok")),
            ],
            {"output_text": "ok", "first_content_chunk": 1, **NO_USAGE},
        ),
        (
            "/v1/chat/completions",
            [sse(chunk("x", usage="lots", finish="stop"))],
            {"output_text": "x", **NO_USAGE},
        ),
        ("/v1/chat/completions", every(5, BAD_UTF8), {**DOCS_DONE, "first_content_chunk": 66}),
        (
            "/v1/chat/completions",
            [b"\x00\xff garbage without newlines"],
            {"output_text": None, "first_content_chunk": None},
        ),
        ("/v1/chat/completions", [], {"output_text": None, "streamed": True}),
        ("/v1/chat/completions", [b"data: [DONE]\n\n"], {"output_text": None}),
        ("/v1/chat/completions", [DOCS_STREAM, "not bytes"], DOCS_DONE),
        (
            "/v1/chat/completions",
            ["not bytes", DOCS_STREAM],
            {"output_text": None, "model": "mistral-large-latest"},
        ),
        ("/v1/fim/completions", split_events(DOCS_STREAM), DOCS_DONE),
        ("/v1/agents/completions", split_events(DOCS_STREAM), DOCS_DONE),
        (
            "/v1/conversations",
            split_events(CONV_STREAM),
            {
                "output_text": "The end",
                "first_content_chunk": 3,
                "conversation_id": "conv_s",
                "agent_id": "ag_s",
                "model": "mistral-medium-latest",
                "prompt_tokens": 18709,
                "total_tokens": 18892,
                "connector_tokens": None,
                "finish_reason": None,
            },
        ),
        (
            "/v1/conversations",
            every(11, CONV_STREAM.replace(b"\n", b"\r\n")),
            {"output_text": "The end", "conversation_id": "conv_s", "total_tokens": 18892},
        ),
        (
            "/v1/conversations/conv_f",
            split_events(CONV_CALL_STREAM),
            {
                "output_text": None,
                "first_content_chunk": 1,
                "conversation_id": "conv_f",
                "finish_reason": "error",
                **NO_USAGE,
            },
        ),
        (
            "/v1/conversations",
            [CONV_STREAM[:300]],  # cut inside the first delta
            {
                "output_text": None,
                "first_content_chunk": None,
                "conversation_id": "conv_s",
                **NO_USAGE,
            },
        ),
        (
            "/v1/audio/transcriptions",
            split_events(TRANSCRIPTION_STREAM),
            {
                "output_text": "Hello",
                "first_content_chunk": 0,
                "model": "voxtral-mini-2602",
                "units": {"audio_seconds": 2.5},
                "total_tokens": 3,
            },
        ),
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
        True,
        None,
        "mistral-large-latest",
        None,
    )


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


# -- message-level facts: messages_in, message_out --------------------------------------------

USER = {"role": "user", "content": "hi"}
CALL = {
    "id": "D681PevKs",
    "type": "function",
    "index": 0,
    "function": {"name": "retrieve_payment_status", "arguments": '{"transaction_id": "T1001"}'},
}
CALL_OUT = {
    "id": "D681PevKs",
    "type": "function",
    "function": {"name": "retrieve_payment_status", "arguments": '{"transaction_id": "T1001"}'},
}


@pytest.mark.parametrize(
    ("path", "req", "expected"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": [USER]}, [USER]),
        ("/v1/agents/completions", {"agent_id": "ag_1", "messages": [USER, USER]}, [USER, USER]),
        ("/v1/chat/completions", {"messages": [USER, "x", None, 5, [USER]]}, [USER]),
        (
            "/v1/chat/completions",  # malformed messages are kept as sent
            {"messages": [{"content": {"x": 1}}, {"role": 5}, {}]},
            [{"content": {"x": 1}}, {"role": 5}, {}],
        ),
        ("/v1/chat/completions", {"messages": []}, []),
        ("/v1/chat/completions", {"messages": "hi"}, None),
        ("/v1/chat/completions", {"model": "m"}, None),
        ("/v1/chat/completions", [USER], None),
        ("/v1/fim/completions", {"prompt": "def f(", "messages": [USER]}, None),
        ("/v1/conversations", {"inputs": "hi", "messages": [USER]}, None),
        ("/v1/embeddings", {"input": "x", "messages": [USER]}, None),
    ],
)
def test_messages_in(path, req, expected):
    assert parse(path, req, completion()).messages_in == expected


def message(content="", tool_calls=None) -> dict:
    return {"role": "assistant", "content": content, "tool_calls": tool_calls}


def raw_completion(msg, **extra) -> dict:
    return {
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": msg}],
        **extra,
    }


CHUNKS = [
    {"type": "thinking", "thinking": [{"type": "text", "text": "hm"}]},
    {"type": "text", "text": "A"},
]


@pytest.mark.parametrize(
    ("path", "status", "resp", "expected"),
    [
        (
            "/v1/chat/completions",
            200,
            raw_completion(
                {"role": "assistant", "content": "", "prefix": False, "tool_calls": [CALL]}
            ),
            message("", [CALL_OUT]),
        ),
        ("/v1/chat/completions", 200, completion("Hi"), message("Hi")),
        ("/v1/chat/completions", 200, completion(None), message(None)),
        ("/v1/chat/completions", 200, completion(CHUNKS), message(CHUNKS)),
        ("/v1/chat/completions", 200, completion({"weird": 1}), message({"weird": 1})),
        ("/v1/agents/completions", 200, completion("ok"), message("ok")),
        (
            "/v1/fim/completions",
            200,
            raw_completion({"role": "assistant", "content": "n):", "tool_calls": None}),
            message("n):"),
        ),
        (
            "/v1/chat/completions",
            200,
            raw_completion(
                {
                    "content": "x",
                    "tool_calls": [
                        1,
                        {"function": "f", "type": 3},
                        {"id": "a", "function": {"name": "g", "arguments": {"k": 1}}},
                    ],
                }
            ),
            message(
                "x",
                [
                    {"id": None, "type": "function", "function": {"name": None, "arguments": None}},
                    {
                        "id": "a",
                        "type": "function",
                        "function": {"name": "g", "arguments": {"k": 1}},
                    },
                ],
            ),
        ),
        (
            "/v1/chat/completions",
            200,
            raw_completion({"content": "x", "tool_calls": []}),
            message("x"),
        ),
        (
            "/v1/chat/completions",
            200,
            raw_completion({"content": "x", "tool_calls": "no"}),
            message("x"),
        ),
        ("/v1/chat/completions", 200, raw_completion("not a message"), None),
        ("/v1/chat/completions", 200, {"choices": []}, None),
        ("/v1/chat/completions", 200, {"choices": [None]}, None),
        ("/v1/chat/completions", 200, {"model": "m"}, None),
        ("/v1/chat/completions", 500, completion("Hi"), None),
        ("/v1/chat/completions", 422, {"detail": []}, None),
        ("/v1/embeddings", 200, completion("Hi"), None),
        ("/v1/conversations", 200, completion("Hi"), None),
    ],
)
def test_message_out(path, status, resp, expected):
    assert parse(path, REQ, resp, status=status).message_out == expected


def tc(index=0, id=None, name=None, arguments=None, **extra) -> dict:
    """A streamed tool-call delta; only the given fields are present."""
    fn = {k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None}
    call = {"index": index, "function": fn, **extra}
    if id is not None:
        call["id"] = id
    if index is None:
        del call["index"]
    return call


def tc_out(id, name, arguments) -> dict:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def calls_stream(*deltas: list, content=None) -> list[bytes]:
    events = [chunk("", role="assistant")]
    events += [chunk(content, tool_calls=d) for d in deltas]
    events.append(chunk(finish="tool_calls", usage=USAGE))
    return split_events(sse(*events))


ARGS = '{"city": "Paris", "unit": "c"}'


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (split_events(DOCS_STREAM), message("1, 2, 3.")),
        # Mistral: each call whole in one delta
        (calls_stream([CALL]), message("", [CALL_OUT])),
        (
            calls_stream(
                [
                    CALL,
                    {**CALL, "index": 1, "id": "B", "function": {"name": "g", "arguments": "{}"}},
                ]
            ),
            message("", [CALL_OUT, tc_out("B", "g", "{}")]),
        ),
        # parallel calls that all say index 0, in separate deltas: told apart by their ids
        (
            calls_stream([CALL], [{**CALL, "id": "B"}]),
            message("", [CALL_OUT, {**CALL_OUT, "id": "B"}]),
        ),
        # OpenAI-style fragments: id and name first, the arguments over 3 deltas
        (
            calls_stream(
                [tc(0, "call_1", "get_weather", "", type="function")],
                [tc(0, arguments='{"city": ')],
                [tc(0, arguments='"Paris", ')],
                [tc(0, arguments='"unit": "c"}')],
            ),
            message("", [tc_out("call_1", "get_weather", ARGS)]),
        ),
        # two calls interleaved by index, a repeated id on a later fragment
        (
            calls_stream(
                [tc(0, "a", "f", "{"), tc(1, "b", "g", "[")],
                [tc(1, arguments="1]")],
                [tc(0, id="a", arguments="}")],
            ),
            message("", [tc_out("a", "f", "{}"), tc_out("b", "g", "[1]")]),
        ),
        # fragments without index continue the last call; a new id starts another
        (
            calls_stream(
                [tc(None, "a", "f", "{")], [tc(None, arguments="}")], [tc(None, "b", "g", "{}")]
            ),
            message("", [tc_out("a", "f", "{}"), tc_out("b", "g", "{}")]),
        ),
        # name only on a later fragment; empty id/name first
        (
            calls_stream([tc(0, "", "", "{")], [tc(0, "c", "h", "}")]),
            message("", [tc_out("c", "h", "{}")]),
        ),
        # text and a tool call in one delta
        (calls_stream([CALL], content="Let me check."), message("Let me check.", [CALL_OUT])),
        # no arguments at all; arguments not a string
        (calls_stream([tc(0, "a", "f")]), message("", [tc_out("a", "f", None)])),
        (calls_stream([tc(0, "a", "f", {"k": 1})]), message("", [tc_out("a", "f", {"k": 1})])),
        # garbage tool_calls
        (calls_stream("nope", [None, 5], {"index": 0}), message("")),
        (
            calls_stream([{"index": True, "function": "x"}]),  # kept, as in a non-streamed reply
            message("", [tc_out(None, None, None)]),
        ),
        (
            split_events(sse(chunk([THINK]), chunk([{"type": "text", "text": "A"}]), chunk("B"))),
            message("AB"),
        ),
        # choice 1 is ignored
        (
            [
                sse(
                    {
                        "model": "m",
                        "choices": [
                            {"index": 1, "delta": {"content": "other", "tool_calls": [CALL]}},
                            {"index": 0, "delta": {"content": "mine"}},
                        ],
                    }
                )
            ],
            message("mine"),
        ),
        ([DOCS_STREAM[:200]], message("")),
        ([], None),
        ([b"data: [DONE]\n\n"], None),
        ([b"\x00\xff garbage"], None),
    ],
)
def test_message_out_stream(chunks, expected):
    p = parse("/v1/chat/completions", REQ, chunks, resp_headers=SSE)
    assert p.message_out == expected


def test_message_out_stream_fim_agents_and_errors():
    for path in ("/v1/fim/completions", "/v1/agents/completions"):
        assert parse(path, REQ, [DOCS_STREAM], resp_headers=SSE).message_out == message("1, 2, 3.")
    p = parse("/v1/chat/completions", REQ, [DOCS_STREAM], status=500, resp_headers=SSE)
    assert p.message_out is None
    assert parse("/v1/conversations", REQ, [DOCS_STREAM], resp_headers=SSE).message_out is None


# -- conversations: op, ids, entries ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "op", "path_id"),
    [
        ("POST", "/v1/conversations", "start", None),
        ("POST", "/v1/conversations/", "start", None),
        ("post", "/v1/conversations?x=1", "start", None),
        ("GET", "/v1/conversations", None, None),
        ("POST", "/v1/conversations/conv_1", "append", "conv_1"),
        ("POST", "/v1/conversations/conv_1/", "append", "conv_1"),
        ("POST", "/v1/conversations/conv_1/restart", "restart", "conv_1"),
        ("POST", "/v1/conversations/conv_1/restart?stream=1", "restart", "conv_1"),
        ("GET", "/v1/conversations/conv_1/history", "history", "conv_1"),
        ("GET", "/v1/conversations/conv_1/messages", "history", "conv_1"),
        ("GET", "/v1/conversations/conv_1", "get", "conv_1"),
        ("DELETE", "/v1/conversations/conv_1", None, "conv_1"),
        ("GET", "/v1/conversations/conv_1/restart", None, "conv_1"),
        ("POST", "/v1/conversations/conv_1/history", None, "conv_1"),
        ("POST", "/v1/conversations/conv_1/restart/x", None, "conv_1"),
        ("POST", "/v1/conversations//restart", None, None),
        ("POST", "/v1/conversations/other-id", "append", "other-id"),
        (None, "/v1/conversations/conv_1", None, "conv_1"),
        ("POST", "/v1/chat/completions", None, None),
    ],
)
def test_conversation_op(method, path, op, path_id):
    p = MistralProvider().parse(method, path, JSON, b"", 200, JSON, [b"{}"])
    assert (p.conversation_op, p.path_conversation_id) == (op, path_id)


def restart(resp, **kw):
    req = {
        "inputs": "again",
        "from_entry_id": "msg_1",
        "stream": False,
        "completion_args": {"temperature": 0.2},
    }
    return parse("/v1/conversations/conv_old/restart", req, resp, **kw)


def test_restart():
    p = restart({"conversation_id": "conv_new", "outputs": [], "usage": USAGE})
    assert (p.conversation_op, p.path_conversation_id, p.conversation_id) == (
        "restart",
        "conv_old",
        "conv_new",
    )
    assert p.entries_in == [{"type": "message.input", "role": "user", "content": "again"}]
    assert p.entries_out == []
    assert p.request_params == {"from_entry_id": "msg_1", "stream": False, "temperature": 0.2}
    # no id in the response: the path's
    assert restart({"outputs": []}).conversation_id == "conv_old"
    assert restart({"detail": "x"}, status=404).conversation_id == "conv_old"
    # streamed: the started event's
    body = (
        b'event: conversation.response.started\ndata: {"type":"conversation.response.started",'
        b'"conversation_id":"conv_new"}\n\n'
    )
    p = restart([body], resp_headers=SSE)
    assert (p.conversation_id, p.path_conversation_id) == ("conv_new", "conv_old")


FN_RESULT = {"type": "function.result", "tool_call_id": "6TI17yZkV", "result": "1.2"}


@pytest.mark.parametrize(
    ("path", "req", "expected"),
    [
        (
            "/v1/conversations",
            {"model": "m", "inputs": "Hello"},
            [{"type": "message.input", "role": "user", "content": "Hello"}],
        ),
        (
            "/v1/conversations",
            {"inputs": ""},
            [{"type": "message.input", "role": "user", "content": ""}],
        ),
        ("/v1/conversations/conv_1", {"inputs": [FN_RESULT]}, [FN_RESULT]),
        (
            "/v1/conversations",
            {
                "inputs": [
                    {"type": "message.input", "role": "user", "content": "a"},
                    {"role": "assistant", "content": "b", "prefix": True},
                    "junk",
                    5,
                    None,
                    {"content": "no role"},
                    {"type": "unknown.kind", "x": 1},
                    {"role": None, "content": {"as": "dict"}},
                ]
            },
            [
                {"type": "message.input", "role": "user", "content": "a"},
                {"type": "message.input", "role": "assistant", "content": "b", "prefix": True},
                {"content": "no role"},
                {"type": "unknown.kind", "x": 1},
                {"type": "message.input", "role": None, "content": {"as": "dict"}},
            ],
        ),
        (
            "/v1/conversations",
            {"inputs": {"role": "user", "content": "x"}},
            [{"type": "message.input", "role": "user", "content": "x"}],
        ),
        ("/v1/conversations", {"inputs": []}, []),
        ("/v1/conversations", {"inputs": 5}, None),
        ("/v1/conversations", {"inputs": None}, None),
        ("/v1/conversations", {"agent_id": "ag_1"}, None),
        ("/v1/conversations", ["inputs"], None),
        ("/v1/chat/completions", {"inputs": "x"}, None),
    ],
)
def test_entries_in(path, req, expected):
    assert parse(path, req, [b"{}"]).entries_in == expected


def test_entries_in_copies_instead_of_mutating():
    p = parse("/v1/conversations", {"inputs": [{"role": "user", "content": "x"}]}, [b"{}"])
    assert p.request_json["inputs"] == [{"role": "user", "content": "x"}]
    assert p.entries_in == [{"type": "message.input", "role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("status", "resp", "expected"),
    [
        (200, CONVERSATION, CONVERSATION["outputs"]),
        (
            200,
            {"outputs": [CONVERSATION["outputs"][0], "x", 1, None]},
            [CONVERSATION["outputs"][0]],
        ),
        (200, {"outputs": []}, []),
        (200, {"outputs": "x"}, None),
        (200, {"conversation_id": "conv_1"}, None),
        (200, {"object": "conversation.history", "entries": [{"type": "message.input"}]}, None),
        (500, CONVERSATION, None),
    ],
)
def test_entries_out(status, resp, expected):
    p = parse("/v1/conversations", {"inputs": "x"}, resp, status=status)
    assert p.entries_out == expected


def ev(kind: str, **fields) -> bytes:
    return f"event: {kind}\ndata: {orjson.dumps({'type': kind, **fields}).decode()}\n\n".encode()


CONV_FULL_STREAM = [
    ev("conversation.response.started", conversation_id="conv_s"),
    ev("tool.execution.started", output_index=0, id="tool_exec_1", name="web_search", arguments=""),
    ev(
        "tool.execution.delta",
        output_index=0,
        id="tool_exec_1",
        name="web_search",
        arguments='{"q": ',
    ),
    ev("tool.execution.delta", output_index=0, id="tool_exec_1", arguments='"x"}'),
    ev(
        "tool.execution.done",
        output_index=0,
        id="tool_exec_1",
        name="web_search",
        info={"results": 3},
    ),
    ev(
        "message.output.delta",
        output_index=1,
        id="msg_1",
        content_index=0,
        model="mistral-medium-latest",
        agent_id="ag_s",
        role="assistant",
        content="",
    ),
    ev("message.output.delta", id="msg_1", content="Hel"),
    b": ping\n\n",
    ev("message.output.delta", output_index=1, content=[{"type": "text", "text": "lo"}]),
    ev("message.output.delta", id="msg_1", content={"type": "text", "text": "!"}),
    ev("message.output.delta", id="msg_1", content=[THINK]),
    ev(
        "function.call.delta",
        output_index=2,
        id="fc_1",
        name="get_rate",
        tool_call_id="6TI17yZkV",
        arguments='{"date": ',
    ),
    ev(
        "function.call.delta",
        output_index=2,
        id="fc_1",
        name="get_rate",
        tool_call_id="",
        arguments='"2024-06-06"}',
    ),
    ev(
        "agent.handoff.started",
        output_index=3,
        id="ho_1",
        previous_agent_id="ag_s",
        previous_agent_name="A",
    ),
    ev("agent.handoff.done", output_index=3, id="ho_1", next_agent_id="ag_2", next_agent_name="B"),
    ev("some.future.event", output_index=4, id="x_1", content="?"),
    ev("conversation.response.done", usage=USAGE),
]
CONV_FULL_OUT = [
    {
        "type": "tool.execution",
        "id": "tool_exec_1",
        "name": "web_search",
        "arguments": '{"q": "x"}',
        "info": {"results": 3},
    },
    {
        "type": "message.output",
        "id": "msg_1",
        "role": "assistant",
        "model": "mistral-medium-latest",
        "agent_id": "ag_s",
        "content": "Hello!",
    },
    {
        "type": "function.call",
        "id": "fc_1",
        "tool_call_id": "6TI17yZkV",
        "name": "get_rate",
        "arguments": '{"date": "2024-06-06"}',
    },
    {
        "type": "agent.handoff",
        "id": "ho_1",
        "previous_agent_id": "ag_s",
        "previous_agent_name": "A",
        "next_agent_id": "ag_2",
        "next_agent_name": "B",
    },
]


def msg_out(id, content, **kw) -> dict:
    return {
        "type": "message.output",
        "id": id,
        "role": "assistant",
        "model": None,
        "agent_id": None,
        "content": content,
        **kw,
    }


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (CONV_FULL_STREAM, CONV_FULL_OUT),
        ([b"".join(CONV_FULL_STREAM)], CONV_FULL_OUT),
        (every(7, b"".join(CONV_FULL_STREAM).replace(b"\n", b"\r\n")), CONV_FULL_OUT),
        (
            split_events(CONV_STREAM),
            [msg_out("msg_1", "The end", model="mistral-medium-latest", agent_id="ag_s")],
        ),
        (
            split_events(CONV_CALL_STREAM),
            [
                {
                    "type": "function.call",
                    "id": "fc_1",
                    "tool_call_id": "t",
                    "name": "f",
                    "arguments": "{}",
                }
            ],
        ),
        # two messages at the same output_index are told apart by their ids
        (
            [
                ev("message.output.delta", id="m1", content="a"),
                ev("message.output.delta", id="m2", content="b"),
                ev("message.output.delta", id="m1", content="c"),
            ],
            [msg_out("m1", "ac"), msg_out("m2", "b")],
        ),
        # neither id nor output_index: one entry per type
        (
            [ev("message.output.delta", content="a"), ev("message.output.delta", content="b")],
            [msg_out(None, "ab")],
        ),
        # a done event with the whole arguments and no deltas before it
        (
            [
                ev(
                    "tool.execution.done",
                    id="t1",
                    name="code_interpreter",
                    arguments="{}",
                    info={"code": "print(1)"},
                )
            ],
            [
                {
                    "type": "tool.execution",
                    "id": "t1",
                    "name": "code_interpreter",
                    "arguments": "{}",
                    "info": {"code": "print(1)"},
                }
            ],
        ),
        # garbage: non-string ids and content, non-string arguments, odd info
        (
            [
                ev("message.output.delta", id=7, output_index="1", content=5, role=None),
                ev("function.call.delta", id="fc", arguments={"k": 1}, name=["x"]),
                ev("tool.execution.done", id="te", info="text"),
                ev("agent.handoff.done", id="h"),
                ev("message.output.delta", id="fc", content="same id, other type"),
            ],
            [
                msg_out(None, ""),
                {
                    "type": "function.call",
                    "id": "fc",
                    "tool_call_id": None,
                    "name": ["x"],
                    "arguments": {"k": 1},
                },
                {
                    "type": "tool.execution",
                    "id": "te",
                    "name": None,
                    "arguments": None,
                    "info": "text",
                },
                {
                    "type": "agent.handoff",
                    "id": "h",
                    "previous_agent_id": None,
                    "previous_agent_name": None,
                    "next_agent_id": None,
                    "next_agent_name": None,
                },
                msg_out("fc", "same id, other type"),
            ],
        ),
        (
            [
                ev("conversation.response.started", conversation_id="c"),
                ev("conversation.response.done", usage=USAGE),
            ],
            None,
        ),
        ([], None),
        ([CONV_STREAM[:300]], None),  # cut inside the first delta
    ],
)
def test_entries_out_stream(chunks, expected):
    p = parse("/v1/conversations", {"inputs": "x"}, chunks, resp_headers=SSE)
    assert p.entries_out == expected


def test_conversation_stream_other_facts():
    p = parse("/v1/conversations", {"inputs": "x"}, CONV_FULL_STREAM, resp_headers=SSE)
    assert (p.output_text, p.agent_id, p.conversation_id, p.total_tokens, p.conversation_op) == (
        "Hello!",
        "ag_s",
        "conv_s",
        16,
        "start",
    )
    assert p.message_out is None
    p = parse("/v1/conversations", {"inputs": "x"}, CONV_FULL_STREAM, status=500, resp_headers=SSE)
    assert p.entries_out is None


@pytest.mark.parametrize(
    ("path", "req", "expected"),
    [
        ("/v1/conversations", {"agent_id": "ag_req", "inputs": "x"}, "ag_req"),
        ("/v1/conversations/conv_1", {"inputs": "x"}, "ag_1"),
        ("/v1/agents/completions", {"agent_id": "ag_9", "messages": []}, "ag_9"),
        ("/v1/conversations", {"agent_id": 5, "inputs": "x"}, "ag_1"),
    ],
)
def test_agent_id(path, req, expected):
    assert parse(path, req, CONVERSATION).agent_id == expected


# -- request_params --------------------------------------------------------------------------

FN_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}


@pytest.mark.parametrize(
    ("path", "req", "expected"),
    [
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [USER],
                "temperature": 0.1,
                "max_tokens": 5,
                "stream": True,
                "tools": [FN_TOOL],
                "tool_choice": "auto",
                "response_format": {"type": "text"},
            },
            {
                "model": "m",
                "temperature": 0.1,
                "max_tokens": 5,
                "stream": True,
                "tool_choice": "auto",
                "response_format": {"type": "text"},
                "tools": ["get_weather"],
            },
        ),
        ("/v1/chat/completions", {"model": "m", "messages": [], "tools": []}, {"model": "m"}),
        (
            "/v1/chat/completions",
            {
                "messages": [],
                "tools": [
                    {"type": "function", "function": {}},
                    "x",
                    None,
                    {"function": {"name": 5}},
                    {"type": "web_search"},
                ],
            },
            {"tools": ["function", "web_search"]},
        ),
        ("/v1/chat/completions", {"messages": [], "tools": "all"}, {}),
        ("/v1/chat/completions", {"messages": [], "documents": [1], "input": "x"}, {}),
        (
            "/v1/fim/completions",
            {"model": "codestral-latest", "prompt": "def f(", "suffix": "return", "top_p": 1},
            {"model": "codestral-latest", "top_p": 1},
        ),
        (
            "/v1/agents/completions",
            {"agent_id": "ag_1", "messages": [], "random_seed": 3},
            {"agent_id": "ag_1", "random_seed": 3},
        ),
        (
            "/v1/conversations",
            {
                "agent_id": "ag_1",
                "inputs": "x",
                "store": False,
                "instructions": "be brief",
                "completion_args": {"temperature": 0.3, "tool_choice": "auto"},
                "tools": [{"type": "web_search"}, FN_TOOL, {"type": "code_interpreter"}],
            },
            {
                "agent_id": "ag_1",
                "store": False,
                "instructions": "be brief",
                "temperature": 0.3,
                "tool_choice": "auto",
                "tools": ["web_search", "get_weather", "code_interpreter"],
            },
        ),
        (
            "/v1/conversations/conv_1",
            {"inputs": "x", "completion_args": "hot"},
            {"completion_args": "hot"},
        ),
        (
            "/v1/conversations/conv_1",
            {"inputs": "x", "stream": 1, "completion_args": {"stream": 0, "top_p": 0.5}},
            {"stream": 1, "top_p": 0.5},
        ),
        ("/v1/conversations", {}, {}),
        ("/v1/conversations", [1], None),
        ("/v1/chat/completions", b"", None),
        ("/v1/chat/completions", b'{"model":', None),
        ("/v1/embeddings", {"model": "mistral-embed", "input": ["a"]}, None),
        ("/v1/ocr", {"model": "mistral-ocr-latest"}, None),
    ],
)
def test_request_params(path, req, expected):
    assert parse(path, req, [b"{}"]).request_params == expected


# -- hostile input for the new fields -------------------------------------------------------

HOSTILE_BODIES = [
    b'{"messages": [null, 1, "x", {"role": null, "content": {"a": [1]}}], "tools": [1, {}]}',
    b'{"messages": {"role": "user"}, "tools": {"type": "x"}, "completion_args": []}',
    b'{"inputs": 42, "completion_args": {"temperature": "hot"}}',
    b'{"inputs": [[], {"role": 1}, {"type": null}], "tools": [{"function": 5}]}',
    b'{"inputs": {"type": "function.result"}}',
    b"[]",
    b"null",
    b"5",
    b"{}",
    b"not json",
]
HOSTILE_RESPONSES = [
    [b'{"choices": [{"message": {"content": 5, "tool_calls": [null, {"function": []}]}}]}'],
    [b'{"outputs": [null, 5, {"type": 7}], "conversation_id": 9}'],
    [b'{"choices": {"0": 1}, "outputs": {"a": 1}}'],
    [
        sse(
            {
                "choices": [
                    {
                        "delta": {
                            "tool_calls": [
                                {"index": 0, "id": [1], "function": {"name": {}, "arguments": 5}},
                                {"index": 0, "id": "x", "function": {"arguments": "a"}},
                            ]
                        }
                    }
                ]
            },
            {"type": "message.output.delta", "id": {}, "output_index": [], "content": None},
            {"type": "function.call.delta", "arguments": 5},
            {"type": "tool.execution.done", "info": [1], "arguments": None},
        )
    ],
]


PATHS = [
    "/v1/chat/completions",
    "/v1/agents/completions",
    "/v1/fim/completions",
    "/v1/conversations",
    "/v1/conversations/conv_1/restart",
]
# Any JSON value, nested a few levels: what a hostile client or upstream may put anywhere.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
FIELDS = [
    "messages",
    "inputs",
    "tools",
    "completion_args",
    "choices",
    "outputs",
    "delta",
    "tool_calls",
    "function",
    "content",
    "role",
    "type",
    "id",
    "conversation_id",
    "info",
    "arguments",
    "index",
    "output_index",
    "usage",
    "model",
    "stream",
]


@st.composite
def hostile_document(draw: st.DrawFn) -> bytes:
    """A known hostile body, or a JSON object whose known fields hold any JSON at all."""
    known = draw(st.sampled_from(HOSTILE_BODIES) | st.just(None))
    if known is not None:
        return known
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5))
    return orjson.dumps(fields)


@st.composite
def hostile_answer(draw: st.DrawFn) -> list[bytes]:
    known = draw(st.sampled_from(HOSTILE_RESPONSES) | st.just(None))
    if known is not None:
        return known
    events = draw(
        st.lists(
            st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
            min_size=1,
            max_size=4,
        )
    )
    if draw(st.booleans()):
        return [sse(*events)]
    return [orjson.dumps(events[0])]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), hostile_document(), hostile_answer(), st.sampled_from([JSON, SSE]))
def test_new_fields_never_raise(path, body, resp, headers):
    p = MistralProvider().parse("POST", path, JSON, body, 200, headers, resp)
    for value in (p.messages_in, p.entries_in, p.entries_out):
        assert value is None or all(isinstance(v, dict) for v in value)
    for value in (p.message_out, p.request_params):
        assert value is None or isinstance(value, dict)
