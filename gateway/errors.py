"""One tree for the errors the gateway raises on purpose, mapped once to HTTP and exit codes.

Every such error derives from `AgentOpsError` and says, as class attributes, what an HTTP
answer (`status`) and the command line (`exit_code`) make of it. The JSON API maps them in
one middleware (`gateway/api/exchanges.py`), the pages in another (`webui`), the CLI in one `except`
(`gateway/cli.py`). Anything else that escapes is a bug: a 500 and a traceback in the log.

    AgentOpsError               500, exit 1
    ├── UserError               400, exit 2   bad flag, bad file, bad request
    │   ├── NotFound            404
    │   └── Conflict            409           cannot be done to this thing (not replayable)
    └── Unavailable             503, exit 2   the database or the writer cannot be used now
"""

from __future__ import annotations


class AgentOpsError(Exception):
    """Base of the errors the gateway raises on purpose; the message is for the user."""

    status = 500
    exit_code = 1


class UserError(AgentOpsError):
    """Something the user can fix: a flag, a file, a request's parameters."""

    status = 400
    exit_code = 2


class NotFound(UserError):
    status = 404


class Conflict(UserError):
    status = 409


class Unavailable(AgentOpsError):
    """Something the user cannot fix by asking differently: the database is unreachable,
    the writer process did not start."""

    status = 503
    exit_code = 2
