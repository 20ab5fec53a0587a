"""A bare aiohttp reverse passthrough with no capture at all: the benchmark's reference arm.

Why: the gateway's targets are stated relative to what plain Python + aiohttp can do on the same
machine, so this is the least a proxy on that stack must do: aiohttp's low-level `web.Server`
(no router, no middlewares), one `ClientSession` with `auto_decompress=False` and
`TCPConnector(limit=0)` (and no cookie jar: a proxy must not keep cookies), read the request
body, forward it, stream the response back with `iter_any`. Nothing is parsed, recorded or
logged; response headers are copied from `raw_headers` to skip building a second multidict.

Run: `python bench/passthrough.py --port 9100 --upstream http://127.0.0.1:9000`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "host",
        "content-length",
    }
)
SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def forwarded(pairs: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        if name.lower() not in HOP_BY_HOP:
            out.add(name, value)
    return out


class Passthrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=SKIP_AUTO,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=300),
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        async with self.session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body,
            headers=forwarded(request.headers.items()),
            allow_redirects=False,
        ) as upstream:
            pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers]
            headers = forwarded(pairs)
            length = upstream.content_length
            if length is not None:
                headers["Content-Length"] = str(length)
            resp = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            try:
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionResetError:
                pass  # the client hung up (wrk cuts its calls in flight at its deadline)
            return resp


async def serve(port: int, upstream: str) -> None:
    proxy = Passthrough(upstream)
    await proxy.start()
    runner = web.ServerRunner(web.Server(proxy.handle), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    assert proxy.session is not None
    await proxy.session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
