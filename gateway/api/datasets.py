"""The datasets API on the UI port: create and list datasets, add items (from recorded
exchanges, runs, a search, or given as JSON) as a new version, read any version's items a
page at a time, remove items, and download a version as JSONL.

Errors come from the one tree (gateway/errors.py): 400 names the problem, 404 an unknown id,
409 a name that is taken.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.exchanges import (
    PROVIDERS,
    RUNS,
    STORE,
    json_body,
    json_response,
    not_found,
    parse_id,
)
from gateway.errors import UserError
from gateway.export.dataset_files import jsonl_lines
from gateway.export.dataset_items import (
    ItemSource,
    given_items,
    parse_ids,
)
from gateway.store.datasets import Dataset, DatasetStore, NewItem
from gateway.store.query import parse_int

DATASETS = web.AppKey("datasets", DatasetStore)
SOURCES = ("exchange_ids", "run_ids", "filter", "items")
PAGE = 100
MAX_PAGE = 1000

routes = web.RouteTableDef()


def item_source(app: web.Application) -> ItemSource:
    return ItemSource(app[STORE], app[RUNS], app[PROVIDERS])


async def dataset_of(request: web.Request) -> Dataset:
    dataset_id = parse_id(request.match_info["id"], "dataset")
    found = await request.app[DATASETS].get(dataset_id)
    if found is None:
        raise not_found("dataset")
    return found


def version_of(dataset: Dataset, value: str | None) -> int:
    version = parse_int("version", value, low=0, high=2**31 - 1)
    if version is None:
        return dataset.version
    if version > dataset.version:
        raise UserError(f"version {version} does not exist (the latest is {dataset.version})")
    return version


async def new_items(app: web.Application, body: dict[str, Any]) -> tuple[list[NewItem], str]:
    """The items a POST asks for, and the name of where they came from."""
    chosen = [k for k in SOURCES if k in body]
    if len(chosen) != 1 or set(body) - set(SOURCES):
        raise UserError(
            'give exactly one of "exchange_ids" (a list), "run_ids" (a list), "filter" '
            '(the /api/exchanges parameters) or "items" (a list of {"input", '
            '"expected_output", "metadata"})'
        )
    kind, value = chosen[0], body[chosen[0]]
    source = item_source(app)
    if kind == "exchange_ids":
        return await source.from_exchanges(parse_ids(value, kind)), "exchanges"
    if kind == "run_ids":
        return await source.from_runs(parse_ids(value, kind)), "runs"
    if kind == "filter":
        return await source.from_filter(value), "filter"
    return given_items(value), "items"


@routes.post("/api/datasets")
async def create_dataset(request: web.Request) -> web.Response:
    body = await json_body(request)
    unknown = sorted(set(body) - {"name", "description"})
    if unknown:
        raise UserError(f"unknown field(s): {', '.join(unknown)} (accepted: name, description)")
    created = await request.app[DATASETS].create(body.get("name"), body.get("description", ""))
    return json_response(created.to_json(), status=201)


@routes.get("/api/datasets")
async def list_datasets(request: web.Request) -> web.Response:
    found = await request.app[DATASETS].all()
    return json_response({"items": [d.to_json() for d in found]})


@routes.get("/api/datasets/{id}")
async def get_dataset(request: web.Request) -> web.Response:
    dataset = await dataset_of(request)
    versions = await request.app[DATASETS].versions(dataset.id)
    return json_response({**dataset.to_json(), "versions": [v.to_json() for v in versions]})


@routes.post("/api/datasets/{id}/items")
async def add_items(request: web.Request) -> web.Response:
    dataset = await dataset_of(request)
    items, source = await new_items(request.app, await json_body(request))
    updated = await request.app[DATASETS].add(dataset.id, items, source)
    return json_response({**updated.to_json(), "added": len(items)}, status=201)


@routes.delete("/api/datasets/{id}/items")
async def remove_items(request: web.Request) -> web.Response:
    """`{"item_ids": [...]}`: gone from a new version on; earlier versions keep them."""
    dataset = await dataset_of(request)
    body = await json_body(request)
    if set(body) != {"item_ids"}:
        raise UserError('give "item_ids" (a list of item ids)')
    ids = parse_ids(body["item_ids"], "item_ids")
    updated = await request.app[DATASETS].remove(dataset.id, ids)
    return json_response({**updated.to_json(), "removed": len(ids)})


@routes.get("/api/datasets/{id}/items")
async def list_items(request: web.Request) -> web.Response:
    dataset = await dataset_of(request)
    version = version_of(dataset, request.query.get("version"))
    limit = parse_int("limit", request.query.get("limit"), low=1, high=MAX_PAGE) or PAGE
    after = parse_int("after", request.query.get("after"), high=2**63 - 1)
    items, cursor = await request.app[DATASETS].items(dataset.id, version, limit, after)
    return json_response(
        {
            "dataset_id": str(dataset.id),
            "version": version,
            "items": [i.to_json() for i in items],
            "next": None if cursor is None else str(cursor),
        }
    )


@routes.get("/api/datasets/{id}/export")
async def export_items(request: web.Request) -> web.StreamResponse:
    """A version as JSONL: `format=jsonl` (our items) or `mistral` (Observability records)."""
    dataset = await dataset_of(request)
    version = version_of(dataset, request.query.get("version"))
    shape = request.query.get("format", "jsonl")
    if shape not in ("jsonl", "mistral"):
        raise UserError(f"format must be jsonl or mistral, got {shape!r}")
    items = await request.app[DATASETS].all_items(dataset.id, version)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": (
                f'attachment; filename="dataset-{dataset.id}-v{version}-{shape}.jsonl"'
            ),
        }
    )
    await response.prepare(request)
    for line in jsonl_lines(items, shape):
        await response.write(line)
    await response.write_eof()
    return response
