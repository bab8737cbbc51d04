"""Engine.IO v4 on ``/socket.io/``: the handshake, HTTP long-polling, WebSocket, the upgrade.

The endpoint of one listener: it opens sessions (``transports.session``, the one path each
session's packets take to the client), serves their long-polls and POSTs through aiohttp,
and their WebSockets on our own wire (or aiohttp's, see ``transports.websocket``).

Theory of operation
-------------------
A session opens on a ``GET`` without ``sid`` (polling) or on a WebSocket handshake without
``sid``. Either way it passes the origin check and takes a counted slot from the gate
(``transports.gate``); the Socket.IO layer authorizes each namespace connection itself::

    polling ──probe (2probe/3probe, noop to the pending GET)──> upgrading ──5──> websocket
       ^                                                           |
       +────────────── the probe's WebSocket closed ───────────────+

The listener's ``Heartbeat`` visits every session once per ``ping_interval``: it sends a
ping; a session whose previous ping is still unanswered after ``ping_timeout``, or that has
had no namespace connected for the handshake timeout, is closed.

What a client sends is checked by ``wire.engineio`` and ``wire.socketio``; anything
malformed closes its session with the reason (polling: HTTP 400 with an Engine.IO error
body; WebSocket: a close frame), once in the log, counted in
``rabbitsocks_errors_total{kind="protocol"}``. Outbound, a session holds at most
``max_outbound_bytes`` (and ``max_outbound_frames`` packets while polling) for a client
that does not read; past that it is closed as a slow consumer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping

import orjson
from aiohttp import web

from rabbitsocks.connection import CLOSE_GOING_AWAY, ConnectRequest
from rabbitsocks.errors import ProtocolError
from rabbitsocks.frames import OP_TEXT, encode_frame
from rabbitsocks.transports.acceptor import Acceptor
from rabbitsocks.transports.affinity import Affinity
from rabbitsocks.transports.gate import Refusal, Slot
from rabbitsocks.transports.heartbeat import Heartbeat
from rabbitsocks.transports.session import Namespaces, Session
from rabbitsocks.transports.websocket import (
    CLOSE_TIMEOUT,
    AiohttpWire,
    WebSocketWire,
    refuse_aiohttp_upgrade,
)
from rabbitsocks.wire import engineio, http1
from rabbitsocks.wire.http1 import HttpError, RequestHead, header_tokens
from rabbitsocks.wire.websocket import accept, check_handshake

__all__ = ["PATH", "EngineIO"]

logger = logging.getLogger("rabbitsocks.socketio")

PATH = "/socket.io/"

# Engine.IO's error answers (engine.io's server.ts): a JSON body with a code and a message.
UNKNOWN_TRANSPORT = 0
UNKNOWN_SID = 1
BAD_HANDSHAKE_METHOD = 2
BAD_REQUEST = 3
FORBIDDEN = 4
UNSUPPORTED_PROTOCOL_VERSION = 5

_PROBE = "probe"
#: Packets of one POST handled per turn of the event loop.
_PACKETS_PER_TURN = 64


def _error_body(code: int, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


class EngineIO:
    """The Engine.IO endpoint of one listener: its sessions, routes and upgrades."""

    def __init__(
        self,
        acceptor: Acceptor,
        namespaces: Callable[[Session], Namespaces],
        affinity: Affinity | None = None,
    ) -> None:
        self.acceptor = acceptor
        #: With ``serve --workers``: session ids name their worker; see ``transports.affinity``.
        self.affinity = affinity
        settings = acceptor.socketio
        self.settings = settings
        self.ping_interval = settings.ping_interval
        self.ping_timeout = settings.ping_timeout
        self.handshake_timeout = acceptor.limits.handshake_timeout
        self.max_payload = settings.max_frame_size
        self.max_outbound_frames = acceptor.max_outbound_frames
        self.polling = "polling" in settings.transports
        self.websocket = "websocket" in settings.transports
        self.sessions: dict[str, Session] = {}
        self.pings = Heartbeat(self.ping_interval)
        self.ping_frame = encode_frame(engineio.PING.encode(), OP_TEXT)
        self._namespaces = namespaces  # makes each session's Socket.IO layer

    def namespaces_for(self, session: Session) -> Namespaces:
        return self._namespaces(session)

    # --- sessions --------------------------------------------------------------------------

    def _open_session(self, request: ConnectRequest, slot: Slot) -> Session:
        prefix = self.affinity.sid_prefix if self.affinity is not None else ""
        sid = prefix + secrets.token_urlsafe(15)
        session = Session(self, sid, request, slot)
        slot.owner = _SessionCloser(session)
        self.sessions[sid] = session
        session.group = self.pings.add(session)
        return session

    def open_packet(self, session: Session, *, upgrades: bool) -> str:
        """The handshake's answer (engine.io's field order)."""
        fields = {
            "sid": session.sid,
            "upgrades": ["websocket"] if upgrades and self.websocket else [],
            "pingInterval": int(self.ping_interval * 1000),
            "pingTimeout": int(self.ping_timeout * 1000),
            "maxPayload": self.max_payload,
        }
        return engineio.OPEN + orjson.dumps(fields).decode()

    def forget(self, session: Session) -> None:
        self.sessions.pop(session.sid, None)
        if session.group >= 0:
            self.pings.discard(session, session.group)
            session.group = -1
        if session.slot is not None:
            self.acceptor.gate.registry.release(session.slot)
            session.slot = None

    def fail(self, session: Session, exc: ProtocolError) -> None:
        """A malformed packet: logged once, counted, the session closed with the reason."""
        logger.info("closing %s from %s: %s", session.sid, session.remote, exc)
        self.acceptor.stats.errors["protocol"] += 1
        session.close(1002, str(exc)[:100], failed=True)

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            session.close(CLOSE_GOING_AWAY, "going away")
        self.pings.stop()

    # --- the first request of a connection: our own WebSocket --------------------------------

    def wants(self, head: RequestHead) -> bool:
        return (
            head.path == PATH
            and head.query.get("transport") == "websocket"
            and "websocket" in header_tokens(head.headers, "Upgrade")
        )

    async def upgrade(self, head: RequestHead, tcp: asyncio.Transport, rest: bytes) -> None:
        request = ConnectRequest(
            path=head.path,
            transport="socketio",
            headers=head.headers,
            query=head.query,
            remote=self.acceptor.addresses.resolve(tcp, head.headers),
            method=head.method,
        )
        try:
            key = check_handshake(head)
        except HttpError as exc:
            extra = {"Sec-WebSocket-Version": "13"} if exc.status == 426 else {}
            tcp.write(http1.response(exc.status, exc.reason, extra))
            tcp.close()
            return
        checked = await self._check(request, head.query)
        if isinstance(checked, Refusal):
            tcp.write(http1.response(checked.status, checked.payload, checked.headers))
            tcp.close()
            return
        session, direct = checked
        if tcp.is_closing():  # the peer left while it was being authorized
            if direct:
                session.close(None, "the handshake did not complete")
            return
        acceptor = self.acceptor
        wire = WebSocketWire(
            tcp, max_size=self.max_payload, batcher=acceptor.batcher, stats=acceptor.stats
        )
        tcp.write(accept(key))
        tcp.set_protocol(wire)
        self._attach(wire, session, direct)
        if rest:
            wire.data_received(rest)
        tcp.resume_reading()

    async def _check(
        self, request: ConnectRequest, query: Mapping[str, str]
    ) -> tuple[Session, bool] | Refusal:
        """A WebSocket request: the session it upgrades, or a new one opened on it (admitted
        here; ``True``), or the refusal."""
        if query.get("EIO") != "4":
            return Refusal(
                400, "", body=_error_body(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol")
            )
        if not self.websocket:
            return Refusal(400, "", body=_error_body(UNKNOWN_TRANSPORT, "Transport unknown"))
        if "sid" in query:
            refusal = self.acceptor.gate.check_origin(request)
            if refusal is not None:
                return refusal
            session = self.sessions.get(query["sid"])
            # One upgrade WebSocket per session at a time: any other would be a connection
            # the limits never counted, attached to a session that does not close it.
            if session is None or session.on_websocket or session.probe is not None:
                self.acceptor.stats.errors["unknown_session"] += 1
                return Refusal(400, "", body=_error_body(UNKNOWN_SID, "Session ID unknown"))
            return session, False
        admitted = await self.acceptor.gate.admit(request)
        if isinstance(admitted, Refusal):
            return admitted
        return self._open_session(request, admitted.slot), True

    def _attach(
        self, wire: WebSocketWire | AiohttpWire, session: Session, direct: bool
    ) -> _WebSocketReceiver:
        receiver = _WebSocketReceiver(self, session, wire)
        if isinstance(wire, WebSocketWire):
            wire.attach(receiver, session.sid)
        if direct:  # opened on this WebSocket: the open packet is its first message
            session.upgraded(wire)
            session.send(self.open_packet(session, upgrades=False))
        else:  # the session's upgrade WebSocket: closed with it, until 5 makes it its wire
            session.probe = wire
        return receiver

    # --- through aiohttp: polling, and WebSocket where aiohttp owns the connection -----------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("GET", PATH, self.handle)
        app.router.add_route("POST", PATH, self.handle)
        app.router.add_route("OPTIONS", PATH, self.handle)

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or not self.acceptor.gate.origins.allows(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}

    def _error(self, request: web.Request, status: int, code: int, message: str) -> web.Response:
        return web.Response(
            status=status,
            body=_error_body(code, message),
            content_type="application/json",
            headers=self._cors(request),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        cors = self._cors(request)
        if request.method == "OPTIONS":
            headers = {
                **cors,
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", ""
                ),
            }
            return web.Response(status=204, headers=headers)
        query = request.query
        if query.get("EIO") != "4":
            return self._error(request, 400, UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol")
        transport = query.get("transport")
        affinity = self.affinity
        if affinity is not None:
            # A kept-alive connection (handed over, relayed, or ours from the start) carries
            # a request for a session of another worker: the owner serves it.
            owner = affinity.foreign(query.get("sid"))
            if owner is not None:
                client = self.acceptor.addresses.resolve(request.transport, request.headers)
                return await affinity.forward(
                    request, owner, client, timeout=self.handshake_timeout
                )
        connect = ConnectRequest(
            path=request.path,
            transport="socketio",
            headers=request.headers,
            query=query,
            remote=self.acceptor.addresses.resolve(request.transport, request.headers),
            method=request.method,
        )
        if transport == "websocket" and self.websocket:
            return await self._aiohttp_websocket(request, connect)
        if transport != "polling" or not self.polling:
            return self._error(request, 400, UNKNOWN_TRANSPORT, "Transport unknown")
        if "sid" not in query:
            if request.method != "GET":
                return self._error(request, 400, BAD_HANDSHAKE_METHOD, "Bad handshake method")
            return await self._handshake(connect, cors)
        refusal = self.acceptor.gate.check_origin(connect)
        if refusal is not None:
            return web.Response(status=refusal.status, body=refusal.payload)
        session = self.sessions.get(query["sid"])
        if session is None or session.on_websocket:
            self.acceptor.stats.errors["unknown_session"] += 1
            return self._error(request, 400, UNKNOWN_SID, "Session ID unknown")
        if request.method == "GET":
            return await self._get(request, session, cors)
        return await self._post(request, session, cors)

    async def _handshake(self, connect: ConnectRequest, cors: dict[str, str]) -> web.Response:
        admitted = await self.acceptor.gate.admit(connect)
        if isinstance(admitted, Refusal):
            return web.Response(
                status=admitted.status, body=admitted.payload, headers=admitted.headers
            )
        session = self._open_session(connect, admitted.slot)
        response = web.Response(
            text=self.open_packet(session, upgrades=True),
            content_type="text/plain",
            headers=cors,
        )
        cookie = self.settings.cookie
        if cookie:
            response.set_cookie(cookie, session.sid, path="/", httponly=True, samesite="Lax")
        return response

    async def _get(
        self, request: web.Request, session: Session, cors: dict[str, str]
    ) -> web.Response:
        if session.polled:
            # Two long-polls at once: engine.io closes the session (a confused client).
            self.fail(session, engineio.EngineIOError("overlapping long-poll requests"))
            return self._error(request, 400, BAD_REQUEST, "overlapping GET requests")
        body = await session.poll()
        self.acceptor.stats.bytes_sent += len(body)
        return web.Response(body=body, content_type="text/plain", charset="utf-8", headers=cors)

    async def _post(
        self, request: web.Request, session: Session, cors: dict[str, str]
    ) -> web.Response:
        limit = self.max_payload
        if (request.content_length or 0) > limit:
            self.fail(session, engineio.EngineIOError(f"payload larger than {limit} bytes"))
            return self._error(request, 413, BAD_REQUEST, f"payload larger than {limit} bytes")
        if session.posting:
            self.fail(session, engineio.EngineIOError("overlapping POST requests"))
            return self._error(request, 400, BAD_REQUEST, "overlapping POST requests")
        session.posting = True
        try:
            chunks: list[bytes] = []
            size = 0
            # The body within the handshake timeout, as the head of every request: a client
            # that announces more than it sends would hold the connection for ever.
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    async for chunk in request.content.iter_any():
                        size += len(chunk)
                        if size > limit:
                            too_large = engineio.EngineIOError(f"payload larger than {limit} bytes")
                            self.fail(session, too_large)
                            return self._error(request, 413, BAD_REQUEST, "payload too large")
                        chunks.append(chunk)
            except TimeoutError:
                late = f"payload not received within {self.handshake_timeout:g}s"
                self.fail(session, engineio.EngineIOError(late))
                response = self._error(request, 408, BAD_REQUEST, late)
                response.force_close()
                return response
            except (ConnectionError, RuntimeError):
                # The client left in the middle of its body: aiohttp raises either (its
                # "Connection closed."). Nothing to answer; the session carries on.
                if not _gone(request):
                    raise
                return web.Response(status=400, text="the request body did not arrive\n")
            try:
                packets = engineio.decode_payload(
                    b"".join(chunks), self.settings.max_packets_per_payload
                )
                for index, packet in enumerate(packets):
                    if index and not index % _PACKETS_PER_TURN:
                        await asyncio.sleep(0)  # a big payload shares the loop
                    if session.closed:
                        break
                    session.received(packet)
            except ProtocolError as exc:
                self.fail(session, exc)
                return self._error(request, 400, BAD_REQUEST, str(exc))
            await session.caught_up()  # a flood waits here: the client posts one at a time
        finally:
            session.posting = False
        return web.Response(text="ok", content_type="text/plain", headers=cors)

    async def _aiohttp_websocket(
        self, request: web.Request, connect: ConnectRequest
    ) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_payload, timeout=CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return self._error(request, 400, BAD_REQUEST, "expected a WebSocket upgrade")
        refusal = refuse_aiohttp_upgrade(request)
        if refusal is not None:
            return refusal
        checked = await self._check(connect, request.query)
        if isinstance(checked, Refusal):
            return web.Response(
                status=checked.status, body=checked.payload, headers=checked.headers
            )
        session, direct = checked
        try:
            await ws.prepare(request)
        except ConnectionError:
            if direct:
                session.close(None, "the handshake did not complete")
            return web.Response(status=400, text="the handshake did not complete\n")
        if not direct and (session.closed or session.on_websocket or session.probe is not None):
            # Another upgrade, or the session's end, came while this one was answered.
            await ws.close(code=1008, message=b"Session ID unknown")
            return ws
        wire = AiohttpWire(ws, request, self.acceptor.stats)
        receiver = self._attach(wire, session, direct)
        await wire.run(receiver)
        return ws


def _gone(request: web.Request) -> bool:
    """Whether the client of ``request`` has left."""
    transport = request.transport
    return transport is None or transport.is_closing()


class _SessionCloser:
    """What the gate's slot closes at shutdown while the session has no namespace."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def close(self, code: int, reason: str) -> None:
        self.session.close(code, reason)


class _WebSocketReceiver:
    """Reads one WebSocket of a session: the upgrade probe, then the session's packets."""

    __slots__ = ("server", "session", "wire")

    def __init__(
        self, server: EngineIO, session: Session, wire: WebSocketWire | AiohttpWire
    ) -> None:
        self.server = server
        self.session = session
        self.wire = wire

    def received(self, frame: str | bytes) -> None:
        session = self.session
        if session.closed:
            return
        try:
            packet = engineio.decode_packet(frame)
            if session.on_websocket:
                session.received(packet)
                return
            # The upgrade (engine.io's protocol): 2probe -> 3probe, then 5.
            kind, data = packet
            if kind == engineio.PING and data == _PROBE and not session.upgrading:
                session.upgrading = True
                session.probe = self.wire
                self.wire.write(engineio.PONG + _PROBE, 1 << 16)
                session.send_noop_to_poll()
            elif kind == engineio.UPGRADE and session.upgrading and session.probe is self.wire:
                session.upgraded(self.wire)
            else:
                raise engineio.EngineIOError("expected the upgrade probe")
        except ProtocolError as exc:
            self.server.fail(session, exc)

    def peer_closed(self, code: int | None) -> None:
        pass

    def finished(self, code: int | None = None) -> None:
        session = self.session
        if session.probe is self.wire:  # an upgrade that did not happen: keep polling
            session.probe = None
            session.upgrading = False
        elif session.on_websocket and not session.closed:
            session.close(None, "transport closed")
