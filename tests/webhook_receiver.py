"""A local webhook receiver for alert notices: a real aiohttp app on a loopback port that
keeps every JSON body it is sent, by path."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append({"path": request.path, "body": await request.json()})
        return web.Response(text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def bodies(self, path: str = "/hook") -> list[dict[str, Any]]:
        return [item["body"] for item in self.received if item["path"] == path]
