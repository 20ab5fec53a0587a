"""Wires the parts into one running gateway: store, writer process, proxy and UI/API listeners.

`Gateway(settings)` is what `agentops-studio serve` runs and what the tests start on
ephemeral ports; there are no globals, so several can run in one process. The proxy and the
UI/API share this process; parsing, run grouping and writes run in the writer process
(gateway/writer/), which this process starts and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.api import access
from gateway.api import alerts as alerts_api
from gateway.api import budgets as budgets_api
from gateway.api import campaigns as campaigns_api
from gateway.api import datasets as datasets_api
from gateway.api import evaluations as evaluations_api
from gateway.api import exchanges as api
from gateway.api import replay as replay_api
from gateway.api import runs as runs_api
from gateway.capture.pricing import PriceTable
from gateway.export.dataset_items import ItemSource
from gateway.export.experiment_results import wandb_payloads
from gateway.export.failures_rule import FailuresRule
from gateway.integrations import check_integrations
from gateway.integrations import metrics as prometheus
from gateway.integrations.alerts import AlertEvaluator
from gateway.integrations.webhooks import Webhooks
from gateway.lifecycle import InFlight
from gateway.providers import make_providers, provider_named
from gateway.providers.base import Provider
from gateway.proxy import scrub
from gateway.proxy.budgets import BudgetGuard
from gateway.proxy.forward import (
    HEADER_BYTES,
    MAX_HEADERS,
    Proxy,
    Route,
    client_session,
    upstream_pool,
)
from gateway.proxy.server_log import HTTP_LOG
from gateway.proxy.workers import WorkerGroup
from gateway.replay.campaigns import Campaigns
from gateway.replay.dataset_experiments import DatasetExperiments
from gateway.replay.evaluator import Evaluator
from gateway.replay.experiments import Experiments
from gateway.replay.replayer import Replayer, SecretKey, key_from_environ
from gateway.replay.run import RunReplayer
from gateway.settings import Settings, alt_key_variable
from gateway.store.alerts import AlertStore
from gateway.store.budgets import BudgetStore, load_file, timezone
from gateway.store.campaigns import CampaignStore
from gateway.store.datasets import DatasetStore
from gateway.store.exchanges import Store
from gateway.store.grouping import NodeLease
from gateway.store.judges import JudgeStore
from gateway.store.replays import ReplayStore
from gateway.store.runs import RunStore
from gateway.writer import WriterProcess
from gateway.writer.health import Health

log = logging.getLogger("agentops")

RETENTION_EVERY_SECONDS = 3600
# seconds past --shutdown-grace before aiohttp cancels the proxy's calls itself: the stop has
# cut them at the grace (`Gateway._stop_listeners`), so this is only a backstop
STOP_BACKSTOP = 2.0


def create_ui_app(gateway: Gateway) -> web.Application:
    """The UI/API application (never reachable through the proxy port)."""
    settings = gateway.settings
    chain: list[Middleware] = [gateway.ui_in_flight.middleware]
    chain += access.middlewares(settings)
    chain.append(api.json_errors)
    app = web.Application(middlewares=chain)
    app[api.STORE] = gateway.store
    app[api.RECORDER] = gateway.recorder
    app[api.PRICES] = gateway.prices
    app[api.RUNS] = gateway.run_store
    app[api.PROVIDERS] = gateway.provider
    app[replay_api.REPLAYER] = gateway.replayer
    app[replay_api.RUN_REPLAYER] = gateway.run_replayer
    app[replay_api.REPLAYS] = gateway.replay_store
    app[replay_api.EXPERIMENTS] = gateway.experiments
    app[alerts_api.ALERTS] = gateway.alert_store
    app[budgets_api.GUARD] = gateway.guard
    app[api.PIPELINE] = gateway.pipeline_health
    if gateway.workers is not None:
        app[api.WORKERS] = gateway.workers.report
    app[datasets_api.DATASETS] = gateway.datasets
    app[evaluations_api.EVALUATOR] = gateway.evaluator
    app[evaluations_api.JUDGES] = gateway.judges
    app[campaigns_api.CAMPAIGNS] = gateway.campaigns
    app.add_routes(api.routes)
    if gateway.metrics is not None:
        app.router.add_get("/metrics", gateway.metrics.handle)
    app.add_routes(runs_api.routes)
    app.add_routes(replay_api.routes)
    app.add_routes(datasets_api.routes)
    app.add_routes(campaigns_api.routes)  # before /api/evaluations/{...} routes, if any
    app.add_routes(evaluations_api.routes)
    app.add_routes(alerts_api.routes)
    app.add_routes(budgets_api.routes)
    try:
        from webui import setup as setup_webui
    except ImportError:  # pragma: no cover - the UI package ships with the gateway
        return app
    setup_webui(app, settings, gateway.proxy_url)
    return app


def make_routes(settings: Settings) -> tuple[Route, ...]:
    """Upstreams other than Mistral, chosen by the path's first segment."""
    return (Route("/elevenlabs", settings.elevenlabs_upstream, "elevenlabs"),)


def alt_key(environ: Mapping[str, str], name: str) -> SecretKey | None:
    """The alternative upstream's own key (AGENTOPS_UPSTREAM_ALT_KEY_<NAME>), if set."""
    value = (environ.get(alt_key_variable(name)) or "").strip()
    return SecretKey(value) if value else None


class Gateway:
    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        *,
        worker: bool = False,
    ) -> None:
        """`environ` (default: the process's) is read once, for the replay key only.
        `worker`: one of `serve --workers N`'s proxy processes (gateway/proxy/workers.py):
        it binds the proxy port beside its siblings (SO_REUSEPORT) and leaves what happens
        once per gateway (retention, pricing earlier calls, interrupting replays left
        running) to the supervisor."""
        self.settings = settings
        self.worker = worker
        self.workers: WorkerGroup | None = None  # the supervisor's, set by the CLI
        environ = os.environ if environ is None else environ
        self.replay_key = key_from_environ(environ)
        self.alt_upstreams = settings.upstream_alts()
        # name -> its own key (AGENTOPS_UPSTREAM_ALT_KEY_<NAME>), or None: the replay key
        self.alt_keys = {name: alt_key(environ, name) for name in self.alt_upstreams}
        own = [k.reveal() for k in (self.replay_key, *self.alt_keys.values()) if k is not None]
        # Scrubbed from every record, as each caller's own key is (gateway/proxy/scrub.py).
        self.held_keys = scrub.Keys(own)
        self.prices = PriceTable.load(settings.prices)
        self.store = Store(settings.db)
        self.providers = make_providers(settings)
        self.run_store = RunStore(self.store)
        # Integrations run in the writer process; bad configuration is reported here, once.
        writer_settings = check_integrations(settings, os.environ)
        self.recorder = WriterProcess(writer_settings, logging.getLogger().getEffectiveLevel())
        self.replay_store = ReplayStore(self.store)
        self.datasets = DatasetStore(self.store)
        self.judges = JudgeStore(self.store)
        failures_name = settings.failures_dataset.strip()
        self.failures_rule = (
            FailuresRule(
                self.store,
                self.datasets,
                provider_named(self.providers, "mistral"),
                failures_name,
                settings.failures_min_score,
            )
            if failures_name and failures_name != "off"
            else None
        )
        # Alerts: evaluated in this process (never in a worker), delivered from queues.
        self.alert_store = AlertStore(self.store)
        self.webhooks = Webhooks()
        self.alerts = AlertEvaluator(
            self.alert_store,
            self.webhooks,
            settings.alert_interval,
            self._dropped_health,
            timezone(settings.budget_timezone),
        )
        # Budgets: a bad file fails here, at start; the workers read them from the database.
        self.budget_file = load_file(settings.budgets) if settings.budgets and not worker else []
        self.guard = BudgetGuard(
            BudgetStore(self.store),
            timezone(settings.budget_timezone),
            self.prices,
            announce=not worker,
        )
        self.metrics = (
            prometheus.MetricsEndpoint(
                self.recorder,
                self._worker_metrics,
                health=self.pipeline_health,
                alerts=self.alerts.firing_now,
                budgets=lambda: self.guard.standings,
            )
            if prometheus.enabled(settings, report=True)
            else None
        )
        self.proxy: Proxy | None = None
        self._proxy_runner: web.ServerRunner | None = None
        self._ui_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._undo = contextlib.AsyncExitStack()  # how to undo each step of start (see stop)
        self.in_flight = InFlight()  # proxy calls being served
        self.ui_in_flight = InFlight()  # UI/API requests being served
        self.proxy_url = ""
        self.ui_url = ""

    def pipeline_health(self) -> dict[str, Any]:
        """The capture pipeline's figures as /healthz and /metrics show them: this process's
        writer's, or with `serve --workers N` the totals over it and every worker's."""
        own = self.recorder.health().to_json()
        return own if self.workers is None else self.workers.totals(own)

    def _dropped_health(self) -> Health:
        """What `capture_loss` alerts read: the writer's health, with the drops of every
        worker counted in (`serve --workers N`)."""
        health = self.recorder.health()
        if self.workers is None:
            return health
        dropped = self.workers.totals(health.to_json())["dropped_records"]
        return replace(health, dropped_records=dropped)

    async def _worker_metrics(self) -> list[bytes]:
        """The workers' writers' call metrics (PostgreSQL: a writer per worker; on SQLite
        they relay to this process's writer, whose metrics cover every call)."""
        if self.workers is None or self.store.dialect == "sqlite":
            return []
        return await self.workers.metrics(prometheus.CALL_TIMEOUT)

    def provider(self, name: str) -> Provider:
        return provider_named(self.providers, name)

    async def start(self, *, proxy: bool = True, ui: bool = True) -> None:
        """Open the store and start the writer; then the proxy and UI listeners, unless the
        records come from elsewhere (`mitm` has no reverse proxy, `import` listens on nothing)."""
        try:
            await self._start(proxy=proxy, ui=ui)
        except Exception:
            await self.stop()  # what did start stops again, in reverse order
            raise
        except BaseException:  # cancelled (a signal during start): no awaiting now
            self.recorder.unlock()  # the caller's stop() does the rest
            raise

    async def _start(self, *, proxy: bool, ui: bool) -> None:
        """Each step registers how it is undone, so `stop` undoes exactly what was done."""
        undo = self._undo
        await self.store.open()
        undo.push_async_callback(self.store.close)
        # Ids this process makes (exchanges, replays) use a node no other process holds.
        lease = NodeLease(self.store, "proxy")
        await lease.claim()
        lease.start()
        undo.push_async_callback(lease.release)
        undo.callback(self.recorder.unlock)  # after a failed start too (stop unlocks first)
        # A one-shot command (import, quarantine retry) beside a running gateway takes a
        # spool folder of its own rather than refusing to run.
        await self.recorder.start(own_spool_if_busy=not proxy and not ui)
        undo.push_async_callback(self.recorder.stop, max(5.0, self.settings.shutdown_grace))
        self.session = client_session()
        undo.push_async_callback(self.session.close)
        pool = upstream_pool()
        undo.push_async_callback(pool.close)
        self.proxy = Proxy(
            self.settings.upstream,
            self.session,
            self.recorder.submit,
            timeout=self.settings.upstream_timeout,
            max_body_bytes=self.settings.max_body_bytes,
            routes=make_routes(self.settings),
            held_keys=self.held_keys,
            begin=self.recorder.begin,
            guard=self.guard,
            alternatives=self.alt_upstreams,
            in_flight=self.in_flight,
            pool=pool,
        )
        self.replayer = Replayer(
            self.store,
            self.replay_store,
            self.recorder,
            self.proxy,
            self.providers,
            self.replay_key,
        )
        self.run_replayer = RunReplayer(self.replayer, self.store, self.run_store)
        self.evaluator = Evaluator(
            ItemSource(self.store, self.run_store, self.provider), self.replayer, self.judges
        )
        self.campaigns = Campaigns(CampaignStore(self.store), self.evaluator, self.replay_key)
        undo.push_async_callback(self._stop_listeners)  # after experiments stop, as below
        undo.push_async_callback(self.campaigns.stop)
        self.experiments = Experiments(self.replayer, self.replay_store, self.store)
        self.experiments.datasets = DatasetExperiments(
            self.replayer,
            self.replay_store,
            self.datasets,
            self.run_store,
            self.judges,
            alternatives=self.alt_keys,
        )
        undo.push_async_callback(self.experiments.stop)
        if self.recorder.settings.wandb_project:  # W&B logs each finished experiment
            self.experiments.on_finished = self.log_experiment
            self.experiments.datasets.on_finished = self.log_dataset_experiment
        if not self.worker:
            await self.replay_store.interrupt_running()
            await self.experiments.datasets.resume()  # rows left pending by a stop
        await self._start_budgets()
        if proxy:
            await self._listen_proxy()
        if ui:
            await self._listen_ui()
        undo.push_async_callback(self.webhooks.close)  # after the evaluator is cancelled
        undo.callback(self._cancel_tasks)
        if not self.worker:
            self._start_tasks(alerts=ui)
            if ui:  # campaigns run beside the UI that creates them, never in a proxy worker
                await self.campaigns.start()
        log.info(
            "%s; UI on %s; database %s",
            f"proxy on {self.proxy_url} -> {self.settings.upstream}"
            if proxy
            else "proxy in the worker processes"
            if self.workers is not None
            else "no reverse proxy",
            self.ui_url or "(none)",
            self.store.dialect,
        )

    async def _start_budgets(self) -> None:
        """Store the --budgets file's budgets, read every budget's spend once (so the first
        call is already checked), then keep the totals fresh."""
        for budget in self.budget_file:
            await self.guard.store.put(budget)
        if self.budget_file:
            log.info("loaded %d budgets from %s", len(self.budget_file), self.settings.budgets)
        await self.guard.refresh()
        task = asyncio.create_task(self.guard.run(), name="agentops-budgets")
        self._undo.callback(task.cancel)  # also when a later step of start fails

    def _start_tasks(self, *, alerts: bool) -> None:
        """What runs once per gateway: pricing earlier calls, retention, alert evaluation
        (in the process serving the UI)."""
        self.costs_filled = asyncio.create_task(self._fill_costs(), name="agentops-fill-costs")
        self._tasks.append(self.costs_filled)
        if alerts:
            self._tasks.append(asyncio.create_task(self.alerts.run(), name="agentops-alerts"))
        if alerts and self.failures_rule is not None:
            rule = self.failures_rule.run()
            self._tasks.append(asyncio.create_task(rule, name="agentops-failures"))
        if self.settings.retention_days:
            self._tasks.append(asyncio.create_task(self._retention(), name="agentops-retention"))

    async def _listen_proxy(self) -> None:
        assert self.proxy is not None
        # No access log (query strings may hold keys); errors through HTTP_LOG, which never
        # prints the raw request line or headers a malformed request quoted.
        # The proxy registers its calls in self.in_flight itself (see Proxy).
        # auto_decompress off: a request body sent with Content-Encoding (gzip) goes upstream
        # as the bytes that came, with its own Content-Length (the writer decodes its copy).
        # Header limits: those of the upstream session (HEADER_BYTES, MAX_HEADERS).
        # handler_cancellation: a client that hangs up cancels its call, so the upstream
        # connection closes too, as it would have without the proxy (the upstream stops
        # generating; the record says the client left, not the upstream's timeout later).
        server = web.Server(
            self.proxy,
            handler_cancellation=True,
            access_log=None,
            logger=HTTP_LOG,
            auto_decompress=False,
            max_line_size=HEADER_BYTES,
            max_field_size=HEADER_BYTES,
            max_headers=MAX_HEADERS,
        )
        # The stop cuts the calls still in flight when the grace ends (_stop_listeners);
        # aiohttp's own wait, a little longer, is only a backstop (at the same moment, its
        # timeout and the cut race: aiohttp logs an InvalidStateError).
        self._proxy_runner = web.ServerRunner(
            server,
            shutdown_timeout=self.settings.shutdown_grace + STOP_BACKSTOP,
            handle_signals=False,
        )
        await self._proxy_runner.setup()
        proxy_site = web.TCPSite(
            self._proxy_runner,
            self.settings.host,
            self.settings.port,
            backlog=1024,
            reuse_port=self.worker or None,
        )
        await proxy_site.start()
        self.proxy_url = _url(self._proxy_runner)

    async def _listen_ui(self) -> None:
        self._ui_runner = web.AppRunner(
            create_ui_app(self),
            handle_signals=False,
            access_log=None,
            logger=HTTP_LOG,
            shutdown_timeout=self.settings.shutdown_grace,
        )
        await self._ui_runner.setup()
        ui_site = web.TCPSite(self._ui_runner, self.settings.ui_host, self.settings.ui_port)
        await ui_site.start()
        self.ui_url = _url(self._ui_runner)

    async def stop(self) -> None:
        """Undo what start did, last step first: background tasks, experiments, then refuse
        new calls and give in-flight ones the grace period (`cut_in_flight`, a second Ctrl-C,
        ends that at once), the upstream session, the writer (which flushes), the store.
        Safe after a failed or partial start, and twice."""
        await self._undo.aclose()

    def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _stop_listeners(self) -> None:
        """Both listeners at once: stop listening, wait up to the grace, cancel stragglers.
        The proxy's calls still in flight when the grace ends are cut here (`InFlight.cut`,
        recorded `shutdown`), not left to aiohttp: its stop waits the grace twice, then
        closes their connections as it cancels them, which reads as clients that left
        (handler_cancellation)."""
        cut = asyncio.get_running_loop().call_later(
            self.settings.shutdown_grace, self.in_flight.cut
        )
        try:
            await asyncio.gather(
                *(
                    runner.cleanup()
                    for runner in (self._proxy_runner, self._ui_runner)
                    if runner is not None
                )
            )
        finally:
            cut.cancel()

    def cut_in_flight(self) -> int:
        """Cancel the calls in flight now (the proxy records each with state `shutdown` and
        hands it to the writer); returns how many there were."""
        self.ui_in_flight.cut()
        return self.in_flight.cut()

    async def _fill_costs(self) -> None:
        """Price stored calls whose model had no price when they were recorded."""
        try:
            for row in await self.store.unpriced(()):
                if self.prices.price(row["model"]) is not None:
                    filled = await self.store.fill_costs(row["model"], self.prices.cost)
                    log.info("priced %d earlier calls of %s", filled, row["model"])
        except Exception:
            log.exception("could not fill in costs of earlier calls")

    async def finish_idle_runs(self) -> list[int]:
        """Settle runs that saw no exchange for --run-idle seconds (the writer process also
        does this on its own every run_idle / 4 seconds)."""
        finished: list[int] = await self.recorder.call("finish_idle_runs")
        return finished

    async def log_dataset_experiment(self, report: dict[str, Any]) -> bool:
        """An experiment over a dataset to W&B: one run per variant, in a group of its own."""
        queued = [await self.log_experiment(p) for p in wandb_payloads(report)]
        return all(queued)

    async def log_experiment(self, experiment: dict[str, Any]) -> bool:
        """Log an experiment's comparison ({"id", "name", "rows": [...], "totals": {...}}) to
        W&B without waiting; False when W&B is not configured (or its queue is full)."""
        queued: bool = await self.recorder.call("log_experiment", experiment)
        return queued

    async def apply_retention(self) -> int:
        """Delete exchanges older than --retention-days; returns how many went."""
        cutoff = datetime.now(UTC) - timedelta(days=self.settings.retention_days or 0)
        removed = await self.store.purge(cutoff)
        if removed:
            log.info("retention: removed %d exchanges older than %s", removed, cutoff)
        return removed

    async def _retention(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except Exception:
                log.exception("retention purge failed")
            await asyncio.sleep(RETENTION_EVERY_SECONDS)


def _url(runner: web.BaseRunner) -> str:
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
