"""A real gateway and fake Mistral upstream running on their own event loop in a background
thread, for browser tests: Playwright's sync API drives Chromium from the test's thread while
the gateway keeps serving, and the real `mistralai` SDK makes the traffic.

Also the traffic itself: a chat, a stream, an error, a named run with an agent, a tool-calling
loop, and hostile prompts, all through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from mistralai.client import Mistral

from gateway.app import Gateway
from gateway.replay.replayer import KEY_VARIABLES
from gateway.settings import Settings
from tests.fake_mistral import start_fake

T = TypeVar("T")
KEY = "ui-test-key-0000111122223333"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
HOSTILE = (
    '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> '
    '<div hx-get="/exchanges/live" hx-trigger="load" hx-target="body">hx payload</div> '
    "{{ 7*7 }} </td></tr></table></main>"
)


class ThreadedGateway:
    """`with ThreadedGateway(tmp_path) as gw:` -> gw.ui_url, gw.proxy_url, gw.call(coro)."""

    def __init__(self, folder: Path, **settings: Any) -> None:
        self.folder = folder
        self.extra = settings
        self.loop = asyncio.new_event_loop()
        self.context = contextvars.Context()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ui-gateway", daemon=True)
        self.gateway: Gateway | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run `coro` on the gateway's loop, in one context for every call: tortoise keeps its
        connections in a context variable, so the stop must see what the start opened (in a
        context of its own it closed nothing, and the SQLite connection's thread outlived the
        test session)."""

        async def in_context() -> T:
            return await self.loop.create_task(coro, context=self.context)

        return asyncio.run_coroutine_threadsafe(in_context(), self.loop).result(timeout)

    def __enter__(self) -> ThreadedGateway:
        self.thread.start()
        self.runner, upstream, _ = self.call(start_fake())
        settings = Settings(
            upstream=upstream,
            db=f"sqlite://{self.folder / 'ui.db'}",
            port=0,
            ui_port=0,
            spool_dir=str(self.folder / "spool"),
            shutdown_grace=1.0,
            **self.extra,
        )
        # No replay key from the developer's environment: the pages show the keyless form.
        environ = {k: v for k, v in os.environ.items() if k not in KEY_VARIABLES}
        self.gateway = Gateway(settings, environ)
        self.call(self.gateway.start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gateway is not None:
            self.call(self.gateway.stop())
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def ui_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.ui_url

    @property
    def proxy_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.proxy_url

    def drained(self) -> None:
        assert self.gateway is not None
        self.call(self.gateway.recorder.drained(timeout=20))

    def client(self, suffix: str = "") -> Mistral:
        return Mistral(api_key=KEY, server_url=self.proxy_url + suffix)


def chat(
    gw: ThreadedGateway,
    text: str,
    *,
    model: str = "mistral-small-latest",
    suffix: str = "",
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> None:
    with gw.client(suffix) as client:
        messages: list[Any] = [{"role": "user", "content": text}]
        if stream:
            for _ in client.chat.stream(model=model, messages=messages, http_headers=headers):
                pass
        else:
            client.chat.complete(model=model, messages=messages, http_headers=headers)


def tool_loop(gw: ThreadedGateway, city: str, suffix: str = "") -> None:
    """user -> tool call -> tool result -> answer, as an agent written with the SDK does it."""
    with gw.client(suffix) as client:
        messages: list[Any] = [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": f"Weather in {city}?"},
        ]
        first = client.chat.complete(model="mistral-large-latest", messages=messages, tools=TOOLS)
        call = first.choices[0].message.tool_calls[0]
        messages += [
            first.choices[0].message,
            {
                "role": "tool",
                "tool_call_id": call.id,
                "name": call.function.name,
                "content": f"sunny in {city}, 24 C",
            },
        ]
        client.chat.complete(model="mistral-large-latest", messages=messages, tools=TOOLS)


def seed_traffic(gw: ThreadedGateway) -> None:
    """A varied, realistic set of calls through the real SDK."""
    chat(gw, "Write a haiku about the sea")
    chat(gw, "Summarise the plot of Hamlet in two lines", model="codestral-latest", stream=True)
    chat(
        gw,
        "What is the capital of Australia?",
        suffix="/r/nightly-eval",
        headers={"X-AgentOps-Agent": "geo-bot"},
    )
    chat(gw, "And of New Zealand?", suffix="/r/nightly-eval")
    tool_loop(gw, "Paris", suffix="/r/weather-agent")
    with contextlib.suppress(Exception):  # the SDK raises on a 429; the gateway records it
        chat(gw, "this one is rate limited", headers={"x-fake-status": "429"})
    chat(gw, "A model we have no price for", model="my-private-finetune")
    # a 300 KB answer: the page shows its start, the rest on demand
    chat(gw, "Tell me everything", headers={"x-fake-chunks": "50000"})
    chat(gw, HOSTILE)
    gw.drained()
