"""One Engine.IO session: the one path its packets take to the client, whatever carries them.

A session's packets go into a queue that the next long-poll ``GET`` takes, or, once the
client has upgraded, to its WebSocket; packets sent while an upgrade is under way wait in
the queue and go out over the WebSocket first. So they leave in the order they were sent,
whatever the transport and across the upgrade. The Socket.IO layer above
(``transports.socketio``) is the session's ``Namespaces``: it gets every message the client
sends, and writes through ``send``.

The endpoint that opens sessions and serves their requests is ``transports.engineio``; a
session sees it as its ``SessionHost``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Protocol

from rabbitsocks.connection import CLOSE_SLOW_CONSUMER, ConnectRequest
from rabbitsocks.transports.gate import Slot
from rabbitsocks.transports.websocket import AiohttpWire, WebSocketWire
from rabbitsocks.wire import engineio

__all__ = ["Namespaces", "Session", "SessionHost"]

logger = logging.getLogger("rabbitsocks.socketio")


class Namespaces(Protocol):
    """The Socket.IO layer of a session (``transports.socketio``), as the session sees it."""

    @property
    def count(self) -> int:
        """Namespace connections open or being opened."""
        ...

    def feed(self, message: str | bytes) -> None:
        """An Engine.IO message from the client; ``ProtocolError`` when malformed."""
        ...

    def finish(self, code: int | None) -> None:
        """The session is over."""
        ...


class SessionHost(Protocol):
    """What a session needs from the endpoint that opened it (``transports.engineio``)."""

    @property
    def ping_timeout(self) -> float: ...

    @property
    def handshake_timeout(self) -> float: ...

    @property
    def max_outbound_frames(self) -> int: ...

    @property
    def ping_frame(self) -> bytes: ...

    def namespaces_for(self, session: Session) -> Namespaces: ...

    def forget(self, session: Session) -> None:
        """The session is over: stop pinging it, release its slot."""
        ...


class Session:
    """One Engine.IO session: its transport, its outbound packets, its ping."""

    __slots__ = (
        "_paused",
        "_pinged_at",
        "_poll",
        "_queue",
        "_queued",
        "_resumed",
        "_wire",
        "closed",
        "group",
        "idle_since",
        "namespaces",
        "posting",
        "probe",
        "remote",
        "request",
        "server",
        "sid",
        "slot",
        "upgrading",
    )

    def __init__(
        self, server: SessionHost, sid: str, request: ConnectRequest, slot: Slot | None
    ) -> None:
        self.server = server
        self.sid = sid
        self.request = request
        self.remote = request.remote
        #: The gate's slot, until the first namespace connection takes it over.
        self.slot = slot
        self.closed = False
        self.upgrading = False
        #: The WebSocket of an upgrade under way (from its handshake to ``5``); one at most.
        self.probe: WebSocketWire | AiohttpWire | None = None
        self._wire: WebSocketWire | AiohttpWire | None = None  # once on WebSocket
        self._queue: collections.deque[str | bytes] | None = None
        self._queued = 0
        self._poll: asyncio.Future[None] | None = None
        #: A POST of this session is being read (engine.io refuses a second at once).
        self.posting = False
        self._paused = False
        self._resumed: asyncio.Event | None = None
        self._pinged_at = 0.0
        #: The group of the endpoint's ping ``Heartbeat`` it is in (-1: none).
        self.group = -1
        self.idle_since = time.monotonic()
        self.namespaces: Namespaces = server.namespaces_for(self)

    def __repr__(self) -> str:
        return f"<Session {self.sid} {'websocket' if self._wire else 'polling'}>"

    @property
    def on_websocket(self) -> bool:
        return self._wire is not None

    # --- outbound: one path ----------------------------------------------------------------

    def send(self, packet: str | bytes, framed: bytes | None = None, limit: int = 1 << 62) -> bool:
        """Send one Engine.IO packet (``"4..."``, or bytes for a binary message).

        ``framed``: the packet as a complete WebSocket frame, when the caller has it cached
        (fan-out). ``False`` when the client had more than ``limit`` bytes not yet read.
        """
        if self.closed:
            return True
        wire = self._wire
        if wire is not None:
            if isinstance(wire, WebSocketWire):
                if framed is None:
                    return wire.write(packet, limit)
                return wire.write_framed(framed, limit)
            return wire.write(packet, limit)
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        elif self._queued > limit or len(queue) >= self.server.max_outbound_frames:
            return False
        queue.append(packet)
        self._queued += len(packet)
        poll = self._poll
        if poll is not None and not poll.done():
            poll.set_result(None)
        return True

    def _take(self) -> list[str | bytes]:
        queue, self._queue = self._queue, None
        self._queued = 0
        return list(queue) if queue else []

    # --- inbound -------------------------------------------------------------------------

    def received(self, packet: tuple[str, str | bytes]) -> None:
        """One packet from the client; ``ProtocolError`` when it is malformed."""
        kind, data = packet
        if kind == engineio.MESSAGE:
            self.namespaces.feed(data)
        elif kind == engineio.PONG:
            self._pinged_at = 0.0
        elif kind == engineio.CLOSE:
            self.close(None, "client closed the session")
        elif kind == engineio.NOOP:
            pass
        else:
            raise engineio.EngineIOError(f"unexpected Engine.IO packet {kind}{data!r:.20}")

    def pause(self) -> None:
        """Inbound flow control: the POST answering stalls, a WebSocket stops being read."""
        self._paused = True
        if self._wire is not None:
            self._wire.pause_reading()

    def resume(self) -> None:
        self._paused = False
        if self._wire is not None:
            self._wire.resume_reading()
        if self._resumed is not None:
            self._resumed.set()

    async def caught_up(self) -> None:
        while self._paused and not self.closed:
            if self._resumed is None:
                self._resumed = asyncio.Event()
            self._resumed.clear()
            await self._resumed.wait()

    # --- the WebSocket ---------------------------------------------------------------------

    def upgraded(self, wire: WebSocketWire | AiohttpWire) -> None:
        """The client sent ``5`` on ``wire``: move to it, with what was queued first."""
        self.upgrading = False
        self.probe = None
        self._wire = wire
        for packet in self._take():
            self.send(packet)
        poll = self._poll
        if poll is not None and not poll.done():
            self.send_noop_to_poll()
        if self._paused:
            wire.pause_reading()

    def send_noop_to_poll(self) -> None:
        """End the pending long-poll with a noop (the client pauses polling to upgrade)."""
        poll = self._poll
        if self._queue is None:
            self._queue = collections.deque()
        self._queue.append(engineio.NOOP)
        if poll is not None and not poll.done():
            poll.set_result(None)

    # --- pings, see transports.heartbeat -------------------------------------------------

    def heartbeat(self) -> None:
        """Visited once per ping interval."""
        if self.closed:
            return
        server = self.server
        now = time.monotonic()
        if self._pinged_at:
            if now - self._pinged_at >= server.ping_timeout:
                logger.info("closing %s: no pong in %gs", self.sid, server.ping_timeout)
                self.close(None, "ping timeout")
            return  # a timeout longer than the interval: keep waiting
        if not self.namespaces.count and now - self.idle_since > server.handshake_timeout:
            logger.info("closing %s: no namespace connected", self.sid)
            self.close(None, "no namespace connected")
            return
        self._pinged_at = now
        self.send(engineio.PING, server.ping_frame)

    # --- the end -------------------------------------------------------------------------

    def close(self, code: int | None, reason: str, *, failed: bool = False) -> None:
        """End the session: its namespace connections finish, the client is told.
        ``failed``: the client broke the protocol, its WebSocket is not waited for."""
        if self.closed:
            return
        self.closed = True
        server = self.server
        server.forget(self)
        self.namespaces.finish(code)
        wire, probe = self._wire, self.probe
        if wire is not None:
            if failed:
                wire.fail(1000 if code is None else code, reason)
            else:
                wire.close(1000 if code is None else code, reason)
        else:
            self.send_close_to_poll()
        if probe is not None:
            probe.close(1000, reason)
        if self._resumed is not None:
            self._resumed.set()

    def send_close_to_poll(self) -> None:
        self._queue = collections.deque([engineio.CLOSE])
        poll = self._poll
        if poll is not None and not poll.done():
            poll.set_result(None)

    def abort(self, reason: str) -> None:
        """Slow consumer: drop what is queued and end the session now."""
        if self.closed:
            return
        self._queue = None
        self._queued = 0
        wire = self._wire
        self._wire = None  # so that close() does not close it gracefully
        self.close(CLOSE_SLOW_CONSUMER, reason)
        if wire is not None:
            wire.abort(CLOSE_SLOW_CONSUMER, reason)

    # --- HTTP long-polling ---------------------------------------------------------------

    @property
    def polled(self) -> bool:
        """A long-poll ``GET`` is waiting for packets."""
        return self._poll is not None

    async def poll(self) -> bytes:
        """The packets of a long-poll ``GET``: waits until there are some."""
        if not self._queue and not self.closed:
            poll = self._poll = asyncio.get_running_loop().create_future()
            try:
                await poll
            finally:
                self._poll = None
        return engineio.encode_payload(self._take() or [engineio.NOOP])
