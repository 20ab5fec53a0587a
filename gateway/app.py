"""Wires the parts into one running gateway: store, recorder, proxy listener, UI/API listener.

`Gateway(settings)` is what `agentops-studio serve` runs and what the tests start on
ephemeral ports; there are no globals, so several can run in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway import access, api, runs_api
from gateway.pricing import PriceTable
from gateway.providers.base import Provider
from gateway.providers.mistral import MistralProvider
from gateway.proxy import Proxy, client_session
from gateway.recorder import Recorder
from gateway.run_store import RunStore
from gateway.runs import THREAD_LIMIT, THREAD_SECONDS, Grouper
from gateway.settings import Settings
from gateway.spool import Spool
from gateway.store import Store

log = logging.getLogger("agentops")

RETENTION_EVERY_SECONDS = 3600


def make_providers() -> dict[str, Provider]:
    return {"mistral": MistralProvider()}


def create_ui_app(gateway: Gateway) -> web.Application:
    """The UI/API application (never reachable through the proxy port)."""
    settings = gateway.settings
    app = web.Application(middlewares=access.middlewares(settings))
    app[api.STORE] = gateway.store
    app[api.RECORDER] = gateway.recorder
    app[api.PRICES] = gateway.prices
    app[api.RUNS] = gateway.run_store
    app[api.PROVIDERS] = gateway.provider
    app.add_routes(api.routes)
    app.add_routes(runs_api.routes)
    try:
        from webui import setup as setup_webui
    except ImportError:  # pragma: no cover - the UI package ships with the gateway
        setup_webui = None
    if setup_webui is not None:
        setup_webui(app, settings, gateway.proxy_url)
    return app


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prices = PriceTable.load(settings.prices)
        self.store = Store(settings.db)
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self.providers = make_providers()
        self.run_store = RunStore(self.store)
        self.grouper = Grouper(settings.run_idle)
        self.recorder = Recorder(
            self.store, self.spool, self.provider, self.prices,
            max_body_bytes=settings.max_body_bytes, queue_size=settings.queue_size,
            grouper=self.grouper, run_store=self.run_store)
        self.proxy: Proxy | None = None
        self._proxy_runner: web.ServerRunner | None = None
        self._ui_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.proxy_url = ""
        self.ui_url = ""

    def provider(self, name: str) -> Provider:
        return self.providers.get(name, self.providers["mistral"])

    async def start(self) -> None:
        await self.store.open()
        await rebuild_grouper(self.grouper, self.run_store)
        self.recorder.start()
        self.session = client_session()
        self.proxy = Proxy(self.settings.upstream, self.session, self.recorder.submit,
                           timeout=self.settings.upstream_timeout,
                           max_body_bytes=self.settings.max_body_bytes)
        server = web.Server(self.proxy, access_log=None)  # query strings may hold keys
        self._proxy_runner = web.ServerRunner(
            server, shutdown_timeout=self.settings.shutdown_grace, handle_signals=False)
        await self._proxy_runner.setup()
        proxy_site = web.TCPSite(self._proxy_runner, self.settings.host, self.settings.port,
                                 backlog=1024)
        await proxy_site.start()
        self.proxy_url = _url(self._proxy_runner)
        ui_app = create_ui_app(self)
        self._ui_runner = web.AppRunner(ui_app, handle_signals=False, access_log=None)
        await self._ui_runner.setup()
        ui_site = web.TCPSite(self._ui_runner, self.settings.ui_host, self.settings.ui_port)
        await ui_site.start()
        self.ui_url = _url(self._ui_runner)
        self.costs_filled = asyncio.create_task(self._fill_costs(), name="agentops-fill-costs")
        self._tasks.append(self.costs_filled)
        self._tasks.append(asyncio.create_task(self._finish_runs(), name="agentops-run-idle"))
        if self.settings.retention_days:
            self._tasks.append(asyncio.create_task(self._retention(), name="agentops-retention"))
        log.info("proxy on %s -> %s; UI on %s; database %s", self.proxy_url,
                 self.settings.upstream, self.ui_url, self.store.dialect)

    async def stop(self) -> None:
        """Refuse new calls, give in-flight ones the grace period, then flush the queue."""
        for task in self._tasks:
            task.cancel()
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()  # stops listening, waits, cancels stragglers
        if self._ui_runner is not None:
            await self._ui_runner.cleanup()
        with contextlib.suppress(AttributeError):
            await self.session.close()
        await self.recorder.stop(timeout=max(5.0, self.settings.shutdown_grace))
        await self.store.close()

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
        """Settle runs that saw no exchange for --run-idle seconds."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.run_idle)
        finished = await self.run_store.finish_idle(cutoff)
        for run_id in finished:
            self.grouper.forget_run(run_id)
        return finished

    async def _finish_runs(self) -> None:
        every = max(0.05, min(30.0, self.settings.run_idle / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.finish_idle_runs()
            except Exception:
                log.exception("could not finish idle runs")

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


async def rebuild_grouper(grouper: Grouper, run_store: RunStore) -> None:
    """Give the grouper back what it knew before a restart: recent threads (24 h or 100,000
    exchanges), open named runs, and conversation links."""
    since = datetime.now(UTC) - timedelta(seconds=THREAD_SECONDS)
    rows = await run_store.recent_threads(since, THREAD_LIMIT)
    for row in reversed(rows):
        if row["parent_id"] is not None:
            grouper.extended.add(row["parent_id"])
        if row["thread_key"]:
            started = row["started_at"]
            at = (datetime.fromisoformat(started) if isinstance(started, str) else started)
            grouper.remember_thread(row["thread_key"], row["id"], row["run_id"], at.timestamp())
    for row in await run_store.open_named_runs():
        seen = row["last_seen_at"]
        seen = datetime.fromisoformat(seen) if isinstance(seen, str) else seen
        grouper.names[row["name"]] = (row["id"], seen.timestamp())
    for row in reversed(await run_store.conversation_links(THREAD_LIMIT)):
        grouper.remember_conversation(row["conversation_id"], row["run_id"])


def _url(runner: web.BaseRunner) -> str:
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
