"""A fine-tuning job sent through the gateway: the training file uploaded to /v1/files, the
job created at /v1/fine_tuning/jobs and followed until it ends, every call recorded by the
gateway in one run of source `finetune` (X-AgentOps-Purpose), with the replay key.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.errors import Unavailable, UserError

TERMINAL = ("SUCCESS", "FAILED", "FAILED_VALIDATION", "CANCELLED")
JOBS = "/v1/fine_tuning/jobs"


class TrainingError(UserError):
    """The upstream refused a call of the fine-tuning loop; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Job:
    """A fine-tuning job as Mistral reports it (the fields the loop reads)."""

    id: str
    model: str
    status: str
    fine_tuned_model: str | None
    trained_tokens: int | None

    @classmethod
    def from_json(cls, body: Any) -> Job:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise TrainingError(f"{JOBS}: the answer is not a job: {str(body)[:200]}")
        tokens = body.get("trained_tokens")
        return cls(
            id=body["id"],
            model=str(body.get("model") or ""),
            status=str(body.get("status") or ""),
            fine_tuned_model=body.get("fine_tuned_model") or None,
            trained_tokens=tokens if isinstance(tokens, int) else None,
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class Trainer:
    """Calls of one fine-tuning loop, all in the run named `run_name`."""

    def __init__(self, session: aiohttp.ClientSession, gateway: str, key: str, run: str):
        self.session = session
        self.gateway = gateway.rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {key}",
            "X-AgentOps-Purpose": "finetune",
            "X-AgentOps-Run": run,
        }

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self.session.request(
                method, self.gateway + path, headers=self.headers, **kwargs
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            raise Unavailable(f"cannot reach the gateway at {self.gateway}: {exc}") from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw[:200].decode("utf-8", "replace")
        if status >= 400:
            detail = body.get("message") or body.get("detail") if isinstance(body, dict) else body
            raise TrainingError(f"{method} {path}: HTTP {status}: {str(detail)[:300]}")
        return body

    async def upload(self, path: Path) -> str:
        """The training file's id once uploaded (purpose fine-tune)."""
        form = aiohttp.FormData()
        form.add_field("purpose", "fine-tune")
        form.add_field(
            "file", path.read_bytes(), filename=path.name, content_type="application/jsonl"
        )
        body = await self._call("POST", "/v1/files", data=form)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise TrainingError(f"/v1/files: the answer has no file id: {str(body)[:200]}")
        return str(body["id"])

    async def create(
        self, model: str, file_id: str, suffix: str | None, hyperparameters: dict[str, Any]
    ) -> Job:
        request: dict[str, Any] = {
            "model": model,
            "training_files": [{"file_id": file_id, "weight": 1.0}],
            "hyperparameters": hyperparameters,
            "auto_start": True,
        }
        if suffix:
            request["suffix"] = suffix
        return Job.from_json(await self._call("POST", JOBS, json=request))

    async def get(self, job_id: str) -> Job:
        return Job.from_json(await self._call("GET", f"{JOBS}/{job_id}"))

    async def follow(self, job: Job, every: float, timeout: float, on_change: Any) -> Job:
        """Look at the job every `every` seconds until it ends (or `timeout` passes: then
        the job as last seen); `on_change(job)` at each new status."""
        deadline = time.monotonic() + timeout
        while not job.done and time.monotonic() < deadline:
            await asyncio.sleep(every)
            seen = await self.get(job.id)
            if seen.status != job.status:
                on_change(seen)
            job = seen
        return job
