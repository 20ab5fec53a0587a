"""The logger aiohttp's servers (proxy and UI) log through: never a raw request line or header.

aiohttp's HTTP parser quotes the offending bytes when it rejects a request, and its server logs
that error with its traceback: `X-Api-Key : sk-...` (a space before the colon) put the key in
the gateway's log. Every record carrying such a parser error (or one chained to it) is
rewritten here into a one-line summary: the peer and the error's class and status. The client
still gets aiohttp's 400; only the log is changed.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

HTTP_LOG = logging.getLogger("agentops.http")


def parser_error(exc: BaseException | None) -> HttpProcessingError | None:
    """The aiohttp parser error in `exc`'s chain (cause or context), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, HttpProcessingError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class NoRawRequests(logging.Filter):
    """Rewrites records about a malformed request: their message is aiohttp's own ("Error
    handling request from <peer>"), their traceback quotes the request; the traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = parser_error(record.exc_info[1] if record.exc_info else None)
        if exc is None:
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "bad HTTP request from %s: %s (%s); its request line and headers not logged"
        record.args = (peer, type(exc).__name__, exc.code)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelno > logging.WARNING:  # the client's mistake, not the gateway's
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


HTTP_LOG.addFilter(NoRawRequests())
