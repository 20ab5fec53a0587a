"""Datasets as files, both ways: JSONL (our items, or Mistral Observability dataset records
that La Plateforme's `imports/from-file` takes) and Hugging Face datasets (`save_to_disk`
folders or Parquet, and the Hub when a token is configured).

A Mistral record is `{"payload": {...}, "properties": {...}}`. The payload is the chat
request the item stands for, its reply last: `messages` (the input's, then the expected
output as an assistant message), `tools`, and the input's parameters beside them. Properties
are the item's metadata. Reading one back, a last assistant message is the expected output.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.errors import UserError
from gateway.export.dataset_items import given_item
from gateway.store.datasets import DatasetItem, NewItem

FORMATS = ("jsonl", "mistral", "hf", "parquet")
HF_COLUMNS = ("input", "expected_output", "metadata")
HUB_TIMEOUT = 5.0


# -- records ------------------------------------------------------------------------------


def item_record(item: DatasetItem) -> dict[str, Any]:
    return {
        "input": item.input,
        "expected_output": item.expected_output,
        "metadata": item.metadata,
    }


def mistral_record(item: DatasetItem) -> dict[str, Any]:
    messages = list(item.input.get("messages") or [])
    expected = item.expected_output
    if isinstance(expected, dict) and expected.get("role") == "assistant":
        messages.append(expected)
    elif expected is not None:
        text = expected if isinstance(expected, str) else orjson.dumps(expected).decode()
        messages.append({"role": "assistant", "content": text})
    payload: dict[str, Any] = {**(item.input.get("parameters") or {}), "messages": messages}
    if item.input.get("tools"):
        payload["tools"] = item.input["tools"]
    return {"payload": payload, "properties": item.metadata}


def from_mistral(record: dict[str, Any], where: str) -> NewItem:
    payload = record.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
        raise UserError(f'{where}: payload must be an object with "messages" (a list)')
    properties = record.get("properties") or {}
    if not isinstance(properties, dict):
        raise UserError(f"{where}: properties must be an object")
    return from_chat(payload, properties, where)


def from_chat(body: dict[str, Any], metadata: dict[str, Any], where: str) -> NewItem:
    """A chat request body with its reply last (Mistral's fine-tuning lines too)."""
    messages = list(body["messages"])
    expected = None
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        expected = messages.pop()
    given: dict[str, Any] = {"messages": messages}
    if isinstance(body.get("tools"), list) and body["tools"]:
        given["tools"] = body["tools"]
    parameters = {k: v for k, v in body.items() if k not in ("messages", "tools")}
    if parameters:
        given["parameters"] = parameters
    return given_item({"input": given, "expected_output": expected, "metadata": metadata}, where)


def read_record(value: Any, where: str) -> NewItem:
    """Any of the three shapes: ours (`input`), Mistral's (`payload`), or a chat/fine-tuning
    line (`messages`)."""
    if not isinstance(value, dict):
        raise UserError(f"{where}: each line must be a JSON object")
    if "payload" in value:
        return from_mistral(value, where)
    if "input" in value:
        return given_item(value, where)
    if isinstance(value.get("messages"), list):
        return from_chat(value, {}, where)
    raise UserError(f'{where}: expected "input", "payload" (a Mistral record) or "messages"')


# -- JSONL --------------------------------------------------------------------------------


def read_jsonl(path: str) -> list[NewItem]:
    try:
        with open(path, "rb") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_jsonl(lines, path)


def parse_jsonl(lines: Iterable[bytes], name: str) -> list[NewItem]:
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise UserError(f"{name} line {number}: not JSON ({exc})") from None
        items.append(read_record(value, f"{name} line {number}"))
    if not items:
        raise UserError(f"{name} holds no items")
    return items


def jsonl_lines(items: Iterable[DatasetItem], shape: str) -> Iterator[bytes]:
    shaped = mistral_record if shape == "mistral" else item_record
    for item in items:
        yield orjson.dumps(shaped(item)) + b"\n"


def write_jsonl(items: list[DatasetItem], shape: str, out: str) -> None:
    staged = f"{out}.partial"
    try:
        with open(staged, "wb") as handle:
            handle.writelines(jsonl_lines(items, shape))
        os.replace(staged, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None


# -- Hugging Face ---------------------------------------------------------------------------


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError(
            "Hugging Face datasets need the hf extra: pip install 'agentops-studio[hf]'"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def hf_table(items: list[DatasetItem]) -> dict[str, list[str | None]]:
    """Columns of JSON text: input, expected output and metadata vary in shape from item to
    item, which Arrow's one schema per column cannot hold as nested values."""
    return {
        "input": [orjson.dumps(i.input).decode() for i in items],
        "expected_output": [
            None if i.expected_output is None else orjson.dumps(i.expected_output).decode()
            for i in items
        ],
        "metadata": [orjson.dumps(i.metadata).decode() for i in items],
    }


def write_hf(items: list[DatasetItem], out: str, shape: str, repo: str | None = None) -> None:
    """`save_to_disk` folder (shape hf) or one Parquet file (shape parquet); then the Hub
    (private) when `repo` is given and a token is configured."""
    datasets = _datasets()
    if repo and not hub_token():
        raise UserError(
            "pushing to the Hugging Face Hub needs a token: set HF_TOKEN or run "
            "`huggingface-cli login`"
        )
    table = datasets.Dataset.from_dict(hf_table(items))
    try:
        if shape == "parquet":
            table.to_parquet(out)
        else:
            table.save_to_disk(out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    if repo:
        check_hub(f"saved to {out}, but cannot push to {repo}:")
        try:
            table.push_to_hub(repo, private=True)  # captured prompts: never public by default
        except Exception as exc:  # offline, refused, no such org: one line, not a traceback
            raise UserError(
                f"saved to {out}, but the Hugging Face Hub refused or could not be reached "
                f"({repo}): {_first_line(exc)}"
            ) from None


def check_hub(what: str) -> None:
    """Fail at once, in one line, when the Hub cannot be reached (offline mode, no DNS, no
    route): huggingface_hub would otherwise retry for half a minute, printing each try."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"{what} the Hugging Face Hub is off (HF_HUB_OFFLINE is set)")
    url = urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_TIMEOUT).close()
    except OSError as exc:
        raise UserError(
            f"{what} the Hugging Face Hub ({host}) is unreachable: {exc.strerror or exc}"
        ) from None
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # no line per retry


def hub_token() -> str | None:
    try:
        from huggingface_hub import get_token
    except ImportError:
        return os.environ.get("HF_TOKEN")
    token: str | None = get_token()
    return token


def read_hf(source: str, split: str = "train") -> list[NewItem]:
    """A local `save_to_disk` folder (a Dataset, or a DatasetDict's `split`), a Parquet file,
    else a Hub dataset name (which fails offline with one line)."""
    datasets = _datasets()
    path = Path(source)
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            loaded = datasets.Dataset.from_parquet(str(path))
        else:
            check_hub(f"cannot load {source!r}: it is not a local folder or file, and")
            loaded = datasets.load_dataset(source, split=split)
    except UserError:
        raise
    except Exception as exc:
        where = "from disk" if path.exists() else "from the Hugging Face Hub"
        raise UserError(f"cannot load {source!r} {where}: {_first_line(exc)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UserError(f"{source} has no split {split!r} (it has {', '.join(loaded)})")
        loaded = loaded[split]
    return hf_items(loaded.to_list(), source)


def hf_items(rows: list[dict[str, Any]], source: str) -> list[NewItem]:
    """Rows with our columns (JSON text or values), or a chat `messages` column."""
    items = []
    for number, row in enumerate(rows):
        where = f"{source} row {number}"
        if "input" in row:
            value = {k: _json_cell(row.get(k), where) for k in HF_COLUMNS if k in row}
            items.append(given_item(value, where))
        else:
            items.append(read_record(row, where))
    if not items:
        raise UserError(f"{source} holds no rows")
    return items


def _json_cell(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value  # a plain text expected output
    return value
