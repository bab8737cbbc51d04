"""Logging set-up: human-readable lines by default, JSON lines on request."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure_logging", "mask_url"]

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: what logs and messages may show."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, _, hostpart = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hostpart}{slash}{path}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode("utf-8")


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send rabbitsocks' logs to stderr at ``level`` in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("rabbitsocks").setLevel(level.upper())
    # aiormq logs every failed reconnect attempt as an error with a traceback; our AMQP
    # broker already logs each outage and each recovery once.
    quiet = logging.DEBUG if level == "debug" else logging.CRITICAL
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(quiet)
