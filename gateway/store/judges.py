"""Judge definitions, kept exactly as given (Mistral's Observability judge shape): the only
place that builds their queries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from tortoise.exceptions import IntegrityError

from gateway.capture.exchange import new_id
from gateway.errors import Conflict, NotFound
from gateway.store.exchanges import Store


class JudgeStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Store a checked definition (gateway/replay/judge.py); 409 when its name is taken."""
        name = definition["name"]
        if await self.store.rows("SELECT id FROM judges WHERE name = ?", [name]):
            raise Conflict(f"a judge named {name!r} exists already")
        values = [new_id(), name, orjson.dumps(definition).decode()]
        try:
            await self.store.conn.execute_query(
                self.store.sql(
                    "INSERT INTO judges (id, name, definition, created_at) VALUES (?, ?, ?, ?)"
                ),
                [*values, self.store._value(datetime.now(UTC))],
            )
        except IntegrityError:  # stored by someone else since the check above
            raise Conflict(f"a judge named {name!r} exists already") from None
        return definition

    async def get(self, name: str) -> dict[str, Any]:
        if "\x00" in name:  # none is stored (bodies cannot hold one); PostgreSQL refuses it
            raise NotFound(f"judge {name!r} not found")
        found = await self.store.rows("SELECT definition FROM judges WHERE name = ?", [name])
        if not found:
            raise NotFound(f"judge {name!r} not found")
        definition: dict[str, Any] = orjson.loads(found[0]["definition"])
        return definition

    async def all(self) -> list[dict[str, Any]]:
        rows = await self.store.rows("SELECT definition FROM judges ORDER BY name")
        return [orjson.loads(r["definition"]) for r in rows]
