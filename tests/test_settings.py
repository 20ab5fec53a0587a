"""Settings: flags over environment over defaults, sizes and ages parsed for people, and the
redaction table that keeps keys out of storage.
"""

from __future__ import annotations

import pytest

from gateway.capture.redact import fingerprint, is_secret_name, key_of, redact_headers, redact_query
from gateway.settings import ConfigError, Settings, parse_bytes, parse_days
from gateway.store.urls import describe_url


def test_flags_beat_environment_beat_defaults():
    env = {"AGENTOPS_PORT": "9000", "AGENTOPS_UI_PORT": "9001", "AGENTOPS_QUEUE_SIZE": "5"}
    settings = Settings.build({"port": "7000"}, env)
    assert (settings.port, settings.ui_port, settings.queue_size) == (7000, 9001, 5)
    assert settings.upstream == "https://api.mistral.ai"
    assert settings.db == "sqlite://agentops.db"
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.retention_days is None
    assert settings.elevenlabs_upstream == "https://api.elevenlabs.io"
    assert (
        Settings.build(
            {}, {"AGENTOPS_ELEVENLABS_USD_PER_CREDIT": "0.0003"}
        ).elevenlabs_usd_per_credit
        == 0.0003
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10MB", 10_000_000),
        ("1GiB", 1024**3),
        ("20000", 20_000),
        ("1.5k", 1500),
        ("64 MiB", 64 * 1024**2),
    ],
)
def test_sizes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize(("text", "value"), [("30", 30), ("30d", 30), ("12h", 0.5)])
def test_ages(text, value):
    assert parse_days(text) == value


@pytest.mark.parametrize("text", ["5x", "inf", "nan", "1e400", "1e9", "-1", "0"])
def test_bad_ages_say_what_an_age_is(text):
    # not a traceback later (timedelta or datetime overflow, NaN) but a ValueError now
    with pytest.raises(ValueError, match="30d"):
        parse_days(text)


@pytest.mark.parametrize(
    "flags",
    [
        {"ui_host": "0.0.0.0"},
        {"port": "70000"},
        {"upstream": "api.mistral.ai"},
        {"upstream": "http://"},  # no host: was accepted, and every call failed
        {"elevenlabs_upstream": "https:///v1"},
        {"max_body_bytes": "0"},
        {"upstream_timeout": "-1"},
        {"db": "mysql://x"},
        {"db": "sqlite://"},  # no file: was a traceback from tortoise
        {"db": "postgres://postgres@127.0.0.1:5432/"},  # no name: was the `postgres` database
        {"db": "postgresql://u:p@db"},
        {"elevenlabs_upstream": "api.elevenlabs.io"},
        {"elevenlabs_usd_per_credit": "-0.1"},
        {"elevenlabs_usd_per_credit": "free"},
        {"wandb_group_by": "team"},
        {"metrics": "maybe"},
        {"otel_endpoint": "collector:4318"},
    ],
)
def test_bad_settings_are_refused(flags):
    with pytest.raises(ConfigError):
        Settings.build(flags, {})


def test_a_db_url_without_its_database_says_which_part_is_missing():
    with pytest.raises(ConfigError, match="names no PostgreSQL database") as refused:
        Settings.build({"db": "postgres://u:secret@127.0.0.1:5432/"}, {})
    assert "secret" not in str(refused.value)
    with pytest.raises(ConfigError, match="names no SQLite file"):
        Settings.build({"db": "sqlite://"}, {})
    for fine in ("sqlite://a.db", "sqlite:///tmp/x/a.db", "postgres://u@h:5432/agentops"):
        assert Settings.build({"db": fine}, {}).db == fine


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"),
        ("postgres://u:se@cr@et@h:5432/db", "postgres://u:***@h:5432/db"),  # '@' in the password
        ("postgresql://u:p:w@h/db?ssl=true", "postgresql://u:***@h/db?ssl=true"),
        ("postgres://u@h:5432/db", "postgres://u@h:5432/db"),
        ("postgres://u:@h/db", "postgres://u:***@h/db"),
        ("sqlite:///tmp/a@b:c.db", "sqlite:///tmp/a@b:c.db"),  # no host part: nothing hidden
    ],
)
def test_a_db_url_is_shown_without_its_password(url: str, shown: str):
    """One rule (gateway/store/urls.py) for every message that shows a database URL,
    --db's refusals included: the password is hidden whole, an '@' in it too."""
    assert describe_url(url) == shown
    if url.startswith("postgres"):
        bare = url.split("/db", 1)[0] + "/"  # the same URL without its database name
        with pytest.raises(ConfigError, match="names no PostgreSQL database") as refused:
            Settings.build({"db": bare}, {})
        assert repr(describe_url(bare)) in str(refused.value)


def test_public_ui_needs_a_token():
    assert Settings.build({"ui_host": "0.0.0.0", "ui_token": "t"}, {}).ui_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("Cookie", True),
        ("X-Api-Key", True),
        ("xi-api-key", True),
        ("api_key", True),
        ("access_token", True),
        ("X-Auth-Token", True),
        ("apikey", True),
        ("Content-Type", False),
        ("x-ratelimit-remaining-tokens-minute", False),
        ("mistral-correlation-id", False),
        ("x-ratelimit-tokens-query-cost", False),
    ],
)
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_redaction_and_fingerprint():
    key = "sk-abcdefghijklmnopqrstuvwxyz-1234"
    headers = [("Authorization", f"Bearer {key}"), ("Accept", "application/json")]
    assert redact_headers(headers) == [
        ("Authorization", "[redacted]"),
        ("Accept", "application/json"),
    ]
    assert key_of(headers) == key
    assert fingerprint(key).endswith("...1234") and key not in fingerprint(key)
    assert fingerprint(None) is None
    assert redact_query("model=x&api_key=" + key) == "model=x&api_key=%5Bredacted%5D"
    assert redact_query("a=1&b=%20") == "a=1&b=%20"  # untouched when nothing is secret
