"""Optional integrations (W&B, OpenTelemetry, Prometheus): each off unless configured, each
fed from the writer process (stored batches, finished runs), never from the proxy.

An integration whose extra is not installed, or whose configuration cannot work, is reported
in one log line at start (by the proxy's process, which checks the settings) and left out; the
gateway runs on without it. See host.py for their place in the writer process.

Alerts (alerts.py, alert_rules.py, webhooks.py) are the exception: configured through the
API, evaluated from the database in the gateway's main process, delivered to webhooks.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.errors import UserError
from gateway.integrations.worker import Worker

if TYPE_CHECKING:
    from gateway.capture.rows import Rows
    from gateway.settings import Settings
    from gateway.store.runs import RunStore

log = logging.getLogger("agentops.integrations")


class IntegrationError(UserError, RuntimeError):
    """Configuration that cannot work (no W&B key, bad endpoint): logged once, never fatal."""


class Integration:
    """An integration: hooks that only queue work, and a worker thread that does it."""

    name = "integration"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def start(self) -> None:
        self.worker.start()

    def on_written(self, rows: list[Rows]) -> None:
        """Called by the writer after each stored batch; must only queue, never wait."""

    async def runs_finished(self, run_ids: list[int], runs: RunStore) -> None:
        """Called after runs were finished (idle for --run-idle seconds)."""

    def stop(self, timeout: float) -> None:
        self.worker.stop(timeout)

    def stats(self) -> dict[str, Any]:
        return self.worker.stats()


def require(package: str, extra: str) -> None:
    """Fail with the install command when an extra's package is missing (cheap: no import)."""
    if importlib.util.find_spec(package) is None:
        raise IntegrationError(
            f"the {package!r} package is not installed: pip install 'agentops-studio[{extra}]'"
        )


# setting that switches it on -> (label, module); each module has check() and from_settings().
CONFIGURED_BY = (
    ("wandb_project", "W&B logging", "gateway.integrations.wandb_logger"),
    ("otel_endpoint", "OpenTelemetry export", "gateway.integrations.otel"),
)


def check_integrations(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """Check each configured integration once, at start, in the proxy's process: one clear
    log line for each that cannot run, which is then switched off in the returned settings
    (the writer process builds the rest and never repeats the message)."""
    off: dict[str, Any] = {}
    for setting, label, module_name in CONFIGURED_BY:
        if not getattr(settings, setting):
            continue
        try:
            importlib.import_module(module_name).check(settings, environ)
        except IntegrationError as exc:
            log.error("%s is off: %s (the gateway runs on without it)", label, exc)
            off[setting] = None
    return settings.replace(**off) if off else settings


def load_integrations(settings: Settings, environ: Mapping[str, str]) -> list[Integration]:
    """The integrations the (checked) settings ask for, built in the writer process."""
    found: list[Integration] = []
    for setting, label, module_name in CONFIGURED_BY:
        if not getattr(settings, setting):
            continue
        try:
            found.append(importlib.import_module(module_name).from_settings(settings, environ))
        except Exception as exc:  # never let an integration stop the writer
            log.error(
                "%s is off: %s: %s (the gateway runs on without it)", label, type(exc).__name__, exc
            )
    return found
