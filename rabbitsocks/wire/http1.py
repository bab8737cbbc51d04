"""The head of an HTTP/1.x request (RFC 9112), read strictly, and plain responses.

A listener reads the first request of every TCP connection itself, to decide who owns the
connection: a WebSocket upgrade is served by our own WebSocket core on that socket, any
other request goes to aiohttp with the bytes read so far. Only the head is parsed here
(request line and header fields, up to the blank line); bodies are aiohttp's business.

Strict on purpose, since this is the first code a stranger's bytes reach: CRLF line ends,
no obs-fold (section 5.2), tokens for the method and field names, no control characters
in values, an origin-form target, HTTP/1.0 or 1.1, and bounded sizes. Every refusal is an
``HttpError`` with the status to answer (400, 414, 431, 505) and a one-line reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "HttpError",
    "RequestHead",
    "header_tokens",
    "parse_request_head",
    "response",
]

#: Bytes of a request head (request line and fields) we read before answering 431. As
#: aiohttp's own limit on one line, so requests it would take are not refused here.
MAX_HEAD_SIZE = 16 * 1024
MAX_LINE_SIZE = 8190
MAX_HEADERS = 100

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values: visible characters, spaces and tabs, and obs-text (RFC 9110 section 5.5).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    """A request we will not serve: answer ``status`` with ``reason`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RequestHead:
    """The request line and header fields of one request."""

    method: str
    #: The request target as sent (``/socket.io/?EIO=4``), percent-encoding intact.
    target: str
    version: tuple[int, int]
    headers: CIMultiDictProxy[str]
    #: Bytes the head took, CRLF CRLF included: what follows belongs to the body or to the
    #: next protocol.
    size: int

    @property
    def url(self) -> URL:
        # Built from its parts: URL("//host/x") would read "host" as an authority.
        path, _, query = self.target.partition("?")
        return URL.build(path=path, query_string=query, encoded=True)

    @property
    def path(self) -> str:
        """The decoded path, as aiohttp's ``request.path``."""
        return self.url.path

    @property
    def query(self) -> MultiDictProxy[str]:
        """The query, parsed as aiohttp parses it (a blank value is kept: ``sid=``)."""
        return self.url.query

    @property
    def keep_alive(self) -> bool:
        tokens = header_tokens(self.headers, "Connection")
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


def header_tokens(headers: CIMultiDictProxy[str], name: str) -> set[str]:
    """The comma-separated tokens of every ``name`` field, lower-cased (``Connection``,
    ``Upgrade``)."""
    return {
        token.strip().lower()
        for value in headers.getall(name, ())
        for token in value.split(",")
        if token.strip()
    }


def parse_request_head(data: bytes | bytearray) -> RequestHead | None:
    """The head at the start of ``data``; ``None`` while it is incomplete.

    Raises ``HttpError`` as soon as what arrived cannot start a request we would serve, so
    a client sending garbage or an endless header is answered without waiting for more.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD_SIZE:
            raise HttpError(431, f"request head larger than {MAX_HEAD_SIZE} bytes")
        first = data.find(b"\r\n")
        if first < 0 and len(data) > MAX_LINE_SIZE:
            raise HttpError(414, f"request line longer than {MAX_LINE_SIZE} bytes")
        if first >= 0:
            _request_line(bytes(data[:first]))  # fail early on garbage
        return None
    if end > MAX_HEAD_SIZE:
        raise HttpError(431, f"request head larger than {MAX_HEAD_SIZE} bytes")
    lines = bytes(data[:end]).split(b"\r\n")
    method, target, version = _request_line(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if len(line) > MAX_LINE_SIZE:
            raise HttpError(431, f"a header field longer than {MAX_LINE_SIZE} bytes")
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete line folding in a header field")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header field")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(400, "control character in a header field")
        headers.add(name.decode("ascii"), value.decode("latin-1"))
    if version >= (1, 1) and len(headers.getall("Host", ())) != 1:
        # RFC 9112 section 3.2: exactly one Host field in an HTTP/1.1 request.
        raise HttpError(400, "expected one Host header field")
    return RequestHead(method, target, version, CIMultiDictProxy(headers), end + 4)


def _request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    if len(line) > MAX_LINE_SIZE:
        raise HttpError(414, f"request line longer than {MAX_LINE_SIZE} bytes")
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed request method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/") and len(version) == 8:
            raise HttpError(505, "expected HTTP/1.0 or HTTP/1.1")
        raise HttpError(400, "malformed request line")
    # Origin form only (RFC 9112 section 3.2.1): we are no proxy, and "*" is for OPTIONS.
    if not target.startswith(b"/") or _BAD_VALUE.search(target) or b" " in target:
        raise HttpError(400, "malformed request target")
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not ASCII") from None
    return method.decode("ascii"), text, (1, 1) if version == b"HTTP/1.1" else (1, 0)


def response(
    status: int,
    body: str | bytes = "",
    headers: Mapping[str, str] | None = None,
    *,
    close: bool = True,
) -> bytes:
    """A complete HTTP/1.1 response; a ``str`` body is a line of plain text."""
    payload = body if isinstance(body, bytes) else (body + "\n").encode("utf-8") if body else b""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    fields = dict(headers or {})
    if status != 101:
        fields.setdefault("Content-Type", "text/plain; charset=utf-8")
        fields["Content-Length"] = str(len(payload))
        if close:
            fields["Connection"] = "close"
    for name, value in fields.items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
