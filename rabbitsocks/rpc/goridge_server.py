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

What a connection may hold is bounded in number and in time (``GoridgeLimits``):

* past ``max_connections`` open connections, a new one gets an error reply with ``seq`` 1
  (``busy: too many goridge connections``) and is closed. The reply is sent before the
  client asks: RoadRunner's PHP client and ours number the calls of a new connection from 1,
  so the first call reads it as its answer and fails with that text instead of a bare EOF;
* a frame must arrive whole within ``read_timeout`` seconds of its first byte, so a client
  that sends half a large frame and stalls does not keep its buffer; the connection is cut;
* a connection silent between calls for ``idle_timeout`` seconds is closed (0, the default,
  never closes one: RoadRunner's PHP relay does not reconnect after the server hangs up).

Each refusal or cut is one log line (the refusals: one when the cap is reached and one when
it is left) and a count in ``GoridgeStats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
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

__all__ = ["GoridgeLimits", "GoridgeServer", "GoridgeStats", "start_goridge_server"]

logger = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
# Room for the method name on top of the request body; RoadRunner's names are ~25 bytes.
_METHOD_NAME_ROOM = 1024
_CODEC_ENCODINGS = {Flag.CODEC_PROTO: Encoding.PROTOBUF, Flag.CODEC_JSON: Encoding.JSON}


@dataclass(frozen=True, slots=True)
class GoridgeLimits:
    """What goridge connections may hold: how many, and for how long without progress."""

    #: Open connections; more are refused with a ``busy`` error reply.
    max_connections: int = 1024
    #: Seconds a frame may take to arrive once its first byte did.
    read_timeout: float = 10.0
    #: Seconds a connection may stay silent between calls; 0 never closes it.
    idle_timeout: float = 0.0


@dataclass(slots=True)
class GoridgeStats:
    """Counters for the metrics endpoint."""

    #: Connections accepted (refused ones are not).
    accepted: int = 0
    #: Connections closed by us, by reason: "max_connections" (refused), "read_timeout",
    #: "idle_timeout".
    disconnects: Counter[str] = field(default_factory=Counter)


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    busy: bool = False
    closing: bool = False
    task: asyncio.Task[None] | None = field(default=None)


class GoridgeServer:
    """A running goridge RPC listener; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, service: PublishService, limits: GoridgeLimits | None = None) -> None:
        self.service = service
        self.limits = limits or GoridgeLimits()
        self.stats = GoridgeStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        # Set while connections are being refused for the cap: logged when it starts and
        # when it ends, not once per refused connection.
        self._refused_since_full = -1
        # The JSON codec may carry base64 payloads, so frames get the larger wire limit.
        self._max_payload = service.wire_limit(Encoding.JSON) + _METHOD_NAME_ROOM

    @property
    def connections(self) -> int:
        """Open connections."""
        return len(self._connections)

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
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= self.limits.max_connections:
            await self._refuse(writer, peer)
            return
        connection = _Connection(writer, task=asyncio.current_task())
        self._connections.add(connection)
        self.stats.accepted += 1
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
            if self._refused_since_full >= 0:
                logger.info(
                    "goridge: accepting connections again (%d refused meanwhile)",
                    self._refused_since_full,
                )
                self._refused_since_full = -1

    async def _refuse(self, writer: asyncio.StreamWriter, peer: object) -> None:
        """Answer the first call of a connection past the cap with ``busy``, and close."""
        limit = self.limits.max_connections
        self.stats.disconnects["max_connections"] += 1
        if self._refused_since_full < 0:
            logger.warning(
                "goridge: %d connections are open (rpc.goridge_max_connections): refusing"
                " new ones, starting with %s",
                limit,
                peer,
            )
            self._refused_since_full = 0
        self._refused_since_full += 1
        message = (
            f"{ErrorKind.BUSY.value}: too many goridge connections (max {limit}); try again later"
        )
        # seq 1: the number both RoadRunner's PHP client and ours give the first call.
        writer.write(encode_error(1, "", message))
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _serve_calls(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(self._max_payload)
        writer = connection.writer
        loop = asyncio.get_running_loop()
        limits = self.limits
        # When the frame being received started to arrive, and when the last call was
        # answered: the read deadline is counted from the first, the idle one from the second.
        frame_started = idle_since = loop.time()
        while not connection.closing:
            deadline: float | None = None
            if decoder.buffered:
                deadline = frame_started + limits.read_timeout
            elif limits.idle_timeout > 0:
                deadline = idle_since + limits.idle_timeout
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                self._timed_out(writer, decoder)
                return
            if not decoder.buffered:
                frame_started = loop.time()
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
                    idle_since = frame_started = loop.time()

    def _timed_out(self, writer: asyncio.StreamWriter, decoder: FrameDecoder) -> None:
        peer = writer.get_extra_info("peername")
        if decoder.buffered:
            self.stats.disconnects["read_timeout"] += 1
            logger.info(
                "goridge %s: closing: %d bytes of a frame arrived, the rest not within %gs"
                " (rpc.read_timeout)",
                peer,
                decoder.buffered,
                self.limits.read_timeout,
            )
        else:
            self.stats.disconnects["idle_timeout"] += 1
            logger.info(
                "goridge %s: closing after %gs without a call (rpc.goridge_idle_timeout)",
                peer,
                self.limits.idle_timeout,
            )

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
    service: PublishService,
    host: str = "127.0.0.1",
    port: int = 6001,
    limits: GoridgeLimits | None = None,
) -> GoridgeServer:
    """Serve ``service`` over goridge on ``host:port`` (port 0 picks a free one)."""
    server = GoridgeServer(service, limits)
    await server.start(host, port)
    return server
