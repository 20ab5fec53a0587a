"""Settings: built once at the edge (flags over AGENTOPS_* environment over defaults), then frozen.

Every setting is listed in `SETTINGS`; the CLI builds its flags from it and a test checks the
README documents each one, so the table, the flags and the docs cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import UserError
from gateway.store.urls import describe_url


class ConfigError(UserError, ValueError):
    """Bad configuration: reported as one line at start, never as a traceback."""


@dataclass(frozen=True)
class Setting:
    name: str  # attribute of Settings
    flag: str
    env: str
    default: Any
    help: str
    kind: str = "str"  # str, int, float, bytes (accepts 10MB, 1GiB), days


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "upstream",
        "--upstream",
        "AGENTOPS_UPSTREAM",
        "https://api.mistral.ai",
        "Mistral API base URL that calls are forwarded to.",
    ),
    Setting(
        "upstream_alt",
        "--upstream-alt",
        "AGENTOPS_UPSTREAM_ALT",
        None,
        "Alternative OpenAI-compatible upstreams a dataset experiment's variant may name "
        '("upstream": NAME): NAME=URL[,NAME=URL...]; the key is AGENTOPS_UPSTREAM_ALT_KEY_'
        "<NAME> when set, else the replay key.",
    ),
    Setting(
        "db",
        "--db",
        "AGENTOPS_DB",
        "sqlite://agentops.db",
        "Database URL: sqlite://PATH or postgres://user:pass@host:5432/name.",
    ),
    Setting("host", "--host", "AGENTOPS_HOST", "127.0.0.1", "Proxy listen address."),
    Setting(
        "workers",
        "--workers",
        "AGENTOPS_WORKERS",
        1,
        "Proxy processes accepting on the proxy port (SO_REUSEPORT): a number, or auto "
        "for one per core of this host.",
        "workers",
    ),
    Setting("port", "--port", "AGENTOPS_PORT", 8080, "Proxy listen port.", "int"),
    Setting("ui_host", "--ui-host", "AGENTOPS_UI_HOST", "127.0.0.1", "UI/API listen address."),
    Setting("ui_port", "--ui-port", "AGENTOPS_UI_PORT", 8081, "UI/API listen port.", "int"),
    Setting(
        "ui_token",
        "--ui-token",
        "AGENTOPS_UI_TOKEN",
        None,
        "Token required by the UI and API; needed to bind the UI to a non-loopback address.",
    ),
    Setting(
        "allowed_hosts",
        "--allowed-hosts",
        "AGENTOPS_ALLOWED_HOSTS",
        None,
        "Comma-separated host names the UI/API answers to besides loopback names and IP "
        "addresses (DNS-rebinding check); '.example.com' also matches subdomains.",
    ),
    Setting(
        "prices",
        "--prices",
        "AGENTOPS_PRICES",
        None,
        "TOML or JSON price file overriding or extending the bundled table.",
    ),
    Setting(
        "max_body_bytes",
        "--max-body-bytes",
        "AGENTOPS_MAX_BODY_BYTES",
        10 * 1024 * 1024,
        "Bodies above this size are truncated in storage (never in the proxied call).",
        "bytes",
    ),
    Setting(
        "upstream_timeout",
        "--upstream-timeout",
        "AGENTOPS_UPSTREAM_TIMEOUT",
        300.0,
        "Seconds allowed between bytes from the upstream (not a total limit).",
        "float",
    ),
    Setting(
        "queue_size",
        "--queue-size",
        "AGENTOPS_QUEUE_SIZE",
        10_000,
        "Capture records held in memory before they spill to the spool.",
        "int",
    ),
    Setting(
        "queue_max_bytes",
        "--queue-max-bytes",
        "AGENTOPS_QUEUE_MAX_BYTES",
        32 * 1024**2,
        "Bytes of bodies those records may hold in memory before they spill to the spool.",
        "bytes",
    ),
    Setting(
        "spool_dir",
        "--spool-dir",
        "AGENTOPS_SPOOL_DIR",
        "./agentops-spool",
        "Folder for records that could not be written to the database yet.",
    ),
    Setting(
        "spool_max_bytes",
        "--spool-max-bytes",
        "AGENTOPS_SPOOL_MAX_BYTES",
        1024**3,
        "Spool size limit; past it records are dropped and counted.",
        "bytes",
    ),
    Setting(
        "shutdown_grace",
        "--shutdown-grace",
        "AGENTOPS_SHUTDOWN_GRACE",
        30.0,
        "Seconds in-flight calls get to finish on SIGTERM.",
        "float",
    ),
    Setting(
        "retention_days",
        "--retention-days",
        "AGENTOPS_RETENTION_DAYS",
        None,
        "Delete exchanges older than this many days (default: keep everything).",
        "days",
    ),
    Setting(
        "alert_interval",
        "--alert-interval",
        "AGENTOPS_ALERT_INTERVAL",
        10.0,
        "Seconds between evaluations of the alert rules.",
        "float",
    ),
    Setting(
        "failures_dataset",
        "--failures-dataset",
        "AGENTOPS_FAILURES_DATASET",
        "failures",
        "Dataset kept filled with failing calls as they arrive (off: none).",
    ),
    Setting(
        "failures_min_score",
        "--failures-min-score",
        "AGENTOPS_FAILURES_MIN_SCORE",
        None,
        "A call or run evaluated under this score is a failure too (default: errors only).",
        "float",
    ),
    Setting(
        "run_idle",
        "--run-idle",
        "AGENTOPS_RUN_IDLE",
        300.0,
        "Seconds without a new exchange after which a run is finished.",
        "float",
    ),
    Setting(
        "elevenlabs_upstream",
        "--elevenlabs-upstream",
        "AGENTOPS_ELEVENLABS_UPSTREAM",
        "https://api.elevenlabs.io",
        "ElevenLabs API base URL that calls to /elevenlabs/... are forwarded to.",
    ),
    Setting(
        "elevenlabs_usd_per_credit",
        "--elevenlabs-usd-per-credit",
        "AGENTOPS_ELEVENLABS_USD_PER_CREDIT",
        0.0001,
        "USD per ElevenLabs credit (the character-cost header counts credits).",
        "float",
    ),
    Setting(
        "wandb_project",
        "--wandb-project",
        "AGENTOPS_WANDB_PROJECT",
        None,
        "Log each finished run to this Weights & Biases project (W&B's own WANDB_* "
        "environment gives the key, entity and mode).",
    ),
    Setting(
        "wandb_group_by",
        "--wandb-group-by",
        "AGENTOPS_WANDB_GROUP_BY",
        "name",
        "W&B grouping: 'name' groups the wandb runs of agent runs with the same name; "
        "'run' logs each agent run on its own.",
    ),
    Setting(
        "otel_endpoint",
        "--otel-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        "OTLP/HTTP endpoint (e.g. http://127.0.0.1:4318): export each exchange and run "
        "as an OpenTelemetry span.",
    ),
    Setting(
        "metrics",
        "--metrics",
        "AGENTOPS_METRICS",
        "auto",
        "Prometheus metrics at /metrics on the UI port: on, off, or auto (on when "
        "prometheus-client is installed).",
    ),
    Setting(
        "budgets",
        "--budgets",
        "AGENTOPS_BUDGETS",
        None,
        "TOML file of budgets loaded at start ([[budget]] tables: name, scope, period, "
        "limit_usd, hard); each replaces the stored budget of its name.",
    ),
    Setting(
        "budget_timezone",
        "--budget-timezone",
        "AGENTOPS_BUDGET_TIMEZONE",
        "UTC",
        "IANA time zone whose calendar days, weeks (from Monday) and months budget periods follow.",
    ),
    Setting(
        "journal",
        "--journal",
        "AGENTOPS_JOURNAL",
        "on",
        "Journal hand-offs and call starts under --spool-dir so a killed gateway loses at "
        "most its last 5 ms of calls and reports the calls it cut: on or off.",
    ),
    Setting(
        "malloc_trim",
        "--malloc-trim",
        "AGENTOPS_MALLOC_TRIM",
        "on",
        "After a burst, give the heap pages glibc keeps back to the system (malloc_trim): "
        "on or off.",
    ),
)

MAX_WORKERS = 1024
MAX_DAYS = 36500  # an age or a retention: a century is plenty, and dates stay in range
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_bytes(text: str) -> int:
    """'10MB', '1GiB', '20000' -> bytes."""
    raw = text.strip().lower().replace("_", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number) :].strip()
    if unit not in _UNITS or not number:
        raise ValueError(f"not a size: {text!r} (use a number of bytes, or e.g. 10MB, 1GiB)")
    value = int(float(number) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def parse_days(text: str) -> float:
    """'30', '30d', '12h', '90m' -> days."""
    raw = text.strip().lower()
    scale = {"d": 1.0, "h": 1 / 24, "m": 1 / 1440}.get(raw[-1:])
    number = raw[:-1] if scale else raw
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_DAYS:  # NaN and infinity too
        raise ValueError(
            f"must be an age such as 30d, 12h, 90m or a number of days, "
            f"positive and at most {MAX_DAYS:,} days: {text!r}"
        )
    return value


ALT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
ALT_KEY_PREFIX = "AGENTOPS_UPSTREAM_ALT_KEY_"


def alt_key_variable(name: str) -> str:
    """The environment variable holding an alternative upstream's key: `local-vllm` ->
    AGENTOPS_UPSTREAM_ALT_KEY_LOCAL_VLLM."""
    return ALT_KEY_PREFIX + name.upper().replace("-", "_")


def parse_upstream_alt(text: str) -> dict[str, str]:
    """'local=http://10.0.0.5:8000,b=https://x' -> {name: base URL without trailing /}."""
    where = "--upstream-alt / AGENTOPS_UPSTREAM_ALT"
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, url = (s.strip() for s in part.partition("="))
        if not sep or not ALT_NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: bad entry {part!r}: use NAME=URL[,NAME=URL...], NAME of letters, "
                "digits, _ and - starting with a letter"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: {name}: the URL must be http(s), got {url!r}")
        if alt_key_variable(name) in {alt_key_variable(n) for n in out}:
            raise ConfigError(f"{where}: {name!r} is named twice")
        out[name] = url.rstrip("/")
    return out


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def parse_workers(text: str) -> int:
    """'auto' -> the host's cores; '4' -> 4 (1-1024)."""
    raw = text.strip().lower()
    if raw == "auto":
        return host_cores()
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS:
        raise ValueError(f"use a number of processes from 1 to {MAX_WORKERS}, or auto")
    return int(raw)


def convert(setting: Setting, value: Any) -> Any:
    if value is None or value == "":
        return setting.default
    if not isinstance(value, str):
        return value
    try:
        if setting.kind == "int":
            number = int(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        if setting.kind == "float":
            real = float(value)
            if not math.isfinite(real) or real <= 0:
                raise ValueError("must be a positive number")
            return real
        if setting.kind == "bytes":
            return parse_bytes(value)
        if setting.kind == "days":
            return parse_days(value)
        if setting.kind == "workers":
            return parse_workers(value)
    except ValueError as exc:
        raise ConfigError(f"{setting.flag} / {setting.env}: bad value {value!r}: {exc}") from None
    return value


@dataclass(frozen=True)
class Settings:
    upstream: str = "https://api.mistral.ai"
    upstream_alt: str | None = None
    db: str = "sqlite://agentops.db"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    ui_host: str = "127.0.0.1"
    ui_port: int = 8081
    ui_token: str | None = None
    allowed_hosts: str | None = None
    prices: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    upstream_timeout: float = 300.0
    queue_size: int = 10_000
    queue_max_bytes: int = 32 * 1024**2
    spool_dir: str = "./agentops-spool"
    spool_max_bytes: int = 1024**3
    shutdown_grace: float = 30.0
    retention_days: float | None = None
    alert_interval: float = 10.0
    failures_dataset: str = "failures"
    failures_min_score: float | None = None
    run_idle: float = 300.0
    elevenlabs_upstream: str = "https://api.elevenlabs.io"
    elevenlabs_usd_per_credit: float = 0.0001
    wandb_project: str | None = None
    wandb_group_by: str = "name"
    otel_endpoint: str | None = None
    metrics: str = "auto"
    journal: str = "on"
    malloc_trim: str = "on"
    budgets: str | None = None
    budget_timezone: str = "UTC"

    @classmethod
    def build(cls, flags: dict[str, Any], environ: dict[str, str]) -> Settings:
        """Flags (None when not given) over environment over defaults, then validated."""
        values = {}
        for setting in SETTINGS:
            raw = flags.get(setting.name)
            if raw is None:
                raw = environ.get(setting.env)
            values[setting.name] = convert(setting, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def _check_db_url(self) -> None:
        """A URL with its scheme right and the rest missing: a SQLite URL without a path (a
        traceback from tortoise, before), a PostgreSQL URL without a database name (asyncpg
        then connects to the one named after the user, `postgres`, and the schema was
        created there)."""
        shape = "sqlite://PATH or postgres://user:pass@host:port/name"
        if self.db.startswith("sqlite://"):
            if not self.db[len("sqlite://") :].split("?", 1)[0]:
                raise ConfigError(f"--db names no SQLite file: {shape}, got {self.db!r}")
            return
        name = urlsplit(self.db).path.lstrip("/")
        if not name:
            raise ConfigError(
                f"--db names no PostgreSQL database (the /name at its end): {shape}, "
                f"got {describe_url(self.db)!r}"
            )

    def validate(self) -> None:
        for flag, url in (
            ("--upstream", self.upstream),
            ("--elevenlabs-upstream", self.elevenlabs_upstream),
        ):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{flag} must be an http(s) URL, got {url!r}")
            if not urlsplit(url).hostname:  # `http://` or `http:///v1`: every call would fail
                raise ConfigError(f"{flag} names no host, got {url!r}")
        self.upstream_alts()
        if not self.db.startswith(("sqlite://", "postgres://", "postgresql://")):
            raise ConfigError(
                f"--db must be sqlite://PATH or postgres://user:pass@host:port/name, "
                f"got {self.db!r}"
            )
        self._check_db_url()
        for name in ("port", "ui_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0-65535")
        if self.queue_size < 1:
            raise ConfigError("--queue-size must be at least 1")
        if self.queue_max_bytes < 1:
            raise ConfigError("--queue-max-bytes must be at least 1")
        if self.wandb_group_by not in ("run", "name"):
            raise ConfigError(
                f"--wandb-group-by / AGENTOPS_WANDB_GROUP_BY must be run or name, "
                f"got {self.wandb_group_by!r}"
            )
        if self.metrics not in ("on", "off", "auto"):
            raise ConfigError(
                f"--metrics / AGENTOPS_METRICS must be on, off or auto, got {self.metrics!r}"
            )
        if self.journal not in ("on", "off"):
            raise ConfigError(
                f"--journal / AGENTOPS_JOURNAL must be on or off, got {self.journal!r}"
            )
        if self.malloc_trim not in ("on", "off"):
            raise ConfigError(
                f"--malloc-trim / AGENTOPS_MALLOC_TRIM must be on or off, got {self.malloc_trim!r}"
            )
        try:
            ZoneInfo(self.budget_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"--budget-timezone / AGENTOPS_BUDGET_TIMEZONE: unknown time zone "
                f"{self.budget_timezone!r} (use an IANA name such as UTC or Europe/Paris)"
            ) from None
        if self.otel_endpoint and not self.otel_endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                "--otel-endpoint / OTEL_EXPORTER_OTLP_ENDPOINT must be an "
                f"http(s) URL such as http://127.0.0.1:4318, "
                f"got {self.otel_endpoint!r}"
            )
        if not self.ui_token and not is_loopback(self.ui_host):
            raise ConfigError(
                f"refusing to serve the UI on {self.ui_host} without a token: "
                "set --ui-token / AGENTOPS_UI_TOKEN, or bind --ui-host 127.0.0.1"
            )

    def upstream_alts(self) -> dict[str, str]:
        """--upstream-alt as {name: base URL}; ConfigError for a bad value."""
        return parse_upstream_alt(self.upstream_alt or "")

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
