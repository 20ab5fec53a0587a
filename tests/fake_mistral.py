"""A fake api.mistral.ai upstream for tests and benchmarks.

Why it exists: the gateway is a transparent recording proxy, so its tests need an upstream that
answers like Mistral does on the wire (shapes, SSE framing, usage placement, error bodies,
headers) without network access or API keys. Everything here follows
/work/shared/mistral/API_NOTES.md (sections 1-8 and 11) and openapi.yaml.

What it gives:
- ``make_app()``: an aiohttp app serving ``/v1/...`` at the root; every request (any method, any
  path) is recorded in ``app[REQUESTS]`` as {"method", "path", "query", "headers", "body"}.
- ``start_fake()``: runs it on an ephemeral loopback port; ``FakeMistral``: the same as an
  ``async with`` holder.
- ``python -m tests.fake_mistral --port 9999``: serves it standalone (benchmark upstream).

Answers behave like a real model's: each prompt has a model-neutral base answer that every
model rewords in its own style (different models share much of an answer, not all of it, and
answer at different lengths); temperature (default 0.7, as /v1/models reports) then resamples
a share of the words that grows with it, chosen by random_seed. Temperature 0 is greedy and
ignores the seed. Without a seed the fake derives one from the prompt (tests stay
reproducible) unless the request says x-fake-sampling: random. Token counts are word counts.

Control knobs (request headers; the gateway forwards everything but X-AgentOps-*):
  x-fake-status: N             answer with error N (429 adds Retry-After: 7)
  x-fake-gzip: 1               gzip the response body whatever Accept-Encoding says
  x-fake-chunk-delay-ms: N     sleep N ms between stream events
  x-fake-chunks: N             stream N content chunks (the text grows to >= N words)
  x-fake-hang: 1               accept the request, never answer (cancellable)
  x-fake-raw: TEXT             answer 200 text/plain TEXT
  x-fake-close-mid-stream: 1   write a few stream events, then drop the connection
  x-fake-echo: 1               answer JSON describing the received request (any path)
  x-fake-cached-tokens: N      force prompt_tokens_details.cached_tokens
  x-fake-pages: N              pages processed by /v1/ocr when the body names none
  x-fake-sampling: random      without random_seed (and temperature > 0), answers vary per call
  x-fake-tool-call-id: ID      a chat tool call gets this id (providers reuse short ids)
A test rate-limits the next N requests (429 with Retry-After: S) with
app[THROTTLE].update(remaining=N, retry_after="S").

Agents (POST /v1/agents) are kept in app[AGENTS]. A conversation with an agent that lists
`handoffs` hands off (server-side, unless handoff_execution is "client") to the first of them
whose name the user's input mentions: an `agent.handoff` entry, then that agent's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.parser
import email.policy
import gzip
import hashlib
import random
import secrets
import ssl
import string
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

# Each record: method, path (raw, still percent-encoded), query (raw string after "?"),
# headers (list of (name, value) in wire order and case), body (raw bytes).
REQUESTS = web.AppKey("requests", list[dict[str, Any]])
CONVERSATIONS = web.AppKey("conversations", dict[str, dict[str, Any]])
AGENTS = web.AppKey("agents", dict[str, dict[str, Any]])
# Rate limiting a test turns on: the next `remaining` requests answer 429 with this
# Retry-After ({"remaining": 0, "retry_after": "7"}: off).
THROTTLE = web.AppKey("throttle", dict[str, Any])
# Requests being answered now, and the most at once ({"now", "max"}), and a delay a test
# sets to hold each answer ({"delay": seconds}) so concurrency shows.
IN_FLIGHT = web.AppKey("in_flight", dict[str, Any])
SEEN_CACHE_KEYS = web.AppKey("seen_cache_keys", set[str])
# Uploaded files by id: their metadata and content (fine-tuning jobs read them: fake_finetune.py)
FILES = web.AppKey("files", dict[str, tuple[dict[str, Any], bytes]])


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Json = dict[str, Any]

CHAT_KEYS = frozenset(
    _names(
        # SPEC ChatCompletionRequest (additionalProperties: false) ...
        "model messages stream temperature top_p max_tokens stop random_seed presence_penalty "
        "frequency_penalty n response_format tools tool_choice parallel_tool_calls prediction "
        "reasoning_effort prompt_mode metadata guardrails prompt_cache_key service_tier "
        "safe_prompt "
        # ... plus fields mistralai 3.7.0 models can send that the SPEC does not list yet.
        "min_tokens repetition_penalty top_k logprobs top_logprobs prompt_logprobs "
        "top_prompt_logprobs"
    )
)
AGENTS_KEYS = (CHAT_KEYS - {"model", "temperature", "top_p", "safe_prompt"}) | {"agent_id"}
FIM_KEYS = frozenset(
    _names(
        "model prompt suffix temperature top_p max_tokens min_tokens stop random_seed stream "
        "metadata prompt_cache_key"
    )
)
CREATE_AGENT_KEYS = frozenset(
    _names(
        "instructions tools completion_args guardrails model name description handoffs metadata "
        "version_message"
    )
)
BUILTIN_CONNECTORS = frozenset(
    {"web_search", "web_search_premium", "code_interpreter", "image_generation", "document_library"}
)
CONNECTOR_TOKENS = 95
AGENT_MODEL = "mistral-medium-latest"
CLOSE_AFTER_EVENTS = 3
RATE_LIMIT_TOKENS = 2_000_000
RATE_LIMIT_REQUESTS = 600

VOCAB = _names(
    """the a model answer question context result value system agent tool request response
    data token stream record gateway upstream request simple clear short useful first next
    final quick careful precise small large open secure fast steady bright quiet green blue
    river mountain city garden window bridge market harbor forest signal pattern method
    measure explain consider suggest compare describe return check provide include follow
    usually often rarely clearly likely mostly nearly simply directly gently and or but so
    because while when then also still only just even therefore however instead meanwhile
    """
)

MODELS = (
    ("mistral-large-latest", "mistral-large-2512", 262144, "chat"),
    ("mistral-medium-latest", "mistral-medium-3-5", 131072, "chat"),
    ("mistral-small-latest", "mistral-small-2603", 131072, "chat"),
    ("magistral-medium-latest", "magistral-medium-2509", 131072, "reasoning"),
    ("codestral-latest", "codestral-2508", 262144, "fim"),
    ("mistral-embed", "mistral-embed", 8192, "embed"),
    ("mistral-ocr-latest", "mistral-ocr-4-1", 32768, "ocr"),
    ("mistral-moderation-latest", "mistral-moderation-2603", 8192, "moderation"),
)

MODERATION_CATEGORIES = (
    "sexual",
    "hate_and_discrimination",
    "violence_and_threats",
    "dangerous_and_criminal_content",
    "selfharm",
    "health",
    "financial",
    "law",
    "pii",
)


# ---------------------------------------------------------------- small helpers


def _hex_id() -> str:
    return uuid.uuid4().hex


def _tool_call_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    """Text of a message content: a string, None, or a list of chunks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [_chunk_text(c) for c in content if isinstance(c, dict)]
        return " ".join(p for p in parts if p)
    return str(content)


def _chunk_text(chunk: Json) -> str:
    if chunk.get("type") == "thinking":
        return _text_of(chunk.get("thinking"))
    value = chunk.get("text")
    return value if isinstance(value, str) else ""


def _rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _compose(rng: random.Random, n_words: int) -> str:
    """n_words words from VOCAB, as capitalised sentences of 5-11 words."""
    sentences: list[str] = []
    left = n_words
    while left > 0:
        size = min(left, rng.randint(5, 11))
        words = [rng.choice(VOCAB) for _ in range(size)]
        sentences.append(" ".join(words).capitalize() + ".")
        left -= size
    return " ".join(sentences)


DEFAULT_TEMPERATURE = 0.7  # what /v1/models reports as default_model_temperature
MAX_BASE_WORDS = 60


@dataclass(frozen=True)
class Sampling:
    """How a request samples: its model, temperature (the model's default when absent) and
    seed. Without a seed the fake picks one from the prompt, so tests stay reproducible,
    unless the caller asked for real randomness (x-fake-sampling: random)."""

    model: str
    temperature: float
    seed: Any
    random: bool = False

    @classmethod
    def of(cls, model: str, args: Json, request: web.Request | None = None) -> Sampling:
        temperature = args.get("temperature")
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            temperature = DEFAULT_TEMPERATURE
        knob = request.headers.get("x-fake-sampling") if request is not None else None
        return cls(model, float(temperature), args.get("random_seed"), knob == "random")


def _model_style(model: str) -> tuple[float, float]:
    """(share of words this model says differently, its length factor): fixed per model, so
    two models agree on much of an answer, as real ones do, but not on all of it."""
    rng = _rng("style", model)
    return 0.1 + 0.3 * rng.random(), 0.7 + 0.6 * rng.random()


def _sampler(sampling: Sampling, prompt: str, salt: object) -> random.Random | None:
    """Temperature 0 is greedy (no sampling, the seed no longer matters); above it, the
    seed decides which words change, and more of them change the hotter it is."""
    if sampling.temperature <= 0:
        return None
    if sampling.seed is None and sampling.random:
        return random.Random(secrets.randbits(64))
    return _rng("sample", sampling.model, sampling.temperature, sampling.seed, prompt, salt)


def _answer(sampling: Sampling, prompt: str, salt: object = 0, min_words: int = 0) -> str:
    """The answer text: a model-neutral base answer to the prompt, reworded in the model's
    style, then sampled at the request's temperature. Sentences keep their boundaries, so
    a word-level diff of two answers shows the words that changed."""
    base = _rng("answer", prompt, salt)
    size = max(min_words, MAX_BASE_WORDS)
    words = [base.choice(VOCAB) for _ in range(size)]
    breaks = set()
    at = 0
    while at < size:
        at += base.randint(5, 11)
        breaks.add(at - 1)
    share, factor = _model_style(sampling.model)
    n_words = max(min_words, 3, round(base.randint(12, 40) * factor))
    styler = _rng("model", sampling.model, prompt, salt)
    sampler = _sampler(sampling, prompt, salt)
    rate = min(0.9, 0.3 * sampling.temperature)
    out = []
    for i in range(n_words):
        word = words[i]
        if styler.random() < share:
            word = styler.choice(VOCAB)
        if sampler is not None and sampler.random() < rate:
            word = sampler.choice(VOCAB)
        out.append(word)
    sentences, current = [], []
    for i, word in enumerate(out):
        current.append(word)
        if i in breaks or i == len(out) - 1:
            sentences.append(" ".join(current).capitalize() + ".")
            current = []
    return " ".join(sentences)


def _thinking(sampling: Sampling, prompt: str, salt: object) -> str:
    rng = _rng(
        "think",
        sampling.model,
        sampling.temperature,
        None if sampling.temperature <= 0 else sampling.seed,
        prompt,
        salt,
    )
    return "Let me think. " + _compose(rng, rng.randint(8, 16))


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_dumps(obj), status=status, headers=headers, content_type="application/json"
    )


def _upstream_headers(cost: int = 0) -> dict[str, str]:
    """Headers the real API adds (API_NOTES §8)."""
    return {
        "mistral-correlation-id": _hex_id(),
        "x-kong-request-id": _hex_id(),
        "x-envoy-upstream-service-time": "1",
        "x-ratelimit-limit-tokens-minute": str(RATE_LIMIT_TOKENS),
        "x-ratelimit-remaining-tokens-minute": str(RATE_LIMIT_TOKENS - cost),
        "x-ratelimit-tokens-query-cost": str(cost),
        "x-ratelimit-limit-req-minute": str(RATE_LIMIT_REQUESTS),
        "x-ratelimit-remaining-req-minute": str(RATE_LIMIT_REQUESTS - 1),
    }


def _int_header(request: web.Request, name: str, default: int = 0) -> int:
    try:
        return int(request.headers.get(name, default))
    except ValueError:
        return default


# ---------------------------------------------------------------- errors (API_NOTES §8)


def _error_body(message: Any, kind: str, code: str | None = None) -> Json:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def error_response(status: int) -> web.Response:
    """The body Mistral sends for an HTTP error status."""
    headers = _upstream_headers()
    if status == 401:
        body: Json = {"message": "Unauthorized", "request_id": headers["mistral-correlation-id"]}
    elif status == 429:
        body = _error_body("Rate limit exceeded", "rate_limited", "1300")
        body["raw_status_code"] = 429
        headers["Retry-After"] = "7"
    elif status == 422:
        detail = {
            "type": "extra_forbidden",
            "loc": ["body", "max_completion_tokens"],
            "msg": "Extra inputs are not permitted",
            "input": 32000,
        }
        body = _error_body({"detail": [detail]}, "invalid_request_error")
    elif status == 500:
        body = {"detail": "Internal Server Error"}
    else:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = _error_body(f"Fake upstream error {status}", kind)
    return _json_response(body, status, headers)


def _validation_error(details: list[Json]) -> web.Response:
    body = _error_body({"detail": details}, "invalid_request_error")
    return _json_response(body, 422, _upstream_headers())


def _bad_request(message: str) -> web.Response:
    body = _error_body(message, "invalid_request_error")
    return _json_response(body, 400, _upstream_headers())


def _not_found(detail: str = "Not Found") -> web.Response:
    return _json_response({"detail": detail}, 404, _upstream_headers())


class _BadBody(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__("bad request body")
        self.response = response


async def _json_body(request: web.Request) -> Json:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        detail = {
            "type": "json_invalid",
            "loc": ["body", exc.pos],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise _BadBody(_validation_error([detail])) from exc
    if not isinstance(body, dict):
        detail = {
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object",
            "input": body,
        }
        raise _BadBody(_validation_error([detail]))
    return body


def _check_keys(body: Json, allowed: Iterable[str], required: Iterable[str]) -> None:
    allowed_set = set(allowed)
    details = [
        {
            "type": "extra_forbidden",
            "loc": ["body", key],
            "msg": "Extra inputs are not permitted",
            "input": value,
        }
        for key, value in body.items()
        if key not in allowed_set
    ]
    details += [
        {"type": "missing", "loc": ["body", key], "msg": "Field required", "input": body}
        for key in required
        if key not in body
    ]
    if details:
        raise _BadBody(_validation_error(details))


def _require(body: Json, *keys: str) -> None:
    """422 `missing` for absent keys; other keys are not checked."""
    _check_keys(body, body.keys(), keys)


# ---------------------------------------------------------------- completions (§2-§4, §6)


@dataclass
class Completion:
    """One planned completion: what to say, and what it costs."""

    model: str
    text: str = ""
    thinking: str = ""
    tool_calls: list[Json] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> Json:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def content(self) -> Any:
        if not self.thinking:
            return self.text
        return [
            {"type": "thinking", "thinking": [{"type": "text", "text": self.thinking}]},
            {"type": "text", "text": self.text},
        ]

    def message(self) -> Json:
        return {
            "role": "assistant",
            "content": self.content(),
            "tool_calls": self.tool_calls or None,
            "prefix": False,
        }


def _last_message(messages: list[Any], role: str | None = None) -> Json:
    for msg in reversed(messages):
        if isinstance(msg, dict) and (role is None or msg.get("role") == role):
            return msg
    return {}


def _pick_tool(tools: list[Any], tool_choice: Any) -> Json | None:
    functions = [t.get("function", {}) for t in tools if isinstance(t, dict)]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        wanted = tool_choice.get("function", {}).get("name")
        return next((f for f in functions if f.get("name") == wanted), functions[0])
    return functions[0]


def _tool_arguments(function: Json, user_text: str) -> str:
    """Fill the first (required) parameter of the tool with the user's text."""
    params = function.get("parameters") or {}
    props = list((params.get("properties") or {}).keys())
    required = [p for p in params.get("required") or [] if p in props]
    name = (required or props or ["query"])[0]
    return orjson.dumps({name: user_text}).decode()


def _tool_call(function: Json, user_text: str, call_id: str | None = None) -> Json:
    return {
        "id": call_id or _tool_call_id(),
        "type": "function",
        "index": 0,
        "function": {
            "name": function.get("name", "tool"),
            "arguments": _tool_arguments(function, user_text),
        },
    }


def _cached_tokens(request: web.Request, body: Json, prompt_tokens: int) -> int:
    if "x-fake-cached-tokens" in request.headers:
        return min(prompt_tokens, _int_header(request, "x-fake-cached-tokens"))
    key = body.get("prompt_cache_key")
    if not isinstance(key, str):
        return 0
    seen = request.app[SEEN_CACHE_KEYS]
    hit = key in seen
    seen.add(key)
    return (prompt_tokens // 64) * 64 if hit else 0


def _is_reasoning(model: str, body: Json) -> bool:
    return model.startswith("magistral") or body.get("prompt_mode") == "reasoning"


def _plan_text(
    request: web.Request, plan: Completion, body: Json, prompt: str, salt: object, min_words: int
) -> None:
    sampling = Sampling.of(plan.model, body, request)
    text = _answer(sampling, prompt, salt, min_words)
    if _is_reasoning(plan.model, body):
        plan.thinking = _thinking(sampling, prompt, salt)
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt, dict) else None
    if isinstance(schema, dict) and fmt.get("type") == "json_schema":
        text = orjson.dumps(_conforming(schema, text)).decode()  # structured outputs
    elif isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        text = orjson.dumps({"answer": text}).decode()
    plan.text = text


def _conforming(schema: Json, text: str) -> Any:
    """A value the JSON schema accepts, as structured outputs give: the first enum value,
    the middle of a number's range, the answer's words for a string."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _conforming(v, text) for k, v in props.items() if isinstance(v, dict)}
    if kind in ("number", "integer"):
        low, high = schema.get("minimum", 0), schema.get("maximum", 1)
        middle = (low + high) / 2
        return int(middle) if kind == "integer" else middle
    if kind == "array":
        return []
    if kind == "boolean":
        return True
    return text


def _truncate(plan: Completion, max_tokens: Any) -> None:
    """Cut the text to max_tokens words (thinking counts too), finish_reason "length"."""
    if not isinstance(max_tokens, int) or max_tokens <= 0:
        return
    budget = max(0, max_tokens - _words(plan.thinking))
    words = plan.text.split()
    if budget < len(words):
        plan.text = " ".join(words[:budget])
        plan.finish_reason = "length"


def plan_chat(request: web.Request, body: Json, model: str, salt: object = 0) -> Completion:
    """Decide the answer to a chat/agents request (deterministic, see module doc)."""
    messages = body.get("messages") or []
    plan = Completion(model=model)
    plan.prompt_tokens = max(
        1, sum(_words(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    )
    last = _last_message(messages)
    user_text = _text_of(_last_message(messages, "user").get("content"))
    tool = _pick_tool(body.get("tools") or [], body.get("tool_choice"))
    if tool is not None and last.get("role") == "user":
        plan.tool_calls = [_tool_call(tool, user_text, request.headers.get("x-fake-tool-call-id"))]
        plan.finish_reason = "tool_calls"
        plan.completion_tokens = _words(plan.tool_calls[0]["function"]["arguments"]) + 4
    else:
        min_words = _int_header(request, "x-fake-chunks")
        _plan_text(request, plan, body, user_text, salt, min_words)
        if last.get("role") == "tool":
            tool_text = _text_of(last.get("content"))
            plan.text = f"According to {last.get('name') or 'the tool'}: {tool_text}. {plan.text}"
        _truncate(plan, body.get("max_tokens"))
        plan.completion_tokens = _words(plan.thinking) + _words(plan.text)
    plan.cached_tokens = _cached_tokens(request, body, plan.prompt_tokens)
    return plan


def plan_fim(request: web.Request, body: Json) -> Completion:
    prompt = str(body.get("prompt") or "")
    suffix = str(body.get("suffix") or "")
    plan = Completion(model=str(body.get("model")))
    plan.prompt_tokens = max(1, _words(prompt) + _words(suffix))
    _plan_text(
        request,
        plan,
        {**body, "response_format": None},
        prompt + "\x00" + suffix,
        0,
        _int_header(request, "x-fake-chunks"),
    )
    _truncate(plan, body.get("max_tokens"))
    plan.completion_tokens = _words(plan.text)
    plan.cached_tokens = _cached_tokens(request, body, plan.prompt_tokens)
    return plan


def _completion_json(plans: list[Completion], completion_id: str) -> Json:
    first = plans[0]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": first.model,
        "choices": [
            {"index": i, "message": p.message(), "finish_reason": p.finish_reason}
            for i, p in enumerate(plans)
        ],
        "usage": {
            "prompt_tokens": first.prompt_tokens,
            "completion_tokens": sum(p.completion_tokens for p in plans),
            "total_tokens": first.prompt_tokens + sum(p.completion_tokens for p in plans),
            "prompt_tokens_details": {"cached_tokens": first.cached_tokens},
        },
    }


def _split(text: str, n_chunks: int) -> list[str]:
    """Split text into n_chunks word groups (one per word when n_chunks is 0 or too big)."""
    words = text.split(" ")
    if n_chunks <= 0 or n_chunks > len(words):
        n_chunks = len(words)
    size, extra = divmod(len(words), n_chunks)
    pieces, start = [], 0
    for i in range(n_chunks):
        end = start + size + (1 if i < extra else 0)
        pieces.append(" ".join(words[start:end]))
        start = end
    return [p if i == 0 else " " + p for i, p in enumerate(pieces)]


def _chunk_events(plan: Completion, n_chunks: int) -> list[bytes]:
    """Data-only SSE events of a streamed completion (§3)."""
    base = {
        "id": _hex_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": plan.model,
    }

    def event(delta: Json, finish: str | None = None, usage: Json | None = None) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + _dumps(chunk) + b"\n\n"

    events = [event({"role": "assistant", "content": ""})]
    if plan.thinking:
        thinking = [{"type": "thinking", "thinking": [{"type": "text", "text": plan.thinking}]}]
        events.append(event({"content": thinking}))
    if plan.tool_calls:
        events.append(event({"tool_calls": plan.tool_calls}))
    else:
        events += [event({"content": piece}) for piece in _split(plan.text, n_chunks)]
    events.append(event({"content": ""}, plan.finish_reason, plan.usage()))
    events.append(b"data: [DONE]\n\n")
    return events


async def _answer_completion(
    request: web.Request, plans: list[Completion], stream: bool
) -> web.StreamResponse:
    cost = plans[0].prompt_tokens + sum(p.completion_tokens for p in plans)
    headers = _upstream_headers(cost)
    if stream:
        events = _chunk_events(plans[0], _int_header(request, "x-fake-chunks"))
        return await stream_events(request, events, headers)
    return _json_response(_completion_json(plans, _hex_id()), headers=headers)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _check_keys(body, CHAT_KEYS, ("model", "messages"))
    if not isinstance(body["messages"], list) or not body["messages"]:
        return _bad_request("messages must be a non-empty list")
    n = body.get("n")
    n = n if isinstance(n, int) and n > 0 else 1
    plans = [plan_chat(request, body, str(body["model"]), salt=i) for i in range(n)]
    return await _answer_completion(request, plans, bool(body.get("stream")))


async def agents_completions(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _check_keys(body, AGENTS_KEYS, ("agent_id", "messages"))
    plan = plan_chat(request, {**body, "model": AGENT_MODEL}, AGENT_MODEL, salt=body["agent_id"])
    return await _answer_completion(request, [plan], bool(body.get("stream")))


async def fim_completions(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _check_keys(body, FIM_KEYS, ("model", "prompt"))
    return await _answer_completion(request, [plan_fim(request, body)], bool(body.get("stream")))


# ---------------------------------------------------------------- streaming machinery


async def stream_events(
    request: web.Request, events: list[bytes], headers: dict[str, str]
) -> web.StreamResponse:
    """Write SSE events, honouring the gzip / delay / close-mid-stream knobs."""
    gzipped = request.headers.get("x-fake-gzip") == "1"
    delay = _int_header(request, "x-fake-chunk-delay-ms") / 1000
    close_mid = request.headers.get("x-fake-close-mid-stream") == "1"
    response = web.StreamResponse(headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    compressor = zlib.compressobj(wbits=31) if gzipped else None
    await response.prepare(request)
    try:
        for index, event in enumerate(events):
            if index and delay:
                await asyncio.sleep(delay)
            if close_mid and index == CLOSE_AFTER_EVENTS:
                _drop_connection(request)
                return response
            if compressor is not None:
                event = compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH)
            await response.write(event)
        if compressor is not None:
            await response.write(compressor.flush())
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away; nothing more to do
    return response


def _drop_connection(request: web.Request) -> None:
    """Close the socket without ending the chunked body (client sees a truncated stream)."""
    transport = request.transport
    if transport is not None:
        transport.close()


# ---------------------------------------------------------------- embeddings, models, misc (§4, §7)


def _vector(text: str, dims: int) -> list[float]:
    rng = _rng("embed", text)
    return [round(rng.uniform(-0.1, 0.1), 6) for _ in range(dims)]


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _check_keys(
        body,
        ("model", "input", "output_dimension", "output_dtype", "encoding_format", "metadata"),
        ("model", "input"),
    )
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    dims = body.get("output_dimension") or 1024
    tokens = sum(_words(str(text)) for text in inputs)
    data = [
        {"object": "embedding", "embedding": _vector(str(text), dims), "index": i}
        for i, text in enumerate(inputs)
    ]
    usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    result = {
        "id": _hex_id(),
        "object": "list",
        "model": body["model"],
        "data": data,
        "usage": usage,
    }
    return _json_response(result, headers=_upstream_headers(tokens))


def _model_card(model_id: str, name: str, context: int, kind: str) -> Json:
    chat = kind in ("chat", "reasoning")
    return {
        "id": model_id,
        "object": "model",
        "created": 1754040000,
        "owned_by": "mistralai",
        "type": "base",
        "name": name,
        "description": f"Fake {name}",
        "max_context_length": context,
        "aliases": [name] if name != model_id else [],
        "deprecation": None,
        "default_model_temperature": 0.7 if chat else None,
        "capabilities": {
            "completion_chat": chat or kind == "fim",
            "function_calling": chat,
            "reasoning": kind == "reasoning",
            "completion_fim": kind == "fim",
            "fine_tuning": False,
            "vision": chat,
            "ocr": kind == "ocr",
            "classification": False,
            "moderation": kind == "moderation",
        },
    }


async def list_models(request: web.Request) -> web.StreamResponse:
    data = [_model_card(*spec) for spec in MODELS]
    return _json_response({"object": "list", "data": data}, headers=_upstream_headers())


async def moderations(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _check_keys(body, ("model", "input", "metadata"), ("model", "input"))
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    results = []
    for text in inputs:
        rng = _rng("moderation", text)
        scores = {c: round(rng.random() * 0.05, 6) for c in MODERATION_CATEGORIES}
        results.append(
            {"categories": dict.fromkeys(MODERATION_CATEGORIES, False), "category_scores": scores}
        )
    result = {"id": _hex_id(), "model": body["model"], "results": results}
    return _json_response(result, headers=_upstream_headers())


def _ocr_page(index: int, document: Any) -> Json:
    rng = _rng("ocr", orjson.dumps(document, option=orjson.OPT_SORT_KEYS), index)
    return {
        "index": index,
        "markdown": f"# Page {index + 1}\n\n{_compose(rng, 30)}",
        "images": [],
        "tables": [],
        "hyperlinks": [],
        "header": None,
        "footer": None,
        "dimensions": {"dpi": 200, "height": 2200, "width": 1700},
    }


async def ocr(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _require(body, "model", "document")
    pages = body.get("pages")
    indexes = (
        pages
        if isinstance(pages, list) and pages
        else list(range(max(1, _int_header(request, "x-fake-pages", 1))))
    )
    result = {
        "pages": [_ocr_page(i, body["document"]) for i in indexes],
        "model": body["model"],
        "document_annotation": None,
        "usage_info": {
            "pages_processed": len(indexes),
            "doc_size_bytes": len(_dumps(body["document"])),
        },
    }
    return _json_response(result, headers=_upstream_headers())


# ---------------------------------------------------------------- files (§7)


def _multipart_parts(request: web.Request, raw: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """Form fields by name: (filename, content type, payload), parsed from the raw body."""
    head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    parts: dict[str, tuple[str | None, str, bytes]] = {}
    if not message.is_multipart():
        return parts
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        parts[str(name)] = (part.get_filename(), part.get_content_type(), payload)
    return parts


def _form_text(parts: dict[str, tuple[str | None, str, bytes]], name: str, default: str) -> str:
    return parts[name][2].decode() if name in parts else default


async def upload_file(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    parts = _multipart_parts(request, raw)
    if "file" not in parts:
        detail = {
            "type": "missing",
            "loc": ["body", "file"],
            "msg": "Field required",
            "input": None,
        }
        return _validation_error([detail])
    filename, mimetype, payload = parts["file"]
    purpose = _form_text(parts, "purpose", "fine-tune")
    sample_type = {"batch": "batch_request", "fine-tune": "instruct"}.get(purpose, "instruct")
    result = {
        "id": str(uuid.uuid4()),
        "object": "file",
        "bytes": len(payload),
        "created_at": int(time.time()),
        "filename": filename or "upload",
        "purpose": purpose,
        "sample_type": sample_type,
        "num_lines": payload.count(b"\n") or None,
        "mimetype": mimetype,
        "source": "upload",
        "signature": hashlib.sha256(payload).hexdigest(),
        "expires_at": None,
        "visibility": _form_text(parts, "visibility", "workspace"),
    }
    request.app[FILES][result["id"]] = (result, payload)
    return _json_response(result, headers=_upstream_headers())


# ---------------------------------------------------------------- conversations (§5)


def _input_entries(inputs: Any) -> list[Json]:
    """Normalise conversation `inputs` (a string or a list of entries) to stored entries."""
    items = [{"role": "user", "content": inputs}] if isinstance(inputs, str) else list(inputs)
    entries = []
    now = _iso_now()
    for item in items:
        entry: Json = {"object": "entry", "created_at": now, "completed_at": now, **item}
        if "tool_call_id" in item and "result" in item:
            entry.setdefault("type", "function.result")
        else:
            entry.setdefault("type", "message.input")
            entry.setdefault("id", f"msg_{_hex_id()}")
            entry.setdefault("prefix", False)
        entries.append(entry)
    return entries


def _entry_text(entry: Json) -> str:
    if entry.get("type") == "function.result":
        return str(entry.get("result", ""))
    if entry.get("type") == "function.call":
        return str(entry.get("arguments", ""))
    return _text_of(entry.get("content"))


@dataclass
class ConversationTurn:
    """The outputs and usage of one conversation call."""

    outputs: list[Json]
    usage: Json


def _handoff_target(conv: Json, agents: dict[str, Json], user_text: str) -> Json | None:
    """The agent a conversation's agent hands off to: the first of its `handoffs` whose name
    the user's words mention (a real model decides; the fake must be predictable)."""
    agent = agents.get(conv.get("agent_id") or "")
    if agent is None or conv.get("handoff_execution") == "client":
        return None
    words = user_text.lower()
    for target_id in agent.get("handoffs") or ():
        target = agents.get(target_id)
        if target is not None and target["name"].lower() in words:
            return target
    return None


def _handoff_entry(previous: Json, target: Json) -> Json:
    now = _iso_now()
    return {
        "object": "entry",
        "type": "agent.handoff",
        "id": f"handoff_{_hex_id()}",
        "previous_agent_id": previous["id"],
        "previous_agent_name": previous["name"],
        "next_agent_id": target["id"],
        "next_agent_name": target["name"],
        "created_at": now,
        "completed_at": now,
    }


def _as_agent(conv: Json, agent: Json) -> Json:
    """The conversation as the agent it was handed to answers it: its model, instructions,
    tools and completion arguments."""
    return {
        **conv,
        "agent_id": agent["id"],
        "model": agent["model"],
        "instructions": agent.get("instructions"),
        "tools": agent.get("tools") or [],
        "completion_args": {**(agent.get("completion_args") or {}), **conv["completion_args"]},
    }


def _conversation_turn(
    conv: Json, new_entries: list[Json], request: web.Request | None = None
) -> ConversationTurn:
    agents = request.app[AGENTS] if request is not None else {}
    last = new_entries[-1] if new_entries else {}
    target = _handoff_target(conv, agents, _entry_text(last))
    if target is None:
        return _agent_turn(conv, new_entries, request)
    handoff = _handoff_entry(agents[conv["agent_id"]], target)
    turn = _agent_turn(_as_agent(conv, target), new_entries, request)
    return ConversationTurn([handoff, *turn.outputs], turn.usage)


def _agent_turn(
    conv: Json, new_entries: list[Json], request: web.Request | None = None
) -> ConversationTurn:
    args = conv.get("completion_args") or {}
    model, agent_id = conv["model"], conv.get("agent_id")
    history = conv["entries"]
    prompt_tokens = max(
        1, _words(conv.get("instructions") or "") + sum(_words(_entry_text(e)) for e in history)
    )
    last = new_entries[-1] if new_entries else {}
    tools = [t for t in conv.get("tools") or [] if isinstance(t, dict)]
    functions = [t.get("function", t) for t in tools if t.get("type") == "function"]
    connectors = [t["type"] for t in tools if t.get("type") in BUILTIN_CONNECTORS]
    now = _iso_now()
    outputs: list[Json] = []
    connector_tokens = 0
    user_text = _entry_text(last)
    if last.get("type") == "message.input" and functions:
        outputs.append(
            {
                "object": "entry",
                "type": "function.call",
                "id": f"fc_{_hex_id()}",
                "tool_call_id": _tool_call_id(),
                "name": functions[0].get("name", "tool"),
                "arguments": _tool_arguments(functions[0], user_text),
                "confirmation_status": None,
                "agent_id": agent_id,
                "model": model,
                "created_at": now,
                "completed_at": None,
            }
        )
    else:
        if last.get("type") == "message.input" and connectors:
            connector_tokens = CONNECTOR_TOKENS
            outputs.append(
                {
                    "object": "entry",
                    "type": "tool.execution",
                    "id": f"tool_exec_{_hex_id()}",
                    "name": connectors[0],
                    "arguments": orjson.dumps({"query": user_text}).decode(),
                    "info": {},
                    "agent_id": agent_id,
                    "model": model,
                    "created_at": now,
                    "completed_at": now,
                }
            )
        text = _answer(Sampling.of(model, args, request), user_text)
        if last.get("type") == "function.result":
            text = f"The function returned {last.get('result')}. {text}"
        outputs.append(
            {
                "object": "entry",
                "type": "message.output",
                "id": f"msg_{_hex_id()}",
                "role": "assistant",
                "content": text,
                "agent_id": agent_id,
                "model": model,
                "created_at": now,
                "completed_at": now,
            }
        )
    completion_tokens = sum(_words(_entry_text(e)) for e in outputs)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens + connector_tokens,
        "connector_tokens": connector_tokens or None,
        "connectors": {connectors[0]: 1} if connector_tokens else None,
    }
    return ConversationTurn(outputs, usage)


def _sse_event(kind: str, data: Json) -> bytes:
    return f"event: {kind}\ndata: ".encode() + _dumps({"type": kind, **data}) + b"\n\n"


def _output_events(index: int, entry: Json, n_chunks: int) -> list[bytes]:
    now = entry.get("created_at")
    common = {"output_index": index, "id": entry["id"], "created_at": now}
    if entry["type"] == "tool.execution":
        return [
            _sse_event(
                "tool.execution.started",
                {**common, "name": entry["name"], "arguments": entry["arguments"]},
            ),
            _sse_event("tool.execution.done", {**common, "name": entry["name"], "info": {}}),
        ]
    if entry["type"] == "agent.handoff":
        return [
            _sse_event(
                "agent.handoff.started",
                {
                    **common,
                    "previous_agent_id": entry["previous_agent_id"],
                    "previous_agent_name": entry["previous_agent_name"],
                },
            ),
            _sse_event(
                "agent.handoff.done",
                {
                    **common,
                    "next_agent_id": entry["next_agent_id"],
                    "next_agent_name": entry["next_agent_name"],
                },
            ),
        ]
    owner = {"model": entry.get("model"), "agent_id": entry.get("agent_id")}
    if entry["type"] == "function.call":
        return [
            _sse_event(
                "function.call.delta",
                {
                    **common,
                    **owner,
                    "name": entry["name"],
                    "tool_call_id": entry["tool_call_id"],
                    "arguments": entry["arguments"],
                },
            )
        ]
    return [
        _sse_event(
            "message.output.delta",
            {**common, **owner, "content_index": 0, "role": "assistant", "content": piece},
        )
        for piece in _split(entry["content"], n_chunks)
    ]


def _conversation_events(conv_id: str, turn: ConversationTurn, n_chunks: int) -> list[bytes]:
    events = [
        _sse_event(
            "conversation.response.started", {"conversation_id": conv_id, "created_at": _iso_now()}
        )
    ]
    for index, entry in enumerate(turn.outputs):
        events += _output_events(index, entry, n_chunks)
    events.append(
        _sse_event("conversation.response.done", {"usage": turn.usage, "created_at": _iso_now()})
    )
    return events


async def _run_conversation(
    request: web.Request, conv: Json, inputs: Any, body: Json
) -> web.StreamResponse:
    new_entries = _input_entries(inputs)
    conv["entries"].extend(new_entries)
    turn = _conversation_turn(conv, new_entries, request)
    conv["entries"].extend(turn.outputs)
    if body.get("store") is not False:
        request.app[CONVERSATIONS][conv["id"]] = conv
    headers = _upstream_headers(turn.usage["total_tokens"])
    if body.get("stream"):
        n_chunks = _int_header(request, "x-fake-chunks")
        return await stream_events(
            request, _conversation_events(conv["id"], turn, n_chunks), headers
        )
    result = {
        "object": "conversation.response",
        "conversation_id": conv["id"],
        "outputs": turn.outputs,
        "usage": turn.usage,
    }
    return _json_response(result, headers=headers)


async def start_conversation(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _require(body, "inputs")
    if not body.get("model") and not body.get("agent_id"):
        return _bad_request("Either model or agent_id must be provided")
    agent = request.app[AGENTS].get(body.get("agent_id") or "") or {}
    conv = {
        "id": f"conv_{_hex_id()}",
        "model": body.get("model") or agent.get("model") or AGENT_MODEL,
        "agent_id": body.get("agent_id"),
        "instructions": body.get("instructions") or agent.get("instructions"),
        "tools": body.get("tools") or agent.get("tools") or [],
        "completion_args": body.get("completion_args") or agent.get("completion_args") or {},
        "handoff_execution": body.get("handoff_execution"),
        "entries": [],
    }
    return await _run_conversation(request, conv, body["inputs"], body)


def _stored_conversation(request: web.Request) -> Json | None:
    return request.app[CONVERSATIONS].get(request.match_info["conversation_id"])


async def append_conversation(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _require(body, "inputs")
    conv = _stored_conversation(request)
    if conv is None:
        return _not_found("Conversation not found")
    if body.get("completion_args"):
        conv["completion_args"] = body["completion_args"]
    if body.get("handoff_execution"):
        conv["handoff_execution"] = body["handoff_execution"]
    return await _run_conversation(request, conv, body["inputs"], body)


async def restart_conversation(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _require(body, "inputs", "from_entry_id")
    conv = _stored_conversation(request)
    if conv is None:
        return _not_found("Conversation not found")
    ids = [e.get("id") for e in conv["entries"]]
    if body["from_entry_id"] not in ids:
        return _bad_request(f"Entry {body['from_entry_id']} not found in conversation")
    kept = conv["entries"][: ids.index(body["from_entry_id"]) + 1]
    branch = {**conv, "id": f"conv_{_hex_id()}", "entries": list(kept)}
    return await _run_conversation(request, branch, body["inputs"], body)


async def conversation_history(request: web.Request) -> web.StreamResponse:
    conv = _stored_conversation(request)
    if conv is None:
        return _not_found("Conversation not found")
    result = {
        "object": "conversation.history",
        "conversation_id": conv["id"],
        "entries": conv["entries"],
    }
    return _json_response(result, headers=_upstream_headers())


# ---------------------------------------------------------------- agents (§6)


async def create_agent(request: web.Request) -> web.StreamResponse:
    """POST /v1/agents: an Agent (SPEC `Agent`), kept for conversations to run."""
    body = await _json_body(request)
    _check_keys(body, CREATE_AGENT_KEYS, ("model", "name"))
    now = _iso_now()
    agent = {
        "object": "agent",
        "id": f"ag_{_hex_id()}",
        "name": body["name"],
        "model": body["model"],
        "instructions": body.get("instructions"),
        "tools": body.get("tools") or [],
        "completion_args": body.get("completion_args") or {},
        "guardrails": body.get("guardrails"),
        "description": body.get("description"),
        "handoffs": body.get("handoffs"),
        "metadata": body.get("metadata"),
        "version": 0,
        "versions": [0],
        "created_at": now,
        "updated_at": now,
        "deployment_chat": False,
        "source": "api",
        "version_message": body.get("version_message"),
    }
    request.app[AGENTS][agent["id"]] = agent
    return _json_response(agent, headers=_upstream_headers())


async def get_agent(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENTS].get(request.match_info["agent_id"])
    if agent is None:
        return _not_found("Agent not found")
    return _json_response(agent, headers=_upstream_headers())


# ---------------------------------------------------------------- middlewares


def _record_of(request: web.Request, body: bytes) -> Json:
    path, _, query = request.raw_path.partition("?")
    headers = [
        (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
        for k, v in request.raw_headers
    ]
    return {
        "method": request.method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": body,
    }


@web.middleware
async def record_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every request (any method, any path) before anything else looks at it."""
    body = await request.read()
    request.app[REQUESTS].append(_record_of(request, body))
    flight = request.app.get(IN_FLIGHT)  # the fake ElevenLabs shares this middleware
    if flight is None:
        return await handler(request)
    flight["now"] += 1
    flight["max"] = max(flight["max"], flight["now"])
    try:
        if flight["delay"]:
            await asyncio.sleep(flight["delay"])
        return await handler(request)
    finally:
        flight["now"] -= 1


def _echo(request: web.Request) -> web.Response:
    record = request.app[REQUESTS][-1]
    return _json_response(
        {
            "method": record["method"],
            "path": record["path"],
            "query": record["query"],
            "headers": record["headers"],
            "body_b64": base64.b64encode(record["body"]).decode(),
        }
    )


async def _knob_or_handler(request: web.Request, handler: Handler) -> web.StreamResponse:
    headers = request.headers
    if headers.get("x-fake-echo") == "1":
        return _echo(request)
    if headers.get("x-fake-hang") == "1":
        await asyncio.Future()  # never resolves; cancelled with the connection or at shutdown
    if "x-fake-raw" in headers:
        return web.Response(text=headers["x-fake-raw"], content_type="text/plain")
    status = _int_header(request, "x-fake-status")
    if status >= 400:
        return error_response(status)
    throttle = request.app[THROTTLE]
    if throttle["remaining"] > 0:
        throttle["remaining"] -= 1
        response = error_response(429)
        response.headers["Retry-After"] = throttle["retry_after"]
        return response
    return await _route(request, handler)


def _authorized(request: web.Request) -> bool:
    auth = request.headers.get("Authorization", "")
    return auth.startswith("Bearer ") and bool(auth[len("Bearer ") :].strip())


async def _route(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:
        status = request.match_info.http_exception.status
        if status == 405:
            return _json_response({"detail": "Method Not Allowed"}, 405, _upstream_headers())
        return _not_found()
    if not _authorized(request):
        return error_response(401)
    try:
        return await handler(request)
    except _BadBody as exc:
        return exc.response


@web.middleware
async def knob_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the x-fake-* knobs, routing errors, auth, and gzip of plain responses."""
    response = await _knob_or_handler(request, handler)
    if request.headers.get("x-fake-gzip") == "1" and isinstance(response, web.Response):
        response.body = gzip.compress(response.body or b"")  # type: ignore[arg-type]
        response.headers["Content-Encoding"] = "gzip"
    return response


# ---------------------------------------------------------------- app and runners


def make_app(max_recorded: int | None = None) -> web.Application:
    """The fake upstream. max_recorded bounds app[REQUESTS] (for long benchmark runs)."""
    app = web.Application(
        middlewares=[record_middleware, knob_middleware], client_max_size=512 * 1024 * 1024
    )
    app[REQUESTS] = _BoundedList(max_recorded) if max_recorded else []
    app[CONVERSATIONS] = {}
    app[AGENTS] = {}
    app[THROTTLE] = {"remaining": 0, "retry_after": "7"}
    app[IN_FLIGHT] = {"now": 0, "max": 0, "delay": 0.0}
    app[SEEN_CACHE_KEYS] = set()
    app[FILES] = {}
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/fim/completions", fim_completions)
    app.router.add_post("/v1/agents/completions", agents_completions)
    app.router.add_post("/v1/agents", create_agent)
    app.router.add_get("/v1/agents/{agent_id}", get_agent)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/conversations", start_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}", append_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}/restart", restart_conversation)
    app.router.add_get("/v1/conversations/{conversation_id}/history", conversation_history)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/files", upload_file)
    app.router.add_post("/v1/ocr", ocr)
    app.router.add_post("/v1/moderations", moderations)
    from tests.fake_finetune import add_routes  # it builds on this module's helpers

    add_routes(app)
    return app


class _BoundedList(list):  # type: ignore[type-arg]
    """A list that keeps roughly the newest `limit` items."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def append(self, item: Any) -> None:
        super().append(item)
        if len(self) > 2 * self.limit:
            del self[: len(self) - self.limit]


async def start_fake(
    host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str, web.Application]:
    """Start the fake on host:port (0 = ephemeral), over TLS with `ssl_context` (as
    api.mistral.ai). Caller must `await runner.cleanup()`."""
    app = make_app()
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    actual_port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{host}:{actual_port}", app


class FakeMistral:
    """`async with FakeMistral() as fake:` -> fake.url, fake.requests, fake.app."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.app: web.Application | None = None

    @property
    def requests(self) -> list[Json]:
        assert self.app is not None, "FakeMistral is not started"
        return self.app[REQUESTS]

    async def __aenter__(self) -> FakeMistral:
        self.runner, self.url, self.app = await start_fake(self.host, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the fake Mistral upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument(
        "--max-recorded",
        type=int,
        default=10_000,
        help="keep about this many recorded requests (memory bound)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            make_app(args.max_recorded),
            host=args.host,
            port=args.port,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1,
        )


if __name__ == "__main__":
    # Run as `python -m tests.fake_mistral` this module is __main__, a second copy beside the
    # `tests.fake_mistral` that fake_finetune imports: serve the latter's app, so both use
    # the same AppKeys (else the jobs routes cannot see the uploaded files: a KeyError, 500).
    from tests.fake_mistral import main as _main

    _main()
