"""Turns a raw capture record into the rows the store writes: decode, parse, price, encode.

Runs in the writer, off the proxy's hot path. It must never raise on hostile input: whatever
a provider cannot make sense of is stored as it came, with a flag saying so.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.capture import failure, storable
from gateway.capture.exchange import Exchange
from gateway.capture.pricing import PriceTable
from gateway.providers.base import Parsed, Provider
from gateway.store.search import distinct_terms, json_search_words, search_text, searchable

log = logging.getLogger("agentops.capture")

CORRELATION_HEADERS = ("mistral-correlation-id", "x-request-id", "request-id", "x-kong-request-id")


@dataclass(slots=True)
class Rows:
    """One exchange, ready to insert: its indexed columns, its bodies (headers as JSON, in
    UTF-8 bytes; each body as the bytes kept: see `keep_body`) and what the search index gets
    of it."""

    exchange: dict[str, Any]
    bodies: dict[str, Any]
    parsed: Parsed
    hints: dict[str, str]
    search_response: str = ""  # the response's searchable text (or a stream's)
    correlation: str | None = None
    # How many of the request's leading messages its run held already (set once the grouper
    # placed it): such a request extends an earlier one, and only the rest is new.
    repeats: int = 0

    def search_text(self) -> str:
        """The text indexed for the call: what its request adds (the whole request unless it
        extends an earlier one of its run), the response, the correlation id."""
        if self.exchange["omitted"]:
            return storable.text(self.correlation or "")
        new = self.new_messages()
        if new is not None:  # a step of a loop: its answer often quotes what it was sent
            text = search_text(json_search_words(new), self.search_response, self.correlation)
            return storable.text(distinct_terms(text))
        body, encoding = self.bodies["request_body"], self.bodies["request_body_encoding"]
        request = searchable(body, encoding, self.parsed.request_json)
        return storable.text(search_text(request, self.search_response, self.correlation))

    def new_messages(self) -> list[Any] | None:
        """The request's messages its run had not seen (None: not an extending request)."""
        inputs = self.parsed.messages_in
        if self.repeats <= 0 or not inputs:
            return None
        return [m for m in inputs if m is not None][self.repeats :]


def decode_chunks(
    chunks: list[bytes], encoding: str, limit: int | None = None
) -> tuple[list[bytes], bool]:
    """Undo gzip/deflate chunk by chunk (so chunk timing survives). Returns (chunks, ok).
    With `limit` (what storage keeps: --max-body-bytes), decoding stops once the output is
    longer than that: a small gzip body can inflate to gigabytes (a decompression bomb), and
    only a prefix of it is ever stored, as of a body that came uncompressed."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return chunks, True
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return chunks, False
    decoder = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    try:
        if limit is None:
            out = [decoder.decompress(chunk) for chunk in chunks]
        else:
            out, made = [], 0
            for chunk in chunks:
                piece = decoder.decompress(chunk, limit + 1 - made)
                out.append(piece)
                made += len(piece)
                if made > limit:
                    return out, True  # cut: storage keeps `limit` bytes, flagged truncated
        out.append(decoder.flush())
        return out, True
    except zlib.error:
        if encoding == "deflate":  # raw deflate (no zlib header), as some servers send it
            whole = _inflate_whole(b"".join(chunks), -15, limit)
            if whole is not None:
                return [whole], True
        return chunks, False


def _inflate_whole(data: bytes, wbits: int, limit: int | None) -> bytes | None:
    """`data` inflated (at most `limit` + 1 bytes) when it is a whole stream of that kind, or
    decodes past `limit`; else None: zlib's raw deflate reads most bytes some way without an
    error (`{}` gives b"\\xeb"), so a partial read is no proof of a deflate body."""
    decoder = zlib.decompressobj(wbits=wbits)
    try:
        out = decoder.decompress(data, 0 if limit is None else limit + 1)
    except zlib.error:
        return None
    if decoder.eof or (limit is not None and len(out) > limit):
        return out
    return None


def decode_request(body: bytes, encoding: str, limit: int) -> bytes:
    """A request body sent with Content-Encoding gzip or deflate, decoded (at most `limit` + 1
    bytes of it: what storage keeps, and a decompression bomb stays small); any other body, or
    one that is not a whole stream of that encoding, as it came (zlib's raw deflate reads
    most bytes some way, so a partial read is no proof of a deflate body)."""
    encoding = encoding.strip().lower()
    if not body or encoding not in ("gzip", "x-gzip", "deflate"):
        return body
    for wbits in (47, -15) if encoding == "deflate" else (47,):  # zlib/gzip header, raw
        out = _inflate_whole(body, wbits, limit)
        if out is not None:
            return out
    return body


def keep_body(body: bytes, is_json: bool, limit: int) -> tuple[bytes, str, bool]:
    """What is kept of a body: (bytes, encoding, truncated). The encoding says how the API
    shows the bytes: json or text (UTF-8 text), or base64 (anything else; audio bodies never
    get here: they are stored as a digest, see `_stored`)."""
    truncated = len(body) > limit
    if truncated:
        body = body[:limit]
        for cut in range(4):  # maybe we cut a multi-byte character in half
            try:
                text = body[: len(body) - cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            body = body[: len(body) - cut]
            return body, ("base64" if "\x00" in text else "text"), truncated
        return body, "base64", truncated
    if body.isascii():  # valid UTF-8 already: only a NUL makes it binary (a memchr)
        binary = b"\x00" in body
    else:
        try:
            binary = "\x00" in body.decode("utf-8")
        except UnicodeDecodeError:
            binary = True
    if binary:
        return body, "base64", truncated
    return body, ("json" if is_json else "text"), truncated


def header_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in pairs}


def _iso(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def ttft(exchange: Exchange, parsed: Parsed) -> float | None:
    index = parsed.first_content_chunk
    if not parsed.streamed or index is None or index >= len(exchange.chunk_ms):
        return None
    return round(exchange.chunk_ms[index], 3)


# Hints that become run columns: clipped to those columns' limits before grouping, so the
# grouper, the runs table and a rebuilt grouper all see one (hash-suffixed) value.
HINT_COLUMNS = {"run": "name", "run_prefix": "name", "agent": "agent_id", "user": "user"}


def storable_hints(hints: dict[str, str], clipped: dict[str, int]) -> dict[str, str]:
    """X-AgentOps-* values and the /r/<name> prefix, made storable (see storable.py)."""
    out = {}
    for name, value in hints.items():
        key = storable.text(name)
        column = HINT_COLUMNS.get(key)
        size = storable.limit("runs", column) if column else None
        out[key] = storable.clip(value, size) if size else storable.text(value)
        if size and len(value) > size:
            clipped[f"hints.{key}"] = len(value)
    return out


def storable_headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header pairs with undecodable bytes and NUL escaped (aiohttp hands the former over
    as lone surrogates, which neither JSON nor the databases take)."""
    text = storable.text
    return [(text(k), text(v)) for k, v in pairs]


def headers_json(pairs: list[tuple[str, str]]) -> bytes:
    """`storable_headers(pairs)` as JSON. Most headers need no escaping: orjson refuses a lone
    surrogate and writes NUL as \\u0000, so when it writes them at once without one, they are
    the storable pairs already (a `\\u0000` written for a backslash takes the long way too)."""
    try:
        data = orjson.dumps(pairs)
    except TypeError:
        return orjson.dumps(storable_headers(pairs))
    return data if b"\\u0000" not in data else orjson.dumps(storable_headers(pairs))


def build_rows(
    exchange: Exchange, provider: Provider, prices: PriceTable, max_body_bytes: int
) -> Rows:
    clipped: dict[str, int] = {}
    hints = storable_hints(exchange.hints, clipped)
    request_headers = header_dict(exchange.request_headers)
    response_headers = header_dict(exchange.response_headers)
    encoding = "" if exchange.response_decoded else response_headers.get("content-encoding", "")
    chunks, decoded = decode_chunks(exchange.response_chunks, encoding, max_body_bytes)
    request_body = exchange.request_body
    if "content-encoding" in request_headers and not exchange.request_decoded:
        request_body = decode_request(
            request_body, request_headers["content-encoding"], max_body_bytes
        )
    try:
        parsed = provider.parse(
            exchange.method,
            exchange.path,
            request_headers,
            request_body,
            exchange.status,
            response_headers,
            chunks if decoded else [],
        )
    except Exception:  # a provider bug must not lose the record
        log.exception("provider %s failed on exchange %s", provider.name, exchange.id)
        parsed = Parsed(parse_error=True)
    response_body = b"".join(chunks)
    cost = parsed.cost_usd
    if parsed.category == "fine-tuning":
        cost = prices.job_cost(parsed) if cost is None else cost
    elif cost is None:
        cost = prices.cost(
            parsed.model,
            parsed.prompt_tokens,
            parsed.completion_tokens,
            parsed.cached_tokens,
            parsed.units or None,
        )
    correlation = None
    for header in CORRELATION_HEADERS:
        if header in response_headers:
            correlation = response_headers[header]
            break
    req_body, req_enc, req_trunc = _stored(
        request_body, request_headers, parsed.request_json is not None, max_body_bytes
    )
    if parsed.stored_response is not None:
        response_body = parsed.stored_response
    resp_body, resp_enc, resp_trunc = _stored(
        response_body, response_headers, parsed.response_json is not None, max_body_bytes
    )
    if not decoded and resp_enc != "digest":
        resp_enc = "base64"
        resp_body = response_body[:max_body_bytes]
    truncated = req_trunc or resp_trunc or exchange.response_truncated
    if parsed.streamed:
        search_response = parsed.output_text or ""
    else:
        search_response = searchable(resp_body, resp_enc, parsed.response_json)
    failed = failure.of_call(
        exchange.status,
        exchange.error,
        exchange.state,
        parsed.response_json,
        response_body,
        parsed.response_unparsed,
    )
    bodies_kept: tuple[bytes | None, bytes | None] = (req_body, resp_body)
    if exchange.omit_bodies:
        bodies_kept, req_enc, resp_enc = (None, None), "omitted", "omitted"
    row = {
        "id": exchange.id,
        "started_at": _iso(exchange.started_at),
        "provider": exchange.provider,
        "method": exchange.method,
        "path": exchange.path,
        "client_path": exchange.client_path,
        "query": exchange.query,
        "status": exchange.status,
        "model": _str(parsed.model),
        "request_model": _str(parsed.request_model),
        "endpoint": parsed.endpoint,
        "streamed": parsed.streamed,
        "state": exchange.state,
        "error": None if failed is None else failed.message,
        "error_type": None if failed is None else failed.type,
        "error_code": None if failed is None else failed.code,
        "prompt_tokens": parsed.prompt_tokens,
        "completion_tokens": parsed.completion_tokens,
        "total_tokens": parsed.total_tokens,
        "cached_tokens": parsed.cached_tokens,
        "connector_tokens": parsed.connector_tokens,
        "units": storable.json_text(parsed.units) if parsed.units else None,
        "finish_reason": _str(parsed.finish_reason),
        "output_text": None if exchange.omit_bodies else parsed.output_text,
        "cost_usd": cost,
        "category": parsed.category,
        "latency_ms": _round(exchange.latency_ms),
        "ttfb_ms": _round(exchange.ttfb_ms),
        "ttft_ms": ttft(exchange, parsed),
        "correlation_id": correlation,
        "key_fingerprint": exchange.key_fingerprint,
        "truncated": truncated,
        "parse_error": parsed.parse_error,
        "omitted": exchange.omit_bodies,
        "run_id": None,
        "replay_of": exchange.replay_of,
        "run_source": None,
        "step": None,
        "parent_id": None,
        "thread_key": None,
        "clipped": None,
        "preview": "" if exchange.omit_bodies else preview_of(provider, parsed),
    }
    storable.fit("exchanges", row, clipped)
    if clipped:
        row["clipped"] = orjson.dumps(clipped).decode()
    bodies = {
        "exchange_id": exchange.id,
        "request_headers": headers_json(exchange.request_headers),
        "request_body": bodies_kept[0],
        "request_body_encoding": req_enc,
        "response_headers": headers_json(exchange.response_headers),
        "response_body": bodies_kept[1],
        "response_body_encoding": resp_enc,
    }
    return Rows(row, bodies, parsed, hints, search_response, correlation)


def _stored(
    body: bytes, headers: dict[str, str], is_json: bool, limit: int
) -> tuple[bytes, str, bool]:
    """A body as stored: audio as its type, size and SHA-256 (never the sound), the rest as
    `keep_body` keeps it."""
    content_type = headers.get("content-type", "")
    if not content_type.lstrip().lower().startswith("audio/"):
        return keep_body(body, is_json, limit)
    summary = {
        "content_type": content_type,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return orjson.dumps(summary), "digest", False


PREVIEW_CHARS = 300


def preview_of(provider: Provider, parsed: Parsed) -> str:
    """What the list shows of a call ("" for nothing): made once here, never at each render."""
    try:
        text = provider.preview(parsed.request_json)
    except Exception:  # a provider bug must not lose the record
        log.exception("provider %s failed to preview a call", provider.name)
        return ""
    return text[:PREVIEW_CHARS] if isinstance(text, str) else ""


def _str(value: object) -> str | None:
    """A parsed value that should be text (a model name, a finish reason), else None."""
    return value if isinstance(value, str) else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
