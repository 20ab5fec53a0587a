"""Scorers: what an output is worth against what was expected, as a number.

Built in, each named by its `type` in a spec such as `{"type": "regex", "pattern": "^4$"}`:
exact_match, contains, regex, json_valid, json_schema (jsonschema), tool_calls (names and
parsed arguments), bleu and chrf (sacrebleu), rouge_l (rouge-score), and the two that call
a Mistral model through the gateway, embedding_cosine and judge (gateway/replay/judge.py).
Any other type is a custom scorer: a Python entry point in the `agentops_studio.scorers`
group, a class taking the spec whose instances have `name` and `score(sample)`.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

import orjson

from gateway.errors import UserError

ENTRY_POINTS = "agentops_studio.scorers"
MAX_NAME = 200  # evaluations.metric_name


@dataclass(frozen=True, slots=True)
class Sample:
    """One output to score: its text and tool calls ({"name", "arguments"} parsed), what
    was expected (a message, text, or any JSON; None when nothing is), and the input."""

    output_text: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    expected: Any = None
    input: dict[str, Any] = field(default_factory=dict)

    def expected_text(self) -> str | None:
        expected = self.expected
        if isinstance(expected, dict) and "content" in expected:
            expected = expected["content"]
        if expected is None or isinstance(expected, str):
            return expected
        return orjson.dumps(expected).decode()

    def expected_calls(self) -> list[dict[str, Any]]:
        calls = self.expected.get("tool_calls") if isinstance(self.expected, dict) else None
        return [normal_call(c) for c in calls or [] if isinstance(c, dict)]


@dataclass(frozen=True, slots=True)
class Score:
    name: str
    value: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, **self.detail}


class Scorer(Protocol):
    @property
    def name(self) -> str: ...

    def score(self, sample: Sample) -> Score | Awaitable[Score]: ...


def normal_call(call: dict[str, Any]) -> dict[str, Any]:
    """A tool call as name + parsed arguments, from the chat shape or a flat one."""
    inner = call.get("function")
    function: dict[str, Any] = inner if isinstance(inner, dict) else call
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            arguments = orjson.loads(arguments)
    return {"name": function.get("name"), "arguments": arguments}


def _needs(sample: Sample, name: str) -> str:
    expected = sample.expected_text()
    if expected is None:
        raise UserError(f"{name} needs an expected output (give `expected`)")
    return expected


def _text(sample: Sample) -> str:
    return sample.output_text or ""


@dataclass
class Plain:
    """A scorer that is one function of the sample."""

    name: str
    function: Callable[[Sample], float]

    def score(self, sample: Sample) -> Score:
        return Score(self.name, float(self.function(sample)))


def exact_match(spec: dict[str, Any]) -> Plain:
    strip = spec.get("strip", True)

    def match(sample: Sample) -> float:
        got, want = _text(sample), _needs(sample, "exact_match")
        if strip:
            got, want = got.strip(), want.strip()
        return float(got == want)

    return Plain(spec.get("name") or "exact_match", match)


def contains(spec: dict[str, Any]) -> Plain:
    value = spec.get("value")
    if value is not None and not isinstance(value, str):
        raise UserError("contains: value must be a string")
    fold = bool(spec.get("ignore_case", False))

    def found(sample: Sample) -> float:
        want = value if value is not None else _needs(sample, "contains")
        got = _text(sample)
        return float((want.lower() in got.lower()) if fold else (want in got))

    return Plain(spec.get("name") or "contains", found)


def regex(spec: dict[str, Any]) -> Plain:
    pattern = spec.get("pattern")
    if not isinstance(pattern, str):
        raise UserError("regex: pattern must be a string")
    try:
        compiled = re.compile(pattern, re.IGNORECASE if spec.get("ignore_case") else 0)
    except re.error as exc:
        raise UserError(f"regex: bad pattern: {exc}") from None
    return Plain(spec.get("name") or "regex", lambda s: float(bool(compiled.search(_text(s)))))


def _json(sample: Sample) -> tuple[bool, Any]:
    try:
        return True, orjson.loads(_text(sample))
    except orjson.JSONDecodeError:
        return False, None


def json_valid(spec: dict[str, Any]) -> Plain:
    return Plain(spec.get("name") or "json_valid", lambda s: float(_json(s)[0]))


def json_schema(spec: dict[str, Any]) -> Plain:
    import jsonschema

    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise UserError("json_schema: schema must be a JSON Schema object")
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UserError(f"json_schema: not a valid schema: {exc.message}") from None
    validator = validator_class(schema)

    def valid(sample: Sample) -> float:
        ok, value = _json(sample)
        return float(ok and validator.is_valid(value))

    return Plain(spec.get("name") or "json_schema", valid)


def tool_call_match(spec: dict[str, Any]) -> Plain:
    """The share of expected calls the output made (name and parsed arguments equal; with
    `names_only`, the name), and 0 for each extra call (so the score is 1 only when both
    sets are equal); 1 when neither side calls a tool."""
    names_only = bool(spec.get("names_only", False))

    def key(call: dict[str, Any]) -> bytes:
        value = call["name"] if names_only else [call["name"], call["arguments"]]
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)

    def match(sample: Sample) -> float:
        want = [key(c) for c in sample.expected_calls()]
        got = [key(normal_call(c)) for c in sample.tool_calls]
        if not want and not got:
            return 1.0
        matched = 0
        remaining = list(got)
        for call in want:
            if call in remaining:
                remaining.remove(call)
                matched += 1
        return matched / max(len(want), len(got))

    return Plain(spec.get("name") or "tool_calls", match)


def bleu(spec: dict[str, Any]) -> Plain:
    """Sentence BLEU (sacrebleu's defaults: 13a tokenisation, exponential smoothing), 0-1."""
    import sacrebleu

    def value(sample: Sample) -> float:
        expected = _needs(sample, "bleu")
        return float(sacrebleu.sentence_bleu(_text(sample), [expected]).score) / 100

    return Plain(spec.get("name") or "bleu", value)


def chrf(spec: dict[str, Any]) -> Plain:
    import sacrebleu

    def value(sample: Sample) -> float:
        expected = _needs(sample, "chrf")
        return float(sacrebleu.sentence_chrf(_text(sample), [expected]).score) / 100

    return Plain(spec.get("name") or "chrf", value)


def rouge_l(spec: dict[str, Any]) -> Plain:
    """ROUGE-L F-measure (longest common subsequence), with Porter stemming."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def value(sample: Sample) -> float:
        expected = _needs(sample, "rouge_l")
        return float(scorer.score(expected, _text(sample))["rougeL"].fmeasure)

    return Plain(spec.get("name") or "rouge_l", value)


BUILT_IN: dict[str, Callable[[dict[str, Any]], Plain]] = {
    "exact_match": exact_match,
    "contains": contains,
    "regex": regex,
    "json_valid": json_valid,
    "json_schema": json_schema,
    "tool_calls": tool_call_match,
    "bleu": bleu,
    "chrf": chrf,
    "rouge_l": rouge_l,
}
CALLING = ("embedding_cosine", "judge")  # made in judge.py: they need the gateway


def custom(spec: dict[str, Any]) -> Scorer:
    kind = spec["type"]
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINTS) if ep.name == kind]
    if not found:
        known = ", ".join([*BUILT_IN, *CALLING, *sorted(available_custom())])
        raise UserError(f"no scorer of type {kind!r} (known: {known})")
    try:
        made = found[0].load()(spec)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"scorer {kind!r} could not be made: {type(exc).__name__}: {exc}") from None
    if not isinstance(getattr(made, "name", None), str) or not callable(
        getattr(made, "score", None)
    ):
        raise UserError(f"scorer {kind!r} has no `name` and `score(sample)`")
    return made  # type: ignore[no-any-return]


def available_custom() -> list[str]:
    return [ep.name for ep in metadata.entry_points(group=ENTRY_POINTS)]


def check_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise UserError('a scorer is an object with a "type", e.g. {"type": "bleu"}')
    return spec


def make(spec: dict[str, Any]) -> Scorer:
    """A scorer that needs no gateway call (judge.py makes the two that do)."""
    kind = check_spec(spec)["type"]
    if kind in BUILT_IN:
        return BUILT_IN[kind](spec)
    return custom(spec)


async def run(scorer: Scorer, sample: Sample) -> Score:
    """Score one sample, whether the scorer is plain or a coroutine; values are floats."""
    if len(scorer.name) > MAX_NAME:
        raise UserError(f"a scorer's name is longer than {MAX_NAME} characters")
    result = scorer.score(sample)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, int | float) and not isinstance(result, bool):
        return Score(scorer.name, float(result))
    if not isinstance(result, Score):
        raise UserError(f"scorer {scorer.name!r} returned {type(result).__name__}, not a Score")
    return result
