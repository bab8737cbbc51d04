"""The goridge TCP transport: RoadRunner-compatible RPC on an asyncio server.

One connection carries any number of calls. Calls on a connection are served one at a time
and answered in the order they arrived, which is what makes a repeated ``seq`` harmless:
two clients sharing a socket may both send ``seq`` 1, and each reply simply echoes the
``seq`` of its call (goridge matches replies by order on a synchronous relay, and RoadRunner's
PHP client checks only that the echoed ``seq`` is its own).

What a peer gets for bad input:

* a call the server cannot serve (unknown method, unsupported codec, a body that is not a
  ``Request``, validation, a broker error): an error reply, and the connection stays open;
* a frame that is not an RPC call (options missing, method length past the payload): an
  error reply if its ``seq`` is known, and the connection stays open, since the frame
  boundary is intact; without a ``seq`` to answer to, the connection is closed;
* a corrupt header (bad CRC, version, header length) or a payload over the limit: the byte
  stream cannot be resynchronised, so the connection is closed, after an error reply when
  the header was sound enough to give its ``seq`` (the oversized case).

None of this reaches other connections: each runs in its own task and every failure is
contained there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from rabbitsocks.rpc.goridge import (
    Call,
    Flag,
    FrameDecoder,
    FrameError,
    decode_call,
    encode_call,
    encode_error,
)
from rabbitsocks.rpc.service import (
    Encoding,
    ErrorKind,
    PublishService,
    decode_request,
    describe_error,
    encode_response,
    error_kind,
)

__all__ = ["GoridgeServer", "start_goridge_server"]

logger = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
# Room for the method name on top of the request body; RoadRunner's names are ~25 bytes.
_METHOD_NAME_ROOM = 1024
_CODEC_ENCODINGS = {Flag.CODEC_PROTO: Encoding.PROTOBUF, Flag.CODEC_JSON: Encoding.JSON}


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    busy: bool = False
    closing: bool = False
    task: asyncio.Task[None] | None = field(default=None)


class GoridgeServer:
    """A running goridge RPC listener; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, service: PublishService) -> None:
        self.service = service
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        # The JSON codec may carry base64 payloads, so frames get the larger wire limit.
        self._max_payload = service.wire_limit(Encoding.JSON) + _METHOD_NAME_ROOM

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the goridge server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting connections."""
        self._server = await asyncio.start_server(self._serve, host, port)

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening, let calls in progress answer for up to ``grace`` s, disconnect."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.closing = True
            # An idle connection is waiting in read(): closing wakes it with EOF. A busy
            # one finishes its call, answers, then sees ``closing``.
            if not connection.busy:
                connection.writer.close()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer, task=asyncio.current_task())
        self._connections.add(connection)
        peer = writer.get_extra_info("peername")
        try:
            await self._serve_calls(connection, reader)
        except ConnectionError as exc:
            logger.debug("goridge %s: connection lost: %s", peer, exc)
        except FrameError as exc:
            logger.info("goridge %s: closing after a bad frame: %s", peer, exc)
        except Exception:
            logger.exception("goridge %s: connection failed", peer)
        finally:
            self._connections.discard(connection)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_calls(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(self._max_payload)
        writer = connection.writer
        while not connection.closing:
            data = await reader.read(_READ_SIZE)
            if not data:
                try:
                    decoder.feed_eof()
                except FrameError as exc:
                    # A client that dies mid-frame is not an attack worth an INFO line.
                    logger.debug("goridge %s: %s", writer.get_extra_info("peername"), exc)
                return
            decoder.feed(data)
            while not connection.closing:
                try:
                    frame = decoder.next_frame()
                except FrameError as exc:
                    if exc.seq is not None:
                        # Only the header was read: the method name is not known.
                        writer.write(encode_error(exc.seq, "", _describe_frame_error(exc)))
                        await writer.drain()
                    raise
                if frame is None:
                    break
                connection.busy = True
                try:
                    try:
                        call = decode_call(frame)
                    except FrameError as exc:
                        if exc.seq is None:
                            raise
                        reply = encode_error(exc.seq, "", _describe_frame_error(exc))
                    else:
                        reply = await self._answer(call)
                    writer.write(reply)
                    await writer.drain()
                finally:
                    connection.busy = False

    async def _answer(self, call: Call) -> bytes:
        """The reply frame to ``call``: the Response, or an error reply."""
        codec = call.codec
        encoding = _CODEC_ENCODINGS.get(codec) if codec is not None else None
        if encoding is None:
            return encode_error(
                call.seq,
                call.method,
                f"{ErrorKind.INVALID_REQUEST.value}: codec flags {int(call.flags):#04x} "
                "are not supported; use protobuf (0x80) or JSON (0x08)",
                codec,
            )
        assert codec is not None
        try:
            self.service.check_method(call.method)
            request = decode_request(call.body, encoding)
            response = await self.service.call(call.method, request)
        except Exception as exc:
            if error_kind(exc) is ErrorKind.INTERNAL:
                logger.exception("goridge: %s failed", call.method)
            return encode_error(call.seq, call.method, describe_error(exc), codec)
        return encode_call(call.seq, call.method, encode_response(response, encoding), codec)


def _describe_frame_error(exc: FrameError) -> str:
    """The error text for a frame that is not a valid RPC call."""
    return f"{ErrorKind.INVALID_REQUEST.value}: {exc}"


async def start_goridge_server(
    service: PublishService, host: str = "127.0.0.1", port: int = 6001
) -> GoridgeServer:
    """Serve ``service`` over goridge on ``host:port`` (port 0 picks a free one)."""
    server = GoridgeServer(service)
    await server.start(host, port)
    return server
