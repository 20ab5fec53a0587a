"""Start and stop from the command line: SIGINT and SIGTERM end every command.

`serve` and `mitm` stop gracefully on the first signal (in-flight calls get --shutdown-grace
seconds) and at once on a second one, which cuts the calls still in flight; those are recorded
with state `shutdown` all the same. A signal during the start, or during a one-shot command
(export, import, purge), cancels the work, so its cleanup runs (temporary files, the writer
process, the database connection) and the command exits with status 130.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
INTERRUPTED_STATUS = 130  # the shell's status for a command ended by Ctrl-C
SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
R = TypeVar("R", bound=web.BaseRequest)


class Interrupted(Exception):
    """A signal ended the command before it finished its work."""


class InFlight:
    """The tasks serving calls right now: counted for the stop hint, cancelled by a second
    Ctrl-C or at the end of the stop's grace (the proxy records a call cut so with state
    `shutdown`)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.served = 0  # calls begun since the start (per worker in /healthz `workers`)
        # Set by `cut`: a call cancelled from then on was cut by the stop, even when its
        # connection is gone (aiohttp's stop closes them), not left by its client.
        self.cutting = False

    def __len__(self) -> int:
        return len(self.tasks)

    def wrap(
        self, handler: Callable[[R], Awaitable[web.StreamResponse]]
    ) -> Callable[[R], Awaitable[web.StreamResponse]]:
        """`handler`, with each call it serves registered while it runs."""
        tasks = self.tasks

        async def tracked(request: R) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            self.served += 1
            try:
                return await handler(request)
            finally:
                tasks.discard(task)

        return tracked

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        return await self.wrap(handler)(request)

    def cut(self) -> int:
        """Cancel every call in flight; returns how many there were."""
        self.cutting = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        return len(tasks)


class Signals:
    """SIGINT and SIGTERM: the first asks for a graceful stop (`first`), any later one for an
    immediate one. Start and stop run in the caller's task, never in one of their own:
    tortoise keeps its connections in a context variable, so a store opened in another task
    would be invisible to the close, and its thread would keep the process from exiting."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self._starting: asyncio.Task[Any] | None = None
        self._on_again: Callable[[], None] | None = None
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._received)

    def _received(self) -> None:
        if not self.first.is_set():
            self.first.set()
            if self._starting is not None:
                self._starting.cancel()
        elif self._on_again is not None:
            on_again, self._on_again = self._on_again, None
            on_again()

    async def unless_stopped(self, work: Awaitable[T]) -> T:
        """Await `work` (a start); a signal cancels it and raises Interrupted."""
        task = asyncio.current_task()
        assert task is not None
        self._starting = task
        try:
            return await work
        except asyncio.CancelledError:
            if not self.first.is_set():
                raise
            task.uncancel()  # ours, not the caller's: the cleanup after it must not see it
            raise Interrupted from None
        finally:
            self._starting = None

    async def stop(
        self,
        stop: Awaitable[None],
        in_flight: Callable[[], int],
        cut: Callable[[], int],
        grace: float,
        say: Callable[[str], None],
    ) -> int | None:
        """Run a graceful `stop`, saying what it waits for; a second signal cuts the calls
        still in flight (`cut`), after which the stop finishes at once. Returns how many
        were cut, or None when the stop was graceful."""
        count = in_flight()
        if count:
            say(
                f"stopping: waiting up to {grace:g} s for {_calls(count)} in flight; "
                "press Ctrl-C again to stop now"
            )
        else:
            say("stopping: no calls in flight")
        cut_count: list[int] = []

        def now() -> None:
            cut_count.append(cut())
            say(
                f"stopping now: cut {_calls(cut_count[0])} in flight (recorded with state shutdown)"
            )

        self._on_again = now
        try:
            await stop
        finally:
            self._on_again = None
        return cut_count[0] if cut_count else None


def _calls(count: int) -> str:
    return f"{count} call{'' if count == 1 else 's'}"


def run_interruptible(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run for a one-shot command: the first SIGINT or SIGTERM cancels `work` (its
    finally blocks run) and raises Interrupted; a second ends the process at once."""

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        signalled: list[bool] = []

        def received() -> None:
            if signalled:
                os._exit(INTERRUPTED_STATUS)  # cleanup is stuck: the user asked twice
            signalled.append(True)
            task.cancel()

        for sig in SIGNALS:
            loop.add_signal_handler(sig, received)
        try:
            return await work
        except asyncio.CancelledError:
            if signalled:
                raise Interrupted from None
            raise

    return asyncio.run(main())
