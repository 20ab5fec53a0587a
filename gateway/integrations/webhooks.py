"""Alert notices to webhooks, from queues drained by background tasks: never on a request's
path. One queue and task per webhook URL keeps a rule's firing and resolved notices in order,
and a webhook that is down (retried with backoff, each try with a timeout) delays only its own
notices. The URL is never logged: Slack webhook URLs are secrets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.integrations.alert_rules import masked

log = logging.getLogger("agentops.alerts")

QUEUE_SIZE = 1000  # notices waiting per webhook; past it new ones are dropped and counted


@dataclass(frozen=True, slots=True)
class Notice:
    """One message for one webhook: `payload` is already in the webhook's format."""

    url: str
    payload: dict[str, Any]
    rule_name: str


class Webhooks:
    """Delivers notices; `retry_base` seconds doubles after each failed try, up to
    `retry_max`, for `attempts` tries in all."""

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        attempts: int = 8,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        self.timeout = timeout
        self.attempts = attempts
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.sent = 0
        self.failed_tries = 0
        self.dropped = 0
        self._queues: dict[str, asyncio.Queue[Notice]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def send(self, notice: Notice) -> None:
        """Queue a notice; returns at once."""
        queue = self._queues.get(notice.url)
        if queue is None:
            queue = self._queues[notice.url] = asyncio.Queue(QUEUE_SIZE)
            self._tasks[notice.url] = asyncio.create_task(
                self._drain(queue), name="agentops-webhook"
            )
        try:
            queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "alert %r: webhook %s is backed up; notice dropped",
                notice.rule_name,
                masked(notice.url),
            )

    def pending(self) -> int:
        return sum(queue.qsize() for queue in self._queues.values())

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queues.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _drain(self, queue: asyncio.Queue[Notice]) -> None:
        while True:
            notice = await queue.get()
            await self._deliver(notice)

    async def _deliver(self, notice: Notice) -> None:
        delay = self.retry_base
        for attempt in range(1, self.attempts + 1):
            why = await self._post(notice)
            if why is None:
                self.sent += 1
                return
            self.failed_tries += 1
            if attempt == self.attempts:
                log.warning(
                    "alert %r: webhook %s failed %d times (%s); notice dropped",
                    notice.rule_name,
                    masked(notice.url),
                    attempt,
                    why,
                )
                self.dropped += 1
                return
            log.info(
                "alert %r: webhook %s: %s; retrying in %.1f s",
                notice.rule_name,
                masked(notice.url),
                why,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _post(self, notice: Notice) -> str | None:
        """None when delivered, else why not (never naming the URL)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.post(notice.url, json=notice.payload) as resp:
                await resp.read()
                return None if resp.status < 300 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # aiohttp's messages quote the URL: say only what kind of failure it was
            return type(exc).__name__
