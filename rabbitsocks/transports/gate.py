"""The gate every handshake passes before a transport sees it: origin, limits, authorization.

Both transports call ``admit`` first thing, so bare WebSocket (``/websocket/...``) and
Socket.IO (a request opening a new Engine.IO session on ``/socket.io/``) get the same
checks, in this order, before any callback runs:

1. ``Origin`` not on the listener's allow-list: 403.
2. Too many connections on the listener or from the remote address: 503.
3. Connect authorization (token, hook): the hook's answer, 401 for a bad token, 503 when
   the authorization endpoint does not answer within the handshake timeout.

Requests of an existing Engine.IO session (they carry ``sid``) belong to a connection that
was already admitted and pass straight through.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from rabbitsocks.auth import AuthDenied, ConnectRequest
from rabbitsocks.connection import ConnectionInfo, new_connection_id

if TYPE_CHECKING:
    from rabbitsocks.server import Listener

__all__ = [
    "CLAIMS",
    "CONNECT_REQUEST",
    "admit",
    "connect_request",
    "connection_info",
    "refuse_engineio_request",
]

logger = logging.getLogger("rabbitsocks.gate")

#: Where the gate leaves its findings on the aiohttp request, for the transports.
CLAIMS: web.RequestKey[dict[str, Any]] = web.RequestKey("rabbitsocks.claims")
CONNECT_REQUEST: web.RequestKey[ConnectRequest] = web.RequestKey("rabbitsocks.connect")


def connect_request(request: web.Request, transport: str) -> ConnectRequest:
    """What authorization hooks and callbacks see of a handshake request."""
    if CONNECT_REQUEST in request:
        return request[CONNECT_REQUEST]
    made = ConnectRequest(
        path=request.path,
        transport=transport,
        headers=request.headers,
        query=request.query,
        remote=request.remote or "",
        method=request.method,
    )
    request[CONNECT_REQUEST] = made
    return made


def connection_info(
    listener: Listener,
    request: web.Request,
    transport: str,
    path: str,
    subprotocol: str | None = None,
) -> ConnectionInfo:
    """Who a new connection is, from the handshake request the gate admitted."""
    return ConnectionInfo(
        id=new_connection_id(),
        listener=listener.name,
        transport=transport,
        path=path,
        remote=request.remote or "",
        claims=request.get(CLAIMS),
        request=connect_request(request, transport),
        subprotocol=subprotocol,
    )


def _refuse(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=f"{reason}\n", headers=headers)


def refuse_engineio_request(listener: Listener, request: web.Request) -> web.Response | None:
    """Requests of an admitted Engine.IO session: bound what python-engineio would not."""
    limit = listener.config.socketio.max_frame_size
    if request.method == "POST" and (request.content_length or 0) > limit:
        # python-engineio would close the session and wait, forever, for the client to
        # fetch the close packet before answering this request.
        return _refuse(413, f"payload larger than {limit} bytes")
    return None


async def admit(
    listener: Listener, request: web.Request, transport: str
) -> web.StreamResponse | None:
    """Check a handshake request; the refusal to answer, or ``None`` to go on.

    Called by the transports' handlers themselves rather than as an aiohttp middleware: a
    middleware's frames would stay alive for as long as each WebSocket connection lasts
    (nearly a kilobyte per connection).
    """
    limits = listener.config.limits
    origin = request.headers.get("Origin")
    if not listener.origins.allows(origin):
        logger.info("refused %s from %s: origin %r", request.path, request.remote, origin)
        listener.stats.errors["refused_origin"] += 1
        return _refuse(403, f"origin {origin} is not allowed")
    if listener.closing:
        return _refuse(503, "server is shutting down")
    if listener.connections >= limits.max_connections:
        listener.stats.errors["refused_limit"] += 1
        return _refuse(503, "too many connections", {"Retry-After": "5"})
    remote = request.remote or ""
    if listener.connections_from(remote) >= limits.max_connections_per_address:
        listener.stats.errors["refused_limit"] += 1
        return _refuse(503, "too many connections from your address", {"Retry-After": "5"})
    authorizer = listener.authorizer
    if authorizer is not None:
        try:
            async with asyncio.timeout(limits.handshake_timeout):
                claims = await authorizer.authorize(connect_request(request, transport))
        except TimeoutError:
            listener.stats.errors["refused_auth"] += 1
            return _refuse(503, "authorization timed out")
        except AuthDenied as denied:
            listener.stats.errors["refused_auth"] += 1
            logger.info(
                "refused %s from %s: %s %s", request.path, remote, denied.status, denied.reason
            )
            return web.Response(status=denied.status, body=denied.body, headers=denied.headers)
        if claims is not None:
            request[CLAIMS] = claims
    return None
