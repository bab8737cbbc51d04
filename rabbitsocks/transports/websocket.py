"""WebSocket wires: who owns the bytes of one WebSocket connection, and nothing else.

Each WebSocket connection has exactly one owner:

* ``WebSocketWire``, ours: an ``asyncio.Protocol`` on the socket, driving the sans-I/O core
  ``wire.websocket`` (framing, ping and pong, the closing handshake). Every connection whose
  upgrade is the first request on its TCP connection, which is how browsers connect, gets
  one (see ``transports.front``). It holds no task and no timer of its own: frames are
  parsed in ``data_received``, pre-encoded fan-out frames go straight to the socket's buffer
  (``TurnBuffer``), and the listener's ``Heartbeat`` pings it.
* ``AiohttpWire``: aiohttp's ``WebSocketResponse`` owns the connection, and we use only its
  public API (``receive``, ``send_frame``, ``close``). For upgrades that arrive where aiohttp
  already owns the TCP connection: ``mount`` into an application of yours, a later request
  on a kept-alive connection (a proxy reusing its upstream connections), and
  permessage-deflate (``websocket.compress``), whose compressor is aiohttp's.

Both deliver what the peer sends to a ``Receiver`` (a ``Connection`` for bare WebSocket,
an Engine.IO session for Socket.IO) and implement the ``Transport`` the driver writes to.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol

from aiohttp import WSMsgType, web

from rabbitsocks.frames import OP_BINARY, OP_PING, OP_PONG, OP_TEXT, SharedFrame, encode_frame
from rabbitsocks.stats import ListenerStats
from rabbitsocks.transports import cut_later, cut_now
from rabbitsocks.transports.batching import FLUSH_AT, TurnBuffer, WriteBatcher
from rabbitsocks.transports.heartbeat import Heartbeat
from rabbitsocks.wire.websocket import (
    Close,
    Message,
    Ping,
    State,
    WebSocketError,
    WebSocketProtocol,
)

__all__ = ["CLOSE_TIMEOUT", "AiohttpWire", "Receiver", "WebSocketWire", "refuse_aiohttp_upgrade"]

logger = logging.getLogger("rabbitsocks.websocket")

_PING = encode_frame(b"", OP_PING)

#: Seconds a peer has to answer our close frame (RFC 6455 section 7.1.1) before we drop it.
CLOSE_TIMEOUT = 5.0


def refuse_aiohttp_upgrade(request: web.Request) -> web.Response | None:
    """What aiohttp would let through of an upgrade that RFC 6455 refuses: HTTP/1.0 (section
    4.1 needs 1.1) and ``Sec-WebSocket-Version`` other than 13 (section 4.4: 426 naming 13;
    aiohttp also takes 7 and 8, drafts). ``None`` when the request may go on."""
    if not web.WebSocketResponse().can_prepare(request).ok:
        return web.Response(status=400, text="expected a WebSocket upgrade request\n")
    if request.version < (1, 1):
        return web.Response(status=400, text="a WebSocket handshake needs HTTP/1.1\n")
    if request.headers.getall("Sec-WebSocket-Version", ()) != ["13"]:
        return web.Response(
            status=426,
            text="unsupported Sec-WebSocket-Version: this server speaks 13\n",
            headers={"Sec-WebSocket-Version": "13"},
        )
    return None


class Receiver(Protocol):
    """Who gets what a wire reads."""

    def received(self, frame: str | bytes) -> None: ...

    def peer_closed(self, code: int | None) -> None: ...

    def finished(self, code: int | None = None) -> None: ...


class WebSocketWire(TurnBuffer, asyncio.Protocol):
    """Our own WebSocket connection: the socket's protocol after the 101."""

    __slots__ = (
        "_close_timer",
        "_group",
        "_heartbeat",
        "_label",
        "_pinged",
        "_protocol",
        "_receiver",
        "_seen",
        "_turn_base",
        "_writable",
    )

    def __init__(
        self,
        tcp: asyncio.Transport,
        *,
        max_size: int,
        batcher: WriteBatcher,
        stats: ListenerStats,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        super().__init__(batcher, stats)
        self._tcp = tcp
        self._protocol = WebSocketProtocol(max_size)
        self._receiver: Receiver | None = None
        self._label = "?"
        self._close_timer: asyncio.TimerHandle | None = None
        self._heartbeat = heartbeat
        self._group = -1
        self._seen = False
        self._pinged = False
        self._writable = True  # until our close frame (or the peer's) is written
        self._turn_base = 0  # what the socket held when this turn's first frame came

    def attach(self, receiver: Receiver, label: str) -> None:
        """Deliver to ``receiver`` from now on; ``label`` names the connection in logs."""
        self._receiver = receiver
        self._label = label
        if self._heartbeat is not None:
            self._group = self._heartbeat.add(self)

    # --- reading: asyncio.Protocol -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._seen = True
        protocol = self._protocol
        if protocol.state is State.CLOSED:
            return  # the close handshake is over; the socket is closing
        try:
            events = protocol.receive(data)
        except WebSocketError as exc:
            self._fail(exc)
            return
        receiver = self._receiver
        assert receiver is not None
        for event in events:
            if type(event) is Message:
                receiver.received(event.data)
            elif type(event) is Ping:
                self._pong(event.payload)
            elif type(event) is Close:
                self._peer_close(event, receiver)
            # Pong: seen, which is all the heartbeat needs.

    def eof_received(self) -> bool:
        return False  # a half-closed WebSocket is over: asyncio closes the socket

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable = False
        self._stop_heartbeat()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._discard_turn()
        receiver = self._receiver
        if receiver is not None:
            receiver.finished(1006 if self._protocol.state is State.OPEN else None)

    def _peer_close(self, close: Close, receiver: Receiver) -> None:
        tcp = self._tcp
        assert tcp is not None
        self._writable = False
        if close.answer:  # the peer closed first: flush, answer, and end the TCP stream
            self.flush()
            tcp.write(close.answer)
        tcp.close()  # section 7.1.1: the server closes the TCP connection first
        receiver.peer_closed(close.code)

    def _fail(self, exc: WebSocketError) -> None:
        """The peer broke RFC 6455: close with the error's code and stop reading."""
        logger.info("closing %s: %s (%d)", self._label, exc.reason, exc.code)
        self._stats.errors["protocol"] += 1
        self.fail(exc.code, exc.reason)
        if self._receiver is not None:
            self._receiver.peer_closed(exc.code)

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): our close frame after what is
        queued, then the end of the TCP stream, without waiting for the peer's close."""
        tcp = self._tcp
        if tcp is None or tcp.is_closing():
            return
        self._writable = False
        self.flush()
        tcp.write(self._protocol.close(code, reason))
        tcp.close()

    def pause_writing(self) -> None:
        pass  # the outbound bound (``buffered``) is the flow control, not waiting

    def resume_writing(self) -> None:
        pass

    # --- writing: the driver's Transport ---------------------------------------------------

    def write_framed(self, framed: bytes, limit: int) -> bool:
        """Queue a complete WebSocket frame. ``False`` when the peer had more than
        ``limit`` bytes not yet read (judged before this frame, which is then dropped).

        The hot path: the first frame of a turn asks the socket how much it holds; later
        frames of the same turn add to that without asking again.
        """
        pending = self._pending
        if pending is None:
            tcp = self._tcp
            if not self._writable or tcp is None or tcp.is_closing():
                return True  # going away; connection_lost will tell the receiver
            base = tcp.get_write_buffer_size()
            if base > limit:
                return False
            self._turn_base = base
            self._pending = framed
            self._pending_size = len(framed)
            self._batcher.add(self)
            return True
        size = self._pending_size
        if size + self._turn_base > limit:
            return False
        if type(pending) is bytes:
            self._pending = [pending, framed]
        else:
            pending.append(framed)  # type: ignore[union-attr]
        size += len(framed)
        self._pending_size = size
        if size >= FLUSH_AT:
            self.flush()
        return True

    def write(self, frame: str | bytes, limit: int) -> bool:
        if isinstance(frame, str):
            return self.write_framed(encode_frame(frame.encode("utf-8"), OP_TEXT), limit)
        return self.write_framed(encode_frame(frame, OP_BINARY), limit)

    def write_shared(self, frame: SharedFrame, limit: int) -> bool:
        return self.write_framed(frame.framed or frame.websocket(), limit)

    def close(self, code: int, reason: str) -> None:
        tcp = self._tcp
        if tcp is None or tcp.is_closing():
            return
        closing = self._protocol.close(code, reason)
        if not closing:
            return
        self._writable = False
        self.flush()  # what was sent before close() goes out before the close frame
        tcp.write(closing)
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, cut_now, tcp)

    def abort(self, code: int, reason: str) -> None:
        """Slow consumer: queue a close frame behind the backlog, then cut the connection
        if the peer has not drained it within ``transports.ABORT_GRACE`` seconds."""
        tcp = self._tcp
        self._writable = False
        self._discard_turn()  # not even this turn's frames: it is not reading
        if tcp is None or tcp.is_closing():
            return
        tcp.write(self._protocol.close(code, reason))
        tcp.close()  # flushes the buffer, then closes; the reader sees EOF
        cut_later(tcp)

    def pause_reading(self) -> None:
        tcp = self._tcp
        if tcp is not None and not tcp.is_closing():
            tcp.pause_reading()

    def resume_reading(self) -> None:
        tcp = self._tcp
        if tcp is not None and not tcp.is_closing():
            tcp.resume_reading()

    def _pong(self, payload: bytes) -> None:
        """Answer a client's ping (RFC 6455 section 5.5.3). Over the outbound limit the
        pong is skipped, which 5.5.3 allows (a peer may answer only the latest ping): a
        ping flood from a client that does not read costs no memory."""
        self.write_framed(encode_frame(payload, OP_PONG), 1 << 16)

    # --- server pings (see ``transports.heartbeat``) ---------------------------------------

    def heartbeat(self) -> None:
        """Visited by the listener's ``Heartbeat`` once per interval."""
        if self._seen:
            self._seen = self._pinged = False
        elif not self._pinged:
            self._pinged = True
            self.write_framed(_PING, 1 << 16)
        else:  # pinged an interval ago, not a frame since: a dead peer or a dead network
            tcp = self._tcp
            if tcp is not None and not tcp.is_closing():
                interval = self._heartbeat.interval if self._heartbeat is not None else 0.0
                logger.info("closing %s: no answer to a ping in %gs", self._label, interval)
                cut_now(tcp)
            self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._group >= 0:
            self._heartbeat.discard(self, self._group)
            self._group = -1


class AiohttpWire:
    """A WebSocket connection that aiohttp's ``WebSocketResponse`` owns; its public API only.

    Writes go to a queue bounded in bytes, drained by a task that exists while the queue
    is not empty (``send_frame`` is a coroutine). ``run`` is the reading loop: the request
    handler awaits it for the life of the connection.
    """

    __slots__ = (
        "_closing",
        "_queue",
        "_queued",
        "_readable",
        "_sender",
        "_stats",
        "_ws",
        "request",
    )

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, stats: ListenerStats):
        self._ws = ws
        self.request = request
        self._stats = stats
        self._queue: collections.deque[tuple[bytes, WSMsgType]] = collections.deque()
        self._queued = 0
        self._sender: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._readable = asyncio.Event()
        self._readable.set()

    async def run(self, receiver: Receiver) -> None:
        """Read until the connection ends, handing frames to ``receiver``."""
        ws = self._ws
        try:
            while True:
                if not self._readable.is_set():
                    await self._readable.wait()
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    receiver.received(msg.data)
                elif kind is WSMsgType.ERROR:
                    # Too big (1009), invalid UTF-8 (1007), a protocol error (1002):
                    # aiohttp has already sent the close frame with that code.
                    logger.info("closing a WebSocket: %s", msg.data)
                    self._stats.errors["protocol"] += 1
                    receiver.peer_closed(ws.close_code)
                    break
                elif kind is WSMsgType.CLOSE:
                    receiver.peer_closed(msg.data if isinstance(msg.data, int) else None)
                    break
                elif kind in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
            if self._closing is not None:
                await self._closing
            elif not ws.closed:
                await ws.close()
        except ConnectionError:
            pass  # the peer vanished mid-write
        finally:
            if self._sender is not None and not self._sender.done():
                self._sender.cancel()
            self._queue.clear()
            receiver.finished(ws.close_code)

    def write_framed(self, data: bytes, opcode: WSMsgType, limit: int) -> bool:
        if self._ws.closed or self._closing is not None:
            return True
        if self._queued > limit:
            return False
        self._queue.append((data, opcode))
        self._queued += len(data)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._drain())
        return True

    def write(self, frame: str | bytes, limit: int) -> bool:
        if isinstance(frame, str):
            return self.write_framed(frame.encode("utf-8"), WSMsgType.TEXT, limit)
        return self.write_framed(frame, WSMsgType.BINARY, limit)

    def write_shared(self, frame: SharedFrame, limit: int) -> bool:
        return self.write(frame.data, limit)

    async def _drain(self) -> None:
        queue = self._queue
        ws = self._ws
        try:
            while queue and not ws.closed:
                data, opcode = queue.popleft()
                self._queued -= len(data)
                await ws.send_frame(data, opcode)
                self._stats.bytes_sent += len(data)
        except ConnectionError:
            pass

    def close(self, code: int, reason: str) -> None:
        if self._closing is None and not self._ws.closed:
            self._closing = asyncio.get_running_loop().create_task(self._close(code, reason))

    def fail(self, code: int, reason: str) -> None:
        """aiohttp sends the close frame and waits (briefly) for the peer's: as ``close``."""
        self.close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self._sender is not None and not self._sender.done():
            await self._sender  # what was sent before close() goes out first
        # aiohttp sends the close frame, then waits for the peer's.
        await self._ws.close(code=code, message=reason.encode("utf-8")[:123])

    def abort(self, code: int, reason: str) -> None:
        """Slow consumer: drop the queue, send the close, cut the TCP connection if the peer
        has not taken it within the grace period."""
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._queue.clear()
        self._queued = 0
        self.close(code, reason)
        tcp = self.request.transport
        if tcp is not None:
            cut_later(tcp)

    def pause_reading(self) -> None:
        self._readable.clear()  # aiohttp's own reader then fills up and pauses the socket

    def resume_reading(self) -> None:
        self._readable.set()
