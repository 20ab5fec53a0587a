"""`agentops-studio mitm`: mitmproxy, in-process, as an explicit HTTPS proxy that records.

mitmproxy is embedded through its own API (`Master`, `Options`, its default addons) in the
gateway's event loop, so the capture addon hands records straight to the gateway's recorder:
one process, one writer, one store. Only the captured hosts are intercepted (mitmproxy's
`allow_hosts`); TLS to any other host is tunnelled without being decrypted. The CA that
mitmproxy signs with lives in its confdir; `write_ca_bundle` puts it beside the system's
roots in one file a client can name in SSL_CERT_FILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.capture.exchange import Exchange
from gateway.errors import UserError
from gateway.proxy import scrub
from gateway.proxy.mitm_addon import CaptureAddon

log = logging.getLogger("agentops.mitm")

CA_CERT = "mitmproxy-ca-cert.pem"
CA_BUNDLE = "agentops-ca-bundle.pem"
INSTALL_HINT = "mitm capture needs mitmproxy (Python 3.12+): pip install 'agentops-studio[mitm]'"


class MitmError(UserError, RuntimeError):
    """mitmproxy is missing or could not start; the message is one line."""


def allow_pattern(host: str) -> str:
    """mitmproxy matches allow_hosts against "host:port": a bare name allows any port."""
    name, _, port = host.strip().lower().partition(":")
    return "^" + re.escape(name) + ":" + (re.escape(port) if port else r"\d+") + "$"


class _StartupErrors(logging.Handler):
    """mitmproxy reports a failed listen as an ERROR log line; keep them to say why."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # First line only: mitmproxy's second line suggests its own --mode flag.
        self.messages.append(record.getMessage().splitlines()[0])


class _Ready:
    """An addon whose `running` hook fires once mitmproxy has tried to bind its servers."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()


class MitmCapture:
    """mitmproxy listening on host:port, recording the captured hosts through `submit`."""

    def __init__(
        self,
        submit: Callable[[Exchange], None],
        *,
        host: str,
        port: int,
        capture_hosts: Sequence[str],
        confdir: str,
        max_body_bytes: int,
        upstream_ca: str | None = None,
        save_flows: str | None = None,
        held_keys: scrub.Keys | None = None,
    ) -> None:
        self.submit = submit
        self.held_keys = held_keys  # the gateway's own keys, scrubbed from records
        self.host, self.port = host, port
        self.capture_hosts = [h for h in capture_hosts if h.strip()]
        self.confdir = Path(confdir).expanduser()
        self.max_body_bytes = max_body_bytes
        self.upstream_ca = upstream_ca
        self.save_flows = save_flows
        self.master: Any = None
        self.addon: CaptureAddon | None = None
        self._task: asyncio.Task[None] | None = None
        self._cut = asyncio.Event()
        self.url = ""

    @property
    def ca_cert(self) -> Path:
        return self.confdir / CA_CERT

    async def start(self) -> None:
        try:
            from mitmproxy import options
            from mitmproxy.addons import default_addons
            from mitmproxy.master import Master
        except ImportError:
            raise MitmError(INSTALL_HINT) from None
        if not self.capture_hosts:
            raise MitmError("--capture-host: give at least one host to record")
        opts = options.Options(
            listen_host=self.host,
            listen_port=self.port,
            confdir=str(self.confdir),
            allow_hosts=[allow_pattern(h) for h in self.capture_hosts],
            ssl_verify_upstream_trusted_ca=self.upstream_ca,
        )
        errors = _StartupErrors()
        logging.getLogger("mitmproxy").addHandler(errors)
        try:
            self.master = Master(opts)
            ready = _Ready()
            self.addon = CaptureAddon(
                self.submit,
                self.capture_hosts,
                max_body_bytes=self.max_body_bytes,
                held_keys=self.held_keys,
            )
            self.master.addons.add(*default_addons(), ready, self.addon)
            # Lazy: the upstream is dialled once the request is read, so a failure to reach
            # it is an HTTP flow (a recorded 502), not a refused CONNECT nobody sees.
            opts.update(connection_strategy="lazy")
            if self.save_flows:  # mitmproxy's own -w; streamed bodies kept for the file
                _private_file(self.save_flows)
                opts.update(save_stream_file=self.save_flows, store_streamed_bodies=True)
            self._task = asyncio.create_task(self.master.run(), name="agentops-mitmproxy")
            waiter = asyncio.create_task(ready.event.wait())
            await asyncio.wait([self._task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            addresses = self.master.addons.get("proxyserver").listen_addrs()
        except Exception as exc:
            await self.stop()
            raise MitmError(f"mitmproxy could not start: {type(exc).__name__}: {exc}") from exc
        finally:
            logging.getLogger("mitmproxy").removeHandler(errors)
        if self._task.done() or not addresses:
            crashed = (
                self._task.exception() if self._task.done() and not self._task.cancelled() else None
            )
            await self.stop()
            why = "; ".join(errors.messages) or (
                f"{type(crashed).__name__}: {crashed}" if crashed else "no listening address"
            )
            raise MitmError(f"mitmproxy could not listen on {self.host}:{self.port}: {why}")
        host, port = addresses[0][:2]
        self.port = port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def in_flight(self) -> int:
        """Calls to the captured hosts that have started and not yet ended."""
        return len(self.addon.live) if self.addon is not None else 0

    def cut(self) -> int:
        """Stop waiting for the calls in flight (a second Ctrl-C); returns how many."""
        self._cut.set()
        return self.in_flight()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening, give the calls in flight `grace` seconds (or until `cut`), stop
        mitmproxy, and record the calls it leaves unfinished with state `shutdown`."""
        if self.master is not None and self._task is not None and not self._task.done():
            # mitmproxy's shutdown leaves its listening sockets to the process's exit (no
            # `done` hook closes them); embedded, close them first.
            proxyserver = self.master.addons.get("proxyserver")
            try:
                await proxyserver.servers.update([])
            except Exception:
                log.debug("could not stop mitmproxy's servers", exc_info=True)
            await self._calls_done(grace)
            self.master.shutdown()
            try:
                await asyncio.wait_for(self._task, 10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        if self.addon is not None:
            self.addon.cut()

    async def _calls_done(self, grace: float) -> None:
        deadline = asyncio.get_running_loop().time() + grace
        while self.in_flight() and not self._cut.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cut.wait(), min(left, 0.05))


def _private_file(path: str) -> None:
    """The raw dump holds API keys: create it 0600 (mitmproxy then writes into it, "+" for
    append as in mitmproxy's -w)."""
    dump = Path(path.removeprefix("+")).expanduser()
    dump.touch(mode=0o600)
    dump.chmod(0o600)


def write_ca_bundle(confdir: str | Path) -> Path:
    """mitmproxy's CA plus the system's roots, in one PEM file for SSL_CERT_FILE.

    httpx-based SDKs (mistralai 3.x, openai) load SSL_CERT_FILE *instead of* the system
    store, so pointing it at mitmproxy's CA alone would break TLS to every host the proxy
    does not intercept (those keep their real certificates)."""
    folder = Path(confdir).expanduser()
    ca = (folder / CA_CERT).read_text()
    paths = ssl.get_default_verify_paths()
    system = ""
    for candidate in (paths.openssl_cafile, paths.cafile):
        if candidate and Path(candidate).is_file():
            system = Path(candidate).read_text()
            break
    if not system:
        import certifi  # a mitmproxy dependency

        system = Path(certifi.where()).read_text()
    bundle = folder / CA_BUNDLE
    bundle.write_text(ca.rstrip() + "\n" + system)
    return bundle


def client_instructions(url: str, bundle: Path) -> str:
    """What an agent's environment needs, printed at start."""
    return (
        f"set in the agent's environment:\n"
        f"  export HTTPS_PROXY={url}\n"
        f"  export SSL_CERT_FILE={bundle}\n"
        f"  export REQUESTS_CA_BUNDLE={bundle}   # only for requests-based clients"
    )
