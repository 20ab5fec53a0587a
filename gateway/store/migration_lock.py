"""One process at a time brings a database's schema up to date.

Two gateways started together on a new database (replicas behind a load balancer, or a
`serve` and a CLI command) would each find no tables and each create them; the second then
failed with "table exchanges already exists". So migrating holds a lock that other processes
wait for: PostgreSQL's advisory lock (per database, held by a connection of its own for the
while), and on SQLite an exclusive `flock` on the database's folder. Not on the database file:
closing a descriptor of that file drops every POSIX lock the process holds on it, SQLite's
own connections' included (measured: a restarted gateway's reads stopped seeing what its
writer stored). Whoever comes second finds the schema current and has nothing left to do."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from tortoise.backends.base.config_generator import expand_db_url

from gateway.store.urls import sqlite_path

log = logging.getLogger("agentops.store")

# pg_advisory_lock's key for "migrating this database" (any constant; the database scopes it)
LOCK_KEY = 0x6167_6F70_6D69_6772  # "agopmigr"
POLL_SECONDS = 0.05  # between tries of a SQLite database folder's lock


@asynccontextmanager
async def migration_lock(url: str) -> AsyncIterator[None]:
    """Hold the database's migration lock within (waiting for it first). An in-memory SQLite
    database belongs to one process: nothing to wait for."""
    if url.startswith("sqlite://"):
        sqlite_file = sqlite_path(url)
        if sqlite_file is None:
            yield
            return
        async with _file_lock(sqlite_file):
            yield
        return
    async with _advisory_lock(url):
        yield


@asynccontextmanager
async def _file_lock(path: str) -> AsyncIterator[None]:
    """The lock of the folder holding `path` (databases in one folder migrate in turn).
    Polled without blocking, in the event loop's own thread: a blocking `flock` in a worker
    thread, its waiter cancelled, could run after the descriptor was closed and its number
    reused, and take the lock for good."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(POLL_SECONDS)
            except OSError as exc:  # a file system without flock: migrate as before
                log.warning("migrating %s without a lock: %s", path, exc.strerror or exc)
                break
        yield
    finally:
        os.close(fd)  # which releases the lock


@asynccontextmanager
async def _advisory_lock(url: str) -> AsyncIterator[None]:
    credentials: dict[str, Any] = expand_db_url(url)["credentials"]
    wanted = ("host", "port", "user", "password", "database", "ssl")
    connection = await asyncpg.connect(
        **{key: credentials[key] for key in wanted if credentials.get(key) is not None}
    )
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        yield
    finally:
        await connection.close()  # which releases the lock
