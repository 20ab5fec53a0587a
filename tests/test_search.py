"""What the search index holds of a call and how a user's words are cut: one function for
both sides (gateway/store/search.py). The end-to-end searches are in test_api.py."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.search import (
    _BYTE_SEPARATORS,
    SEARCH_CHARS,
    _head_and_tail,
    _walk_words,
    distinct_terms,
    fts5_query,
    json_search_words,
    json_words,
    lexeme,
    pg_document,
    pg_query,
    search_text,
    words,
)


def test_words_are_letters_and_digits_case_folded_once_each():
    assert words("Get_Weather for api.mistral.ai, mistral-small-latest; Straße 0.3 get") == [
        "get",
        "weather",
        "for",
        "api",
        "mistral",
        "ai",
        "small",
        "latest",
        "straße",
        "0",
        "3",
    ]


def test_a_word_postgresql_cannot_hold_is_left_out():
    assert words("short " + "x" * 3000) == ["short"]


def test_postgresql_literals():
    assert pg_document("Hello, hello world") in ("'hello' 'world'", "'world' 'hello'")
    assert pg_document("naïve Naïve x") == "'naïve' 'x'"  # not ASCII: words, in order
    assert pg_query("brown  Fox") == "'brown' & 'fox'"
    assert pg_query('" AND * (') == "'and'"
    assert pg_query("* ( )") == ""


def test_postgresql_holds_a_long_word_by_its_head_and_checksum():
    long = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # a base64 token, as tool outputs hold them
    short = lexeme(long.lower())
    assert short == "qujdre" + format(zlib.crc32(long.lower().encode()), "08x")
    assert lexeme("fourteenchars1") == "fourteenchars1"  # LONG_WORD characters: itself
    assert pg_document(f"x {long} {long.upper()}") in (f"'x' '{short}'", f"'{short}' 'x'")
    assert pg_document(f"é {long}") == f"'é' '{short}'"  # the slow path shortens alike
    # a row stored before words were shortened holds the word itself
    assert pg_query(f"a {long}") == f"'a' & ('{short}' | '{long.lower()}')"
    # past what PostgreSQL holds as a lexeme: searchable now, by its short form only
    assert pg_document("y" * 3000) == f"'{lexeme('y' * 3000)}'"
    assert pg_query("y" * 3000) == f"'{lexeme('y' * 3000)}'"


@given(
    st.text(alphabet=st.characters(max_codepoint=127), max_size=200)
    | st.text(max_size=50)
    | st.lists(st.text(alphabet="abcXYZ09+/é", min_size=10, max_size=30)).map(" ".join)
)
def test_pg_document_holds_the_words_each_once(text):
    """The literal's lexemes, in whatever order (the tsvector sorts them), are `words`, long
    ones shortened (whichever way the text was cut: as bytes or as characters)."""
    literal = pg_document(text)
    lexemes = literal[1:-1].split("' '") if literal else []
    expected = {lexeme(w) for w in words(text, None)}
    assert sorted(lexemes) == sorted(expected) and len(set(lexemes)) == len(lexemes)


def test_json_words_in_document_order_with_escapes_undone():
    document = {
        "model": "m",
        "messages": [{"role": "user", "content": 'one\ntwo café "q" a\\b \x01x'}],
        "temperature": 0.3,
        "stream": False,
        "stop": None,
    }
    assert words(json_words(document)) == [
        *("model", "m", "messages", "role", "user", "content", "one", "two", "café", "q", "a"),
        *("b", "x", "temperature", "0", "3", "stream", "false", "stop", "null"),
    ]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.integers(min_value=2**64)  # orjson cannot write it: the walk takes over
    | st.floats(min_value=-1e6, max_value=1e6).map(lambda x: round(x, 3))
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_json_words_finds_the_words_a_walk_of_the_document_finds(document):
    """orjson's text with its escapes blanked has the words of the document, in order."""
    assert words(json_words(document)) == words(_walk_words(document))


# Text dense in what JSON escapes (quotes, backslashes, control characters) and in what an
# escape is made of (hex digits, the letters of \\n \\t \\u...), so that cut points fall inside,
# beside and between escapes.
ESCAPY = st.text(alphabet=st.sampled_from('\n\t"\\\x01\x1f/ubfnrt0aFe9 xé東-'), max_size=60)


@settings(max_examples=400)
@given(
    st.lists(st.tuples(ESCAPY, st.integers(1, 40)), max_size=6),
    st.integers(2, 200),
)
def test_json_search_words_is_the_head_and_tail_of_json_words(pieces, chars):
    """Cut before unescaping, the same text as unescaping all of it and then cutting."""
    document = {"messages": [{"content": text * times} for text, times in pieces]}
    assert json_search_words(document, chars) == _head_and_tail(json_words(document), chars)


@settings(max_examples=30, deadline=None)
@given(ESCAPY, st.integers(1, 4000), st.text(max_size=40))
def test_json_search_words_on_bodies_past_the_search_size(text, times, tail):
    document = {"model": "m", "messages": [{"role": "user", "content": text * times + tail}]}
    assert json_search_words(document) == _head_and_tail(json_words(document))


def test_json_search_words_of_what_orjson_cannot_write():
    deep: list = ["x\ny"]
    for _ in range(300):
        deep = [deep]
    assert json_search_words(deep, 8) == _head_and_tail(json_words(deep), 8)
    assert json_search_words({"n": 2**70}) == json_words({"n": 2**70})


def test_search_text_keeps_head_and_tail_of_a_long_body():
    long = "head " + "x " * SEARCH_CHARS + "tail"
    text = search_text(long, "answer", "corr-id")
    assert text.startswith("head") and "tail\nanswer\ncorr-id" in text
    assert len(text) < 2 * SEARCH_CHARS


def test_fts5_query_quotes_each_word_and_never_makes_a_phrase():
    assert fts5_query('zebra-crossing " OR') == '"zebra" "crossing" "or"'
    assert fts5_query("* ( )") == '""'


def test_words_outside_ascii_are_cut_like_the_regular_expression():
    assert words("naïve—really «quoted» 東京、大阪 x²") == [
        "naïve",
        "really",
        "quoted",
        "東京",
        "大阪",
        "x²",
    ]


def _split_terms(text: str) -> str:
    """distinct_terms as it was first written: bytes.split() at any ASCII whitespace."""
    found = dict.fromkeys(text.encode("utf-8", "surrogatepass").translate(_BYTE_SEPARATORS).split())
    return b" ".join(found).decode("utf-8", "surrogatepass")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(" \t\n\r\x0b\x0c.,_-/+")))
def test_distinct_terms_are_the_split_terms(text: str) -> None:
    assert distinct_terms(text) == _split_terms(text)


def test_distinct_terms_keep_every_word_once():
    text = "Sunny in Paris. Sunny, in paris! naïve—x_y 東京"
    assert distinct_terms(text) == "Sunny in Paris paris naïve—x y 東京"
    assert set(words(distinct_terms(text))) == set(words(text))
