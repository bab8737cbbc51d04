"""aiohttp's log records, made safe: no request bytes, no query strings, no tracebacks.

aiohttp logs a request it cannot parse (a request line or header over 8,190 bytes, a
character HTTP does not allow) at ERROR with a traceback, and the exception's text quotes
the request's bytes: a ``?token=<JWT>``, a cookie. Under a flood of such requests that is
a traceback per request. ``install_aiohttp_log_filter`` puts filters on aiohttp's loggers
(public ``logging`` API only) so that:

- such a request becomes one line of ours, ``rabbitsocks.http: bad request from <address>:
  400 Got more than 8190 bytes when reading``, without a traceback and without its bytes;
- access log records (off on our own sites, perhaps on in an application we are mounted
  in) lose their query strings, in the message and in the ``extra`` fields.

Other errors aiohttp logs (a handler that raised) keep their traceback: they are bugs.

The first request of a listener's connection is read by ``transports.front``, which logs
its own refusals the same way; aiohttp parses the rest: later requests on a kept-alive
connection, the RPC and admin endpoints, and applications rabbitsocks is mounted in.
"""

from __future__ import annotations

import logging
import re

from aiohttp.http_exceptions import HttpProcessingError

from rabbitsocks.logs import RESERVED, scrub

__all__ = ["install_aiohttp_log_filter"]

_logger = logging.getLogger("rabbitsocks.http")
# "Got more than 8190 bytes when reading: bytearray(b'/websocket/?token=...')": what comes
# after the colon is the request's own bytes.
_REQUEST_BYTES = re.compile(r"\s*:?\s*(?:b'|b\"|bytearray\().*", re.DOTALL)


class _ServerFilter(logging.Filter):
    """On ``aiohttp.server``: a malformed request is one line of ours, without its bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        first = (exc.message or "").strip().split("\n", 1)[0]
        what = scrub(_REQUEST_BYTES.sub("", first).rstrip(" .:")) or type(exc).__name__
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        _logger.info("bad request from %s: %s %s", remote, exc.code, what)
        return False


class _AccessFilter(logging.Filter):
    """On ``aiohttp.access``: query strings (tokens travel there) removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        for key, value in list(vars(record).items()):
            if key not in RESERVED and isinstance(value, str):
                setattr(record, key, scrub(value))
        return True


def install_aiohttp_log_filter() -> None:
    """Filter aiohttp's server and access loggers as described above; idempotent."""
    for name, kind in (("aiohttp.server", _ServerFilter), ("aiohttp.access", _AccessFilter)):
        target = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in target.filters):
            target.addFilter(kind())
