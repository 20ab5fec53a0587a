"""The command line: `agentops-studio serve | mitm | import | purge | reprice | export |
finetune | healthcheck | quarantine | dataset`. Flags come from the settings table.

Every failure a user can cause (bad flag, unreachable database, port in use, bad price file)
ends as one line on stderr and exit status 2, never a traceback. SIGINT and SIGTERM end every
command (see gateway/lifecycle.py): an interrupted one exits with status 130.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway import __version__
from gateway.capture.exchange import is_id
from gateway.errors import AgentOpsError, UserError
from gateway.export.exporter import export_options, export_request
from gateway.lifecycle import INTERRUPTED_STATUS, Interrupted, Signals, run_interruptible
from gateway.proxy.workers import WorkerError
from gateway.settings import SETTINGS, ConfigError, Settings, parse_days
from gateway.store.exchanges import Store
from gateway.writer.memory import give_back, limit_arenas, tune_gc

T = TypeVar("T")
# Every error raised on purpose (gateway/errors.py): one line on stderr and its exit code (2).
USER_ERRORS = (AgentOpsError,)


def fail(message: str) -> None:
    click.echo(f"agentops-studio: error: {message}", err=True)
    sys.exit(2)


def interrupted(what: str = "interrupted") -> None:
    click.echo(f"agentops-studio: {what}", err=True)
    sys.exit(INTERRUPTED_STATUS)


def say(line: str) -> None:
    click.echo(line, err=True)


def _run(
    work: Coroutine[Any, Any, T],
    when_interrupted: str = "interrupted",
    cannot_write: str | None = None,
) -> T:
    """Run a command's coroutine; an interruption, an error of the tree (and, where the
    command writes a file, an OSError naming it) end the command with one line and its
    exit code."""
    try:
        return run_interruptible(work)
    except Interrupted:
        interrupted(when_interrupted)
        raise  # unreachable: interrupted() exits
    except USER_ERRORS as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits
    except OSError as exc:
        if cannot_write is None:
            raise
        fail(f"{cannot_write}: {exc.strerror or exc}")
        raise


def setting_options(names: tuple[str, ...] | None = None) -> Callable[[Any], Any]:
    """Decorate a command with one option per setting (flag, env var and default in --help)."""

    def decorate(func: Any) -> Any:
        for setting in reversed(SETTINGS):
            if names is not None and setting.name not in names:
                continue
            default = "none" if setting.default is None else setting.default
            func = click.option(
                setting.flag,
                setting.name,
                default=None,
                metavar=setting.kind.upper(),
                help=f"{setting.help} [env {setting.env}; default {default}]",
            )(func)
        return func

    return decorate


def build_settings(flags: dict[str, Any]) -> Settings:
    try:
        return Settings.build(flags, dict(os.environ))
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agentops-studio")
def main() -> None:
    """AgentOps Studio: a recording gateway in front of the Mistral API.

    Point a client at the proxy port (Mistral(server_url="http://127.0.0.1:8080")) and every
    call is forwarded unchanged and recorded; browse them on the UI port.
    """


@main.command()
@setting_options()
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(log_level: str, **flags: Any) -> None:
    """Run the proxy and the UI/API in one process until SIGTERM or Ctrl-C."""
    settings = build_settings(flags)
    _logging(log_level)
    limit_arenas()
    if settings.workers > 1:
        _listen(_serve_workers(settings, logging.getLogger().getEffectiveLevel()))
    else:
        _listen(_serve(settings))


def _listen(work: Coroutine[Any, Any, object | None]) -> None:
    """Run a listening command until it is stopped: a failure to start is one line (exit 2),
    a second Ctrl-C (`work` returns what cut it) exits as an interrupted command does."""
    try:
        cut = asyncio.run(work)
    except Interrupted:
        interrupted("interrupted while starting")
        return
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    except OSError as exc:
        fail(f"cannot listen: {exc.strerror or exc}")
        return
    if cut is not None:  # a second Ctrl-C
        sys.exit(INTERRUPTED_STATUS)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Tortoise logs every query with its values at DEBUG (captured bodies) and chatters at INFO.
    logging.getLogger("tortoise").setLevel(logging.WARNING)


async def _serve(settings: Settings) -> int | None:
    """Run until a signal; returns how many calls a second signal cut (None: none did)."""
    from gateway.app import Gateway

    gateway = Gateway(settings)
    signals = Signals()
    try:
        await signals.unless_stopped(gateway.start())
    except BaseException:
        await gateway.stop()
        raise
    tune_gc()
    trimmer = asyncio.create_task(give_back(settings.malloc_trim == "on"), name="agentops-trim")
    say(
        f"AgentOps Studio {__version__}: proxy {gateway.proxy_url} -> {settings.upstream}, "
        f"UI {gateway.ui_url}"
    )
    await signals.first.wait()
    trimmer.cancel()
    return await signals.stop(
        gateway.stop(),
        lambda: len(gateway.in_flight),
        gateway.cut_in_flight,
        settings.shutdown_grace,
        say,
    )


WORKER_LOST_ERROR = (
    "the gateway's worker process serving this call stopped without a clean shutdown (killed "
    "or crashed) while it was in flight: its client saw the connection break, and nothing "
    "more of the call is known"
)


async def _serve_workers(settings: Settings, log_level: int) -> int | None:
    """`serve --workers N`: this process serves the UI/API and supervises N proxy processes
    on one port (gateway/proxy/workers.py). On SQLite they relay their records to this
    process's writer; on PostgreSQL each has a writer, and a spool folder, of its own."""
    from gateway.app import Gateway
    from gateway.capture.exchange import node
    from gateway.proxy.workers import WorkerGroup, reserve_port
    from gateway.writer.journal import placeholder, start_entry

    gateway = Gateway(settings)
    reserved = reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    gateway.proxy_url = f"http://{host}:{port}"
    relay = gateway.store.dialect == "sqlite"
    base = settings.replace(port=port, workers=1, retention_days=None)

    def spawn(index: int, conn: Any) -> tuple[Callable[..., None], tuple[Any, ...]]:
        own = base.replace(spool_dir=str(Path(settings.spool_dir) / f"worker-{index}"))
        worker_node = (node() + index) & 0x3FF  # distinct from ours and each other's
        # a relaying worker's records go to our spool folder when we are gone
        relay_to = settings.spool_dir if relay else None
        return worker_main, (own, conn, worker_node, relay_to, log_level)

    def relayed(starts: list[Any], finished: list[Any]) -> None:
        for exchange in starts:
            gateway.recorder.begin(exchange)
        for exchange in finished:
            gateway.recorder.submit(exchange)

    def lost(index: int, starts: list[Any]) -> None:
        """A relaying worker died with these calls in flight: recorded as `interrupted`, as
        the journal records a killed gateway's (the supervisor's journal only has their
        starts, and a clean stop of the supervisor deletes it)."""
        for exchange in starts:
            record = placeholder(start_entry(exchange))
            record.error = WORKER_LOST_ERROR
            gateway.recorder.submit(record)
        gateway.recorder.missing_calls += len(starts)
        logging.getLogger("agentops.workers").warning(
            "worker %d stopped with %d calls in flight: they are missing (recorded with state "
            "`interrupted`)",
            index,
            len(starts),
        )

    group = WorkerGroup(settings.workers, spawn, *((relayed, lost) if relay else ()))
    gateway.workers = group
    signals = Signals()

    async def stop() -> None:
        await group.stop(settings.shutdown_grace + 60)
        await gateway.stop()  # after the workers: relayed records reach our writer first

    try:
        await signals.unless_stopped(gateway.start(proxy=False, ui=True))
        await signals.unless_stopped(group.start())
    except BaseException:
        await stop()
        reserved.close()
        raise
    say(
        f"AgentOps Studio {__version__}: proxy {gateway.proxy_url} -> {settings.upstream} "
        f"({settings.workers} worker processes), UI {gateway.ui_url}"
    )
    gave_up = asyncio.create_task(group.gave_up.wait())
    first = asyncio.create_task(signals.first.wait())
    await asyncio.wait([gave_up, first], return_when=asyncio.FIRST_COMPLETED)
    first.cancel()
    try:
        if group.gave_up.is_set():
            await stop()
            raise WorkerError(f"{group.why}: stopping every worker")
        return await signals.stop(stop(), group.in_flight, group.cut, settings.shutdown_grace, say)
    finally:
        gave_up.cancel()
        reserved.close()


def worker_main(
    settings: Settings, conn: Any, worker_node: int, relay_to: str | None, log_level: int
) -> None:
    """One proxy process of `serve --workers N` (spawned by gateway/proxy/workers.py);
    `relay_to`: the supervisor's spool folder, when the worker relays its records to it."""
    import signal

    from gateway.capture.exchange import set_node

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards Ctrl-C
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s",
    )
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    set_node(worker_node)
    try:
        asyncio.run(_worker(settings, conn, relay_to))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("failed", str(exc) or type(exc).__name__))
        sys.exit(2)


async def _worker(settings: Settings, conn: Any, relay_to: str | None) -> None:
    import signal

    from gateway.app import Gateway
    from gateway.writer.relay import RelayWriter

    gateway = Gateway(settings, worker=True)
    if relay_to is not None:
        gateway.recorder = RelayWriter(settings, conn.send, relay_to)
    signals = Signals()
    loop = asyncio.get_running_loop()
    loop.remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def from_supervisor() -> None:
        try:
            while conn.poll():
                if conn.recv() == ("metrics",):
                    metrics = asyncio.create_task(_send_metrics(gateway, conn))
                    tasks.add(metrics)
                    metrics.add_done_callback(tasks.discard)
        except (EOFError, OSError):  # the supervisor is gone: stop as on SIGTERM
            loop.remove_reader(conn.fileno())
            signals.first.set()

    tasks: set[asyncio.Task[None]] = set()
    try:
        await signals.unless_stopped(gateway.start(proxy=True, ui=False))
    except BaseException:
        await gateway.stop()
        raise
    conn.send(("ready", os.getpid()))
    loop.add_reader(conn.fileno(), from_supervisor)
    stats = asyncio.create_task(_send_stats(gateway, conn))
    await signals.first.wait()
    await signals.stop(
        gateway.stop(), lambda: len(gateway.in_flight), gateway.cut_in_flight, 0, lambda _: None
    )
    stats.cancel()
    _stats(gateway, conn)  # the last word: what it served
    with contextlib.suppress(OSError):
        loop.remove_reader(conn.fileno())


def _stats(gateway: Any, conn: Any) -> None:
    with contextlib.suppress(OSError):
        conn.send(
            (
                "stats",
                {
                    "served": gateway.in_flight.served,
                    "in_flight": len(gateway.in_flight),
                    "health": gateway.recorder.health().to_json(),
                },
            )
        )


async def _send_stats(gateway: Any, conn: Any) -> None:
    from gateway.proxy.workers import STATS_EVERY

    while True:
        _stats(gateway, conn)
        await asyncio.sleep(STATS_EVERY)


async def _send_metrics(gateway: Any, conn: Any) -> None:
    text = b""
    with contextlib.suppress(Exception):
        text = await gateway.recorder.call("metrics", timeout=5.0)
    with contextlib.suppress(OSError):
        conn.send(("metrics", text))


async def on_store(db: str, work: Callable[[Store], Awaitable[T]], *, create: bool = False) -> T:
    """Open the store, do `work` with it, close it (whatever happens). A SQLite database
    that is not there is an error unless `create`: a mistyped --db must not give an empty
    answer (and a new database) for what was recorded."""
    store = Store(db)
    await store.open(create=create)
    try:
        return await work(store)
    finally:
        await store.close()


@main.command()
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="Delete exchanges older than this: 30d, 12h, or a number of days.",
)
@setting_options(("db",))
def purge(older_than: str, **flags: Any) -> None:
    """Delete old exchanges (with their bodies and search index) in batches."""
    try:
        days = parse_days(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}")
        return
    settings = build_settings(flags)
    cutoff = datetime.now(UTC) - timedelta(days=days)

    removed = _run(
        on_store(settings.db, lambda store: store.purge(cutoff)),
        "interrupted: exchanges removed so far stay removed",
    )
    click.echo(f"removed {removed} exchanges started before {cutoff.isoformat()}")


@main.command()
@click.option("--model", default=None, metavar="NAME", help="Only calls of this model.")
@click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="Only calls started since then: an ISO-8601 time (2026-01-31T00:00:00Z) or an age "
    "(30d, 12h).",
)
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@setting_options(("db", "prices"))
def reprice(model: str | None, since: str | None, dry_run: bool, **flags: Any) -> None:
    """Recompute stored calls' costs from the current price table (bundled, then --prices),
    with every total summed from them: run totals, unpriced counts, dashboard rollups."""
    from gateway.capture.pricing import PriceTable
    from gateway.store.repricing import Repriced
    from gateway.store.repricing import reprice as run_reprice

    if model is not None and (not model.strip() or "\x00" in model):
        fail(f"--model: not a model name: {model!r}")
    start = _since(since)
    settings = build_settings(flags)
    try:
        prices = PriceTable.load(settings.prices)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    done: Repriced = _run(
        on_store(
            settings.db,
            lambda store: run_reprice(store, prices.cost, model, start, dry_run=dry_run),
        ),
        "interrupted: batches repriced so far stay repriced",
    )
    verb = "would reprice" if dry_run else "repriced"
    click.echo(
        f"{verb} {done.changed} of {done.examined} calls ({done.newly_priced} newly priced, "
        f"{done.newly_unpriced} now unpriced): ${done.cost_before:.6f} -> "
        f"${done.cost_after:.6f}, {len(done.runs)} runs"
    )
    for name, count in sorted(done.models.items()):
        click.echo(f"  {name or '(no model)'}: {count} calls")


def _since(text: str | None) -> datetime | None:
    """--since: an ISO-8601 time, or an age before now."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(days=parse_days(text))
    except (ValueError, OverflowError):
        pass
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since: not a time (2026-01-31T00:00:00Z) or an age (30d, 12h): {text!r}")
        raise  # unreachable
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# Settings that mean nothing without the reverse proxy (mitm and import have none).
CAPTURE_SETTINGS = tuple(
    s.name
    for s in SETTINGS
    if s.name
    not in (
        "upstream",
        "host",
        "port",
        "workers",
        "upstream_timeout",
        "shutdown_grace",
        "elevenlabs_upstream",
    )
)


@main.command()
@click.option(
    "--port",
    "mitm_port",
    default=8082,
    show_default=True,
    envvar="AGENTOPS_MITM_PORT",
    type=click.IntRange(0, 65535),
    help="Port of the explicit proxy (HTTPS_PROXY) [env AGENTOPS_MITM_PORT].",
)
@click.option(
    "--listen-host",
    default="127.0.0.1",
    show_default=True,
    envvar="AGENTOPS_MITM_HOST",
    help="Address it listens on [env AGENTOPS_MITM_HOST].",
)
@click.option(
    "--capture-host",
    "capture_hosts",
    multiple=True,
    default=("api.mistral.ai",),
    show_default=True,
    envvar="AGENTOPS_CAPTURE_HOSTS",
    help="Host (or host:port) whose calls are recorded; repeatable. Other hosts pass "
    "untouched, their TLS not decrypted [env AGENTOPS_CAPTURE_HOSTS, "
    "space-separated].",
)
@click.option(
    "--confdir",
    default="~/.mitmproxy",
    show_default=True,
    envvar="AGENTOPS_MITM_CONFDIR",
    help="mitmproxy's folder: its CA (created on first start) and the CA bundle "
    "for clients [env AGENTOPS_MITM_CONFDIR].",
)
@click.option(
    "--upstream-ca",
    default=None,
    metavar="PEM",
    help="Also trust this CA for upstream servers (a private or test upstream).",
)
@click.option(
    "--save-flows",
    default=None,
    metavar="FILE",
    help="Also write the raw flows to FILE as mitmproxy does (-w); `import` reads it.",
)
@click.option(
    "--ui/--no-ui",
    default=True,
    show_default=True,
    help="Serve the UI/API on --ui-host/--ui-port as `serve` does.",
)
@setting_options((*CAPTURE_SETTINGS, "shutdown_grace"))
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def mitm(
    mitm_port: int,
    listen_host: str,
    capture_hosts: tuple[str, ...],
    confdir: str,
    upstream_ca: str | None,
    save_flows: str | None,
    ui: bool,
    log_level: str,
    **flags: Any,
) -> None:
    """Record an agent that cannot change its base URL: run mitmproxy as an explicit proxy
    (HTTPS_PROXY) that records the calls to the captured hosts into the store."""

    settings = build_settings(flags)
    _logging(log_level)
    hosts = tuple(h for entry in capture_hosts for h in entry.replace(",", " ").split())
    _listen(_mitm(settings, mitm_port, listen_host, hosts, confdir, upstream_ca, save_flows, ui))


async def _mitm(
    settings: Settings,
    port: int,
    host: str,
    capture_hosts: tuple[str, ...],
    confdir: str,
    upstream_ca: str | None,
    save_flows: str | None,
    ui: bool,
) -> int | None:
    from gateway.app import Gateway
    from gateway.proxy.mitm import MitmCapture, client_instructions, write_ca_bundle

    gateway = Gateway(settings)
    capture = MitmCapture(
        gateway.recorder.submit,
        host=host,
        port=port,
        capture_hosts=capture_hosts,
        confdir=confdir,
        max_body_bytes=settings.max_body_bytes,
        upstream_ca=upstream_ca,
        save_flows=save_flows,
        held_keys=gateway.held_keys,
    )
    signals = Signals()

    async def start() -> None:
        await gateway.start(proxy=False, ui=ui)
        await capture.start()

    async def stop() -> None:
        await capture.stop(settings.shutdown_grace)
        await gateway.stop()

    def cut() -> int:
        gateway.cut_in_flight()  # UI/API requests
        return capture.cut()

    try:
        await signals.unless_stopped(start())
    except BaseException:
        await capture.stop()
        await gateway.stop()
        raise
    bundle = write_ca_bundle(capture.confdir)
    say(
        f"AgentOps Studio {__version__}: mitm proxy {capture.url} recording "
        f"{', '.join(capture_hosts)}" + (f", UI {gateway.ui_url}" if ui else "")
    )
    say(client_instructions(capture.url, bundle))
    await signals.first.wait()
    return await signals.stop(stop(), capture.in_flight, cut, settings.shutdown_grace, say)


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--capture-host",
    "capture_hosts",
    multiple=True,
    default=("api.mistral.ai", "api.elevenlabs.io"),
    show_default=True,
    help="Import the calls to this host (or host:port); repeatable.",
)
@setting_options(CAPTURE_SETTINGS)
def import_(file: str, capture_hosts: tuple[str, ...], **flags: Any) -> None:
    """Load a mitmproxy flow dump or a HAR file into the store (importing twice stores each
    call once)."""
    from gateway.capture.flow_import import load

    settings = build_settings(flags)
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    try:
        loaded = load(file, capture_hosts)
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    stored, known = _run(_import(settings, loaded.exchanges))
    skipped = sum(loaded.skipped_hosts.values())
    line = f"imported {stored} exchanges from {loaded.kind} file {file}"
    if known:
        line += f"; {known} already stored"
    if skipped:
        hosts = ", ".join(sorted(loaded.skipped_hosts))
        line += f"; skipped {skipped} calls to other hosts ({hosts}; see --capture-host)"
    click.echo(line)


async def _import(settings: Settings, exchanges: list[Any]) -> tuple[int, int]:
    from gateway.app import Gateway
    from gateway.capture.flow_import import store_all

    gateway = Gateway(settings)
    try:
        await gateway.start(proxy=False, ui=False)
        return await store_all(gateway, exchanges)
    finally:
        await gateway.stop()


@main.command()
@export_options
@setting_options(("db",))
def export(**options: Any) -> None:
    """Export calls or runs: Mistral fine-tuning JSONL, JSONL, CSV, Parquet or a Hugging
    Face dataset. Filters are the API's; --preset failures picks what went wrong."""
    from gateway.export.exporter import run_export

    try:
        request = export_request(options)
    except ValueError as exc:
        fail(str(exc))
        return
    settings = build_settings({"db": options.get("db")})
    result = _run(
        run_export(settings.db, request),
        "interrupted: nothing was exported",
        cannot_write=f"--out: cannot write {request.out}",
    )
    skipped = f" ({result.skipped} without an assistant reply left out)" if result.skipped else ""
    if result.unfit:
        skipped += (
            f" ({result.unfit} unfit for Mistral fine-tuning left out; the first: "
            f"{result.unfit_problem})"
        )
    click.echo(
        f"exported {result.written} {'runs' if request.runs else 'calls'} to "
        f"{request.out}{skipped}",
        err=True,
    )


@main.command()
@click.option(
    "--model",
    default="open-mistral-nemo",
    show_default=True,
    metavar="NAME",
    help="The base model to fine-tune.",
)
@click.option(
    "--since",
    default=None,
    metavar="WHEN",
    help="Only failures since then: an ISO-8601 time or an age (30d, 12h).",
)
@click.option(
    "--min-score",
    type=float,
    default=None,
    metavar="X",
    help="Calls and runs with an evaluation under X count as failures too (errors always do).",
)
@click.option("--metric", default=None, metavar="NAME", help="Only evaluations of this metric.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The training file to write [default: agentops-finetune-TIME.jsonl].",
)
@click.option("--dry-run", is_flag=True, help="Export and validate only; print the file's path.")
@click.option("--no-wait", is_flag=True, help="Create the job and return without following it.")
@click.option("--suffix", default=None, help="A suffix for the fine-tuned model's name.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--training-steps", type=click.IntRange(min=1), default=None)
@click.option(
    "--poll-every",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds between looks at the job.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=86400.0,
    show_default=True,
    help="Seconds to follow the job before returning (it keeps running).",
)
@click.option(
    "--gateway",
    "gateway_url",
    default=None,
    metavar="URL",
    help="The gateway's proxy URL [default: http://HOST:PORT from --host and --port].",
)
@setting_options(("db", "prices", "host", "port"))
def finetune(**options: Any) -> None:
    """Fine-tune a model on the failures: export them as Mistral fine-tuning JSONL (each line
    validated), upload it and create a job through the gateway (both calls recorded, in a run
    of source finetune), follow the job, record its cost (category fine-tuning) and register
    the resulting model for experiments (GET /api/models)."""
    from gateway.replay.finetuning import Options, Outcome, export, train
    from gateway.replay.replayer import key_from_environ

    flags = {k: options.pop(k) for k in ("db", "prices", "host", "port")}
    settings = build_settings(flags)
    model = options["model"].strip()
    if not model or "\x00" in model:
        fail(f"--model: not a model name: {options['model']!r}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    opts = Options(
        model=model,
        out=Path(options["out"] or f"agentops-finetune-{stamp}.jsonl"),
        since=_since(options["since"]),
        min_score=options["min_score"],
        metric=options["metric"],
        dry_run=options["dry_run"],
        wait=not options["no_wait"],
        suffix=options["suffix"],
        epochs=options["epochs"],
        training_steps=options["training_steps"],
        poll_every=options["poll_every"],
        timeout=options["timeout"],
    )
    if not opts.out.parent.is_dir():  # as `export` says it, before the database is read
        fail(f"--out: the folder {opts.out.parent} does not exist")
    key = key_from_environ(os.environ)
    if key is None and not opts.dry_run:
        fail("no API key to fine-tune with: set AGENTOPS_REPLAY_API_KEY (or MISTRAL_API_KEY)")
        return
    gateway = options["gateway_url"] or f"http://{settings.host}:{settings.port}"
    outcome = Outcome(opts.out)

    async def loop(store: Store) -> None:
        from gateway.capture.pricing import PriceTable

        prices = PriceTable.load(settings.prices)
        await export(store, opts, outcome)
        if opts.dry_run or not outcome.examples or key is None:
            return
        await train(store, prices, opts, outcome, gateway, key.reveal(), say)

    _run(
        on_store(settings.db, loop),
        "interrupted: a job already created keeps running",
        cannot_write=f"--out: cannot write {opts.out}",
    )
    _finetune_report(outcome, opts)


def _finetune_report(outcome: Any, opts: Any) -> None:
    left = outcome.without_expected
    say(
        f"{outcome.examples} training examples in {outcome.path}"
        + (f" ({left} failures without a known expected output left out)" if left else "")
    )
    if opts.dry_run:
        click.echo(str(outcome.path))
        return
    if not outcome.examples:
        fail("no failure with a known expected output: nothing to fine-tune on")
    job = outcome.job
    for note in outcome.notes:
        say(note)
    click.echo(f"job {job.id}: {job.status} (run {outcome.run_name})")
    if outcome.registered:
        click.echo(
            f"model {outcome.registered}: {job.trained_tokens} trained tokens, "
            f"${outcome.cost_usd:.4f} (fine-tuning)"
        )
    if job.done and job.status != "SUCCESS":
        sys.exit(1)


@main.command()
@setting_options(("ui_host", "ui_port", "ui_token"))
def healthcheck(**flags: Any) -> None:
    """Exit 0 when the gateway's /healthz answers on this machine (Docker's HEALTHCHECK)."""
    import urllib.request

    settings = build_settings(flags)
    host = settings.ui_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.ui_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            click.echo(resp.read().decode()[:500])
    except OSError as exc:
        click.echo(f"agentops-studio: unhealthy: {url}: {exc}", err=True)
        sys.exit(1)


@main.group()
def quarantine() -> None:
    """Records the database refused: list them, store them again, or drop them."""


def _ids(ids: tuple[str, ...]) -> list[int]:
    bad = [i for i in ids if not is_id(i)]
    if bad:
        fail(f"not a record id: {bad[0]!r} (ids are the numbers `quarantine list` prints)")
    return [int(i) for i in ids]


@quarantine.command("list")
@setting_options(("db",))
def quarantine_list(**flags: Any) -> None:
    """Print one line per quarantined record: id, captured at, size, error."""
    settings = build_settings(flags)

    async def listed(store: Store) -> list[dict[str, Any]]:
        items, cursor = await store.quarantine_list(500, None)
        while cursor is not None:
            more, cursor = await store.quarantine_list(500, cursor)
            items += more
        return items

    items = _run(on_store(settings.db, listed))
    for item in items:
        error = item["error"].replace("\n", " ")
        click.echo(f"{item['id']}  {item['captured_at']}  {item['size_bytes']} bytes  {error}")
    click.echo(f"{len(items)} quarantined record{'' if len(items) == 1 else 's'}", err=True)


@quarantine.command("retry")
@click.argument("ids", nargs=-1)
@setting_options(CAPTURE_SETTINGS)
def quarantine_retry(ids: tuple[str, ...], **flags: Any) -> None:
    """Store quarantined records again (all of them when no id is given); those refused
    again stay, with the new error."""
    from gateway.app import Gateway
    from gateway.writer.quarantine import RetryResult, retry

    wanted = _ids(ids) or None
    settings = build_settings(flags)
    logging.getLogger("tortoise").setLevel(logging.WARNING)

    async def run() -> RetryResult:
        gateway = Gateway(settings)
        try:
            await gateway.start(proxy=False, ui=False)
            return await retry(gateway.store, gateway.recorder, wanted)
        finally:
            await gateway.stop()

    try:
        result = asyncio.run(run())
    except USER_ERRORS as exc:
        fail(str(exc))
        return
    click.echo(
        f"retried {result.retried}: {result.stored} stored, {result.refused_again} refused again"
    )
    if result.unknown:
        fail(f"not in quarantine: {', '.join(map(str, result.unknown))}")


@quarantine.command("drop")
@click.argument("ids", nargs=-1, required=True)
@setting_options(("db",))
def quarantine_drop(ids: tuple[str, ...], **flags: Any) -> None:
    """Delete quarantined records for good."""
    wanted = _ids(ids)
    settings = build_settings(flags)

    dropped = _run(on_store(settings.db, lambda store: store.quarantine_delete(wanted)))
    click.echo(f"dropped {dropped} quarantined record{'' if dropped == 1 else 's'}")
    if dropped < len(set(wanted)):
        fail(f"{len(set(wanted)) - dropped} of the ids were not in quarantine")


@main.group()
def dataset() -> None:
    """Datasets: named, versioned sets of items (input, expected output, metadata) built
    from recorded calls or runs, JSONL, or a Hugging Face dataset; exported the same ways."""


def _on_datasets(db: str, work: Callable[[Any], Awaitable[T]], *, create: bool = False) -> T:
    """Run `work(DatasetStore)` on the database; errors from the tree are one line, exit 2."""
    from gateway.store.datasets import DatasetStore

    return _run(
        on_store(db, lambda store: work(DatasetStore(store)), create=create),
        "interrupted: nothing was changed",
    )


def _line(found: Any) -> str:
    return f"{found.id}  {found.name}  version {found.version}  {found.item_count} items"


@dataset.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the dataset is for.")
@setting_options(("db",))
def dataset_create(name: str, description: str, **flags: Any) -> None:
    """Create an empty dataset (version 0)."""
    settings = build_settings(flags)
    created = _on_datasets(settings.db, lambda d: d.create(name, description), create=True)
    click.echo(_line(created))


@dataset.command("list")
@setting_options(("db",))
def dataset_list(**flags: Any) -> None:
    """Print one line per dataset: id, name, latest version, its item count."""
    settings = build_settings(flags)
    for found in _on_datasets(settings.db, lambda d: d.all()):
        click.echo(_line(found))


@dataset.command("add")
@click.argument("name")
@click.option("--exchange", "exchanges", multiple=True, metavar="ID", help="A recorded call.")
@click.option("--run", "runs", multiple=True, metavar="ID", help="A recorded run.")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="The calls a search selects (the /api/exchanges parameters: q, model, status, "
    "endpoint, run, since, until, limit); repeatable.",
)
@click.option("--jsonl", metavar="FILE", help="Items, Mistral records or chat lines.")
@click.option(
    "--hf", metavar="PATH", help="A Hugging Face dataset: a save_to_disk folder or Parquet."
)
@click.option("--split", default="train", show_default=True, help="The --hf split to read.")
@setting_options(("db", "elevenlabs_usd_per_credit"))
def dataset_add(
    name: str,
    exchanges: tuple[str, ...],
    runs: tuple[str, ...],
    filters: tuple[str, ...],
    jsonl: str | None,
    hf: str | None,
    split: str,
    **flags: Any,
) -> None:
    """Add items to dataset NAME (or id) from one source, as a new version."""
    chosen = [bool(exchanges), bool(runs), bool(filters), bool(jsonl), bool(hf)]
    if sum(chosen) != 1:
        fail("give exactly one of --exchange, --run, --filter, --jsonl or --hf")
    settings = build_settings(flags)

    async def work(datasets: Any) -> Any:
        from gateway.export import dataset_files
        from gateway.export.dataset_items import ItemSource, parse_ids
        from gateway.providers import make_providers, provider_named
        from gateway.store.runs import RunStore

        found = await datasets.named(name)
        providers = make_providers(settings)
        source = ItemSource(
            datasets.store, RunStore(datasets.store), lambda p: provider_named(providers, p)
        )
        if exchanges:
            items, kind = (
                await source.from_exchanges(parse_ids(list(exchanges), "--exchange")),
                "exchanges",
            )
        elif runs:
            items, kind = await source.from_runs(parse_ids(list(runs), "--run")), "runs"
        elif filters:
            items, kind = await source.from_filter(_pairs(filters)), "filter"
        elif jsonl:
            items, kind = dataset_files.read_jsonl(jsonl), "jsonl"
        else:
            items, kind = dataset_files.read_hf(str(hf), split), "hf"
        return await datasets.add(found.id, items, kind), len(items)

    updated, added = _on_datasets(settings.db, work)
    click.echo(f"added {added} items: {_line(updated)}")


def _pairs(filters: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in filters:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--filter must look like key=value, got {pair!r}")
        out[key] = value
    return out


def _variant(text: str) -> dict[str, Any]:
    """--variant: a JSON object, or NAME=MODEL for the common case."""
    import orjson

    if text.lstrip().startswith("{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            fail(f"--variant {text!r}: not JSON ({exc})")
        return dict(value) if isinstance(value, dict) else {"name": value}
    name, sep, model = text.partition("=")
    if not sep or not name or not model:
        fail(f"--variant {text!r}: give NAME=MODEL or a JSON object")
    return {"name": name, "model": model}


def _api(url: str, path: str, token: str | None, body: Any = None) -> Any:
    """One JSON call to a running gateway's API; an error answer is one line, exit 2."""
    import urllib.error
    import urllib.request

    import orjson

    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else orjson.dumps(body)
    try:
        request = urllib.request.Request(url + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read()).get("error") or exc.reason
        except (orjson.JSONDecodeError, AttributeError):
            message = exc.reason
        fail(f"{path}: {exc.code}: {message}")
    except OSError as exc:
        fail(f"the gateway at {url} is unreachable: {exc}")
    except ValueError as exc:  # not an http(s) URL
        fail(f"--url {url!r}: {exc}")


@dataset.command("experiment")
@click.argument("name")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    required=True,
    metavar="NAME=MODEL|JSON",
    help='A variant: NAME=MODEL, or {"name", "model", "params", "system", "tools"}; repeatable.',
)
@click.option("--scorer", "scorer_types", multiple=True, metavar="TYPE", help="e.g. bleu.")
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
@click.option("--concurrency", type=int, default=4, show_default=True)
@click.option("--url", default=None, help="The gateway's UI/API URL (default: --ui-host/port).")
@setting_options(("ui_host", "ui_port", "ui_token"))
def dataset_experiment(
    name: str,
    variants: tuple[str, ...],
    scorer_types: tuple[str, ...],
    version: int | None,
    concurrency: int,
    url: str | None,
    **flags: Any,
) -> None:
    """Run dataset NAME (or id) against variants on a running gateway, with a progress bar;
    prints the scoreboard (the page /experiments/ID has the chart and the items)."""
    import time

    settings = build_settings(flags)
    url, token = (url or _ui_url(settings)).rstrip("/"), settings.ui_token
    found = [
        d for d in _api(url, "/api/datasets", token)["items"] if name in (d["name"], str(d["id"]))
    ]
    if not found:
        fail(f"dataset {name!r} not found")
    body: dict[str, Any] = {
        "dataset_id": str(found[0]["id"]),
        "variants": [_variant(v) for v in variants],
        "scorers": [{"type": t} for t in scorer_types],
        "concurrency": concurrency,
    }
    if version is not None:
        body["version"] = version
    created = _api(url, "/api/experiments", token, body)
    click.echo(f"experiment {created['id']}: {url}/experiments/{created['id']}", err=True)
    total, shown, tty = created["total"], -1, sys.stderr.isatty()
    while True:
        report = _api(url, f"/api/experiments/{created['id']}", token)
        finished = report["progress"]["finished"]
        if finished != shown:  # a bar on a terminal, a line per step elsewhere
            shown = finished
            filled = round(30 * finished / total) if total else 30
            bar = f"calls [{'#' * filled}{'-' * (30 - filled)}] {finished}/{total} "
            bar += f"{round(100 * finished / total) if total else 100}%"
            click.echo(("\r" + bar) if tty else bar, err=True, nl=not tty)
        if report["status"] != "running":
            break
        time.sleep(0.5)
    if tty:
        click.echo("", err=True)
    for entry in report["scoreboard"]:
        scores = ", ".join(
            f"{metric} {f['mean']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}]"
            for metric, f in entry["scores"].items()
            if f["mean"] is not None
        )
        click.echo(
            f"{entry['variant']}: {scores or 'no scores'}; ${entry['cost_usd']:.6f}, "
            f"{entry['tokens']} tokens, p50 {entry['latency_p50_ms']} ms, "
            f"p95 {entry['latency_p95_ms']} ms, {entry['errors']} errors"
        )
    if report["status"] != "done":
        fail(f"experiment {created['id']} is {report['status']}")


@dataset.command("experiment-export")
@click.argument("experiment_id")
@click.option("--out", required=True, help="A folder (hf) or a .parquet file.")
@click.option("--format", "shape", type=click.Choice(["hf", "parquet"]), default="hf")
@click.option("--url", default=None, help="The gateway's UI/API URL (default: --ui-host/port).")
@setting_options(("ui_host", "ui_port", "ui_token"))
def dataset_experiment_export(
    experiment_id: str, out: str, shape: str, url: str | None, **flags: Any
) -> None:
    """Save an experiment over a dataset's results (a row per item and variant: output,
    scores, cost, latency) as a Hugging Face dataset: save_to_disk folder or Parquet."""
    from gateway.export.experiment_results import write_results

    settings = build_settings(flags)
    url = (url or _ui_url(settings)).rstrip("/")
    if not is_id(experiment_id):
        fail(f"{experiment_id!r} is not an experiment id")
    report = _api(url, f"/api/experiments/{experiment_id}", settings.ui_token)
    try:
        count = write_results(report, out, shape)
    except USER_ERRORS as exc:
        fail(str(exc))
    click.echo(f"{count} rows written to {out}")


def _ui_url(settings: Settings) -> str:
    host = settings.ui_host if settings.ui_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.ui_port}"


@dataset.command("export")
@click.argument("name")
@click.option(
    "--format",
    "shape",
    type=click.Choice(["jsonl", "mistral", "hf", "parquet"]),
    default="jsonl",
    show_default=True,
    help="jsonl: our items; mistral: Observability dataset records (payload + properties) "
    "for La Plateforme's imports/from-file; hf: a save_to_disk folder; parquet: one file.",
)
@click.option("--out", required=True, metavar="PATH", help="The file (or folder for hf).")
@click.option("--version", "version", type=int, default=None, help="Default: the latest.")
@click.option(
    "--push-to-hub",
    metavar="REPO",
    default=None,
    help="Also push (private) to the Hugging Face Hub; needs --format hf or parquet and a "
    "token (HF_TOKEN or huggingface-cli login).",
)
@setting_options(("db",))
def dataset_export(
    name: str, shape: str, out: str, version: int | None, push_to_hub: str | None, **flags: Any
) -> None:
    """Write a version of dataset NAME (or id) to a file."""
    from gateway.export import dataset_files

    if push_to_hub and shape not in ("hf", "parquet"):
        fail("--push-to-hub needs --format hf or parquet")
    settings = build_settings(flags)

    async def work(datasets: Any) -> tuple[Any, int, list[Any]]:
        found = await datasets.named(name)
        wanted = found.version if version is None else version
        if not 0 <= wanted <= found.version:
            raise UserError(f"--version {wanted} does not exist (the latest is {found.version})")
        return found, wanted, await datasets.all_items(found.id, wanted)

    found, wanted, items = _on_datasets(settings.db, work)
    try:
        if shape in ("jsonl", "mistral"):
            dataset_files.write_jsonl(items, shape, out)
        else:
            dataset_files.write_hf(items, out, shape, push_to_hub)
    except USER_ERRORS as exc:
        fail(str(exc))
    click.echo(f"exported {len(items)} items of {found.name} version {wanted} to {out}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
