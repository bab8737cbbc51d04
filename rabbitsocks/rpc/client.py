"""Async RPC clients for rabbitsocks (and RoadRunner): goridge TCP and HTTP.

Both raise the server's errors as the exceptions the service raised them as, as far as
the wire tells: ``BrokerUnavailable``, ``PublishFailed`` (``ConfirmTimeout``),
``UnknownMethod``, ``RequestTooLarge``, ``PublisherBusy``, otherwise ``RpcError``. Network
failures stay ``OSError`` (``ConnectionError``) and ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from types import TracebackType
from typing import Self

import aiohttp
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from rabbitsocks.errors import (
    BrokerUnavailable,
    PublishFailed,
    PublishRefused,
    PublishUnknown,
    RabbitSocksError,
    RpcError,
)
from rabbitsocks.rpc.goridge import Flag, FrameDecoder, decode_call, encode_call
from rabbitsocks.rpc.http import JSON_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE
from rabbitsocks.rpc.pb import Message, Request, Response
from rabbitsocks.rpc.service import (
    ConfirmTimeout,
    Encoding,
    ErrorKind,
    PublisherBusy,
    RequestTooLarge,
    UnknownMethod,
)

__all__ = ["GoridgeClient", "HttpRpcClient", "build_request"]

# A reply is a Response (two bytes) or an error text; this only bounds a rogue server.
_MAX_REPLY_PAYLOAD = 1024 * 1024
_READ_SIZE = 64 * 1024

_KIND_ERRORS: dict[str, type[RabbitSocksError]] = {
    ErrorKind.INVALID_REQUEST.value: RpcError,
    ErrorKind.UNKNOWN_METHOD.value: UnknownMethod,
    ErrorKind.TOO_LARGE.value: RequestTooLarge,
    ErrorKind.BUSY.value: PublisherBusy,
    ErrorKind.BROKER_UNAVAILABLE.value: BrokerUnavailable,
    ErrorKind.PUBLISH_FAILED.value: PublishFailed,
    ErrorKind.PUBLISH_REFUSED.value: PublishRefused,
    ErrorKind.CONFIRM_TIMEOUT.value: ConfirmTimeout,
    ErrorKind.OUTCOME_UNKNOWN.value: PublishUnknown,
}
_STATUS_ERRORS: dict[int, type[RabbitSocksError]] = {
    404: UnknownMethod,
    413: RequestTooLarge,
    502: PublishFailed,
    503: BrokerUnavailable,
    504: ConfirmTimeout,
}


def build_request(
    topics: str | Iterable[str], payload: bytes | str, *, broker: str | None = None
) -> Request:
    """A one-message ``Request``; a ``str`` payload is sent as UTF-8."""
    topic_list = [topics] if isinstance(topics, str) else list(topics)
    body = payload.encode("utf-8") if isinstance(payload, str) else payload
    return Request(messages=[Message(topics=topic_list, payload=body, broker=broker or "")])


def _error_from_text(text: str, default: type[RabbitSocksError] = RpcError) -> RabbitSocksError:
    """The exception for a server's ``"<kind>: <message>"`` error text."""
    kind, sep, _ = text.partition(": ")
    error_type = _KIND_ERRORS.get(kind, default) if sep else default
    return error_type(text)


def _check_ok(response: Response) -> None:
    if not response.ok:
        # RoadRunner answers ok=false, or an empty body, when it published nothing.
        raise PublishFailed("the server answered ok=false")


class _PublishMethods:
    """``publish`` and ``publish_request``, over a transport's ``call``."""

    service: str

    async def call(self, method: str, request: Request) -> Response:
        raise NotImplementedError

    async def publish(
        self,
        topics: str | Iterable[str],
        payload: bytes | str,
        *,
        broker: str | None = None,
        wait: bool = True,
    ) -> None:
        """Publish ``payload`` to ``topics``; with ``wait``, once the broker confirmed it."""
        request = build_request(topics, payload, broker=broker)
        _check_ok(await self.publish_request(request, async_=not wait))

    async def publish_request(self, request: Request, async_: bool = False) -> Response:
        """Call ``<service>.Publish`` (or ``PublishAsync``) with a prepared ``Request``."""
        method = "PublishAsync" if async_ else "Publish"
        return await self.call(f"{self.service}.{method}", request)


class GoridgeClient(_PublishMethods):
    """An RPC client over one goridge TCP connection, opened on first use.

    Calls are serialised on the connection, as RoadRunner's PHP client does; use one
    client per concurrent caller for parallelism. A call that fails midway (timeout,
    cancellation, a malformed reply) drops the connection: the next call reconnects.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6001,
        *,
        timeout: float | None = 30.0,
        service: str = "broadcast",
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.service = service
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(_MAX_REPLY_PAYLOAD)
        self._lock = asyncio.Lock()
        self._seq = 0
        self._in_step = False

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection now rather than on the first call."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self._decoder = FrameDecoder(_MAX_REPLY_PAYLOAD)

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def call(self, method: str, request: Request) -> Response:
        """Call ``method`` with the protobuf codec; an empty reply body reads as ok=false."""
        async with self._lock:
            self._in_step = False
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._call(method, request)
            except BaseException:
                if not self._in_step:
                    # The reply may still be on its way: the connection is out of step.
                    await self.close()
                raise

    async def _call(self, method: str, request: Request) -> Response:
        await self.connect()
        assert self._reader is not None
        assert self._writer is not None
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        self._writer.write(encode_call(seq, method, request.SerializeToString()))
        await self._writer.drain()
        while (frame := self._decoder.next_frame()) is None:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise ConnectionResetError("the goridge server closed the connection")
            self._decoder.feed(data)
        call = decode_call(frame)
        if call.seq != seq:
            raise RpcError(f"reply seq {call.seq} does not match the call's seq {seq}")
        self._in_step = True
        if call.flags & Flag.ERROR:
            raise _error_from_text(call.body.decode("utf-8", "replace"))
        try:
            return Response.FromString(call.body)
        except DecodeError as exc:
            raise RpcError(f"the reply is not a Response: {exc}") from exc


class HttpRpcClient(_PublishMethods):
    """An RPC client for ``POST <url>/<method>``, e.g. ``http://127.0.0.1:8080/rpc``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        encoding: Encoding = Encoding.PROTOBUF,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = 30.0,
        service: str = "broadcast",
    ) -> None:
        self.url = url.rstrip("/")
        self.encoding = encoding
        self.service = service
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client created it. Idempotent."""
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def call(self, method: str, request: Request) -> Response:
        """POST ``request`` to ``<url>/<method>`` and decode the ``Response``."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        if self.encoding is Encoding.PROTOBUF:
            body, content_type = request.SerializeToString(), PROTOBUF_CONTENT_TYPE
        else:
            body, content_type = _request_json(request), JSON_CONTENT_TYPE
        headers = {**self._headers, "Content-Type": content_type}
        async with self._session.post(
            f"{self.url}/{method}", data=body, headers=headers, timeout=self._timeout
        ) as reply:
            data = await reply.read()
            if reply.status != 200:
                raise _http_error(reply.status, data)
        encoding = Encoding.JSON if reply.content_type == JSON_CONTENT_TYPE else Encoding.PROTOBUF
        try:
            return _decode_response(data, encoding)
        except (DecodeError, ValueError) as exc:
            raise RpcError(f"the server's answer is not a Response: {exc}") from exc


def _request_json(request: Request) -> bytes:
    return json_format.MessageToJson(request, indent=None).encode("utf-8")


def _decode_response(data: bytes, encoding: Encoding) -> Response:
    if encoding is Encoding.PROTOBUF:
        return Response.FromString(data)
    return json_format.Parse(data.decode("utf-8"), Response())


def _http_error(status: int, data: bytes) -> RabbitSocksError:
    default = _STATUS_ERRORS.get(status, RpcError)
    try:
        text = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        # Not one of our answers (a proxy's error page, say): the status is all there is.
        return default(f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
    if not isinstance(text, str):
        return default(f"HTTP {status}")
    return _error_from_text(text, default)
