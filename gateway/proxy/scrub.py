"""Keys never stored, whatever comes back: a finished capture record loses every key it holds.

`redact.py` hides credentials by where they are (header and parameter names). An upstream
can still hand them back elsewhere: a 401 that quotes the caller's `Authorization`, a debug
header, an SSE chunk, a gzip body. So, once a call is over (its response already with the
client) and before the record is queued or spooled, every occurrence of the exact keys the
caller sent, and of those the gateway holds (the replay key), is replaced by the key's
fingerprint in every field of the record. A record therefore never holds a raw key, not even
in the proxy's memory on its way to the writer or the disk spool.

The common case (no key anywhere) costs one C-level substring search per chunk and per
chunk boundary; only a hit does more. Keys under `MIN_KEY_LENGTH` characters are ignored:
scrubbing a 1-character "key" would shred the bodies.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TypeVar
from urllib.parse import parse_qsl

from gateway.capture import redact
from gateway.capture.exchange import Exchange
from gateway.capture.rows import decode_chunks, decode_request
from gateway.settings import Settings

# How much of a compressed request body is decoded where the caller sets no limit (flow
# imports, the mitmproxy addon): the default --max-body-bytes.
DECODE_LIMIT = Settings.max_body_bytes
_ENCODING = "content-encoding"
log = logging.getLogger("agentops.scrub")

MIN_KEY_LENGTH = 8
# Bodies up to this size are searched joined; bigger ones chunk by chunk and across each
# boundary, so a 10 MB body is never copied just to be searched.
JOIN_BYTES = 1024 * 1024
ROUNDS = 4  # replacement passes before a key rebuilt from its own fingerprint is deleted
SCRUB_FAILED = "bodies dropped: the key scrub failed on this record"

T = TypeVar("T", str, bytes)


def _as_bytes(text: str) -> bytes:
    """The bytes a key was received as (aiohttp decodes headers with surrogateescape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


Item = str | tuple[str, str] | None


class Keys:
    """A set of keys to scrub, each with its fingerprint, in the forms a record holds them:
    bytes for bodies, text for headers and paths. Its repr never shows a key."""

    __slots__ = ("_data", "_items", "_text")

    def __init__(self, items: Iterable[Item] = ()) -> None:
        """From key values; a `(form, key)` pair scrubs `form` with `key`'s fingerprint (a
        query value as sent, percent-encoded, beside the decoded key)."""
        self._items = tuple(items)
        found: dict[bytes, str] = {}
        for item in self._items:
            form, key = item if isinstance(item, tuple) else (item, item)
            if form and key and len(form) >= MIN_KEY_LENGTH:
                found.setdefault(_as_bytes(form), redact.fingerprint(key) or "")
        # A key containing another is scrubbed with it ("Bearer sk-1" goes with "sk-1").
        kept = [raw for raw in found if not any(o != raw and o in raw for o in found)]
        kept.sort(key=len, reverse=True)
        # A fingerprint ends with its key's last 4 characters, which need not be ASCII.
        self._data = tuple((raw, _as_bytes(found[raw])) for raw in kept)
        text: list[tuple[str, str]] = []
        for raw in kept:
            forms = {raw.decode("utf-8", "surrogateescape"), raw.decode("latin-1")}
            text += [(form, found[raw]) for form in sorted(forms)]
        self._text = tuple(text)

    def __add__(self, other: Keys) -> Keys:
        """Both sets (a key in both, such as a replay key the caller also uses, once)."""
        return Keys(self._items + other._items) if self and other else self or other

    def __bool__(self) -> bool:
        return bool(self._data)

    def __repr__(self) -> str:
        return f"Keys({len(self._data)} hidden)"

    def scrub(self, value: T) -> T:
        """`value` (text or bytes) with each key replaced by its fingerprint."""
        if isinstance(value, bytes):
            return _clean(value, self._data, b"")
        return _clean(value, self._text, "")

    def found_in_text(self, value: str) -> bool:
        for form, _ in self._text:  # noqa: SIM110  (a loop: no generator per call, hot path)
            if form in value:
                return True
        return False

    def found_in(self, chunks: Sequence[bytes]) -> bool:
        """Whether any key is in the chunks' concatenation, a key cut across chunks included."""
        if not self._data or not chunks:
            return False
        if len(chunks) == 1:
            data = chunks[0]
        elif sum(map(len, chunks)) <= JOIN_BYTES:
            data = b"".join(chunks)  # one copy and one search beat a search per boundary
        else:
            return any(_found(chunks, raw) for raw, _ in self._data)
        for raw, _ in self._data:  # noqa: SIM110  (as in found_in_text)
            if raw in data:
                return True
        return False

    def chunks(self, chunks: list[bytes], times: list[float]) -> tuple[list[bytes], list[float]]:
        """Chunks without any key. A key cut across chunks is caught: those chunks are merged
        into one, at the first one's arrival time. Untouched (the same lists) when clean."""
        if not self.found_in(chunks):
            return chunks, times
        times = list(times) + [times[-1] if times else 0.0] * (len(chunks) - len(times))
        for _ in range(ROUNDS):
            chunks, times = _merge_spanning(chunks, times, self._data)
            chunks = [_clean(chunk, self._data, b"") for chunk in chunks]
            if not self.found_in(chunks):
                return chunks, times
        return [_clean(b"".join(chunks), self._data, b"")], times[:1]


def keys_for(pairs: Sequence[tuple[str, str]], query: str, held: Keys) -> Keys:
    """The keys to scrub from one call's record: the caller's and the gateway's own."""
    return _cached(tuple(caller_keys(pairs, query)), held)


@lru_cache(maxsize=256)  # an agent sends one key on every call (held in memory only, as in
def _cached(keys: tuple[Item, ...], held: Keys) -> Keys:  # redact.fingerprint)
    return Keys(keys) + held


def caller_keys(pairs: Sequence[tuple[str, str]], query: str) -> list[Item]:
    """What the caller sent as credentials: the values of the headers and query parameters
    `redact` treats as secret (a bearer token without its scheme, each cookie's value)."""
    keys: list[Item] = [redact.key_of(list(pairs)) or ""]
    for name, value in pairs:
        if not redact.is_secret_name(name):
            continue
        value = value.strip()
        lower = name.lower()
        if lower in ("authorization", "proxy-authorization"):
            scheme, _, token = value.partition(" ")
            value = token.strip() or scheme
        elif lower in ("cookie", "set-cookie"):
            keys += [part.partition("=")[2].strip() for part in value.split(";")]
        keys.append(value)
    if query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if redact.is_secret_name(name):
                keys.append(value)
        for part in query.split("&"):  # as sent, percent-encoded: an echo may quote it so
            name, _, raw = part.partition("=")
            if raw and "%" in raw and redact.is_secret_name(name):
                keys.append((raw, dict(parse_qsl(part)).get(name, raw)))
    return keys


def scrub_call(
    exchange: Exchange,
    pairs: Sequence[tuple[str, str]],
    query: str,
    held: Keys,
    keys: Keys | None = None,
    *,
    limit: int | None = None,
) -> None:
    """Scrub a finished call's record of the keys its request carried (`pairs`, the request
    headers, and `query`, as received) and of `held`, the gateway's own; `keys`: those keys,
    as `scrub_start` returned them for the same call, which scrubbed the fields known at the
    start (found again, and every field scrubbed, when None). `limit`: the most of a
    compressed body decoded to be searched (--max-body-bytes: what storage keeps of it)."""
    if keys is None:
        try:
            keys = keys_for(pairs, query, held)
        except Exception:
            _give_up(exchange)
            return
        scrub_exchange(exchange, keys, limit=limit)
        return
    if keys:
        try:
            _scrub_end(exchange, keys, limit)
        except Exception:
            _give_up(exchange)


def scrub_start(
    exchange: Exchange,
    pairs: Sequence[tuple[str, str]],
    query: str,
    held: Keys,
    secrets: tuple[tuple[str, str], ...] | None = None,
) -> Keys | None:
    """Scrub what is known of a call as it starts (its path, query, hints and request
    headers), which the journal keeps until it ends (see journal.py), and which does not
    change after. Returns the call's keys for `scrub_call`, which then scrubs only the rest
    (finding the keys, and searching these fields, was a third of the proxy's own work per
    call, done twice); None when the scrub failed. `secrets`: the request's secret-named
    headers, when the caller has picked them out already (see `secret_keys`)."""
    try:
        if secrets is None:
            keys = keys_for(pairs, query, held)
        else:
            keys = secret_keys(secrets, query, held)
        if not keys:
            return keys
        fields = [exchange.client_path, exchange.path, exchange.query]
        fields += [part for pair in exchange.hints.items() for part in pair]
        fields += [part for pair in exchange.request_headers for part in pair]
        if keys.found_in_text("\x00".join(fields)):
            text = keys.scrub
            exchange.client_path, exchange.path = text(exchange.client_path), text(exchange.path)
            exchange.query = text(exchange.query)
            exchange.hints = {text(k): text(v) for k, v in exchange.hints.items()}
            exchange.request_headers = [(text(k), text(v)) for k, v in exchange.request_headers]
    except Exception:
        _give_up(exchange)
        return None
    return keys


@lru_cache(maxsize=256)  # an agent sends the same credentials on every call (memory only)
def secret_keys(secrets: tuple[tuple[str, str], ...], query: str, held: Keys) -> Keys:
    """`keys_for` from the request's secret-named headers alone (the only ones it reads),
    cached on them: the proxy has them from its one pass over the headers."""
    return Keys(caller_keys(secrets, query)) + held


def scrub_exchange(exchange: Exchange, keys: Keys, *, limit: int | None = None) -> None:
    """Replace every key in every field of `exchange` by its fingerprint (in place). A failure
    here drops the bodies rather than risk storing a key."""
    if not keys:
        return
    try:
        _scrub(exchange, keys, limit)
    except Exception:
        _give_up(exchange)


def _give_up(exchange: Exchange) -> None:
    """A scrub that failed (a bug): keep the record, but not what might hold a key (bodies,
    header values, query); the path stays, as the endpoint is read from it."""
    log.exception("key scrub failed on exchange %s; its bodies are dropped", exchange.id)
    exchange.request_body, exchange.response_chunks, exchange.chunk_ms = b"", [], []
    exchange.request_headers = [(k, redact.REDACTED) for k, _ in exchange.request_headers]
    exchange.response_headers = [(k, redact.REDACTED) for k, _ in exchange.response_headers]
    exchange.query = redact.REDACTED if exchange.query else ""
    exchange.hints = {k: v for k, v in exchange.hints.items() if k == "run_prefix"}
    exchange.response_decoded, exchange.error = False, SCRUB_FAILED


def _scrub(exchange: Exchange, keys: Keys, limit: int | None) -> None:
    if keys.found_in_text(_text_fields(exchange)):  # one search over all of them, then each
        text = keys.scrub
        exchange.client_path, exchange.path = text(exchange.client_path), text(exchange.path)
        exchange.query = text(exchange.query)
        exchange.request_headers = [(text(k), text(v)) for k, v in exchange.request_headers]
        exchange.response_headers = [(text(k), text(v)) for k, v in exchange.response_headers]
        exchange.hints = {text(k): text(v) for k, v in exchange.hints.items()}
        exchange.error = text(exchange.error) if exchange.error else exchange.error
    _scrub_bodies(exchange, keys, limit)


def _decode_request(exchange: Exchange, keys: Keys, limit: int | None) -> None:
    """A gzip/deflate request body (forwarded as it came) is stored decoded: where a key is in
    the decoded bytes, the record takes them, to be scrubbed, and capture must not decode them
    again."""
    if exchange.request_decoded or not exchange.request_body:
        return
    encoding = next(  # the length first: this runs on every call's path (1 us, not 3)
        (v for k, v in exchange.request_headers if len(k) == 16 and k.lower() == _ENCODING),
        None,
    )
    if encoding is None:
        return
    decoded = decode_request(
        exchange.request_body, encoding, DECODE_LIMIT if limit is None else limit
    )
    if decoded is not exchange.request_body and keys.found_in([decoded]):
        exchange.request_body, exchange.request_decoded = decoded, True


def _scrub_end(exchange: Exchange, keys: Keys, limit: int | None) -> None:
    """What `scrub_start` did not see: the response's headers, the error, the bodies."""
    parts = [part for pair in exchange.response_headers for part in pair]
    if exchange.error:
        parts.append(exchange.error)
    if keys.found_in_text("\x00".join(parts)):
        text = keys.scrub
        exchange.response_headers = [(text(k), text(v)) for k, v in exchange.response_headers]
        exchange.error = text(exchange.error) if exchange.error else exchange.error
    _scrub_bodies(exchange, keys, limit)


def _scrub_bodies(exchange: Exchange, keys: Keys, limit: int | None) -> None:
    _decode_request(exchange, keys, limit)
    exchange.request_body = keys.scrub(exchange.request_body)
    chunks = exchange.response_chunks
    if not chunks:
        return
    encoding = ""
    for name, value in exchange.response_headers:
        if name.lower() == "content-encoding":
            encoding = value.strip().lower()
            break
    if encoding not in ("", "identity") and not exchange.response_decoded:
        decoded, ok = decode_chunks(chunks, encoding, limit)
        if ok and keys.found_in(decoded):
            if limit is not None and sum(map(len, decoded)) > limit:
                exchange.response_truncated = True  # cut (scrubbing may shorten it below)
            tail = decoded.pop()  # the decoder's flush (or a cut's last piece): the last chunk's
            if tail and decoded:
                decoded[-1] += tail
            elif tail:
                decoded.append(tail)
            chunks = decoded
            exchange.response_decoded = True  # stored as decoded: capture must not decode
    exchange.response_chunks, exchange.chunk_ms = keys.chunks(chunks, exchange.chunk_ms)


def _text_fields(exchange: Exchange) -> str:
    """The record's text fields in one string: joining them can add a match (then each field
    is scrubbed on its own), never hide one."""
    parts = [exchange.client_path, exchange.path, exchange.query, exchange.error or ""]
    parts += [part for pair in exchange.request_headers for part in pair]
    parts += [part for pair in exchange.response_headers for part in pair]
    parts += [part for pair in exchange.hints.items() for part in pair]
    return "\x00".join(parts)


def _clean(value: T, pairs: Sequence[tuple[T, T]], empty: T) -> T:
    """`value` with each key replaced by its fingerprint. A periodic key can reappear out of
    its own fingerprint's last characters; after a few passes such keys are deleted outright
    (each deletion shrinks the value, so this ends)."""
    for key, _ in pairs:
        if key in value:
            break
    else:
        return value  # the common case: one search per key
    for _ in range(ROUNDS):
        hit = False
        for key, fingerprint in pairs:
            if key in value:
                value = value.replace(key, fingerprint)
                hit = True
        if not hit:
            return value
    while any(key in value for key, _ in pairs):
        for key, _ in pairs:
            value = value.replace(key, empty)
    return value


def _found(chunks: Sequence[bytes], key: bytes) -> bool:
    """Whether `key` is in the chunks' concatenation, without building it: a search in each
    chunk, then across each boundary (the previous bytes' tail plus this chunk's head)."""
    keep = len(key) - 1
    tail = b""
    for chunk in chunks:
        if key in chunk:
            return True
        if tail and key in tail + chunk[:keep]:
            return True
        tail = chunk[-keep:] if len(chunk) >= keep else (tail + chunk)[-keep:]
    return False


def _merge_spanning(
    chunks: list[bytes], times: list[float], pairs: Sequence[tuple[bytes, bytes]]
) -> tuple[list[bytes], list[float]]:
    """Merge the chunks each key occurrence straddles into one (the first one's time), so
    that every occurrence lies inside a single chunk. Only runs when a key was found."""
    data = b"".join(chunks)
    starts, offset = [], 0
    for chunk in chunks:
        starts.append(offset)
        offset += len(chunk)
    joins = [False] * len(chunks)  # joins[i]: chunk i goes into chunk i - 1's group
    for key, _ in pairs:
        at = data.find(key)
        while at >= 0:
            first = bisect_right(starts, at) - 1
            last = bisect_right(starts, at + len(key) - 1) - 1
            for i in range(first + 1, last + 1):
                joins[i] = True
            at = data.find(key, at + 1)
    if not any(joins):
        return chunks, times
    merged: list[bytes] = []
    merged_times: list[float] = []
    for i, chunk in enumerate(chunks):
        if joins[i] and merged:
            merged[-1] += chunk
        else:
            merged.append(chunk)
            merged_times.append(times[i])
    return merged, merged_times
