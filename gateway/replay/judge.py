"""The scorers that call a Mistral model through the gateway: LLM-as-judge and embedding
cosine similarity.

A judge is defined in the shape of Mistral's Observability judges (`CreateJudgeRequest`:
name, description, model_name, instructions, tools, and an output that is CLASSIFICATION
with options or REGRESSION with min/max and their descriptions), kept unchanged so a
definition moves to and from La Plateforme as it is. Its verdict is `{"analysis",
"answer"}`, asked for with a JSON schema at temperature 0.

The calls are the gateway's own (`GatewayCaller`): the replay key, the proxy's forwarding
code (so each is recorded, priced and stored like any call), and a run of their own with
source `evaluator`, never a user's run (see gateway/runs/grouper.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import Unavailable, UserError
from gateway.replay.replayer import Recorded, Replayer, SecretKey
from gateway.replay.scorers import Sample, Score
from gateway.writer import WriterError

EVALUATOR = "evaluator"
STORED_WAIT_SECONDS = 30.0
EMBEDDING_MODEL = "mistral-embed"

# Mistral's CreateJudgeRequest (../shared/mistral/openapi.yaml), as JSON Schema.
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "description", "model_name", "output", "instructions", "tools"],
    "properties": {
        "name": {"type": "string", "minLength": 5, "maxLength": 50},
        "description": {"type": "string", "maxLength": 500},
        "model_name": {"type": "string", "maxLength": 500},
        "instructions": {"type": "string", "maxLength": 10000},
        "tools": {"type": "array", "items": {"type": "string"}},
        "output": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["type", "options"],
                    "properties": {
                        "type": {"const": "CLASSIFICATION"},
                        "options": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["value", "description"],
                                "properties": {
                                    "value": {"type": "string"},
                                    "description": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                {
                    "type": "object",
                    "required": ["type", "min_description", "max_description"],
                    "properties": {
                        "type": {"const": "REGRESSION"},
                        "min": {"type": "number", "minimum": 0},
                        "max": {"type": "number", "exclusiveMaximum": 1e9},
                        "min_description": {"type": "string"},
                        "max_description": {"type": "string"},
                    },
                },
            ]
        },
    },
}


def check_judge(definition: Any) -> dict[str, Any]:
    """A judge definition in Mistral's shape, or a 400 naming what is wrong."""
    import jsonschema

    if not isinstance(definition, dict):
        raise UserError("a judge definition must be a JSON object")
    errors = sorted(
        jsonschema.Draft202012Validator(JUDGE_SCHEMA).iter_errors(definition),
        key=lambda e: list(e.path),
    )
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "the definition"
        raise UserError(f"judge definition: {where}: {errors[0].message}")
    output = definition["output"]
    if output["type"] == "REGRESSION" and output.get("min", 0) >= output.get("max", 1):
        raise UserError("judge definition: output: min must be below max")
    return definition


def verdict_schema(output: dict[str, Any]) -> dict[str, Any]:
    if output["type"] == "CLASSIFICATION":
        answer: dict[str, Any] = {
            "type": "string",
            "enum": [o["value"] for o in output["options"]],
        }
    else:
        answer = {
            "type": "number",
            "minimum": output.get("min", 0),
            "maximum": output.get("max", 1),
        }
    return {
        "type": "object",
        "properties": {"analysis": {"type": "string"}, "answer": answer},
        "required": ["analysis", "answer"],
        "additionalProperties": False,
    }


def rubric(definition: dict[str, Any]) -> str:
    output = definition["output"]
    if output["type"] == "CLASSIFICATION":
        scale = "Answer with one of these values:\n" + "\n".join(
            f"- {o['value']}: {o['description']}" for o in output["options"]
        )
    else:
        low, high = output.get("min", 0), output.get("max", 1)
        scale = (
            f"Answer with a number from {low} ({output['min_description']}) "
            f"to {high} ({output['max_description']})."
        )
    return (
        f"You are a judge: {definition['description']}\n\n{definition['instructions']}\n\n"
        f"{scale}\n\nReply with a JSON object: "
        '{"analysis": "<your reasoning, briefly>", "answer": <your answer>}.'
    )


def judged_text(sample: Sample) -> str:
    """What the judge reads: the conversation, the answer to judge, and what was expected."""
    parts = ["## Conversation"]
    for message in sample.input.get("messages") or []:
        if isinstance(message, dict):
            content = message.get("content")
            text = content if isinstance(content, str) else orjson.dumps(content).decode()
            parts.append(f"[{message.get('role')}] {text}")
    parts += ["", "## Answer to judge", sample.output_text or ""]
    if sample.tool_calls:
        parts.append("Tool calls: " + orjson.dumps(sample.tool_calls).decode())
    expected = sample.expected_text()
    if expected is not None:
        parts += ["", "## Expected answer", expected]
    return "\n".join(parts)


def parse_verdict(definition: dict[str, Any], content: str | None) -> tuple[float, str, Any]:
    """(value, analysis, answer): a classification's value is its option's position in
    `options` (0-based); a regression's is the number itself."""
    try:
        verdict = orjson.loads(content or "")
    except orjson.JSONDecodeError:
        raise UserError(f"the judge did not answer JSON: {(content or '')[:200]!r}") from None
    if not isinstance(verdict, dict) or "answer" not in verdict:
        raise UserError(f"the judge's verdict has no answer: {(content or '')[:200]!r}")
    analysis, answer = str(verdict.get("analysis") or ""), verdict["answer"]
    output = definition["output"]
    if output["type"] == "CLASSIFICATION":
        values = [o["value"] for o in output["options"]]
        if answer not in values:
            raise UserError(f"the judge answered {answer!r}, not one of {values}")
        return float(values.index(answer)), analysis, answer
    low, high = output.get("min", 0), output.get("max", 1)
    if isinstance(answer, bool) or not isinstance(answer, int | float) or not low <= answer <= high:
        raise UserError(f"the judge answered {answer!r}, not a number from {low} to {high}")
    return float(answer), analysis, answer


class GatewayCaller:
    """Calls the gateway makes for itself, recorded in runs of their own (source
    `evaluator`); `about` is the exchange they are made about."""

    def __init__(self, replayer: Replayer, key: SecretKey) -> None:
        self.replayer = replayer
        self.key = key

    async def call(self, path: str, body: dict[str, Any], about: int, scorer: str) -> Recorded:
        pairs = [
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Authorization", f"Bearer {self.key.reveal()}"),
        ]
        tags = f"purpose={EVALUATOR},evaluates={about},scorer={scorer.replace(',', ' ')}"
        exchange = await self.replayer.proxy.send(
            "POST",
            path,
            pairs,
            orjson.dumps(body),
            replay_of=about,
            hints={"purpose": EVALUATOR, "tags": tags},
        )
        with contextlib.suppress(TimeoutError, WriterError):
            await self.replayer.recorder.wait_settled(exchange.id, STORED_WAIT_SECONDS)
        recorded = await self.replayer.load(exchange.id)
        if recorded is None:
            raise Unavailable(f"the {scorer} call (exchange {exchange.id}) is not stored yet")
        status = recorded.item.status
        if status is None or status >= 400:
            raise UserError(
                f"the {scorer} call failed upstream (status {status}, exchange {exchange.id})"
            )
        return recorded


@dataclass
class Judge:
    """LLM-as-judge: one chat call per sample, temperature 0, a JSON verdict."""

    definition: dict[str, Any]
    caller: GatewayCaller
    about: int = 0

    @property
    def name(self) -> str:
        return f"judge:{self.definition['name']}"

    async def score(self, sample: Sample) -> Score:
        body = {
            "model": self.definition["model_name"],
            "temperature": 0,
            "messages": [
                {"role": "system", "content": rubric(self.definition)},
                {"role": "user", "content": judged_text(sample)},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "verdict",
                    "schema": verdict_schema(self.definition["output"]),
                    "strict": True,
                },
            },
        }
        recorded = await self.caller.call("/v1/chat/completions", body, self.about, self.name)
        value, analysis, answer = parse_verdict(self.definition, recorded.item.output_text)
        return Score(
            self.name,
            value,
            {
                "analysis": analysis,
                "answer": answer,
                "judge_exchange_id": str(recorded.id),
                "judge_cost_usd": recorded.item.cost_usd,
            },
        )


@dataclass
class EmbeddingCosine:
    """Cosine similarity of the output's and the expected output's Mistral embeddings."""

    model: str
    caller: GatewayCaller
    about: int = 0
    name: str = "embedding_cosine"

    async def score(self, sample: Sample) -> Score:
        expected = sample.expected_text()
        if expected is None:
            raise UserError("embedding_cosine needs an expected output (give `expected`)")
        body = {"model": self.model, "input": [sample.output_text or "", expected]}
        recorded = await self.caller.call("/v1/embeddings", body, self.about, self.name)
        data = recorded.item.decoded_body("response")
        try:
            a, b = (d["embedding"] for d in sorted(data["data"], key=lambda d: d["index"]))
        except (TypeError, KeyError, ValueError):
            raise UserError(
                f"the embeddings call (exchange {recorded.id}) gave no vectors"
            ) from None
        return Score(
            self.name,
            cosine(a, b),
            {"embedding_exchange_id": str(recorded.id), "cost_usd": recorded.item.cost_usd},
        )


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return round(dot / norm, 6) if norm else 0.0
