"""Shared fixtures: a fake Mistral upstream and the real gateway on ephemeral ports, over
SQLite and (when the server is there) PostgreSQL. In CI a skipped test is a failure.

Databases start as copies of a template migrated once per session (a file copy for SQLite,
`CREATE DATABASE ... TEMPLATE` for PostgreSQL): migrating a blank database is what
test_store.py checks, and doing it for every gateway would cost the suite minutes.
`blank_db_url` gives an empty database where a test needs one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.settings import Settings
from gateway.store.exchanges import ExchangeFilter, Store
from gateway.store.records import ExchangeSummary
from tests.fake_mistral import REQUESTS, start_fake
from tests.tcp_relay import TcpRelay

PG_DSN = os.environ.get("AGENTOPS_TEST_PG", "postgres://postgres@127.0.0.1:5432/postgres")
STRICT = bool(os.environ.get("CI")) or bool(os.environ.get("AGENTOPS_FAIL_ON_SKIP"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """In CI a skip hides missing coverage (no PostgreSQL, no browser): count it as a failure."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


@dataclass
class Upstream:
    url: str
    app: web.Application

    @property
    def requests(self) -> list[dict]:
        return self.app[REQUESTS]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    runner, url, app = await start_fake()
    try:
        yield Upstream(url, app)
    finally:
        await runner.cleanup()


async def _pg_available() -> str | None:
    try:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL not reachable at {PG_DSN}: {exc}"
    await conn.close()
    return None


TEMPLATES: dict[str, str] = {}  # "sqlite" -> migrated file, "postgres" -> template database
MIGRATE = (
    "import asyncio, sys\n"
    "from gateway.store.exchanges import Store\n"
    "async def main():\n"
    "    store = Store(sys.argv[1])\n"
    "    await store.open()\n"
    "    await store.close()\n"
    "asyncio.run(main())\n"
)


def _migrate(url: str) -> None:
    """In a child process: Tortoise's connections are process-wide, the tests' are not."""
    subprocess.run([sys.executable, "-c", MIGRATE, url], check=True, timeout=120)


def sqlite_template() -> str:
    if "sqlite" not in TEMPLATES:
        folder = Path(tempfile.mkdtemp(prefix="agentops-template-"))
        _migrate(f"sqlite://{folder / 'template.db'}")
        TEMPLATES["sqlite"] = str(folder / "template.db")
    return TEMPLATES["sqlite"]


def migrated_sqlite(path: Path) -> str:
    """A migrated SQLite database at `path` (unless something is there already)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sqlite_template(), path)
    return f"sqlite://{path}"


async def _pg_template(admin: asyncpg.Connection) -> str:
    if "postgres" not in TEMPLATES:
        name = f"agentops_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        await asyncio.to_thread(_migrate, f"{PG_DSN.rsplit('/', 1)[0]}/{name}")
        TEMPLATES["postgres"] = name
    return TEMPLATES["postgres"]


@pytest.fixture(scope="session", autouse=True)
def _drop_templates() -> Iterator[None]:
    yield
    if "postgres" in TEMPLATES:

        async def drop() -> None:
            admin = await asyncpg.connect(PG_DSN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATES["postgres"]}" WITH (FORCE)')
            await admin.close()

        asyncio.run(drop())
    if "sqlite" in TEMPLATES:
        shutil.rmtree(Path(TEMPLATES["sqlite"]).parent, ignore_errors=True)


@asynccontextmanager
async def throwaway_pg(migrated: bool = True) -> AsyncIterator[str]:
    """A throwaway PostgreSQL database (a copy of the migrated template, or blank), dropped
    afterwards."""
    problem = await _pg_available()
    if problem:
        pytest.skip(problem)
    name = f"agentops_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_DSN)
    try:
        template = f' TEMPLATE "{await _pg_template(admin)}"' if migrated else ""
        await admin.execute(f'CREATE DATABASE "{name}"{template}')
    finally:
        await admin.close()
    base = PG_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with throwaway_pg() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield migrated_sqlite(tmp_path / "agentops.db")
    else:
        async with throwaway_pg() as url:
            yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database, for the tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'blank.db'}"
    else:
        async with throwaway_pg(migrated=False) as url:
            yield url


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built wheel installed in a fresh venv, once per session (its bin folder)."""
    from tests.test_packaging import build_wheel, install

    where = tmp_path_factory.mktemp("wheel")
    return install(build_wheel(where / "dist"), where / "venv")


def make_settings(upstream_url: str, db: str, tmp_path: Path, **extra) -> Settings:
    """Settings for a test gateway on ephemeral ports; a new SQLite file starts migrated."""
    if db.startswith("sqlite://"):
        db = migrated_sqlite(Path(db[len("sqlite://") :]))
    return Settings(
        upstream=upstream_url,
        db=db,
        port=0,
        ui_port=0,
        spool_dir=str(tmp_path / "spool"),
        **{"shutdown_grace": 2.0, **extra},
    )


@asynccontextmanager
async def running(
    settings: Settings, environ: dict[str, str] | None = None
) -> AsyncIterator[Gateway]:
    """A real gateway on ephemeral ports for the length of the block (`environ`: what it
    reads its replay key from; the process's environment when None)."""
    gw = Gateway(settings, environ)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def gateway(upstream: Upstream, db_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running(make_settings(upstream.url, db_url, tmp_path)) as gw:
        yield gw


@pytest.fixture
async def sqlite_gateway(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    """SQLite only: for transport tests where the database does not matter."""
    async with running(
        make_settings(upstream.url, migrated_sqlite(tmp_path / "gw.db"), tmp_path)
    ) as gw:
        yield gw


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """One headless Debian Chromium per browser-test module (all of them live in
    tests/test_ui_browser.py, so one per session), driven by Playwright's sync API, never a
    downloaded browser. Not session-scoped: while Playwright's sync API is open its event loop
    counts as running, and the async tests of later modules could not start theirs. Skips,
    saying why, where Chromium or Playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# -- shared helpers (tests import these from here, never from each other) -------------------

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "gateway"]
CALL_KEY = "sk-recorder-test-key-SPOOLED-9876"  # the key `calls` sends


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 15) -> None:
    """Poll with a deadline (the state is in another task; there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_health(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            if proc.returncode is not None:
                raise AssertionError("gateway exited early")
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not come up")


async def calls(gw: Gateway, count: int, tag: str, key: str = CALL_KEY) -> list[int]:
    async def one(n: int) -> int:
        payload = {
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": f"{tag} {n}"}],
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                json=payload,
                headers={"Authorization": f"Bearer {key}"},
            ) as resp,
        ):
            await resp.read()
            return resp.status

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def listed(db: str, limit: int = 50) -> list[ExchangeSummary]:
    """The newest `limit` exchanges of a database, read with a store of its own (after the
    gateway that wrote them has stopped)."""
    store = Store(db)
    await store.open()
    try:
        items, _ = await store.list_exchanges(ExchangeFilter(), limit, None)
    finally:
        await store.close()
    return items


async def health(gw: Gateway) -> dict:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.ui_url}/healthz") as resp:
        return await resp.json()


@pytest.fixture
async def relayed_pg() -> AsyncIterator[tuple[str, TcpRelay]]:
    async with throwaway_pg() as url:
        relay = TcpRelay("127.0.0.1", 5432)
        await relay.start()
        name = url.rsplit("/", 1)[1]
        try:
            yield f"postgres://postgres@127.0.0.1:{relay.port}/{name}", relay
        finally:
            await relay.close()


_CURRENT_TEST: list[str] = [""]


def pytest_runtest_setup(item):  # type: ignore[no-untyped-def]
    _CURRENT_TEST[0] = item.nodeid


def _note_opener() -> None:
    """Tag each aiosqlite connection with the test that opened it, so the report below can
    name the test that left it open."""
    import aiosqlite

    init = aiosqlite.Connection.__init__

    def tagged(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        import traceback

        where = [
            f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}"
            for f in traceback.extract_stack(limit=12)
            if "/gateway/" in f.filename or "/tests/" in f.filename
        ]
        self._opened_by = f"{_CURRENT_TEST[0]} ({' < '.join(reversed(where[-4:]))})"

    aiosqlite.Connection.__init__ = tagged  # type: ignore[method-assign]


_note_opener()


def pytest_sessionfinish(session, exitstatus):  # type: ignore[no-untyped-def]
    """aiosqlite's worker threads are not daemons: a connection a test left open (a store
    some code path never closed, held by tortoise's registry) would keep the test process
    alive after the summary. Stop them, and say how many there were."""
    import gc

    import aiosqlite

    left = [c for c in gc.get_objects() if isinstance(c, aiosqlite.Connection) and c._running]
    for connection in left:
        connection.stop()
    if left:
        openers = sorted({getattr(c, "_opened_by", "?") for c in left})
        print(f"\nconftest: stopped {len(left)} SQLite connection(s) left open by: {openers}")


@contextmanager
def tmpfs(where: Path, options: str, why_skip: str = "") -> Iterator[Path]:
    """A tmpfs mounted at `where` (created) with mount `options` (`size=4m`, `size=1m,ro`)
    while within: a full or read-only disk, for real (the tests run as root). Skips, saying
    why, where mounting is refused."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}){why_skip}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
