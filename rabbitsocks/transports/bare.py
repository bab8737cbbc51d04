"""Bare WebSocket (RFC 6455) on ``/websocket/<path>``: the handshake, then a ``Connection``.

The handshake is the same whoever owns the wire: the gate and the callback's ``init``
(``Acceptor.accept``), then the subprotocol (section 4.2.2: a client that offers
subprotocols must be offered one of the callback's, which is echoed; one that offers none
is accepted without). ``upgrade`` answers it on our own wire (``WebSocketWire``), ``handle``
through aiohttp (``AiohttpWire``); see ``transports.websocket`` for which is used when.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiohttp import web

from rabbitsocks.connection import ConnectRequest
from rabbitsocks.errors import ConnectionRefused
from rabbitsocks.transports.acceptor import Accepted, Acceptor
from rabbitsocks.transports.gate import Refusal
from rabbitsocks.transports.websocket import (
    CLOSE_TIMEOUT,
    AiohttpWire,
    WebSocketWire,
    refuse_aiohttp_upgrade,
)
from rabbitsocks.wire import http1
from rabbitsocks.wire.http1 import HttpError, RequestHead, header_tokens
from rabbitsocks.wire.websocket import accept, check_handshake, offered_subprotocols

__all__ = ["PREFIX", "BareWebSocket"]

logger = logging.getLogger("rabbitsocks.websocket")

PREFIX = "/websocket"


class BareWebSocket:
    """The ``/websocket/<path>`` endpoint of one listener."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor

    @staticmethod
    def path_of(path: str) -> str | None:
        """The callback's ``path`` for a request path, or ``None`` if not ours."""
        if path == PREFIX:
            return ""
        if path.startswith(PREFIX + "/"):
            return path[len(PREFIX) + 1 :]
        return None

    def wants(self, head: RequestHead) -> bool:
        """Whether our own wire should serve this first request of a connection."""
        return (
            self.path_of(head.path) is not None
            and "websocket" in header_tokens(head.headers, "Upgrade")
            and not self.acceptor.websocket.compress  # aiohttp owns the compressor
        )

    async def _accept(self, request: ConnectRequest, path: str) -> Accepted | Refusal:
        acceptor = self.acceptor
        try:
            subprotocol = acceptor.callback.choose_subprotocol(
                offered_subprotocols(request.headers)  # type: ignore[arg-type]
            )
        except ConnectionRefused as exc:
            return Refusal(exc.status, exc.reason)
        return await acceptor.accept(request, path, subprotocol=subprotocol)

    # --- on our own wire ---------------------------------------------------------------------

    async def upgrade(self, head: RequestHead, tcp: asyncio.Transport, rest: bytes) -> None:
        """Answer the upgrade ``head`` read from ``tcp`` (reading is paused) and become the
        socket's protocol. ``rest``: bytes the client sent after the head."""
        acceptor = self.acceptor
        path = self.path_of(head.path)
        assert path is not None
        try:
            key = check_handshake(head)
        except HttpError as exc:
            extra = {"Sec-WebSocket-Version": "13"} if exc.status == 426 else None
            _answer(tcp, exc.status, exc.reason, extra)
            return
        request = ConnectRequest(
            path=head.path,
            transport="websocket",
            headers=head.headers,
            query=head.query,
            remote=self.acceptor.addresses.resolve(tcp, head.headers),
            method=head.method,
        )
        accepted = await self._accept(request, path)
        if isinstance(accepted, Refusal):
            _answer(tcp, accepted.status, accepted.payload, accepted.headers)
            return
        if tcp.is_closing():  # the peer left while we decided
            acceptor.refuse(accepted)
            return
        wire = WebSocketWire(
            tcp,
            max_size=acceptor.websocket.max_frame_size,
            batcher=acceptor.batcher,
            stats=acceptor.stats,
            heartbeat=acceptor.heartbeat,
        )
        tcp.write(accept(key, accepted.info.subprotocol))
        tcp.set_protocol(wire)
        conn = acceptor.connect(accepted, wire)
        wire.attach(conn, conn.info.id)
        if rest:
            wire.data_received(rest)
        tcp.resume_reading()

    # --- through aiohttp ----------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.handle)
        app.router.add_get(PREFIX + "/{path:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        acceptor = self.acceptor
        settings = acceptor.websocket
        path = self.path_of(request.path) or ""
        refusal = refuse_aiohttp_upgrade(request)
        if refusal is not None:
            return refusal
        connect = ConnectRequest(
            path=request.path,
            transport="websocket",
            headers=request.headers,
            query=request.query,
            remote=acceptor.addresses.resolve(request.transport, request.headers),
            method=request.method,
        )
        accepted = await self._accept(connect, path)
        if isinstance(accepted, Refusal):
            return web.Response(
                status=accepted.status, body=accepted.payload, headers=accepted.headers
            )
        chosen = accepted.info.subprotocol
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (),
            heartbeat=settings.heartbeat or None,
            max_msg_size=settings.max_frame_size,
            compress=settings.compress,
            timeout=CLOSE_TIMEOUT,
        )
        try:
            await ws.prepare(request)
        except ConnectionError:  # the peer gave up before our 101
            acceptor.refuse(accepted)
            return web.Response(status=400, text="the handshake did not complete\n")
        wire = AiohttpWire(ws, request, acceptor.stats)
        conn = acceptor.connect(accepted, wire)
        await wire.run(conn)
        return ws


def _answer(
    tcp: asyncio.Transport,
    status: int,
    body: str | bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    """An HTTP answer refusing a handshake on our own wire, then close."""
    tcp.write(http1.response(status, body, headers))
    tcp.close()
