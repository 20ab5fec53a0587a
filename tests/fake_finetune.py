"""The fake's fine-tuning jobs: create, list, get, cancel (mistralai 1.x `fine_tuning.jobs`;
`/v1/fine_tuning/jobs*` left the newest openapi.yaml, so the shapes are the SDK's
`CompletionJobOut` / `JobsOut`, with files from `/v1/files` as openapi.yaml has them).

A job starts QUEUED and moves one state each time it is looked at: RUNNING, then SUCCESS
with its `fine_tuned_model` and `trained_tokens` (the training files' tokens, ~4 bytes
each, times the epochs). A job whose file holds the line `"FAIL"` ends FAILED instead.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from tests.fake_mistral import (
    FILES,
    Json,
    _check_keys,
    _json_body,
    _json_response,
    _not_found,
    _upstream_headers,
    _validation_error,
)

JOBS = web.AppKey("fine_tuning_jobs", dict[str, dict[str, Any]])
CREATE_KEYS = (
    "model",
    "training_files",
    "validation_files",
    "suffix",
    "integrations",
    "auto_start",
    "invalid_sample_skip_percentage",
    "job_type",
    "hyperparameters",
    "repositories",
    "classifier_targets",
)
NEXT = {"QUEUED": "RUNNING", "RUNNING": "SUCCESS"}
FINE_TUNABLE = ("open-mistral-7b", "open-mistral-nemo", "mistral-small-latest", "codestral-latest")


def _file_ids(body: Json) -> list[str] | web.Response:
    files = body.get("training_files")
    if not isinstance(files, list) or not files:
        detail = {
            "type": "too_short",
            "loc": ["body", "training_files"],
            "msg": "List should have at least 1 item after validation, not 0",
            "input": files,
        }
        return _validation_error([detail])
    ids = []
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("file_id"), str):
            detail = {
                "type": "missing",
                "loc": ["body", "training_files", "file_id"],
                "msg": "Field required",
                "input": item,
            }
            return _validation_error([detail])
        ids.append(item["file_id"])
    return ids


def _job(body: Json, ids: list[str], payloads: list[bytes]) -> Json:
    hyper = body.get("hyperparameters") if isinstance(body.get("hyperparameters"), dict) else {}
    epochs = hyper.get("epochs") or 1
    data_tokens = sum(len(p) for p in payloads) // 4
    now = int(time.time())
    return {
        "id": str(uuid.uuid4()),
        "auto_start": body.get("auto_start", True),
        "model": body["model"],
        "status": "QUEUED",
        "created_at": now,
        "modified_at": now,
        "training_files": ids,
        "validation_files": [],
        "object": "job",
        "fine_tuned_model": None,
        "suffix": body.get("suffix"),
        "integrations": [],
        "trained_tokens": None,
        "metadata": {
            "expected_duration_seconds": 60,
            "cost": None,
            "cost_currency": None,
            "train_tokens_per_step": None,
            "train_tokens": int(data_tokens * epochs),
            "data_tokens": data_tokens,
            "estimated_start_time": None,
        },
        "job_type": "completion",
        "hyperparameters": {"training_steps": hyper.get("training_steps"), "epochs": epochs},
        "repositories": [],
        "_fails": any(b'"FAIL"' in p for p in payloads),
    }


def _public(job: Json) -> Json:
    return {k: v for k, v in job.items() if not k.startswith("_")}


async def create_job(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    _check_keys(body, CREATE_KEYS, ("model", "training_files"))
    if body["model"] not in FINE_TUNABLE:
        return _json_response(
            {"detail": f"Model {body['model']!r} is not available for fine-tuning"},
            400,
            _upstream_headers(),
        )
    ids = _file_ids(body)
    if isinstance(ids, web.Response):
        return ids
    files = request.app[FILES]
    missing = [i for i in ids if i not in files]
    if missing:
        return _not_found(f"File {missing[0]} not found")
    job = _job(body, ids, [files[i][1] for i in ids])
    request.app[JOBS][job["id"]] = job
    return _json_response(_public(job), headers=_upstream_headers())


def _advance(job: Json) -> None:
    following = NEXT.get(job["status"])
    if following is None:
        return
    job["status"] = following
    job["modified_at"] = int(time.time())
    if following == "SUCCESS" and job["_fails"]:
        job["status"] = "FAILED"
    elif following == "SUCCESS":
        job["trained_tokens"] = job["metadata"]["train_tokens"]
        suffix = job["suffix"] or "agentops"
        job["fine_tuned_model"] = f"ft:{job['model']}:{suffix}:{job['id'][:8]}"


async def get_job(request: web.Request) -> web.StreamResponse:
    job = request.app[JOBS].get(request.match_info["job_id"])
    if job is None:
        return _not_found("Job not found")
    _advance(job)
    return _json_response(_public(job), headers=_upstream_headers())


async def cancel_job(request: web.Request) -> web.StreamResponse:
    job = request.app[JOBS].get(request.match_info["job_id"])
    if job is None:
        return _not_found("Job not found")
    if job["status"] in NEXT:
        job["status"] = "CANCELLED"
    return _json_response(_public(job), headers=_upstream_headers())


async def list_jobs(request: web.Request) -> web.StreamResponse:
    jobs = [_public(job) for job in request.app[JOBS].values()]
    body = {"data": jobs, "object": "list", "total": len(jobs)}
    return _json_response(body, headers=_upstream_headers())


async def get_file(request: web.Request) -> web.StreamResponse:
    found = request.app[FILES].get(request.match_info["file_id"])
    if found is None:
        return _not_found("File not found")
    return _json_response({**found[0], "deleted": False}, headers=_upstream_headers())


def add_routes(app: web.Application) -> None:
    app[JOBS] = {}
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_post("/v1/fine_tuning/jobs", create_job)
    app.router.add_get("/v1/fine_tuning/jobs", list_jobs)
    app.router.add_get("/v1/fine_tuning/jobs/{job_id}", get_job)
    app.router.add_post("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job)
