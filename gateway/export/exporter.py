"""`agentops-studio export`: selected exchanges or runs to Mistral fine-tuning JSONL, flat
JSONL / CSV / Parquet, or a Hugging Face dataset (saved to disk, optionally pushed).

Reads go through ExportReader in keyset-paged batches and each batch is written before the
next is read, so a large database never sits in memory. Files are written beside the target
and renamed into place at the end: a failed export leaves no half file.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TextIO

import orjson

from gateway.errors import UserError
from gateway.export.failures import problems_of
from gateway.export.finetune import example, parse_for_export, sent_and_answered
from gateway.providers.mistral import MistralProvider
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.exports import ExportReader, ExportRun, Failures
from gateway.store.records import StoredExchange

FORMATS = ("mistral", "jsonl", "csv", "parquet", "hf")
EXCHANGE_COLUMNS = (
    "id",
    "started_at",
    "run_id",
    "step",
    "method",
    "path",
    "endpoint",
    "model",
    "request_model",
    "status",
    "state",
    "error",
    "streamed",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cost_usd",
    "latency_ms",
    "ttfb_ms",
    "ttft_ms",
    "finish_reason",
    "correlation_id",
    "truncated",
    "omitted",
    "output_text",
    "messages",
    "request_body",
    "response_body",
    # added later: at the end, so existing readers' column positions hold
    "error_type",
    "error_code",
)
RUN_COLUMNS = (
    "id",
    "name",
    "agent_id",
    "user",
    "tags",
    "source",
    "started_at",
    "ended_at",
    "status",
    "exchange_count",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "total_cost_usd",
    "evaluations",
    "final_exchange_id",
    "messages",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # spreadsheet formula triggers
# Characters a spreadsheet skips before it looks for a formula character: whitespace (any
# Unicode space, tab, newline) and invisible format characters (zero-width space, BOM).
SKIPPED_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


class ExportError(UserError, RuntimeError):
    """A user-fixable problem (bad path, missing extra): one line, exit 2."""


@dataclass(frozen=True)
class ExportRequest:
    format: str
    out: str
    filter: ExchangeFilter
    runs: bool = False
    failures: Failures | None = None
    push_to_hub: str | None = None


@dataclass
class ExportResult:
    written: int = 0
    skipped: int = 0  # mistral format: selected calls with no assistant reply
    # mistral format: examples Mistral's fine-tuning would refuse (say, tool call ids from an
    # OpenAI-compatible upstream), with the first one's problem
    unfit: int = 0
    unfit_problem: str | None = None


# -- records ----------------------------------------------------------------------------------


def exchange_record(item: StoredExchange, messages: list[dict[str, Any]] | None) -> dict:
    """A call as a flat record: its columns as the API shows them, its bodies as stored."""
    columns = item.columns_json()
    record = {column: columns.get(column) for column in EXCHANGE_COLUMNS}
    record["messages"] = messages
    for side in ("request", "response"):
        body, encoding = item.body(side)
        record[f"{side}_body"] = None if encoding == "omitted" else body
    return record


def run_record(run: ExportRun, messages: list[dict[str, Any]] | None) -> dict:
    """A run as a flat record: its columns as the API shows them, tags and scores as JSON."""
    columns = run.run.to_json()
    record = {column: columns.get(column) for column in RUN_COLUMNS}
    record["tags"] = orjson.dumps(dict(run.run.tags)).decode()
    record["evaluations"] = orjson.dumps(run.evaluations).decode()
    final = run.final_exchange
    record["final_exchange_id"] = str(final.id) if final else None
    record["messages"] = messages
    return record


# -- writers ------------------------------------------------------------------------------------


class JsonlWriter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, records: list[dict[str, Any]]) -> None:
        self.stream.write("".join(orjson.dumps(r).decode() + "\n" for r in records))

    def close(self) -> None:
        self.stream.flush()


def neutralise(value: Any) -> Any:
    """CSV injection: a text cell that a spreadsheet would run as a formula gets a quote.

    A formula character is = + - @ in any width (fullwidth \uff1d \uff0b \uff0d \uff20 and
    the small forms fold to them under NFKC), also after leading whitespace or a newline; a
    cell that starts with a tab, CR or LF is quoted as well."""
    if isinstance(value, str) and looks_like_formula(value):
        return "'" + value
    return value


def looks_like_formula(text: str) -> bool:
    if text.startswith(FORMULA_START) or text.startswith("\n"):
        return True
    for char in text:
        if unicodedata.category(char) in SKIPPED_CATEGORIES:
            continue
        return unicodedata.normalize("NFKC", char)[:1] in FORMULA_START[:4]
    return False


class CsvWriter:
    def __init__(self, stream: TextIO, columns: tuple[str, ...]) -> None:
        self.stream = stream
        self.columns = columns
        self.writer = csv.writer(stream)
        self.writer.writerow(columns)

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.writer.writerow([neutralise(_csv_cell(record[c])) for c in self.columns])

    def close(self) -> None:
        self.stream.flush()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def arrow_schema(columns: tuple[str, ...]) -> Any:
    import pyarrow as pa

    call = pa.struct(
        [
            ("id", pa.string()),
            ("type", pa.string()),
            ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
        ]
    )
    message = pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.string()),
            ("tool_calls", pa.list_(call)),
            ("tool_call_id", pa.string()),
            ("name", pa.string()),
        ]
    )
    ints = {
        "step",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "exchange_count",
    }
    floats = {"cost_usd", "total_cost_usd", "latency_ms", "ttfb_ms", "ttft_ms"}
    bools = {"streamed", "truncated", "omitted"}

    def kind(name: str) -> Any:
        if name == "messages":
            return pa.list_(message)
        if name in ints:
            return pa.int64()
        if name in floats:
            return pa.float64()
        return pa.bool_() if name in bools else pa.string()

    return pa.schema([(name, kind(name)) for name in columns])


class ParquetWriter:
    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = arrow_schema(columns)
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, records: list[dict[str, Any]]) -> None:
        self.writer.write_table(self.pa.Table.from_pylist(records, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


# -- the export ---------------------------------------------------------------------------------


async def _records(
    reader: ExportReader, request: ExportRequest, result: ExportResult
) -> AsyncIterator[list[dict[str, Any]]]:
    """Batches of output records in the request's shape: a run is exported through its final
    exchange (whose messages hold the whole conversation), a call through itself."""
    provider = MistralProvider()

    def shaped(parsed: Any, flat: Callable[[Any], dict[str, Any]]) -> dict[str, Any] | None:
        if request.format != "mistral":
            return flat(sent_and_answered(parsed))
        found = example(parsed)
        if found is None:
            result.skipped += 1
        elif problems := problems_of(found):
            result.unfit += 1
            result.unfit_problem = result.unfit_problem or problems[0]
            return None
        return found

    if request.runs:
        async for ids in reader.run_ids(request.filter, request.failures):
            out = []
            for run in await reader.run_records(ids):
                final = run.final_exchange
                parsed = parse_for_export(provider, final) if final else None
                out.append(shaped(parsed, partial(run_record, run)))
            yield [record for record in out if record is not None]
        return
    async for items in reader.exchanges(request.filter, request.failures):
        out = [
            shaped(parse_for_export(provider, item), partial(exchange_record, item))
            for item in items
        ]
        yield [record for record in out if record is not None]


def _check_target(request: ExportRequest) -> Path:
    out = Path(request.out)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"--out: the folder {folder} does not exist")
    if out.is_dir() and request.format != "hf":
        raise ExportError(f"--out: {out} is a folder; give a file name")
    if out.exists() and not out.is_dir() and not out.is_file():
        raise ExportError(f"--out: {out} is not a regular file")  # /dev/full, a pipe
    if out.is_file() and not os.access(out, os.W_OK):
        raise ExportError(f"--out: {out} is read-only")
    return out


def _work_folder(out: Path | None) -> Path:
    """The folder the export is written in before it is renamed into place. Made before the
    database is opened: a target that cannot be written (a read-only folder, /proc) fails at
    once, not after the query."""
    folder = out.parent if out is not None else None
    try:
        return Path(tempfile.mkdtemp(prefix=".agentops-export-", dir=folder))
    except OSError as exc:
        raise ExportError(
            f"--out: cannot write in {folder or tempfile.gettempdir()}: {exc.strerror or exc}"
        ) from None


ARROW_FORMATS = ("parquet", "hf")  # written as Parquet: a file, never standard output
NEEDED_PACKAGES = (("pyarrow", ARROW_FORMATS), ("datasets", ("hf",)))


class RecordWriter(Protocol):
    def write(self, records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


async def run_export(db_url: str, request: ExportRequest) -> ExportResult:
    """Write the export; raises ExportError for problems the user can fix."""
    out = _check_request(request)
    result = ExportResult()
    work = _work_folder(out)
    store = Store(db_url)
    try:
        await store.open(create=False)
        staged = work / ("data.parquet" if request.format in ARROW_FORMATS else "data")
        writer, stream = _open_writer(request, staged)
        await _write_all(ExportReader(store), request, result, writer, stream)
        if out is not None:
            _move_into_place(request, staged, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        await store.close()
    return result


def _check_request(request: ExportRequest) -> Path | None:
    """The file to write (None for standard output), once the export is known to be possible;
    nothing is created before."""
    if request.push_to_hub and request.format != "hf":
        raise ExportError("--push-to-hub needs --format hf")
    out = None
    if request.out == "-":
        if request.format in ARROW_FORMATS:
            raise ExportError(f"--out -: {request.format} cannot go to standard output")
    else:
        out = _check_target(request)
    _check_packages(request.format)
    return out


def _check_packages(format_: str) -> None:
    """The optional packages a format needs (the `hf` extra), named when missing."""
    for package, formats in NEEDED_PACKAGES:
        if format_ in formats and importlib.util.find_spec(package) is None:
            raise ExportError(
                f"--format {format_} needs the {package} package: pip install 'agentops-studio[hf]'"
            )


def _open_writer(request: ExportRequest, staged: Path) -> tuple[RecordWriter, TextIO | None]:
    """The request's writer, and the text stream it writes to (standard output, or the staged
    file); Parquet writes the staged file itself."""
    columns = RUN_COLUMNS if request.runs else EXCHANGE_COLUMNS
    if request.format in ARROW_FORMATS:
        return ParquetWriter(staged, columns), None
    stream: TextIO = sys.stdout
    if request.out != "-":
        stream = open(staged, "w", encoding="utf-8", newline="")  # noqa: SIM115
    writer = CsvWriter(stream, columns) if request.format == "csv" else JsonlWriter(stream)
    return writer, stream


async def _write_all(
    reader: ExportReader,
    request: ExportRequest,
    result: ExportResult,
    writer: RecordWriter,
    stream: TextIO | None,
) -> None:
    """Every batch, written before the next is read; the writer and its file are closed even
    when a batch fails (standard output stays open)."""
    try:
        async for batch in _records(reader, request, result):
            writer.write(batch)
            result.written += len(batch)
    finally:
        writer.close()
        if stream is not None and stream is not sys.stdout:
            stream.close()


def _move_into_place(request: ExportRequest, staged: Path, out: Path, work: Path) -> None:
    if request.format == "hf":
        save_dataset(staged, out, work, request.push_to_hub)
    else:
        os.replace(staged, out)


def save_dataset(parquet: Path, out: Path, work: Path, repo: str | None) -> None:
    """A Hugging Face datasets.Dataset from the written Parquet file (memory-mapped, not
    loaded), saved to `out` and pushed to the Hub when asked (HF_TOKEN or a saved login), as a
    private dataset: captured prompts are not published by accident."""
    import datasets

    datasets.disable_progress_bars()  # the command prints one summary line, not bars
    dataset = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(work / "cache"))
    dataset.save_to_disk(str(out))
    if repo:
        try:
            dataset.push_to_hub(repo, private=True)  # captured prompts: never public by default
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ExportError(
                f"saved to {out}, but pushing to the Hub as {repo} failed: "
                f"{type(exc).__name__}: {first}"
            ) from None


# -- the command line ---------------------------------------------------------------------------


def export_options(func: Any) -> Any:
    """The export command's options: format, target, preset, and the API's filters."""
    import click

    options = [
        click.option(
            "--format",
            "format_",
            required=True,
            type=click.Choice(FORMATS),
            help="mistral: fine-tuning JSONL; jsonl/csv/parquet: flat records; "
            "hf: a Hugging Face dataset folder.",
        ),
        click.option(
            "--out",
            required=True,
            metavar="PATH",
            help="File to write (a folder for hf; - for standard output).",
        ),
        click.option(
            "--runs",
            is_flag=True,
            help="One record per run (its final conversation) instead of per call.",
        ),
        click.option(
            "--preset",
            type=click.Choice(["failures"]),
            help="failures: errored calls and runs, or ones scored below --score-below.",
        ),
        click.option(
            "--score-below",
            type=float,
            default=0.5,
            show_default=True,
            help="With --preset failures: an evaluation below this is a failure.",
        ),
        click.option(
            "--metric",
            metavar="NAME",
            help="With --preset failures: only this evaluation metric counts.",
        ),
        click.option(
            "--push-to-hub",
            metavar="REPO",
            help="With --format hf: also push the dataset to the Hub (HF_TOKEN).",
        ),
    ]
    for name, text in (
        ("q", "Full-text search, words ANDed."),
        ("model", "Model name."),
        ("status", "Status code (429) or class (4xx)."),
        ("state", "complete, client_disconnected, upstream_error, ..."),
        ("endpoint", "chat, fim, agents, embeddings, conversations, ..."),
        ("run", "Run id."),
        ("since", "ISO-8601 time."),
        ("until", "ISO-8601 time."),
    ):
        options.append(click.option(f"--{name}", metavar=name.upper(), help=text))
    for option in reversed(options):
        func = option(func)
    return func


def export_request(options: dict[str, Any]) -> ExportRequest:
    """Validate the options like the API validates its query (ValueError names the flag)."""
    from gateway.store.query import exchange_filter

    names = ("q", "model", "status", "state", "endpoint", "run", "since", "until")
    try:
        f = exchange_filter({n: options.get(n) for n in names if options.get(n) is not None})
    except UserError as exc:
        raise ValueError(f"--{exc}") from None
    failures = None
    if options.get("preset") == "failures":
        failures = Failures(options.get("score_below", 0.5), options.get("metric"))
    elif options.get("metric"):
        raise ValueError("--metric only applies with --preset failures")
    return ExportRequest(
        format=options["format_"],
        out=options["out"],
        filter=f,
        runs=bool(options.get("runs")),
        failures=failures,
        push_to_hub=options.get("push_to_hub"),
    )
