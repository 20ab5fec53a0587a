"""run_refs.run_rows decides a batch's message rows and snapshot columns as the general way
(`_general`: fold_rows, refer_message and refer_snapshot over the whole batch) does, on
steps built as the grouper builds them and then changed in the ways that keep them from
being derived: values the storable rules rewrite, reshaped or missing rows, copies instead
of the request's own messages, answers that are not the exchange's."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.runs.grouper import RunChanges, message_fields
from gateway.store import run_refs
from gateway.store.run_refs import Sources

TEXTS = st.one_of(
    st.sampled_from(["", "hi", "a\x00b", "é", "x" * 250, "…#0123456789ab"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8),
)
ROLES = st.one_of(
    st.sampled_from(["user", "assistant", "tool", "system", "r" * 40, "a\x00", "ü"]),
    st.none(),
    st.integers(0, 3),
)
CONTENT = st.one_of(
    st.none(),
    TEXTS,
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXTS}), max_size=2),
    st.integers(-(2**70), 2**70),
)
CALLS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.just([]),
    st.lists(st.fixed_dictionaries({"id": TEXTS, "type": st.just("function")}), max_size=2),
)
CALL_IDS = st.one_of(st.none(), TEXTS, st.integers(0, 3))
DICTS = st.fixed_dictionaries(
    {"role": ROLES, "content": CONTENT},
    optional={"tool_calls": CALLS, "tool_call_id": CALL_IDS, "extra": TEXTS},
)
MESSAGE = st.one_of(DICTS, DICTS, DICTS, st.sampled_from(["not a message", 7]))
NUMBERS = st.one_of(st.integers(0, 300), st.none(), st.sampled_from([2**40, 9.0, 9.5, True]))
# how a step's rows differ from what reading derives (None: they do not)
CHANGES = [
    None,
    "content",
    "tool_calls",
    "role",
    "call_id",
    "position",
    "run_id",
    "step",
    "finish_reason",
    "in_tokens",
    "drop",
    "extra_row",
    "out_tokens",
    "out_reason",
    "out_content",
    "out_role",
    "out_position",
    "out_step",
    "out_run_id",
    "no_out",
    "two_outs",
    "copied_items",
    "other_items",
    "changed_items",
    "big_run_id",
    "float_step",
    "big_tokens",
]


def _row(run_id: int, eid: int, step: int, position: int, direction: str, message: Any) -> dict:
    return {
        "run_id": run_id,
        "exchange_id": eid,
        "step": step,
        "position": position,
        "direction": direction,
        **message_fields(message),
        "finish_reason": None,
        "prompt_tokens": None,
        "completion_tokens": None,
    }


@st.composite
def steps(draw: st.DrawFn, eid: int, change: str | None) -> tuple[RunChanges, Sources | None]:
    # a changed step is otherwise derived, so that the change alone keeps it from it
    messages = draw(st.lists(DICTS if change else MESSAGE, max_size=5))
    reply = draw(
        st.fixed_dictionaries(
            {
                "role": st.just("assistant"),
                "content": st.one_of(TEXTS, TEXTS, st.none()),
                "tool_calls": st.one_of(st.none(), st.none(), CALLS),
            }
        )
    )
    answer = {
        "finish_reason": draw(st.sampled_from(["stop", "stop", None, "f" * 70, 3])),
        "prompt_tokens": draw(NUMBERS),
        "completion_tokens": draw(NUMBERS),
    }
    if change == "big_tokens":  # the exchange's and the row's, but too big to store
        answer["completion_tokens"] = 2**40
    output_text = draw(st.sampled_from([reply["content"]] * 3 + [None, "other"]))
    carried = draw(st.integers(-1, len(messages) + 1))
    run_id = 2**63 + 5 if change == "big_run_id" else draw(st.integers(1, 3))
    step = draw(st.integers(0, 3))
    start = max(carried, 0)
    rows = [_row(run_id, eid, step, p, "in", messages[p]) for p in range(start, len(messages))]
    out = {**_row(run_id, eid, step, len(messages), "out", reply), **answer}
    rows += [] if change == "no_out" else [out]
    if change == "two_outs":
        rows.append(dict(out))
    ins = [row for row in rows if row["direction"] == "in"]
    target = draw(st.sampled_from(ins)) if ins else out
    edits: dict[str, dict[str, Any]] = {
        "content": {"content": '"other"'},
        "tool_calls": {"tool_calls": "[]"},
        "role": {"role": "other"},
        "call_id": {"tool_call_id": "other"},
        "position": {"position": target["position"] + 1},
        "run_id": {"run_id": run_id + 1},
        "step": {"step": step + 1},
        "finish_reason": {"finish_reason": "stop"},
        "float_step": {"step": float(step)},
        "in_tokens": {"prompt_tokens": 1},
    }
    target.update(edits.get(change or "", {}))
    out_edits: dict[str, dict[str, Any]] = {
        "out_tokens": {"prompt_tokens": 2**40},
        "out_reason": {"finish_reason": "length"},
        "out_content": {"content": '"other"'},
        "out_role": {"role": "user"},
        "out_position": {"position": 0},
        "out_step": {"step": step + 1},
        "out_run_id": {"run_id": run_id + 1},
    }
    out.update(out_edits.get(change or "", {}))
    if change == "drop" and ins:
        rows.remove(target)
    if change == "extra_row":
        rows.insert(0, _row(run_id, eid, step, 0, "in", "extra"))
    items = [*messages[carried:], reply]
    if change == "copied_items":
        items = copy.deepcopy(items)
    elif change == "changed_items" and len(items) > 1:
        items[0] = {"role": "user", "content": "changed"}
    elif change == "other_items":
        items = [*items, {"role": "user", "content": "more"}]
    snapshot = {"run_id": run_id, "exchange_id": eid, "step": step, "carried": carried}
    has_snapshot = draw(st.sampled_from([True, True, True, False])) or change is not None
    json_body = draw(st.sampled_from([True, True, True, False])) or change is not None
    source = Sources(messages if json_body else None, output_text, answer)
    return (
        RunChanges(
            run={"id": run_id},
            messages=rows,
            snapshot={**snapshot, "appended": items} if has_snapshot else None,
        ),
        source if change is not None else draw(st.sampled_from([source, source, source, None])),
    )


@st.composite
def batches(draw: st.DrawFn, change: str | None) -> tuple[list[RunChanges], dict[int, Sources]]:
    count = draw(st.integers(1, 4))
    shared = st.lists(st.sampled_from([11, 12]), min_size=count, max_size=count)
    unique = st.lists(st.integers(1, 2**62), min_size=count, max_size=count, unique=True)
    eids = draw(st.one_of(unique, unique, unique, shared))
    changes, sources = [], {}
    for eid in eids:
        step, source = draw(steps(eid, draw(st.sampled_from([None, change, change]))))
        changes.append(step)
        if source is not None:
            sources[eid] = source
    if draw(st.booleans()):
        changes.append(RunChanges(run={"id": 1}))  # a call adding no rows
    return changes, sources


def _outcome(found: Any) -> Any:
    return (found.messages, found.snapshots)


@pytest.mark.parametrize("change", CHANGES)
def test_run_rows_decide_as_the_general_way(change: str | None):
    @settings(max_examples=150 if change is None else 40, deadline=None)
    @given(batches(change))
    def check(batch: tuple[list[RunChanges], dict[int, Sources]]) -> None:
        changes, sources = batch
        assert _outcome(run_refs.run_rows(changes, sources)) == _outcome(
            run_refs._general(changes, sources)
        )

    check()


def test_a_derived_step_is_found_without_the_general_way():
    """The common steps take the quick way and store no message row (a plain answer) or only
    the answer asking for a tool."""
    request = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Go"}]
    replies: tuple[tuple[dict[str, Any], int, str], ...] = (
        ({"role": "assistant", "content": "Done.", "tool_calls": None}, 0, run_refs.EXCHANGE),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function"}]},
            1,
            run_refs.REQUEST,
        ),
    )
    for reply, rows_kept, folded in replies:
        answer = {"finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2}
        rows = [_row(1, 9, 0, p, "in", m) for p, m in enumerate(request)]
        rows.append({**_row(1, 9, 0, 2, "out", reply), **answer})
        snapshot = {"run_id": 1, "exchange_id": 9, "step": 0, "carried": 0}
        change = RunChanges(
            run={"id": 1}, messages=rows, snapshot={**snapshot, "appended": [*request, reply]}
        )
        source = Sources(request, reply["content"], answer)
        found = run_refs.run_rows([change], {9: source})
        assert len(found.messages) == rows_kept
        assert found.snapshots == [("[]", run_refs.EXCHANGE, folded)]
        assert _outcome(found) == _outcome(run_refs._general([change], {9: source}))
