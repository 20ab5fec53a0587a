"""What a call asked for, as a person reads it: its parameters (temperature, max_tokens,
top_p, ...) and the tools it offered, out of the recorded request body.

Captured content: everything here becomes strings that Jinja escapes.
"""

from __future__ import annotations

from typing import Any

from gateway.capture import storable
from webui.chat import PART_LIMIT, pretty_json

# Fields that are the call's content (shown as the conversation), not its parameters.
CONTENT_FIELDS = frozenset(
    {"messages", "inputs", "input", "prompt", "suffix", "tools", "documents", "text"}
)
VALUE_LIMIT = 300  # characters of one parameter's value


def parameters(body: Any) -> list[tuple[str, str]]:
    """(name, value as text) for each request field that is not content, Conversations'
    `completion_args` flattened in; the model first, the rest by name."""
    if not isinstance(body, dict):
        return []
    fields = {k: v for k, v in body.items() if k not in CONTENT_FIELDS}
    args = fields.pop("completion_args", None)
    if isinstance(args, dict):
        for key, value in args.items():
            fields.setdefault(key, value)
    names = sorted(fields, key=lambda k: (k != "model", k))
    return [(name, _value(fields[name])) for name in names]


def _value(value: Any) -> str:
    # json_text: a hostile request nests past what orjson writes (a marker stands in)
    text = value if isinstance(value, str) else storable.json_text(value)
    return text if len(text) <= VALUE_LIMIT else text[: VALUE_LIMIT - 1] + "…"


def tools_offered(body: Any) -> list[dict[str, str]]:
    """The tools a request offered: {name, kind, description, parameters (pretty JSON)}."""
    tools = body.get("tools") if isinstance(body, dict) else None
    out = []
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        inner = tool.get("function")
        function: dict[str, Any] = inner if isinstance(inner, dict) else tool
        spec = function.get("parameters")
        out.append(
            {
                "name": str(function.get("name") or tool.get("type") or "?"),
                "kind": str(tool.get("type") or "function"),
                "description": _cut(str(function.get("description") or "")),
                "parameters": _cut(pretty_json(spec)) if spec is not None else "",
            }
        )
    return out


def _cut(text: str) -> str:
    """A tool's description or schema: its start, past PART_LIMIT (a page stays a page)."""
    if len(text) <= PART_LIMIT:
        return text
    shown = f"the first {PART_LIMIT:,} of {len(text):,} characters"
    return f"{text[:PART_LIMIT]}… ({shown}: the raw request body has them all)"
