"""One error tree (gateway/errors.py): every error the gateway raises on purpose is in it,
with the HTTP status and exit code it is mapped to, once."""

from __future__ import annotations

import pytest

from gateway.capture.flow_import import ImportFileError
from gateway.capture.pricing import PriceFileError
from gateway.errors import AgentOpsError, Conflict, Unavailable, UserError
from gateway.export.exporter import ExportError
from gateway.integrations import IntegrationError
from gateway.providers import UnknownProvider
from gateway.proxy.mitm import MitmError
from gateway.replay.replayer import ReplayError
from gateway.settings import ConfigError
from gateway.store.exchanges import StoreError
from gateway.writer import WriterError


@pytest.mark.parametrize(
    ("error", "base", "status"),
    [
        (ConfigError, UserError, 400),
        (PriceFileError, UserError, 400),
        (ExportError, UserError, 400),
        (ImportFileError, UserError, 400),
        (MitmError, UserError, 400),
        (IntegrationError, UserError, 400),
        (UnknownProvider, Conflict, 409),
        (StoreError, Unavailable, 503),
        (WriterError, Unavailable, 503),
    ],
)
def test_each_error_has_its_place(error: type[AgentOpsError], base: type, status: int):
    assert issubclass(error, base) and error.status == status and error.exit_code == 2


def test_replay_errors_carry_their_own_status():
    refused = ReplayError(409, "exchange 1 cannot be replayed: a GET")
    assert isinstance(refused, AgentOpsError) and refused.status == 409
    assert str(refused) == "exchange 1 cannot be replayed: a GET" and refused.exit_code == 2
    # the old bases still hold, so existing `except ValueError` sites behave as before
    assert issubclass(ConfigError, ValueError) and issubclass(StoreError, RuntimeError)
