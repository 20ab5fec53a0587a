"""Every value is storable: one rule for text the databases refuse, one for what is too long.

Captured values are attacker-controlled and a database is strict: PostgreSQL refuses NUL in
text and a string longer than its `varchar(n)`, asyncpg and sqlite3 refuse lone surrogates
(which aiohttp makes of header bytes that are not UTF-8), and an integer column refuses
2**40. A record the database refuses used to stop all recording, so the writer makes every
value fit before it reaches the database, the same way on SQLite and PostgreSQL:

- **Text** (`text`): NUL, lone surrogates and bytes that were not UTF-8 are written as
  Python's backslash escapes: NUL as `\\x00`, an undecodable byte as `\\xNN` (the byte it
  was), any other lone surrogate as `\\udNNN`. Everything else is kept as it is.
- **Length** (`clip`): a value longer than its column's limit keeps its first characters
  and ends in `…#` and 12 hex digits of the full value's BLAKE2b hash, exactly `limit`
  characters in all. So a clip is visible, and two long values that share a prefix (run
  names, tool-call ids) stay apart: grouping by the clipped value is grouping by the full
  one. Where a capture field is clipped, the exchange records the original length
  (`clipped`: `{"field": characters}`).
- **Integers** outside their column's range (32-bit for `IntField`, 64-bit for
  `BigIntField`), and numbers that are not integers where an integer goes, are stored as
  null: a token count of 10**30 is not a figure anyone can use.

Limits come from the Tortoise models (`gateway/store/models.py`), the one description of the
schema: `limit("runs", "name")` is the `max_length` of `Run.name`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from tortoise import fields

from gateway.store import models

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
CLIP_MARK = "…#"
_HASH_HEX = 12


@dataclass(frozen=True, slots=True)
class Column:
    kind: str  # "text", "int", "float" or "other"
    limit: int | None = None  # characters, for text
    low: int = 0
    high: int = 0


def _column(field: fields.Field[Any]) -> Column:
    if isinstance(field, fields.CharField):
        return Column("text", int(field.max_length))
    if isinstance(field, fields.TextField):
        return Column("text")
    if isinstance(field, fields.FloatField):
        return Column("float")
    if isinstance(field, fields.BigIntField):
        return Column("int", None, *INT64)
    if isinstance(field, fields.IntField):
        return Column("int", None, *INT32)
    return Column("other")


def _schema() -> dict[str, dict[str, Column]]:
    tables: dict[str, dict[str, Column]] = {}
    for value in vars(models).values():
        if isinstance(value, type) and value.__module__ == models.__name__:
            meta = getattr(value, "_meta", None)
            if meta is None or not meta.db_table:
                continue
            tables[meta.db_table] = {name: _column(f) for name, f in meta.fields_map.items()}
    return tables


SCHEMA = _schema()


def limit(table: str, column: str) -> int | None:
    """The most characters `table.column` holds (None: unlimited text)."""
    return SCHEMA[table][column].limit


def text(value: str) -> str:
    """The value with NUL, lone surrogates and undecodable bytes as backslash escapes."""
    if "\x00" not in value:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            pass
    return _UNSTORABLE.sub(_escape, value)


# NUL and the surrogate range. Paired surrogates cannot occur in a Python str (it holds code
# points), so every match is a lone one.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clip(value: str, size: int) -> str:
    """`value` made storable and at most `size` characters (see the module's rule)."""
    value = text(value)
    if len(value) <= size:
        return value
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=_HASH_HEX // 2).hexdigest()
    keep = max(0, size - len(CLIP_MARK) - _HASH_HEX)
    return (value[:keep] + CLIP_MARK + digest)[:size]


def is_clipped(value: str | None) -> bool:
    """True when `value` ends as `clip` ends what it clipped."""
    return (
        value is not None
        and len(value) > _HASH_HEX
        and value[-_HASH_HEX - 2 : -_HASH_HEX] == CLIP_MARK
    )


def integer(value: Any, low: int = INT32[0], high: int = INT32[1]) -> int | None:
    """An integer in [low, high], or None (also for floats that are not whole, bools, NaN)."""
    if value is None or isinstance(value, bool):
        return None if value is None else int(value)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int):
        return None
    return value if low <= value <= high else None


def value(column: Column, item: Any) -> Any:
    """One value made fit for its column."""
    if isinstance(item, str):
        return clip(item, column.limit) if column.limit is not None else text(item)
    if column.kind == "int" and item is not None:
        return integer(item, column.low, column.high)
    if column.kind == "float" and item is not None:
        return real(item)
    return item


def real(item: Any) -> float | None:
    """A finite float, or None (NaN, infinities, an integer too big for a double)."""
    try:
        number = float(item)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def fit(table: str, row: dict[str, Any], clipped: dict[str, int], prefix: str = "") -> None:
    """Make a row dict's values fit `table` in place; each text value clipped to its limit
    adds `{prefix + column: original length}` to `clipped`. (`value` for each, with the
    common cases answered inline: a call per column was most of a record's fitting.)"""
    schema = SCHEMA[table]
    for name, item in row.items():
        if item is None:
            continue
        column = schema.get(name)
        if column is None:
            continue
        kind = type(item)
        if kind is str:
            limit = column.limit
            if item.isascii() and "\x00" not in item and (limit is None or len(item) <= limit):
                continue
        elif kind is int:
            if column.kind == "int":
                if column.low <= item <= column.high:
                    continue
            elif column.kind != "float":
                continue
        elif kind is float:
            if column.kind == "float" and math.isfinite(item):
                continue
            if column.kind != "int" and column.kind != "float":
                continue
        elif column.kind != "int" and column.kind != "float" and not isinstance(item, str):
            continue  # value() changes only text in a text or other column
        fitted = value(column, item)
        if fitted is not item:
            if column.limit is not None and isinstance(item, str) and len(item) > column.limit:
                clipped[prefix + name] = len(item)
            row[name] = fitted


def rows(table: str, columns: Sequence[str], values: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows (values in `columns` order) made fit for `table`: the writer's last step before
    the database, so no value can make it refuse a batch. Columns the models do not know
    pass as they are. A column is looked at whole first (`_column_fits`): most batches hold
    nothing to change, and then no value is fitted one by one."""
    if not values:
        return []
    out = [list(items) for items in values]
    held = list(zip(*values, strict=True))
    if len(held) != len(columns):
        raise ValueError(f"rows of {len(held)} values for {len(columns)} columns")
    schema, known = SCHEMA[table], _FITTERS[table]
    for index, (name, column_values) in enumerate(zip(columns, held, strict=True)):
        column = schema.get(name)
        if column is None or _column_fits(column, column_values):
            continue
        fitter = known[name]
        for row in out:
            row[index] = fitter(row[index])
    return out


_NULS = itertools.repeat("\x00")
_NONE = type(None)


def _column_fits(column: Column, items: Sequence[Any]) -> bool:
    """True when `value(column, item)` is each item itself (so the column needs no fitting);
    False means look at each (the rule itself decides)."""
    kinds = set(map(type, items))
    if _NONE in kinds:  # left out, with zeros and "" (which no column changes)
        kinds.discard(_NONE)
        items = list(filter(None, items))
    if not kinds:
        return True
    if kinds == {str}:  # in any column, only text that is not plain or too long changes
        if not all(map(str.isascii, items)) or any(map(operator.contains, items, _NULS)):
            return False
        return column.limit is None or max(map(len, items), default=0) <= column.limit
    if column.kind == "int":
        return (
            kinds == {int}
            and column.low <= min(items, default=0)
            and max(items, default=0) <= column.high
        )
    if column.kind == "float":  # a sum of finite floats that is finite: none is NaN or infinite
        return kinds == {float} and math.isfinite(sum(items))
    return not any(issubclass(kind, str) for kind in kinds)  # text, other: only text changes


def _same(item: Any) -> Any:
    return item


def _fitter(column: Column) -> Callable[[Any], Any]:
    """`value(column, item)` with the common cases answered first: a short ASCII text, an
    integer in range, a finite float (a third of the writer's time went to `value` before).
    Anything else takes `value` itself, so the result is always the same."""
    limit, low, high = column.limit if column.limit is not None else -1, column.low, column.high

    if column.kind == "int":

        def fit_int(item: Any) -> Any:
            kind = type(item)
            if kind is int and low <= item <= high:
                return item
            if item is None:
                return None
            if kind is str and item.isascii() and len(item) <= limit and "\x00" not in item:
                return item
            return value(column, item)

        return fit_int

    if column.kind == "float":

        def fit_float(item: Any) -> Any:
            if type(item) is float and math.isfinite(item):
                return item
            return None if item is None else value(column, item)

        return fit_float

    def fit_other(item: Any) -> Any:
        if type(item) is str:
            if item.isascii() and (limit < 0 or len(item) <= limit) and "\x00" not in item:
                return item
            return value(column, item)
        # a text or other column: only text is changed by value()
        return value(column, item) if isinstance(item, str) else item

    return fit_other


_FITTERS: dict[str, dict[str, Callable[[Any], Any]]] = {
    table: {name: _fitter(column) for name, column in columns.items()}
    for table, columns in SCHEMA.items()
}


MAX_JSON_DEPTH = 200  # orjson writes at most 254 levels; deeper values are cut here
DEEPER = "…(nested deeper than 200 levels)"


def json_text(item: Any, option: int = 0) -> str:
    """`item` as JSON text for a JSON column, whatever it holds: values nested deeper than
    MAX_JSON_DEPTH levels are replaced by a marker (a request may nest 1,000 levels; orjson
    refuses to write past 254), anything JSON has no type for is written as its str()."""
    return json_bytes(item, option).decode()


def json_bytes(item: Any, option: int = 0) -> bytes:
    """`json_text` as bytes (for HTTP answers)."""
    try:
        return orjson.dumps(item, default=str, option=option)
    except TypeError:  # too deep, or an integer past 64 bits
        return orjson.dumps(shallow(item, MAX_JSON_DEPTH), default=str, option=option)


def shallow(item: Any, depth: int) -> Any:
    """`item` with what lies deeper than `depth` levels replaced by a marker."""
    if isinstance(item, dict):
        if depth <= 0:
            return DEEPER
        return {str(k): shallow(v, depth - 1) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return DEEPER if depth <= 0 else [shallow(v, depth - 1) for v in item]
    if isinstance(item, int) and not isinstance(item, bool) and not INT64[0] <= item <= INT64[1]:
        return str(item)
    return item
