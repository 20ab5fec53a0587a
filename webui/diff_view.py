"""What the side-by-side diff shows of two outputs: long unchanged stretches folded to their
edges, and at most SHOWN_CHARS of each side, so comparing two 8 MB answers renders a page a
browser opens, not 17 MB of HTML. The diff itself (and its JSON) stays whole."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CONTEXT_CHARS = 300  # unchanged characters kept on each side of a change
SHOWN_CHARS = 200_000  # characters shown of each side, at most


def shown_ops(
    ops: Iterable[dict[str, Any]], context: int = CONTEXT_CHARS, budget: int = SHOWN_CHARS
) -> list[dict[str, Any]]:
    """The diff's ops as the page shows them: an `equal` stretch longer than twice `context`
    keeps `context` characters next to each change around a `fold` ({"op": "fold", "chars":
    n}), and once a side has shown `budget` characters (a long change is cut there too) the
    rest is one `cut` ({"op": "cut", "before": characters left, "after": ...})."""
    ops = list(ops)
    total = {side: sum(len(op.get(side) or "") for op in ops) for side in SIDES}
    shown = dict.fromkeys(SIDES, 0)  # characters of each side shown so far
    used = dict.fromkeys(SIDES, 0)  # ... shown or folded
    out: list[dict[str, Any]] = []
    for index, op in enumerate(ops):
        for piece in _folded(op, index == 0, index == len(ops) - 1, context):
            if piece["op"] == "fold":
                out.append(piece)
                for side in SIDES:
                    used[side] += piece["chars"]
                continue
            room = budget - max(shown.values())
            if room <= 0:
                return [*out, _cut(total, used)]
            cut = any(len(piece.get(side) or "") > room for side in SIDES)
            if cut:
                piece = {**piece, **{side: (piece.get(side) or "")[:room] for side in SIDES}}
            out.append(piece)
            for side in SIDES:
                size = len(piece.get(side) or "")
                shown[side] += size
                used[side] += size
            if cut:
                return [*out, _cut(total, used)]
    return out


SIDES = ("before", "after")


def _cut(total: dict[str, int], used: dict[str, int]) -> dict[str, Any]:
    """What is left of each side past the budget."""
    return {"op": "cut", **{side: total[side] - used[side] for side in SIDES}}


def _folded(op: dict[str, Any], first: bool, last: bool, context: int) -> list[dict[str, Any]]:
    """An op, or an `equal` one folded: its head (unless it begins a text that changes later)
    and its tail (unless it ends the text) kept, the middle counted."""
    text = op.get("before") or ""
    if op.get("op") != "equal" or len(text) <= 2 * context + 40:
        return [op]
    head = "" if first and not last else text[:context]  # a text with no change: its start
    tail = "" if last else text[len(text) - context :]
    pieces = []
    if head:
        pieces.append({"op": "equal", "before": head, "after": head})
    pieces.append({"op": "fold", "chars": len(text) - len(head) - len(tail)})
    if tail:
        pieces.append({"op": "equal", "before": tail, "after": tail})
    return pieces
