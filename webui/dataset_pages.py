"""The dataset pages: the list with a create form (`/datasets`), one dataset with its
versions and a version's items a page at a time (`/datasets/{id}`, the items swap alone for
htmx), JSONL upload, and the page that adds recorded calls to a dataset: the calls ticked in
the list, one exchange, one run, or everything a search selects (`/datasets/add`).

Forms post with the CSRF token; every error is the tree's (gateway/errors.py), as a page.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api import exchanges as api
from gateway.api.datasets import DATASETS, item_source, version_of
from gateway.api.replay import EXPERIMENTS
from gateway.capture.exchange import is_id
from gateway.errors import UserError
from gateway.export.dataset_files import parse_jsonl
from gateway.export.dataset_items import parse_ids
from gateway.store.datasets import Dataset, NewItem
from webui.exchange_pages import FILTER_KEYS, FilterError, build_filter
from webui.render import SETTINGS, render

PAGE_SIZE = 25
MAX_UPLOAD = 20 * 1024 * 1024


async def dataset_list(request: web.Request) -> web.Response:
    datasets = await request.app[DATASETS].all()
    return render(request, "datasets.html", {"datasets": datasets})


async def dataset_create(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    created = await request.app[DATASETS].create(
        str(form.get("name") or ""), str(form.get("description") or "")
    )
    raise web.HTTPSeeOther(f"/datasets/{created.id}")


async def _dataset(request: web.Request) -> Dataset:
    dataset_id = api.parse_id(request.match_info["id"], "dataset")
    found = await request.app[DATASETS].get(dataset_id)
    if found is None:
        raise api.not_found("dataset")
    return found


async def dataset_detail(request: web.Request) -> web.Response:
    dataset = await _dataset(request)
    store = request.app[DATASETS]
    version = version_of(dataset, request.query.get("version"))
    after = request.query.get("after")
    cursor = int(after) if after and is_id(after) else None
    items, following = await store.items(dataset.id, version, PAGE_SIZE, cursor)
    context = {
        "dataset": dataset,
        "versions": await store.versions(dataset.id),
        "version": version,
        "items": items,
        "next": following,
        "paged": cursor is not None,
        "added": request.query.get("added"),
        "form_variants": range(1, FORM_VARIANTS + 1),
        "form_scorers": FORM_SCORERS,
        "form_upstreams": sorted(request.app[SETTINGS].upstream_alts()),
    }
    return render(request, "dataset.html", context, partial="_dataset_items.html")


async def dataset_upload(request: web.Request) -> web.StreamResponse:
    """A JSONL file (our items, Mistral records, chat lines) added as a new version."""
    dataset = await _dataset(request)
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise UserError("choose a JSONL file to upload")
    data = upload.file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise UserError(f"the file is larger than {MAX_UPLOAD // (1024 * 1024)} MiB")
    items = parse_jsonl(data.splitlines(), upload.filename or "the file")
    updated = await request.app[DATASETS].add(dataset.id, items, "jsonl")
    raise web.HTTPSeeOther(f"/datasets/{updated.id}?added={len(items)}")


# -- adding recorded calls ----------------------------------------------------------------


def selection(query: Any) -> dict[str, Any]:
    """What the add page was asked to add, from its query (or its form's hidden fields)."""
    picks = [p for p in query.getall("pick", []) if p]
    if picks:
        return {"kind": "exchanges", "ids": parse_ids(picks, "pick")}
    if query.get("run_id"):
        return {"kind": "runs", "ids": parse_ids([query["run_id"]], "run_id")}
    filters = {k: (query.get(k) or "").strip() for k in FILTER_KEYS}
    if query.get("search") and any(filters.values()):
        try:
            build_filter(filters)
        except FilterError as exc:
            raise UserError(str(exc)) from None
        return {"kind": "search", "filters": {k: v for k, v in filters.items() if v}}
    raise UserError("tick some calls in the list first (or open a run or a search)")


async def selected_items(request: web.Request, chosen: dict[str, Any]) -> list[NewItem]:
    source = item_source(request.app)
    if chosen["kind"] == "exchanges":
        return await source.from_exchanges(chosen["ids"])
    if chosen["kind"] == "runs":
        return await source.from_runs(chosen["ids"])
    filters = {k: chosen["filters"].get(k, "") for k in FILTER_KEYS}
    if filters["range"]:  # the list's relative range, made absolute as the list does
        since = build_filter(filters).since
        filters["since"] = since.isoformat() if since else ""
    filters.pop("range")
    return await source.from_filter({**filters, "limit": 200})


async def add_page(request: web.Request) -> web.Response:
    chosen = selection(request.query)
    datasets = await request.app[DATASETS].all()
    return render(request, "dataset_add.html", {"chosen": chosen, "datasets": datasets})


async def add_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    chosen = selection(form)
    items = await selected_items(request, chosen)  # first: a bad pick creates nothing
    store = request.app[DATASETS]
    target = str(form.get("dataset") or "")
    if target:
        dataset = await store.get(parse_ids([target], "dataset")[0])
        if dataset is None:
            raise api.not_found("dataset")
    else:
        dataset = await store.create(
            str(form.get("name") or ""), str(form.get("description") or "")
        )
    source = "filter" if chosen["kind"] == "search" else chosen["kind"]
    await store.add(dataset.id, items, source)
    raise web.HTTPSeeOther(f"/datasets/{dataset.id}?added={len(items)}")


# -- an experiment over a dataset ----------------------------------------------------------

FORM_VARIANTS = 3
FORM_SCORERS = ("bleu", "chrf", "rouge_l", "exact_match", "tool_call_match", "json_valid")


def _number(form: Any, name: str, kind: type) -> Any:
    text = str(form.get(name) or "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{name.replace('-', ' ')}: {text!r} is not a number") from None


def experiment_body(dataset: Dataset, form: Any) -> dict[str, Any]:
    """The API request the dataset page's experiment form stands for."""
    variants = []
    for n in range(1, FORM_VARIANTS + 1):
        name = str(form.get(f"v{n}-name") or "").strip()
        if not name:
            continue
        variant: dict[str, Any] = {"name": name}
        model = str(form.get(f"v{n}-model") or "").strip()
        if model:
            variant["model"] = model
        system = str(form.get(f"v{n}-system") or "").strip()
        if system:
            variant["system"] = system
        upstream = str(form.get(f"v{n}-upstream") or "").strip()
        if upstream:  # a configured name; the API refuses any other
            variant["upstream"] = upstream
        params = {
            key: value
            for key, value in (
                ("temperature", _number(form, f"v{n}-temperature", float)),
                ("top_p", _number(form, f"v{n}-top_p", float)),
                ("max_tokens", _number(form, f"v{n}-max_tokens", int)),
            )
            if value is not None
        }
        if params:
            variant["params"] = params
        variants.append(variant)
    if not variants:
        raise UserError("name at least one variant")
    chosen = [s for s in form.getall("scorer", []) if s in FORM_SCORERS]
    body = {
        "dataset_id": str(dataset.id),
        "variants": variants,
        "scorers": [{"type": s} for s in chosen],
        "concurrency": int(_number(form, "concurrency", int) or 4),
    }
    key = str(form.get("api_key") or "").strip()
    if key:  # for this experiment only, never stored
        body["api_key"] = key
    return body


async def experiment_submit(request: web.Request) -> web.StreamResponse:
    dataset = await _dataset(request)
    form = await request.post()
    created = await request.app[EXPERIMENTS].create(experiment_body(dataset, form))
    raise web.HTTPSeeOther(f"/experiments/{created['id']}")


def setup(app: web.Application) -> None:
    app.router.add_get("/datasets", dataset_list)
    app.router.add_post("/datasets", dataset_create)
    app.router.add_get("/datasets/add", add_page)
    app.router.add_post("/datasets/add", add_submit)
    app.router.add_get(r"/datasets/{id:\d+}", dataset_detail)
    app.router.add_post(r"/datasets/{id:\d+}/upload", dataset_upload)
    app.router.add_post(r"/datasets/{id:\d+}/experiment", experiment_submit)
