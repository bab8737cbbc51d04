"""Socket.IO (protocol v5) on an Engine.IO session: one ``Connection`` per namespace.

Every namespace is accepted and handled by the listener's callback: namespace ``/chat`` is
the path ``chat`` given to ``init`` (``/`` gives ``""``). Each namespace connection passes
the gate like any other connection (origin, the connection limits, connect authorization):
a client cannot open more connections than the limits allow by multiplying namespaces on
one session. The first namespace of a session takes over the slot its handshake took.

Frames are ``message`` events: what a client ``send``s reaches ``handle_frame`` (a string as
``str``, binary as ``bytes``, an object or array as its JSON text), and ``writer.send``
arrives at the client as a ``message`` event. An event the client wants acknowledged is
acknowledged (with no arguments) when it is received. Other events are ignored.
"""

from __future__ import annotations

import logging
import time

from rabbitsocks.connection import Connection, ConnectRequest
from rabbitsocks.frames import OP_TEXT, SharedFrame, encode_frame
from rabbitsocks.transports.acceptor import Acceptor
from rabbitsocks.transports.gate import Refusal, Slot
from rabbitsocks.transports.session import Session
from rabbitsocks.wire import engineio
from rabbitsocks.wire.socketio import (
    BINARY_EVENT,
    CONNECT,
    DISCONNECT,
    EVENT,
    PacketReader,
    SocketIOError,
    encode_ack,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_event,
    event_frame,
)

__all__ = ["NamespaceTransport", "Namespaces"]

logger = logging.getLogger("rabbitsocks.socketio")


class _Encoded:
    """A ``message`` event for one namespace, encoded once for every recipient: the
    Engine.IO packet, its attachment (binary), and the WebSocket frame of the packet, made
    on first use."""

    __slots__ = ("_framed", "attachment", "packet")

    def __init__(self, namespace: str, data: str | bytes) -> None:
        packet, self.attachment = encode_event(namespace, data)
        self.packet = engineio.MESSAGE + packet
        self._framed: bytes | None = None

    def framed(self) -> bytes:
        if self._framed is None:
            self._framed = encode_frame(self.packet.encode("utf-8"), OP_TEXT)
        return self._framed


class NamespaceTransport:
    """The ``Transport`` of one namespace connection: Socket.IO packets on its session."""

    __slots__ = ("_closed", "conn", "key", "namespace", "namespaces", "session")

    def __init__(self, namespaces: Namespaces, namespace: str) -> None:
        self.namespaces = namespaces
        self.session = namespaces.session
        self.namespace = namespace
        self.key = ("socketio", namespace)  # the SharedFrame cache entry
        self.conn: Connection | None = None
        self._closed = False

    def _send(self, encoded: _Encoded, limit: int) -> bool:
        session = self.session
        framed = encoded.framed() if session.on_websocket else None
        if not session.send(encoded.packet, framed, limit):
            return False
        if encoded.attachment is not None:
            session.send(encoded.attachment)  # with its packet, whatever the bound
        return True

    def write(self, frame: str | bytes, limit: int) -> bool:
        return self._send(_Encoded(self.namespace, frame), limit)

    def write_shared(self, frame: SharedFrame, limit: int) -> bool:
        encoded = frame.cached(self.key)
        if encoded is None:
            encoded = frame.cache(self.key, _Encoded(self.namespace, frame.data))
        return self._send(encoded, limit)

    def close(self, code: int, reason: str) -> None:
        """A Socket.IO disconnect of this namespace (Socket.IO has no close codes)."""
        if self._closed:
            return
        self._closed = True
        self.namespaces.reply(encode_disconnect(self.namespace))
        self.namespaces.forget(self.namespace)
        if self.conn is not None:
            self.conn.finished(None)

    def abort(self, code: int, reason: str) -> None:
        """A slow consumer: the whole session goes (its namespaces share the wire)."""
        self._closed = True
        self.session.abort(reason)

    def pause_reading(self) -> None:
        self.session.pause()

    def resume_reading(self) -> None:
        self.session.resume()


class Namespaces:
    """The Socket.IO side of one Engine.IO session: its namespace connections."""

    __slots__ = ("_connecting", "_leaving", "_reader", "acceptor", "connections", "session")

    def __init__(self, acceptor: Acceptor, session: Session) -> None:
        self.acceptor = acceptor
        self.session = session
        self.connections: dict[str, Connection] = {}
        self._connecting: set[str] = set()
        #: Namespaces the client left while their CONNECT was still being decided.
        self._leaving: set[str] = set()
        self._reader = PacketReader(acceptor.socketio.max_frame_size)

    @property
    def count(self) -> int:
        return len(self.connections) + len(self._connecting)

    def feed(self, message: str | bytes) -> None:
        """An Engine.IO message from the client; ``ProtocolError`` when it is malformed."""
        packet = self._reader.feed(message)
        if packet is None:
            return
        kind, namespace = packet.type, packet.namespace
        if kind in (EVENT, BINARY_EVENT):
            conn = self.connections.get(namespace)
            if conn is None:
                return  # not (or no longer) connected: nothing to deliver it to
            args = packet.data
            if packet.id is not None:
                self.reply(encode_ack(namespace, packet.id))
            if args[0] == "message":
                if len(args) < 2:
                    raise SocketIOError("a message event without data")
                conn.received(event_frame(args[1:]))
        elif kind == CONNECT:
            if namespace in self.connections or namespace in self._connecting:
                self.reply(encode_connect_error(namespace, "already connected"))
                return
            self._connecting.add(namespace)
            self.acceptor.spawn(self._connect(namespace))
        elif kind == DISCONNECT:
            if namespace in self._connecting:
                self._leaving.add(namespace)  # honoured once its CONNECT is decided
                return
            conn = self.connections.pop(namespace, None)
            if conn is not None:
                self._idle(conn)
                conn.finished(None)
        # ACK and BINARY_ACK: we ask for none; nothing to do.

    async def _connect(self, namespace: str) -> None:
        session = self.session
        acceptor = self.acceptor
        handshake = session.request
        request = ConnectRequest(
            path=handshake.path,
            transport="socketio",
            headers=handshake.headers,
            query=handshake.query,
            remote=handshake.remote,
            method=handshake.method,
            namespace=namespace,
        )
        slot, session.slot = session.slot, None  # the first namespace takes the session's
        try:
            accepted = await acceptor.accept(
                request, namespace.lstrip("/"), wire=session.sid, slot=slot
            )
        finally:
            self._connecting.discard(namespace)
        leaving = namespace in self._leaving
        self._leaving.discard(namespace)
        if isinstance(accepted, Refusal):
            if slot is not None and not session.closed:
                session.slot = slot  # still the session's, for another try
            elif slot is not None:
                acceptor.gate.registry.release(slot)
            self._idle()
            self.reply(encode_connect_error(namespace, accepted.reason))
            return
        if leaving and not session.closed:
            # The client sent its DISCONNECT while this was decided: no connection.
            if slot is not None:
                session.slot = slot  # the session's again
            else:
                acceptor.refuse(accepted)
            self._idle()
            return
        if not session.closed:
            self.reply(encode_connect(namespace, accepted.info.id))
        if session.closed:  # meanwhile, or the client does not read its answers
            acceptor.refuse(accepted)
            return
        transport = NamespaceTransport(self, namespace)
        conn = acceptor.connect(accepted, transport)
        transport.conn = conn
        self.connections[namespace] = conn

    def reply(self, packet: str) -> None:
        """An answer of the Socket.IO layer (an ack, a connect or its error, a disconnect):
        bounded like every frame the client is sent, so a client that asks for answers and
        does not read them is closed as a slow consumer rather than buffered for."""
        session = self.session
        acceptor = self.acceptor
        if not session.send(engineio.MESSAGE + packet, None, acceptor.max_outbound_bytes):
            logger.warning("closing %s: slow consumer (outbound buffer full)", session.sid)
            acceptor.stats.slow_consumers += 1
            session.abort("slow consumer")

    def forget(self, namespace: str) -> None:
        conn = self.connections.pop(namespace, None)
        if conn is not None:
            self._idle(conn)

    def _idle(self, leaving: Connection | None = None) -> None:
        """A namespace left (``leaving``) or was refused. Once none is left, the session is
        a session without a namespace again: counted as one (the slot of the connection
        that left passes to it, or it takes a new one, or it closes) and expiring as one."""
        session = self.session
        if self.count or session.closed:
            return
        session.idle_since = time.monotonic()
        if session.slot is not None:
            return
        if leaving is not None and isinstance(leaving.ticket, Slot):
            slot = leaving.ticket
            leaving.ticket = None  # the session's now: not released at its terminate
        else:
            taken = self.acceptor.gate.take_slot(session.remote)
            if isinstance(taken, Refusal):
                session.close(None, taken.reason)
                return
            slot = taken
        slot.owner = session
        session.slot = slot

    def finish(self, code: int | None) -> None:
        """The session is over: every namespace connection with it."""
        connections, self.connections = self.connections, {}
        for conn in connections.values():
            conn.finished(code)
