"""Mistral's paths: which endpoint a forwarded path is, and which conversation operation.

Shared by the parser (`mistral.py`, recorded calls in) and replay (`mistral_replay.py`, calls
sent again), which both read paths: the parser holds its replay, so replay cannot import it back.
"""

from __future__ import annotations

from typing import Any

_EXACT = {
    "/v1/chat/completions": "chat",
    "/v1/fim/completions": "fim",
    "/v1/agents/completions": "agents",
    "/v1/embeddings": "embeddings",
    "/v1/ocr": "ocr",
    "/v1/moderations": "moderations",
    "/v1/chat/moderations": "moderations",
    "/v1/classifications": "moderations",
    "/v1/chat/classifications": "moderations",
}
_PREFIXES = (
    ("/v1/conversations", "conversations"),
    ("/v1/files", "files"),
    ("/v1/audio", "audio"),
    ("/v1/fine_tuning/jobs", "fine_tuning"),
)
FINE_TUNING_JOBS = "/v1/fine_tuning/jobs"  # POST: create a job (the call its cost is put on)


def endpoint_of(path: str) -> str:
    """The endpoint kind of a forwarded path (query and fragment ignored)."""
    p = path.split("?", 1)[0].split("#", 1)[0]
    if len(p) > 1:
        p = p.rstrip("/")
    kind = _EXACT.get(p)
    if kind:
        return kind
    for prefix, kind in _PREFIXES:
        if p == prefix or p.startswith(prefix + "/"):
            return kind
    return "other"


def conversation_path(method: Any, path: str) -> tuple[str | None, str | None]:
    """(operation, path conversation id) of a /v1/conversations... path."""
    p = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    parts = p.split("/")[3:]  # after "", "v1", "conversations"
    m = method.upper() if isinstance(method, str) else ""
    if not parts:
        return ("start" if m == "POST" else None), None
    cid = parts[0] or None
    if cid is None:
        return None, None
    rest = parts[1:]
    op = None
    if not rest:
        op = {"POST": "append", "GET": "get"}.get(m)
    elif len(rest) == 1:
        if rest[0] == "restart" and m == "POST":
            op = "restart"
        elif rest[0] in ("history", "messages") and m == "GET":
            op = "history"
    return op, cid
