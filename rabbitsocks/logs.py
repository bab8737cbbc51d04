"""Logging set-up, and what a log line may contain.

Two formats: ``text`` (one human-readable line per record) and ``json`` (one JSON object per
line). Whatever a peer sends (a path, a header, a close reason) can reach a message, so:

- the text format escapes control characters (C0, DEL, C1, and the Unicode line and
  paragraph separators) in the message, as ``\\r``, ``\\n``, ``\\x1b``...: a record starts
  with its timestamp on a line of its own, and a traceback that follows it is indented, so
  nothing a peer sends can forge a record or drive the terminal. JSON escapes them itself;
- secrets stay out: ``mask_url`` hides a URL's password whatever its characters,
  ``redact_url`` also hides its query string, ``scrub`` does both to free text;
- aiohttp's own records are filtered by ``rabbitsocks.httplog``, which uses ``scrub``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

__all__ = [
    "RESERVED",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "escape_controls",
    "mask_url",
    "redact_url",
    "scrub",
]

#: The attributes every LogRecord has; the others are ``extra`` fields.
RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


# --- secrets -------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``: what logs and messages may show.

    The password runs from the first ``:`` of the userinfo to the *last* ``@`` of the URL,
    so that a password with an unencoded ``/``, ``@``, ``#`` or ``?`` is hidden whole (a
    URL parser would end the authority at the ``/`` and show the rest as a path). An ``@``
    in a path or query can make this hide more than the password, never less.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return url  # a user name alone (amqp://guest@host/) carries no secret
    return f"{scheme}://{user}:***@{hostpart}"


def redact_url(url: str) -> str:
    """``mask_url``, and the query string and fragment replaced by ``?***``: for URLs
    (authorization endpoints) whose parameters may be credentials."""
    masked = mask_url(url)
    scheme, sep, rest = masked.rpartition("://")
    start = rest.rfind("@") + 1
    cut = [i for i in (rest.find("?", start), rest.find("#", start)) if i >= 0]
    if cut:
        rest = rest[: min(cut)] + "?***"
    return f"{scheme}{sep}{rest}"


# scheme://user:password@ (to the last @ of the token), and the query of a URL or path.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s:/@'\"]*):[^\s'\"]*@")
_QUERY = re.compile(r"(?i)((?:\b[a-z][a-z0-9+.\-]*://|/)[^\s?#'\"]*)[?#][^\s'\"]*")


def scrub(text: str) -> str:
    """``text`` with the passwords and query strings of the URLs and paths in it hidden."""
    return _QUERY.sub(r"\1?***", _USERINFO.sub(r"\1\2:***@", text))


# --- control characters ----------------------------------------------------------------------

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROLS = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in (*range(0x20), *range(0x7F, 0xA0))
}
_CONTROLS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
_CONTROLS_BUT_NEWLINE = {k: v for k, v in _CONTROLS.items() if k != 0x0A}


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters written as escapes."""
    return text.translate(_CONTROLS)


class TextFormatter(logging.Formatter):
    """Human-readable lines whose message cannot break the line or drive the terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # record.message was set by format() from getMessage(); escaped for this line only.
        saved = record.message
        record.message = escape_controls(saved)
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved

    def formatException(self, ei: Any) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(block: str) -> str:
    """A traceback under its record: every line indented, controls but newlines escaped."""
    return "\n".join("  " + line for line in block.translate(_CONTROLS_BUT_NEWLINE).split("\n"))


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
            if key not in RESERVED:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode("utf-8")


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send rabbitsocks' logs to stderr at ``level`` in ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("rabbitsocks").setLevel(level.upper())
    # aiormq logs every failed reconnect attempt as an error with a traceback; our AMQP
    # broker already logs each outage and each recovery once.
    quiet = logging.DEBUG if level == "debug" else logging.CRITICAL
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(quiet)
