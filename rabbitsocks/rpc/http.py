"""The HTTP transport: ``POST /rpc/<method>`` on aiohttp.

The body is a ``Request``, as protobuf (``Content-Type: application/x-protobuf``) or as
its proto3 JSON mapping (``application/json``, payloads in base64); the answer is the
``Response`` in the same encoding. Errors are JSON, ``{"error": "<kind>: <message>"}``,
whatever the request's encoding:

====  =======================================================================
400   the body is not a Request, or fails validation (topics, broker, empty)
401   the bearer token is missing or wrong (only when a token is configured)
404   unknown method
405   not a POST (aiohttp)
408   the body did not arrive within the read timeout (the connection is closed)
413   the body is over the size limit
415   the Content-Type is neither protobuf nor JSON
502   the broker refused the publish: before routing (publish failed: nobody got it)
      or with a nack (publish refused: it did not take responsibility)
503   the broker is not connected, or the PublishAsync queue is full: nothing was sent
504   no confirm came (confirm timeout, or the connection was lost after sending):
      the outcome is unknown
500   anything else (logged)
====  =======================================================================

502 and 504 follow RFC 9110 (15.6.3, 15.6.5): rabbitsocks acts as a gateway to the broker,
which answered badly or not in time; clients can retry a 503 and should treat a 504 as
"outcome unknown".
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from rabbitsocks.rpc.service import (
    Encoding,
    ErrorKind,
    PublishService,
    decode_request,
    describe_error,
    encode_response,
    error_kind,
)

__all__ = [
    "CONTENT_TYPES",
    "ERROR_STATUS",
    "JSON_CONTENT_TYPE",
    "PROTOBUF_CONTENT_TYPE",
    "RpcHandler",
    "add_rpc_routes",
    "make_rpc_app",
]

logger = logging.getLogger(__name__)

PROTOBUF_CONTENT_TYPE: Final = "application/x-protobuf"
JSON_CONTENT_TYPE: Final = "application/json"
#: Accepted request types; ``application/protobuf`` is the IETF draft's name.
CONTENT_TYPES: Final[Mapping[str, Encoding]] = {
    PROTOBUF_CONTENT_TYPE: Encoding.PROTOBUF,
    "application/protobuf": Encoding.PROTOBUF,
    JSON_CONTENT_TYPE: Encoding.JSON,
}
_RESPONSE_TYPES: Final = {
    Encoding.PROTOBUF: PROTOBUF_CONTENT_TYPE,
    Encoding.JSON: JSON_CONTENT_TYPE,
}

ERROR_STATUS: Final[Mapping[ErrorKind, int]] = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.UNKNOWN_METHOD: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.BUSY: 503,
    ErrorKind.BROKER_UNAVAILABLE: 503,
    ErrorKind.PUBLISH_FAILED: 502,
    ErrorKind.PUBLISH_REFUSED: 502,
    ErrorKind.CONFIRM_TIMEOUT: 504,
    ErrorKind.OUTCOME_UNKNOWN: 504,
    ErrorKind.INTERNAL: 500,
}

_READ_CHUNK = 64 * 1024


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class RpcHandler:
    """The aiohttp handler of ``POST <prefix>/{method}``."""

    def __init__(
        self, service: PublishService, token: str | None = None, read_timeout: float = 10.0
    ) -> None:
        self.service = service
        self._token = token.encode("utf-8") if token else None
        self._read_timeout = read_timeout

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one call."""
        if self._token is not None and not self._authorized(request):
            # RFC 6750 section 3: a 401 names the scheme it expects.
            return _error(
                401,
                "unauthorized: a valid bearer token is required",
                {"WWW-Authenticate": 'Bearer realm="rabbitsocks-rpc"'},
            )
        method = request.match_info["method"]
        encoding = CONTENT_TYPES.get(request.content_type)
        try:
            self.service.check_method(method)
            if encoding is None:
                return _error(
                    415,
                    f"unsupported Content-Type {request.content_type!r}; "
                    f"use {PROTOBUF_CONTENT_TYPE} or {JSON_CONTENT_TYPE}",
                )
            try:
                async with asyncio.timeout(self._read_timeout):
                    body = await self._read_body(request, self.service.wire_limit(encoding))
            except TimeoutError:
                # A sender that stalls mid-body would otherwise keep what it sent for as
                # long as it keeps the connection (RFC 9110 section 15.5.9: 408, and close).
                logger.info(
                    "HTTP RPC from %s: no complete body within %gs",
                    request.remote,
                    self._read_timeout,
                )
                late = f"the body did not arrive within {self._read_timeout:g}s"
                timed_out = _error(408, f"{ErrorKind.INVALID_REQUEST.value}: {late}")
                timed_out.force_close()
                return timed_out
            if body is None:
                limit = self.service.wire_limit(encoding)
                return _error(413, f"{ErrorKind.TOO_LARGE.value}: the body is over {limit} bytes")
            response = await self.service.call(method, decode_request(body, encoding))
        except Exception as exc:
            kind = error_kind(exc)
            if kind is ErrorKind.INTERNAL:
                logger.exception("HTTP RPC %s failed", method)
            headers = {"Retry-After": "1"} if ERROR_STATUS[kind] == 503 else None
            return _error(ERROR_STATUS[kind], describe_error(exc), headers)
        return web.Response(
            body=encode_response(response, encoding),
            content_type=_RESPONSE_TYPES[encoding],
        )

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        # The scheme is case-insensitive (RFC 9110 section 11.1); the comparison of the
        # token takes the same time wherever it differs.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode("utf-8"), self._token
        )

    @staticmethod
    async def _read_body(request: web.Request, limit: int) -> bytes | None:
        """The body, or ``None`` once it is over ``limit`` bytes (not read any further)."""
        if request.content_length is not None and request.content_length > limit:
            return None
        body = bytearray()
        # Read in chunks rather than request.read(): the limit must hold for chunked
        # bodies too, and must not depend on the client_max_size of a shared app.
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)


def add_rpc_routes(
    app: web.Application,
    service: PublishService,
    *,
    token: str | None = None,
    prefix: str = "/rpc",
    read_timeout: float = 10.0,
) -> None:
    """Add ``POST {prefix}/{method}`` serving ``service`` to an existing app."""
    handler = RpcHandler(service, token, read_timeout)
    app.router.add_post(f"{prefix.rstrip('/')}/{{method}}", handler.handle)


def make_rpc_app(
    service: PublishService, token: str | None = None, *, read_timeout: float = 10.0
) -> web.Application:
    """An app serving only ``POST /rpc/{method}``; ``token`` enables bearer auth;
    ``read_timeout`` bounds the seconds a body may take to arrive."""
    app = web.Application()
    add_rpc_routes(app, service, token=token, read_timeout=read_timeout)
    return app
