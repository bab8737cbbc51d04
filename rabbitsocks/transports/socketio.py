"""Socket.IO (protocol v5 over Engine.IO v4) on ``/socket.io/``, via python-socketio.

Every namespace is accepted and handled by the listener's callback: namespace ``/chat`` is
the path ``chat`` given to ``init`` (``/`` gives ``""``). One namespace connection is one
``Connection``. Frames are ``message`` events: what a client ``send``s reaches
``handle_frame`` (a string as ``str``, binary as ``bytes``, an object or array as its JSON
text), and ``writer.send`` arrives at the client as a ``message`` event.

Ordering: handlers run inline (``async_handlers=False``), so one client's frames are handled
in order and a flood is slowed by TCP rather than queued as tasks. ``open`` runs in a task
started by the connect handler, after python-socketio has queued the CONNECT packet, so
frames sent by ``open`` follow it; ``message`` handlers wait for ``open`` to finish.

Writes put packets straight onto the Engine.IO socket's queue (no coroutine, no task per
recipient); that queue is the outbound buffer, bounded by ``max_outbound_frames``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import engineio.async_drivers.aiohttp
import engineio.packet
import orjson
import socketio
import socketio.exceptions
import socketio.packet
from aiohttp import web

from rabbitsocks.connection import (
    CLOSE_GOING_AWAY,
    Connection,
    enter_connection,
    reset_connection,
)
from rabbitsocks.errors import ConnectionRefused
from rabbitsocks.frames import OP_TEXT, SharedFrame, encode_frame
from rabbitsocks.transports import cut_later
from rabbitsocks.transports.batching import TurnBuffer
from rabbitsocks.transports.gate import admit, connection_info, refuse_engineio_request
from rabbitsocks.transports.queues import SmallQueue

if TYPE_CHECKING:
    from rabbitsocks.server import Listener

__all__ = ["SocketIOEndpoint"]

logger = logging.getLogger("rabbitsocks.socketio")


def frame_from_event(args: tuple[Any, ...]) -> str | bytes:
    """What a client's ``message`` event carries, as a callback frame."""
    if len(args) == 1:
        (data,) = args
        if isinstance(data, str | bytes):
            return data
        return orjson.dumps(data).decode("utf-8")
    return orjson.dumps(list(args)).decode("utf-8")


class _Session:
    """One namespace connection: its ``Connection`` and the task running ``open``, which
    frames and the disconnect wait for (``None`` once ``open`` has returned, so that a
    finished task is not kept for the life of the connection)."""

    __slots__ = ("conn", "eio_sid", "opened")

    def __init__(self, conn: Connection, eio_sid: str) -> None:
        self.conn = conn
        self.eio_sid = eio_sid
        self.opened: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._open()
        )

    async def _open(self) -> None:
        await self.conn.run_open()
        self.opened = None

    async def wait_opened(self) -> None:
        opened = self.opened
        if opened is not None:
            await opened


def _session_queue(*args: Any, **kwargs: Any) -> SmallQueue | asyncio.Queue[Any]:
    """python-engineio's queue factory: a ``SmallQueue`` for its sessions' queues."""
    return SmallQueue() if not args and not kwargs else asyncio.Queue(*args, **kwargs)


class _EngineIOWebSocket(engineio.async_drivers.aiohttp.WebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp WebSocket, without permessage-deflate, telling the
    endpoint which TCP transport carries which Engine.IO session.

    Without compression aiohttp writes every frame synchronously, so when an Engine.IO
    session's queue is empty and its TCP buffer too, nothing of ours is in flight and
    ``SocketIOTransport`` may write a pre-encoded frame itself (see ``_put``). It also
    spares compressing every fan-out frame once per socket.
    """

    endpoint: SocketIOEndpoint

    async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse:
        request: web.Request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=False
        )
        try:
            await self._sock.prepare(request)
        except ConnectionError:  # the peer gave up before our 101: nothing to log
            return web.Response(status=400, text="the handshake did not complete\n")
        self.environ = environ
        socket = self.handler.__self__  # the Engine.IO socket whose handler this is
        if request.transport is not None:
            self.endpoint.note_websocket(socket.sid, request.transport)
        await self.handler(self)
        return self._sock


class SocketIOEndpoint:
    """python-socketio attached to one listener's aiohttp application."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        settings = listener.config.socketio
        self.server = socketio.AsyncServer(
            async_mode="aiohttp",
            namespaces="*",
            async_handlers=False,
            always_connect=False,
            # The gate refuses bad origins with 403 at the handshake; this also answers
            # CORS for the polling requests that follow.
            cors_allowed_origins="*" if listener.origins.allows_any else listener.origins.allows,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_http_buffer_size=settings.max_frame_size,
            logger=False,
            engineio_logger=__import__("os").environ.get("EIO_DEBUG") == "1",
        )
        self._sessions: dict[str, _Session] = {}
        # The TCP transport of each Engine.IO session that upgraded to a WebSocket, so that
        # a slow consumer's connection can be cut (see ``drop``).
        self._websockets: dict[str, asyncio.Transport] = {}
        # Engine.IO's WebSocket class for this server only (its driver table is shared).
        websocket_class = type("EngineIOWebSocket", (_EngineIOWebSocket,), {"endpoint": self})
        eio = self.server.eio
        eio._async = {**eio._async, "websocket": websocket_class}
        eio.create_queue = _session_queue  # about 3 KiB less per connection
        self.server.on("connect", self._on_connect, namespace="*")
        self.server.on("message", self._on_message, namespace="*")
        self.server.on("disconnect", self._on_disconnect, namespace="*")
        self._eio_disconnect = self.server.eio.handlers["disconnect"]
        self.server.eio.on("disconnect", self._on_eio_disconnect)

    def add_routes(self, app: web.Application) -> None:
        # What python-socketio's attach() does, through our handler: the gate first.
        app.router.add_get("/socket.io/", self._handle_http)
        app.router.add_post("/socket.io/", self._handle_http)

    async def _handle_http(self, request: web.Request) -> web.StreamResponse:
        if "sid" not in request.query:  # opens a new Engine.IO session: admit it
            if request.method == "GET":
                refusal = await admit(self.listener, request, "socketio")
                if refusal is not None:
                    return refusal
        elif (refused := refuse_engineio_request(self.listener, request)) is not None:
            return refused
        response: web.StreamResponse = await self.server.handle_request(request)
        return response

    async def _on_connect(
        self, namespace: str, sid: str, environ: dict[str, Any], auth: Any = None
    ) -> None:
        listener = self.listener
        if listener.closing:
            raise socketio.exceptions.ConnectionRefusedError("server is shutting down")
        callback = listener.callback
        path = namespace.lstrip("/")
        # The request that opened the Engine.IO session, which the gate admitted.
        request: web.Request = environ["aiohttp.request"]
        info = connection_info(listener, request, "socketio", path)
        token = enter_connection(info)
        try:
            state = await callback.init(path, listener.options)
        except ConnectionRefused as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.reason) from None
        except Exception as exc:
            logger.info("callback %s refused namespace %s: %s", callback.name, namespace, exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        finally:
            reset_connection(token)
        eio_sid = self.server.manager.eio_sid_from_sid(sid, namespace)
        transport = SocketIOTransport(self, sid, eio_sid, namespace)
        conn = Connection(callback, transport, info, state, listener.stats)
        listener.track(conn)
        self._sessions[sid] = _Session(conn, eio_sid)

    async def _on_message(self, namespace: str, sid: str, *args: Any) -> None:
        session = self._sessions.get(sid)
        if session is None:
            return
        await session.wait_opened()
        await session.conn.handle(frame_from_event(args))

    async def _on_disconnect(self, namespace: str, sid: str, reason: Any = None) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        try:
            await session.wait_opened()
        finally:
            await session.conn.run_terminate(None)
            self.listener.untrack(session.conn)

    async def _on_eio_disconnect(self, eio_sid: str, *args: Any) -> None:
        await self._eio_disconnect(eio_sid, *args)  # python-socketio's own handler
        self._websockets.pop(eio_sid, None)
        self._end_poll(eio_sid)

    def note_websocket(self, eio_sid: str, transport: asyncio.Transport) -> None:
        """Engine.IO session ``eio_sid`` now speaks WebSocket on ``transport``."""
        if eio_sid in self.server.eio.sockets:
            self._websockets[eio_sid] = transport

    def websocket_of(self, eio_sid: str) -> asyncio.Transport | None:
        return self._websockets.get(eio_sid)

    async def drop(self, eio_sid: str) -> None:
        """Close a slow consumer's whole Engine.IO session now.

        ``AsyncServer.disconnect`` would wait for the client to fetch what is queued, which a
        client that stopped reading never does (its task and queue would leak). Instead the
        queue is emptied, the session closed without waiting (so the disconnect handlers,
        and ``terminate``, run now), and a WebSocket's TCP connection is cut after a grace
        period, as bare WebSocket does.
        """
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None:
            return
        queue = socket.queue
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()
        transport = self._websockets.pop(eio_sid, None)
        # Queues the CLOSE packet (what a client that reads again sees after the frames it
        # already has), runs the disconnect handlers, and does not wait for the client.
        await socket.close(wait=False, abort=False)
        queue.put_nowait(None)  # then ends a pending long-poll, or the WebSocket writer
        # python-engineio forgets a closed socket when its request ends normally, or on its
        # next service round; a request that ended with an error (a reset peer) skips the
        # first. Forget it now.
        self.server.eio.sockets.pop(eio_sid, None)
        if transport is not None:
            cut_later(transport)

    def _end_poll(self, eio_sid: str) -> None:
        # When a polling client closes its Engine.IO session, python-engineio leaves the
        # client's pending long-poll GET open until the ping timeout (tens of seconds); a
        # client that waits for that GET before finishing its disconnect would hang. An
        # empty poll ends it now (Engine.IO v4: an empty payload is a valid answer).
        socket = self.server.eio.sockets.get(eio_sid)
        # Only for polling: a WebSocket's writer ends by itself, after the CLOSE packet that
        # a server-side close queues once the disconnect handlers (this) have run.
        if socket is not None and not socket.upgraded and (socket.closing or socket.closed):
            socket.queue.put_nowait(None)

    async def shutdown(self) -> None:
        """Disconnect every client (which terminates their connections), then stop.

        Engine.IO sockets get a CLOSE packet without waiting for the client to fetch it
        (``AsyncServer.disconnect()`` waits for that, forever for a polling client that is
        gone), and python-socketio's background tasks are stopped.
        """
        for session in list(self._sessions.values()):
            session.conn.close(CLOSE_GOING_AWAY, "going away")
        for socket in list(self.server.eio.sockets.values()):
            await socket.close(wait=False, abort=False)
        await self.server.shutdown()


class _Encoded:
    """A Socket.IO ``message`` event, encoded once per namespace: the Socket.IO packet
    (a list for a binary event), and the WebSocket frame carrying it as an Engine.IO
    message (``4`` + packet), made on first use."""

    __slots__ = ("_websocket", "packet")

    def __init__(self, packet: str | list[Any]) -> None:
        self.packet = packet
        self._websocket: bytes | None = None

    def websocket(self) -> bytes:
        if self._websocket is None:
            assert isinstance(self.packet, str)
            self._websocket = encode_frame(("4" + self.packet).encode("utf-8"), OP_TEXT)
        return self._websocket


class SocketIOTransport(TurnBuffer):
    """The ``Transport`` of one Socket.IO namespace connection. Its ``TurnBuffer`` writes
    to the session's TCP transport once the session is on a WebSocket."""

    __slots__ = ("_closing", "_eio_sid", "_endpoint", "_max_frames", "_namespace", "_sid")

    def __init__(self, endpoint: SocketIOEndpoint, sid: str, eio_sid: str, namespace: str):
        super().__init__(endpoint.listener.batcher)
        self._endpoint = endpoint
        self._sid = sid
        self._eio_sid = eio_sid
        self._namespace = namespace
        self._max_frames = endpoint.listener.config.limits.max_outbound_frames
        self._closing = False

    def _put(self, encoded: _Encoded) -> bool:
        socket = self._endpoint.server.eio.sockets.get(self._eio_sid)
        if socket is None or socket.closed or self._closing:
            return True  # going away; the disconnect handler terminates the connection
        queue = socket.queue
        packet = encoded.packet
        if self._pending is not None:  # frames of this turn are waiting: this one goes after
            if isinstance(packet, str):
                self._join_turn(encoded.websocket())
                return True
            self.flush()  # a binary event goes through the queue: what waits goes first
        elif socket.upgraded and not socket.upgrading and not queue.qsize():
            # The fast path: Engine.IO's writer task is idle (its queue is empty) and
            # nothing it wrote is still buffered, so this frame is next in line. Write it,
            # pre-encoded, at the end of this turn with the others for this socket, without
            # waking a task per socket.
            tcp = self._endpoint.websocket_of(self._eio_sid)
            if (
                tcp is not None
                and isinstance(packet, str)
                and not tcp.is_closing()
                and not tcp.get_write_buffer_size()
            ):
                self._tcp = tcp
                self._open_turn(encoded.websocket())
                return True
        if queue.qsize() >= self._max_frames:  # judged before adding, like bare WebSocket
            return False
        if isinstance(packet, list):  # a binary event: a header and its attachments
            for part in packet:
                queue.put_nowait(engineio.packet.Packet(engineio.packet.MESSAGE, data=part))
        else:
            queue.put_nowait(engineio.packet.Packet(engineio.packet.MESSAGE, data=packet))
        return True

    def _encode(self, frame: str | bytes) -> _Encoded:
        packet = socketio.packet.Packet(
            socketio.packet.EVENT, data=["message", frame], namespace=self._namespace
        )
        return _Encoded(packet.encode())

    def write(self, frame: str | bytes) -> bool:
        return self._put(self._encode(frame))

    def write_shared(self, frame: SharedFrame) -> bool:
        encoded = frame.cached(self._namespace)
        if encoded is None:
            encoded = frame.cache(self._namespace, self._encode(frame.data))
        return self._put(encoded)

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        server = self._endpoint.server
        self._endpoint.listener.spawn(server.disconnect(self._sid, self._namespace))

    def abort(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._pending = None  # not even this turn's frames: it is not reading
        self._endpoint.listener.spawn(self._endpoint.drop(self._eio_sid))
