"""Bare WebSocket (RFC 6455) on ``/websocket/<path>``.

Subprotocol negotiation (section 4.2.2): a client that offers subprotocols must offer the
callback's, which is then echoed in ``Sec-WebSocket-Protocol``; a client that offers some
but not ours is refused with 400; a client that offers none is accepted.

Writes bypass aiohttp's coroutine ``send_*`` on the hot path: frames are encoded here
(header included, see ``frames``) and written to the asyncio transport synchronously, so a
fan-out to N sockets is N ``transport.write`` calls and no task. The transport's write
buffer is the connection's outbound buffer, bounded by ``max_outbound_bytes``. With
permessage-deflate on, frames go through aiohttp's writer instead (it owns the compressor),
from a per-connection queue bounded in frames and bytes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from rabbitsocks.connection import (
    Connection,
    enter_connection,
)
from rabbitsocks.errors import ConnectionRefused
from rabbitsocks.frames import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    SharedFrame,
    encode_close,
    encode_frame,
)
from rabbitsocks.transports import cut_later, cut_now
from rabbitsocks.transports.batching import TurnBuffer
from rabbitsocks.transports.gate import admit, connection_info

if TYPE_CHECKING:
    from rabbitsocks.server import Listener

__all__ = ["WebSocketEndpoint"]

logger = logging.getLogger("rabbitsocks.websocket")

_PING = encode_frame(b"", OP_PING)

#: Seconds a peer has to answer our close frame (RFC 6455 section 7.1.1) before we drop it.
CLOSE_TIMEOUT = 5.0


def offered_subprotocols(request: web.Request) -> list[str]:
    """The subprotocols of every ``Sec-WebSocket-Protocol`` header, in order."""
    return [
        token.strip()
        for header in request.headers.getall("Sec-WebSocket-Protocol", ())
        for token in header.split(",")
        if token.strip()
    ]


class WebSocketEndpoint:
    """The ``/websocket/<path>`` handler of one listener."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/websocket", self.handle)
        app.router.add_get("/websocket/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        listener = self.listener
        settings = listener.config.websocket
        callback = listener.callback
        path = request.match_info.get("path", "")
        refusal = await admit(listener, request, "websocket")
        if refusal is not None:
            return refusal

        try:
            chosen = callback.choose_subprotocol(offered_subprotocols(request))
        except ConnectionRefused as exc:
            return web.Response(status=exc.status, text=f"{exc.reason}\n")
        # Uncompressed, frames are written straight to the socket and pings come from the
        # listener's ``Heartbeat`` (one timer for all connections), which needs to see
        # pings and pongs: aiohttp answers neither itself then (autoping off).
        raw = not settings.compress
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (),
            heartbeat=None if raw else settings.heartbeat or None,
            autoping=not raw,
            max_msg_size=settings.max_frame_size,
            compress=settings.compress,
            timeout=CLOSE_TIMEOUT,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade request\n")
        if listener.closing:
            return web.Response(status=503, text="server is shutting down\n")

        info = connection_info(listener, request, "websocket", path, chosen)
        enter_connection(info)  # this task is the connection's: it stays current
        try:
            state = await callback.init(path, listener.options)
        except ConnectionRefused as exc:
            return web.Response(status=exc.status, text=f"{exc.reason}\n")
        except Exception as exc:
            logger.info("callback %s refused /websocket/%s: %s", callback.name, path, exc)
            return web.Response(status=403, text=f"{exc}\n")

        transport = WebSocketTransport(ws, request, listener)
        conn = Connection(callback, transport, info, state, listener.stats)
        transport.connection = conn
        listener.track(conn)
        try:
            await ws.prepare(request)
            await conn.run_open()
            transport.start_heartbeat()
            while not conn.closing:
                msg = await ws.receive()
                transport.seen = True
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    await conn.handle(msg.data)
                elif kind is WSMsgType.PING:
                    transport.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    pass  # seen: the peer is alive
                elif kind is WSMsgType.ERROR:
                    # Too big (1009), invalid UTF-8 (1007), a protocol error (1002):
                    # aiohttp has already sent the close frame with that code.
                    logger.info("closing %s: %s", info.id, msg.data)
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
            if conn.closing and not ws.closed and transport.pending_close is not None:
                await transport.pending_close
            elif not ws.closed:
                await ws.close()
        except ConnectionError:
            pass  # the peer vanished mid-write; terminate still runs below
        finally:
            transport.finish()
            await conn.run_terminate(ws.close_code)
            listener.untrack(conn)
        if not ws.prepared:  # the peer reset the connection before our 101 went out
            return web.Response(status=400, text="the handshake did not complete\n")
        return ws


class WebSocketTransport(TurnBuffer):
    """The ``Transport`` of one bare WebSocket connection."""

    __slots__ = (
        "_heartbeat",
        "_heartbeat_group",
        "_max_bytes",
        "_max_frames",
        "_pinged",
        "_queue",
        "_queued_bytes",
        "_sender",
        "_ws",
        "connection",
        "pending_close",
        "seen",
    )

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, listener: Listener):
        super().__init__(listener.batcher)
        self._ws = ws
        # The socket's asyncio transport, written to directly on the fast path (without
        # compression; with it, aiohttp's writer owns the compressor).
        if not listener.config.websocket.compress:
            self._tcp = request.transport
        limits = listener.config.limits
        self._max_bytes = limits.max_outbound_bytes
        self._max_frames = limits.max_outbound_frames
        self._queue: collections.deque[str | bytes] | None = None
        self._queued_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self.connection: Connection | None = None
        self.pending_close: asyncio.Task[Any] | None = None
        # Server pings (see ``transports.heartbeat``): any frame received sets ``seen``.
        self._heartbeat = listener.heartbeat if self._tcp is not None else None
        self._heartbeat_group = -1
        self.seen = False
        self._pinged = False

    # --- the fast path: frames encoded here, written synchronously ---------------------

    def _write_raw(self, data: bytes) -> bool:
        if self._join_turn(data):  # not the first frame of this turn
            return True
        transport = self._tcp
        if transport is None or transport.is_closing():
            return True  # the connection is going away; its reader will notice
        # A peer is slow when what it has not read yet is over the limit: judged before this
        # turn's frames are added, so a frame larger than the limit still goes to a reader
        # that keeps up, and the buffer never exceeds the limit by more than one turn.
        if transport.get_write_buffer_size() > self._max_bytes:
            return False
        self._open_turn(data)
        return True

    def write(self, frame: str | bytes) -> bool:
        if self._tcp is not None:
            if isinstance(frame, str):
                return self._write_raw(encode_frame(frame.encode("utf-8"), OP_TEXT))
            return self._write_raw(encode_frame(frame, OP_BINARY))
        return self._enqueue(frame)

    def write_shared(self, frame: SharedFrame) -> bool:
        if self._tcp is not None:
            return self._write_raw(frame.websocket())
        return self._enqueue(frame.data)

    # --- the compressed path: aiohttp's writer, from a bounded queue --------------------

    def _enqueue(self, frame: str | bytes) -> bool:
        if self._ws.closed:
            return True
        if self._queue is None:
            self._queue = collections.deque()
        if len(self._queue) >= self._max_frames or self._queued_bytes > self._max_bytes:
            return False
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while queue and not self._ws.closed:
                frame = queue.popleft()
                self._queued_bytes -= len(frame)
                if isinstance(frame, str):
                    await self._ws.send_str(frame)
                else:
                    await self._ws.send_bytes(frame)
        except ConnectionError:
            pass

    # --- closing ------------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        self.flush()  # what was sent before close() goes out before the close frame
        if self.pending_close is None and not self._ws.closed:
            self.pending_close = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        if self._sender is not None and not self._sender.done():
            await self._sender  # what the callback sent before close() goes out first
        # aiohttp sends the close frame, then waits up to CLOSE_TIMEOUT for the peer's.
        await self._ws.close(code=code, message=reason.encode("utf-8")[:123])

    def abort(self, code: int, reason: str) -> None:
        """Slow consumer: queue a close frame behind the backlog, then cut the connection
        if the peer has not drained it within ``transports.ABORT_GRACE`` seconds."""
        transport = self._tcp
        if transport is None:
            self.close(code, reason)
            return
        self._pending = None  # not even this turn's frames: it is not reading
        if not transport.is_closing():
            transport.write(encode_close(code, reason))
            transport.close()  # flushes the buffer, then closes; the reader sees EOF
            cut_later(transport)

    # --- server pings ------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat_group = self._heartbeat.add(self)

    def heartbeat(self) -> None:
        """Visited by the listener's ``Heartbeat`` once per interval."""
        if self.seen:
            self.seen = self._pinged = False
        elif not self._pinged:
            self._pinged = True
            self._write_raw(_PING)
        else:  # pinged an interval ago, not a frame since: a dead peer or a dead network
            transport = self._tcp
            if transport is not None and not transport.is_closing():
                info = self.connection.info.id if self.connection is not None else "?"
                logger.info("closing %s: no answer to a ping in %gs", info, self._interval())
                cut_now(transport)
            self._stop_heartbeat()

    def _interval(self) -> float:
        return self._heartbeat.interval if self._heartbeat is not None else 0.0

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat_group >= 0:
            self._heartbeat.discard(self, self._heartbeat_group)
            self._heartbeat_group = -1

    def pong(self, data: bytes) -> None:
        """Answer a client's ping (RFC 6455 section 5.5.3). Over the outbound limit the
        pong is skipped, which 5.5.3 allows (a peer may answer only the latest ping): a
        ping flood from a client that does not read costs no memory."""
        self._write_raw(encode_frame(data, OP_PONG))

    def finish(self) -> None:
        self._stop_heartbeat()
        self._pending = None
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._queue = None
