"""The key scrub (gateway/proxy/scrub.py): which values are keys, and that none survives in any
field of a record, however the body was cut into chunks or encoded.
Table tests plus a property test.
"""

from __future__ import annotations

import gzip
import zlib
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.capture import redact
from gateway.capture.exchange import Exchange
from gateway.capture.rows import decode_chunks, decode_request
from gateway.proxy import scrub
from gateway.proxy.scrub import Keys, caller_keys, keys_for, scrub_exchange

KEY = "sk-scrub-0123456789abcdefWXYZ"
FP = redact.fingerprint(KEY)
assert FP is not None


def record(chunks: list[bytes], **fields: object) -> Exchange:
    base: dict[str, object] = dict(
        id=1,
        started_at=0.0,
        method="POST",
        client_path="/v1/chat/completions",
        path="/v1/chat/completions",
        query="",
        request_headers=[],
        request_body=b"",
        response_chunks=chunks,
        chunk_ms=[float(i) for i in range(len(chunks))],
    )
    base.update(fields)
    return Exchange(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pairs", "query", "expected"),
    [
        ([("Authorization", f"Bearer {KEY}")], "", {KEY}),
        ([("authorization", KEY)], "", {KEY}),
        ([("x-api-key", f" {KEY} ")], "", {KEY}),
        ([("xi-api-key", KEY), ("X-Other", "not-a-key-value")], "", {KEY}),
        ([("Cookie", f"session={KEY}; theme=dark-mode-on")], "", {KEY, "dark-mode-on"}),
        ([], f"key={KEY}&model=mistral-small", {KEY}),
        ([], "api_key=a%2Fb%2Fc%2Fd%2Fe", {"a/b/c/d/e", "a%2Fb%2Fc%2Fd%2Fe"}),
        ([("Authorization", "Bearer short")], "key=tiny", set()),  # under 8 characters
        ([("Content-Type", "application/json")], "model=mistral-small-latest", set()),
    ],
)
def test_which_values_are_keys(pairs, query, expected):
    keys = Keys(caller_keys(pairs, query))
    assert {raw.decode() for raw, _ in keys._data} == expected


def test_repr_hides_keys():
    assert KEY not in repr(Keys([KEY])) and KEY not in str(Keys([KEY]))


def test_every_field_is_scrubbed_and_the_fingerprint_takes_its_place():
    exchange = record(
        [b'{"message": "bad key ', KEY[:5].encode(), KEY[5:].encode() + b'"}'],
        client_path=f"/v1/{KEY}",
        path=f"/v1/{KEY}",
        query=f"echo={KEY}",
        request_headers=[("Authorization", "[redacted]"), ("X-Note", f"k={KEY}")],
        request_body=f'{{"content": "{KEY}"}}'.encode(),
        response_headers=[("WWW-Authenticate", f'Bearer key="{KEY}"')],
        hints={"run": KEY},
        error=f"upstream said {KEY}",
    )
    scrub_exchange(exchange, Keys([KEY]))
    assert KEY not in repr(exchange.to_dict())
    assert exchange.path == f"/v1/{FP}" and exchange.hints == {"run": FP}
    # the two chunks the key straddled are one now, at the first one's arrival time
    assert exchange.response_chunks == [b'{"message": "bad key ', FP.encode() + b'"}']
    assert exchange.chunk_ms == [0.0, 1.0]


def test_clean_records_are_left_as_they_are():
    chunks = [b"data: one\n\n", b"data: two\n\n"]
    exchange = record(chunks, request_body=b'{"a": 1}')
    scrub_exchange(exchange, Keys([KEY]))
    assert exchange.response_chunks is chunks and exchange.chunk_ms == [0.0, 1.0]
    assert not exchange.response_decoded


def test_a_key_cut_across_many_tiny_chunks():
    body = b"data: " + KEY.encode() + b"\n\n"
    chunks = [body[i : i + 1] for i in range(len(body))]  # one byte each
    exchange = record(chunks)
    scrub_exchange(exchange, Keys([KEY]))
    assert b"".join(exchange.response_chunks) == b"data: " + FP.encode() + b"\n\n"
    assert len(exchange.response_chunks) == len(exchange.chunk_ms)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_encoded_body_with_a_key_is_stored_decoded(encoding):
    plain = f'{{"message": "Invalid key {KEY}"}}'.encode()
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    exchange = record([packed[:10], packed[10:]], response_headers=[("Content-Encoding", encoding)])
    scrub_exchange(exchange, Keys([KEY]))
    assert exchange.response_decoded
    assert b"".join(exchange.response_chunks) == plain.replace(KEY.encode(), FP.encode())
    assert len(exchange.response_chunks) == len(exchange.chunk_ms) == 2


def test_an_encoded_body_without_a_key_stays_encoded():
    packed = gzip.compress(b'{"message": "nothing secret here"}')
    exchange = record([packed], response_headers=[("Content-Encoding", "gzip")])
    scrub_exchange(exchange, Keys([KEY]))
    assert exchange.response_chunks == [packed] and not exchange.response_decoded


def test_a_big_body_is_searched_chunk_by_chunk():
    filler = b"x" * (scrub.JOIN_BYTES // 4)
    chunks = [filler, filler, filler + KEY[:9].encode(), KEY[9:].encode() + filler, filler]
    exchange = record(chunks)
    scrub_exchange(exchange, Keys([KEY]))
    joined = b"".join(exchange.response_chunks)
    assert KEY.encode() not in joined and joined.count(FP.encode()) == 1
    assert len(exchange.response_chunks) == 4


def test_a_periodic_key_rebuilt_from_its_fingerprint_still_goes():
    key = "a" * 12  # its fingerprint ends in "aaaa", so "...aaaa" + "aaaaaaaa" would be a key
    exchange = record([b"a" * 40], request_body=b"b" + b"a" * 30)
    scrub_exchange(exchange, Keys([key]))
    assert b"a" * 12 not in b"".join(exchange.response_chunks)
    assert b"a" * 12 not in exchange.request_body


def test_the_gateways_own_keys_are_scrubbed_with_the_callers():
    held = Keys(["replay-key-HELD-0123456789"])
    keys = keys_for([("Authorization", f"Bearer {KEY}")], "", held)
    exchange = record([b"replay-key-HELD-0123456789 and " + KEY.encode()])
    scrub_exchange(exchange, keys)
    assert exchange.response_chunks == [
        f"{redact.fingerprint('replay-key-HELD-0123456789')} and {FP}".encode()
    ]


def test_a_key_both_held_and_sent_is_searched_once():
    keys = keys_for([("x-api-key", KEY)], "", Keys([KEY]))
    assert len(keys._data) == 1


def test_a_failing_scrub_drops_the_bodies(monkeypatch):
    def broken(*_args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(scrub, "_scrub", broken)
    exchange = record([KEY.encode()], request_body=KEY.encode(), response_headers=[("X-Echo", KEY)])
    scrub_exchange(exchange, Keys([KEY]))
    assert exchange.response_chunks == [] and exchange.request_body == b""
    assert exchange.response_headers == [("X-Echo", "[redacted]")]
    assert exchange.error == scrub.SCRUB_FAILED


# -- the property: the key never survives, and a body without it is untouched ----------------

ALPHABET = st.sampled_from(b"ab-_skXY01=\n ")
keys_st = st.text(alphabet="ab-_skXY01", min_size=8, max_size=24)
bodies = st.binary(max_size=300) | st.lists(ALPHABET, max_size=300).map(bytes)


def cut(body: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(body) + 1) for p in points} | {0, len(body)})
    return [body[a:b] for a, b in pairwise(marks)] or [b""]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=keys_st,
    body=bodies,
    at=st.lists(st.integers(0, 10**6), max_size=4),
    points=st.lists(st.integers(0, 10**6), max_size=12),
    gzipped=st.booleans(),
    joined=st.booleans(),
)
def test_property_the_key_never_survives(key, body, at, points, gzipped, joined):
    raw = key.encode()
    for position in at:  # the key inserted anywhere, any number of times
        i = position % (len(body) + 1)
        body = body[:i] + raw + body[i:]
    packed = gzip.compress(body) if gzipped else body
    chunks = cut(packed, points)
    headers = [("Content-Encoding", "gzip")] if gzipped else []
    exchange = record(list(chunks), response_headers=headers, request_body=body)
    saved, scrub.JOIN_BYTES = scrub.JOIN_BYTES, scrub.JOIN_BYTES if joined else 0
    try:  # small bodies are searched joined; `joined=False` takes the big bodies' way
        scrub_exchange(exchange, Keys([key]))
    finally:
        scrub.JOIN_BYTES = saved
    stored = b"".join(exchange.response_chunks)
    if gzipped and not exchange.response_decoded:
        decoded, ok = decode_chunks(exchange.response_chunks, "gzip")
        assert ok
        stored = b"".join(decoded)
    assert raw not in stored and raw not in exchange.request_body
    assert len(exchange.response_chunks) == len(exchange.chunk_ms)
    if raw not in body:  # nothing to hide: byte-identical, chunking and timing included
        assert exchange.response_chunks == chunks and exchange.request_body == body
        assert exchange.chunk_ms == [float(i) for i in range(len(chunks))]


@given(
    st.binary(max_size=3000),
    st.sampled_from(["gzip", "deflate", "x-gzip", " GZIP ", "br", ""]),
    st.integers(min_value=0, max_value=4000),
    st.sampled_from(["none", "gzip", "zlib", "raw"]),
)
def test_decode_request_never_raises_and_stays_in_bounds(
    plain: bytes, encoding: str, limit: int, wrap: str
):
    """Any request body under any Content-Encoding: decoded only when it is a whole stream of
    that encoding (or decodes past `limit`), to at most `limit` + 1 bytes; else as it came."""
    if wrap == "gzip":
        body = gzip.compress(plain)
    elif wrap == "zlib":
        body = zlib.compress(plain)
    elif wrap == "raw":
        packer = zlib.compressobj(wbits=-15)
        body = packer.compress(plain) + packer.flush()
    else:
        body = plain
    out = decode_request(body, encoding, limit)
    if out is body:
        return
    assert len(out) <= limit + 1
    assert encoding.strip().lower() in ("gzip", "x-gzip", "deflate")
    if wrap != "none":  # (bytes sent as they are may happen to be a deflate stream too)
        assert plain.startswith(out)  # the client's bytes, or their head
        if len(plain) <= limit:
            assert out == plain


def test_decode_request_takes_a_whole_stream_only():
    """A JSON body labelled deflate (`{}`) reads as the start of a raw deflate stream without
    an error (b"\xeb" so far): not a whole stream, so kept as sent."""
    assert decode_request(b"{}", "deflate", 1000) == b"{}"
    body = b'{"model": "mistral-small-latest", "messages": []}'
    assert decode_request(gzip.compress(body)[:-9], "gzip", 1000) != body  # cut: kept as sent
    assert decode_request(zlib.compress(body), "deflate", 1000) == body


def test_a_response_labelled_deflate_is_decoded_only_when_whole():
    """A response body labelled deflate that is no deflate stream at all (`{}` reads as the
    start of a raw one without an error) is kept as it came, not as a partial inflate."""
    assert decode_chunks([b"{}"], "deflate") == ([b"{}"], False)
    packer = zlib.compressobj(wbits=-15)
    raw = packer.compress(b'{"a": 1}') + packer.flush()
    assert decode_chunks([raw], "deflate") == ([b'{"a": 1}'], True)
    assert decode_chunks([raw], "deflate", limit=3) == ([b'{"a"'], True)  # cut past the limit
