"""The datasets half of the store: named, versioned sets of items, the only place that builds
their queries.

Versioning keeps each item once, with the version it was added in and the version it was
removed in (null while it is still there): version v is `added_in <= v AND (removed_in IS
NULL OR removed_in > v)`. Adding 10 items to a 10,000-item dataset writes 10 rows, where a
snapshot per version would copy 10,010; every old version stays readable as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from gateway.capture.exchange import is_id, new_id
from gateway.errors import Conflict, NotFound, UserError
from gateway.store.exchanges import Store
from gateway.store.records import iso_time

NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to add: JSON-ready values, and the recorded call or run it came from."""

    input: dict[str, Any]
    expected_output: Any = None
    metadata: dict[str, Any] | None = None
    exchange_id: int | None = None
    run_id: int | None = None


@dataclass(frozen=True, slots=True)
class DatasetItem:
    id: int
    dataset_id: int
    added_in: int
    removed_in: int | None
    input: dict[str, Any]
    expected_output: Any
    metadata: dict[str, Any]
    exchange_id: int | None
    run_id: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "input": self.input,
            "expected_output": self.expected_output,
            "metadata": self.metadata,
            "added_in": self.added_in,
            "exchange_id": None if self.exchange_id is None else str(self.exchange_id),
            "run_id": None if self.run_id is None else str(self.run_id),
        }


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    version: int
    created_at: str | None
    source: str
    added: int
    removed: int
    item_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "source": self.source,
            "added": self.added,
            "removed": self.removed,
            "item_count": self.item_count,
        }


@dataclass(frozen=True, slots=True)
class Dataset:
    id: int
    name: str
    description: str
    version: int
    item_count: int
    created_at: str | None
    updated_at: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "item_count": self.item_count,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # nested deeper than 254 levels, say
        raise UserError(f"an item cannot be stored as JSON: {exc}") from None


def _item(row: dict[str, Any]) -> DatasetItem:
    expected = row["expected_output"]
    return DatasetItem(
        id=int(row["id"]),
        dataset_id=int(row["dataset_id"]),
        added_in=int(row["added_in"]),
        removed_in=row["removed_in"],
        input=orjson.loads(row["input"]),
        expected_output=None if expected is None else orjson.loads(expected),
        metadata=orjson.loads(row["metadata"]),
        exchange_id=row["source_exchange_id"],
        run_id=row["source_run_id"],
    )


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserError("name must be a non-empty string")
    name = name.strip()
    if len(name) > NAME_LENGTH:
        raise UserError(f"name is longer than {NAME_LENGTH} characters")
    return name


IN_VERSION = "dataset_id = ? AND added_in <= ? AND (removed_in IS NULL OR removed_in > ?)"


class DatasetStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _now(self) -> Any:
        return self.store._value(datetime.now(UTC))

    async def create(self, name: Any, description: Any = "") -> Dataset:
        name = check_name(name)
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise UserError("description must be a string")
        if await self.find(name) is not None:
            raise Conflict(f"a dataset named {name!r} exists already")
        dataset_id, now = new_id(), self._now()
        try:
            async with in_transaction("default") as tx:
                await tx.execute_query(
                    self.store.sql(
                        "INSERT INTO datasets (id, name, description, version, created_at, "
                        "updated_at) VALUES (?, ?, ?, 0, ?, ?)"
                    ),
                    [dataset_id, name, description, now, now],
                )
                await self._version(tx, dataset_id, 0, "created", 0, 0, 0)
        except IntegrityError:  # created by someone else since the check above
            raise Conflict(f"a dataset named {name!r} exists already") from None
        found = await self.get(dataset_id)
        assert found is not None
        return found

    async def _version(
        self,
        tx: BaseDBAsyncClient,
        dataset_id: int,
        version: int,
        source: str,
        added: int,
        removed: int,
        count: int,
    ) -> None:
        await tx.execute_query(
            self.store.sql(
                "INSERT INTO dataset_versions (dataset_id, version, created_at, source, added, "
                "removed, item_count) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            [dataset_id, version, self._now(), source, added, removed, count],
        )

    async def _counted(self, where: str, params: list[Any]) -> list[Dataset]:
        rows = await self.store.rows(
            "SELECT d.*, (SELECT v.item_count FROM dataset_versions v WHERE v.dataset_id = d.id "
            f"AND v.version = d.version) AS item_count FROM datasets d {where}",
            params,
        )
        return [
            Dataset(
                id=int(r["id"]),
                name=r["name"],
                description=r["description"],
                version=int(r["version"]),
                item_count=int(r["item_count"] or 0),
                created_at=iso_time(r["created_at"]),
                updated_at=iso_time(r["updated_at"]),
            )
            for r in rows
        ]

    async def get(self, dataset_id: int) -> Dataset | None:
        found = await self._counted("WHERE d.id = ?", [dataset_id])
        return found[0] if found else None

    async def find(self, name: str) -> Dataset | None:
        found = await self._counted("WHERE d.name = ?", [name])
        return found[0] if found else None

    async def named(self, name_or_id: str) -> Dataset:
        """A dataset by name, else by id (the command line takes either)."""
        found = await self.find(name_or_id)
        if found is None and is_id(name_or_id):
            found = await self.get(int(name_or_id))
        if found is None:
            raise NotFound(f"dataset {name_or_id!r} not found")
        return found

    async def all(self) -> list[Dataset]:
        return await self._counted("ORDER BY d.id DESC", [])

    async def versions(self, dataset_id: int) -> list[DatasetVersion]:
        rows = await self.store.rows(
            "SELECT * FROM dataset_versions WHERE dataset_id = ? ORDER BY version DESC",
            [dataset_id],
        )
        return [
            DatasetVersion(
                version=int(r["version"]),
                created_at=iso_time(r["created_at"]),
                source=r["source"],
                added=int(r["added"]),
                removed=int(r["removed"]),
                item_count=int(r["item_count"]),
            )
            for r in rows
        ]

    async def add(self, dataset_id: int, items: list[NewItem], source: str) -> Dataset:
        """Add items as one new version; the dataset's row is locked (updated first) so two
        concurrent adds make two versions, never one number twice."""
        if not items:
            raise UserError("nothing to add: no items")
        async with in_transaction("default") as tx:
            version, count = await self._next_version(tx, dataset_id)
            await tx.execute_many(
                self.store.sql(
                    "INSERT INTO dataset_items (dataset_id, added_in, input, expected_output, "
                    "metadata, source_exchange_id, source_run_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                [
                    [
                        dataset_id,
                        version,
                        _dumps(i.input),
                        None if i.expected_output is None else _dumps(i.expected_output),
                        _dumps(i.metadata or {}),
                        i.exchange_id,
                        i.run_id,
                    ]
                    for i in items
                ],
            )
            await self._version(tx, dataset_id, version, source, len(items), 0, count + len(items))
        found = await self.get(dataset_id)
        assert found is not None
        return found

    async def remove(self, dataset_id: int, item_ids: list[int]) -> Dataset:
        """Remove items from the next version on; earlier versions keep them."""
        async with in_transaction("default") as tx:
            version, count = await self._next_version(tx, dataset_id)
            marks = ", ".join("?" * len(item_ids))
            gone = await tx.execute_query_dict(
                self.store.sql(
                    f"UPDATE dataset_items SET removed_in = ? WHERE dataset_id = ? AND id IN "
                    f"({marks}) AND removed_in IS NULL RETURNING id"
                ),
                [version, dataset_id, *item_ids],
            )
            missing = sorted(set(item_ids) - {int(r["id"]) for r in gone})
            if missing:
                raise NotFound(f"not items of this dataset's latest version: {missing}")
            await self._version(tx, dataset_id, version, "removed", 0, len(gone), count - len(gone))
        found = await self.get(dataset_id)
        assert found is not None
        return found

    async def _next_version(self, tx: BaseDBAsyncClient, dataset_id: int) -> tuple[int, int]:
        """Bump the dataset's version (the row lock serialises writers); return it with the
        item count of the version before."""
        bumped = await tx.execute_query_dict(
            self.store.sql(
                "UPDATE datasets SET version = version + 1, updated_at = ? WHERE id = ? "
                "RETURNING version"
            ),
            [self._now(), dataset_id],
        )
        if not bumped:
            raise NotFound("dataset not found")
        version = int(bumped[0]["version"])
        before = await tx.execute_query_dict(
            self.store.sql(
                "SELECT item_count FROM dataset_versions WHERE dataset_id = ? AND version = ?"
            ),
            [dataset_id, version - 1],
        )
        return version, int(before[0]["item_count"]) if before else 0

    async def items(
        self, dataset_id: int, version: int, limit: int, after: int | None = None
    ) -> tuple[list[DatasetItem], int | None]:
        """One page of a version's items in the order they were added; the cursor for the
        next page (None at the end)."""
        params: list[Any] = [dataset_id, version, version]
        where = IN_VERSION
        if after is not None:
            where += " AND id > ?"
            params.append(after)
        rows = await self.store.rows(
            f"SELECT * FROM dataset_items WHERE {where} ORDER BY id LIMIT ?", [*params, limit + 1]
        )
        found = [_item(r) for r in rows[:limit]]
        return found, (found[-1].id if len(rows) > limit else None)

    async def all_items(self, dataset_id: int, version: int) -> list[DatasetItem]:
        out: list[DatasetItem] = []
        cursor: int | None = None
        while True:
            page, cursor = await self.items(dataset_id, version, 500, cursor)
            out += page
            if cursor is None:
                return out
