"""What a database URL says: its tortoise configuration, the SQLite file it names, and the
URL as messages show it (without its password)."""

from __future__ import annotations

import re
from typing import Any

# The user and password of a URL: up to the last '@' before the path, as URL parsers (and
# so asyncpg) read it, since a password may hold an '@' of its own.
_PASSWORD = re.compile(r"://([^:/@?#]+):[^/?#]*@")


def tortoise_config(url: str) -> dict[str, Any]:
    return {
        "connections": {"default": url},
        "apps": {
            "models": {
                "models": ["gateway.store.models"],
                "default_connection": "default",
                "migrations": "gateway.store.migrations",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def sqlite_path(url: str) -> str | None:
    """The file a sqlite:// URL names (None for :memory: and PostgreSQL)."""
    if not url.startswith("sqlite://"):
        return None
    from tortoise.backends.base.config_generator import expand_db_url  # 0.5 s to import

    path = str(expand_db_url(url)["credentials"]["file_path"])
    return None if path == ":memory:" else path


def describe_url(url: str) -> str:
    """The URL without its password, for messages (--db's refusals too: the one rule)."""
    return _PASSWORD.sub(r"://\1:***@", url, count=1)
