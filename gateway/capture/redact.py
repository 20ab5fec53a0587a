"""Secrets never reach storage: the one place that decides what is a key and hides it.

Runs on the proxy's hot path (before a record can be queued or spooled), so it is a few
set look-ups per header, nothing more.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode

REDACTED = "[redacted]"

_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "xi-api-key",
        "x-goog-api-key",
        "ocp-apim-subscription-key",
    }
)
# Whole name segments (split on - and _), so "x-ratelimit-remaining-tokens-minute" stays visible
# while "api_key", "x-auth-token" and "apikey" are hidden.
_SECRET_SEGMENTS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "auth",
        "authorization",
        "signature",
        "sig",
        "credential",
        "credentials",
        "session",
        "cookie",
        "jwt",
        "bearer",
    }
)
_SPLIT = re.compile(r"[-_.\s]+")


@lru_cache(maxsize=4096)  # header names repeat on every call; this runs on the hot path
def is_secret_name(name: str) -> bool:
    lower = name.lower()
    if lower in _SECRET_HEADERS:
        return True
    return any(part in _SECRET_SEGMENTS for part in _SPLIT.split(lower))


def redact_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, REDACTED if is_secret_name(k) else v) for k, v in headers]


def redact_query(query: str) -> str:
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(is_secret_name(k) for k, _ in pairs):
        return query
    return urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs])


def key_of(headers: list[tuple[str, str]]) -> str | None:
    """The caller's API key as sent (Authorization bearer, or a vendor key header)."""
    for name, value in headers:
        lower = name.lower()
        if lower == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if token else scheme.strip()
        if lower in ("x-api-key", "xi-api-key", "api-key"):
            return value.strip()
    return None


@lru_cache(maxsize=256)  # an agent reuses one key: hash it once (kept in memory only)
def fingerprint(key: str | None) -> str | None:
    """Enough to tell keys apart and recognise one's own (hash prefix + last 4), not to use it."""
    if not key:
        return None
    digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12]
    return f"sha256:{digest}...{key[-4:]}" if len(key) >= 12 else f"sha256:{digest}"
