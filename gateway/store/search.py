"""Full-text search: what the index holds of each call, and how a user's words meet it.

One place decides both sides, so that what is stored and what is asked for are cut into words
the same way. SQLite's FTS5 tokenizes inside the writer process (at idle CPU priority), so it
gets text. PostgreSQL would tokenize with `to_tsvector` in the database server, at full
priority and about 0.1 us per character (most of its CPU per recorded call), so for it the
writer cuts the words itself and hands over a ready `tsvector`; queries are cut by the same
function into a `tsquery`.
"""

from __future__ import annotations

import re
import string
import zlib
from typing import Any

import orjson

# Per body: indexing costs about 6 us per KB on SQLite, so a long prompt is indexed by its
# head and tail (system prompt, latest turns), not whole.
SEARCH_CHARS = 16 * 1024
# Runs of letters and digits, lower-cased: what FTS5's unicode61 tokenizer calls a word too
# (punctuation, `_` and `-` separate words; it also folds diacritics, which this does not).
_WORD = re.compile(r"[^\W_]+")
# The common case first: ASCII punctuation and spaces become spaces and str.split() does the
# rest, four times faster than the regular expression; it only sees what is left over.
_ASCII_SEPARATORS = str.maketrans(dict.fromkeys(string.punctuation + string.whitespace, " "))
MAX_LEXEME_BYTES = 2046  # PostgreSQL refuses longer lexemes; to_tsvector skipped them too


def search_text(request: str | None, response: str | None, correlation: str | None) -> str:
    """The text indexed for one call: request, response (or a stream's text), correlation id."""
    parts = [_head_and_tail(request or ""), _head_and_tail(response or ""), correlation or ""]
    return "\n".join(part for part in parts if part)


def searchable(body: bytes | None, encoding: str, parsed_json: Any) -> str:
    """What the index gets of a kept body: a JSON body's words (the head and tail
    `search_text` keeps of them), other text as it is, no binary. The body is decoded only
    when it is indexed as text."""
    if encoding == "base64" or body is None:
        return ""
    if parsed_json is not None and encoding == "json":
        return json_search_words(parsed_json)
    return body.decode("utf-8", "replace")


# A JSON escape in orjson's output: it writes UTF-8, so only quotes, backslashes and control
# characters are escaped, and none of them is part of a word.
_ESCAPE = re.compile(r'\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt])')


def json_words(document: Any) -> str:
    """The keys and values of a JSON document in document order, as text whose words are the
    document's words (punctuation between them is a separator to every tokenizer here).

    The raw JSON text a client sent holds the same words, except where an escape glues two
    together (`"one\\ntwo"` holds the word "ntwo", so a line of a prompt or an answer could
    not be found by its first word) or hides a letter (`caf\\u00e9`). So the parsed document
    is written again by orjson (UTF-8, in C) and its escapes become spaces: five times faster
    than walking it in Python, which remains for what orjson does not write (nesting past 254
    levels, integers past 64 bits)."""
    try:
        text = orjson.dumps(document).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _walk_words(document)
    # `in` is a memchr, the substitution a scan of its own (about 27 us per 100 KB).
    return _ESCAPE.sub(" ", text) if "\\" in text else text


# What a JSON escape is made of: a character outside it is never part of one, so a cut just
# after it splits the text where unescaping the parts gives the parts of the unescaped text.
_ESCAPE_CHARS = frozenset('\\"/bfnrtu0123456789abcdefABCDEF')
_SAFE_LOOK = 256  # how far a cut point is looked for (then the whole text is unescaped)


def json_search_words(document: Any, chars: int = SEARCH_CHARS) -> str:
    """`json_words(document)` cut as `search_text` cuts it (its head and tail), the same
    text, without unescaping the middle that is then dropped (a 100 KB body's search text
    is its first and last 8 KB: the whole substitution cost a 100 KB call about 27 us)."""
    try:
        text = orjson.dumps(document).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _head_and_tail(_walk_words(document), chars)
    if "\\" not in text:
        return _head_and_tail(text, chars)
    half = chars // 2
    head_end, tail_start = _head_end(text, half), _tail_start(text, half)
    if head_end is None or tail_start is None or head_end > tail_start:
        return _head_and_tail(_ESCAPE.sub(" ", text), chars)
    head = _ESCAPE.sub(" ", text[:head_end])
    tail = _ESCAPE.sub(" ", text[tail_start:])
    # An escape is at most 6 characters and becomes 1: the middle is at least a sixth.
    if (
        len(head) < half
        or len(tail) < half
        or (len(head) + len(tail) + (tail_start - head_end) // 6 <= chars)
    ):
        return _head_and_tail(_ESCAPE.sub(" ", text), chars)
    return head[:half] + "\n" + tail[-half:]


def _head_end(text: str, half: int) -> int | None:
    """A cut point after at least `half` characters of unescaped text (each backslash takes
    at most 5 characters away), just after a character no escape is made of."""
    end = half
    while True:
        end = min(end, len(text))
        short = half - (end - 5 * text.count("\\", 0, end))
        if short <= 0 or end == len(text):
            break
        end += short
    for at in range(end, min(end + _SAFE_LOOK, len(text) + 1)):
        if at == len(text) or text[at - 1] not in _ESCAPE_CHARS:
            return at
    return None


def _tail_start(text: str, half: int) -> int | None:
    """A cut point before at least `half` characters of unescaped text, just after a
    character no escape is made of (or the start)."""
    start = len(text) - half
    while True:
        start = max(start, 0)
        short = half - (len(text) - start - 5 * text.count("\\", start))
        if short <= 0 or start == 0:
            break
        start -= short
    for at in range(start, max(start - _SAFE_LOOK, -1), -1):
        if at == 0 or text[at - 1] not in _ESCAPE_CHARS:
            return at
    return None


def _walk_words(document: Any) -> str:
    """The keys and values of a JSON document in document order, one space apart."""
    words: list[str] = []
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            words.append(item)
        elif isinstance(item, dict):
            for key, value in reversed(item.items()):
                stack.append(value)
                stack.append(key)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, bool) or item is None:
            words.append("null" if item is None else "true" if item else "false")
        else:
            words.append(str(item))
    return " ".join(words)


def words(text: str, limit: int | None = MAX_LEXEME_BYTES) -> list[str]:
    """The distinct words of a text, lower-cased, in first-seen order; none longer than
    `limit` bytes (PostgreSQL's own limit) unless it is None."""
    found: dict[str, None] = {}
    for token in dict.fromkeys(text.lower().translate(_ASCII_SEPARATORS).split()):
        if token.isalnum():  # the same test as [^\W_]
            found[token] = None
        else:  # other punctuation or symbols: "naïve—really" -> naïve, really
            found.update(dict.fromkeys(_WORD.findall(token)))
    if limit is None:
        return list(found)
    # A character is at most 4 bytes: only a word of limit / 4 or more can be too long.
    return [w for w in found if len(w) * 4 <= limit or len(w.encode("utf-8")) <= limit]


_BYTE_SEPARATORS = bytes.maketrans(
    (string.punctuation + string.whitespace).encode(),
    b" " * len(string.punctuation + string.whitespace),
)


def distinct_terms(text: str) -> str:
    """The text's terms, each once, in first-seen order, cut where FTS5 and `words` cut at
    ASCII punctuation (the indexes keep no positions, so a repeat only costs the copy of the
    text SQLite stores beside its index). Bytes-level, so it costs a few us per KB.

    Once translated, a space is the only ASCII whitespace left (the only bytes `split()`
    splits at), and splitting at b" " (a memchr) takes half the time: the empty words its
    runs of spaces leave are dropped from the found terms instead."""
    found = dict.fromkeys(
        text.encode("utf-8", "surrogatepass").translate(_BYTE_SEPARATORS).split(b" ")
    )
    found.pop(b"", None)
    return b" ".join(found).decode("utf-8", "surrogatepass")


# A long word is held in PostgreSQL's index by its head and a checksum of the whole: random
# tokens (ids, base64 in tool outputs) are most of an agent's distinct words and each is an
# index entry of its own, so their length is what the GIN index and its `tsvector` column
# grow by. A search for the word asks for the same short form; two long words meet only
# where their first LEXEME_HEAD characters and their CRC-32 are the same.
LONG_WORD = 14
LEXEME_HEAD = 6


def lexeme(word: str) -> str:
    """The word as PostgreSQL's index holds it: itself, or its head and the CRC-32 of it
    whole (14 characters) when it is longer than LONG_WORD."""
    if len(word) <= LONG_WORD:
        return word
    return f"{word[:LEXEME_HEAD]}{zlib.crc32(word.encode('utf-8', 'surrogatepass')):08x}"


def pg_document(text: str) -> str:
    """A `tsvector` literal of the text's words (letters and digits only: nothing to escape),
    long words as `lexeme` shortens them.
    An ASCII text whose tokens are all words is cut as bytes, in C but for one loop over the
    distinct words (the writer's costliest step per call on PostgreSQL before: `words`).
    The words come in no particular order there: `tsvector` sorts its lexemes (and a set
    takes 2,500 words of a 100 KB call's 16 KB search text about 30 us faster than a dict)."""
    lowered = text.lower()
    if lowered.isascii():
        # split at b" " as `distinct_terms` does (the only whitespace left), b"" dropped
        found = set(lowered.encode().translate(_BYTE_SEPARATORS).split(b" "))
        found.discard(b"")
        if not found:
            return ""
        joined = b"' '".join(found)
        if joined.replace(b"' '", b"").isalnum():
            long = {w for w in found if len(w) > LONG_WORD}
            if long:
                # `lexeme` of each, as bytes (inline: a call costs as much as the CRC)
                short = {b"%s%08x" % (w[:LEXEME_HEAD], zlib.crc32(w)) for w in long}
                found = (found - long) | short
                joined = b"' '".join(found)
            return "'" + joined.decode() + "'"
    cut = dict.fromkeys(lexeme(w) for w in words(text, None))
    return "'" + "' '".join(cut) + "'" if cut else ""


def pg_query(text: str) -> str:
    """A `tsquery` literal that ANDs the user's words; empty when there are none. A long word
    asks for its short form or, for rows stored before words were shortened, itself."""
    terms = []
    for word in words(text, None):
        short = lexeme(word)
        if short == word:
            terms.append(f"'{word}'")
        elif len(word.encode("utf-8", "surrogatepass")) <= MAX_LEXEME_BYTES:
            terms.append(f"('{short}' | '{word}')")
        else:
            terms.append(f"'{short}'")
    return " & ".join(terms)


def fts5_query(text: str) -> str:
    """An FTS5 query that ANDs the user's words, each a quoted string (so no operators, and no
    phrases, which the index (detail=none) cannot answer); `""` matches nothing."""
    return " ".join(f'"{w}"' for w in words(text)) or '""'


def _head_and_tail(text: str, chars: int = SEARCH_CHARS) -> str:
    if len(text) <= chars:
        return text
    half = chars // 2
    return text[:half] + "\n" + text[-half:]
