"""stomp: STOMP 1.0, 1.1 and 1.2 over WebSocket, with the destinations of RabbitMQ's
Web-STOMP plugin, so that stomp.js applications drop in.

The WebSocket subprotocol is one of ``v12.stomp``, ``v11.stomp``, ``v10.stomp`` (the ones
stomp.js offers, IANA-registered); the STOMP version itself is negotiated by CONNECT's
``accept-version``. Each WebSocket message carries STOMP frames (or part of one). Over
Socket.IO, each ``message`` event does. Destinations, headers and authorization are in
``docs/stomp.md``.

This module is thin glue: ``rabbitsocks.stomp.frames`` parses and serializes,
``rabbitsocks.stomp.session`` runs one connection, ``rabbitsocks.stomp.server`` holds what
a listener's sessions share, and the process's hubs fan /topic/ messages out.
"""

from __future__ import annotations

from rabbitsocks import ListenerContext, Writer, current_connection
from rabbitsocks.auth import JoinAuthorizer, hook_from_config
from rabbitsocks.config import HookConfig
from rabbitsocks.services import Services
from rabbitsocks.stomp.options import Options
from rabbitsocks.stomp.server import StompServer
from rabbitsocks.stomp.session import StompSession

__all__ = ["SUBPROTOCOLS", "Options", "Stomp", "setup"]

#: What we answer in ``Sec-WebSocket-Protocol``, best first (as Web-STOMP, the highest the
#: client offers).
SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


class Stomp:
    """The STOMP callback of one listener."""

    def __init__(self, server: StompServer) -> None:
        self.server = server

    def subprotocol_name(self) -> list[str]:
        return list(SUBPROTOCOLS)

    def init(self, path: str, options: Options) -> StompSession:
        try:
            info = current_connection()
        except LookupError:  # driven by hand (a test double), not by a transport
            info = None
        return StompSession(self.server, info)

    def open(self, writer: Writer, session: StompSession) -> StompSession:
        session.open(writer)
        return session

    async def handle_frame(self, frame: str | bytes, session: StompSession) -> StompSession:
        await session.receive(frame)
        return session

    async def terminate(self, session: StompSession) -> None:
        await session.close()


def _hook(context: ListenerContext, key: str, config: HookConfig | None) -> JoinAuthorizer | None:
    if config is None:
        return None
    hook = hook_from_config(f"{context.name}: options.{key}", config, context.services.http_session)
    return JoinAuthorizer(None, hook)


def setup(context: ListenerContext) -> Stomp:
    """Called once per listener: the listener's STOMP server, on the process's hubs.

    The listener's connect authorization (``auth``) moves from the handshake to CONNECT,
    where STOMP clients present their credentials (``login``, ``passcode``).
    """
    options = context.options
    if not isinstance(options, Options):  # started through the API with a mapping
        options = Options(**options)
    services: Services = context.services
    authorizer = context.authorizer
    if authorizer is not None:
        authorizer.deferred = True
    server = StompServer(
        options,
        services,
        connect_auth=authorizer,
        subscribe_auth=_hook(context, "subscribe_auth", options.subscribe_auth),
        send_auth=_hook(context, "send_auth", options.send_auth),
    )
    return Stomp(server)
