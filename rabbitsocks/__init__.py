"""rabbitsocks: a bridge between browsers (WebSocket, Socket.IO) and RabbitMQ.

The public API::

    listener = await rabbitsocks.start_listener(8080, "callbacks.echo")
    print(listener.port)
    await listener.stop()

Callback modules implement ``Callback`` and receive a ``Writer``; see ``docs/callbacks.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from rabbitsocks.auth import ConnectRequest, Deny
from rabbitsocks.callback import Callback, ListenerContext, Writer
from rabbitsocks.connection import ConnectionInfo, current_connection
from rabbitsocks.errors import (
    BrokerError,
    BrokerUnavailable,
    CallbackLoadError,
    CloseConnection,
    ConfigError,
    ConnectionRefused,
    InvalidTopic,
    ProtocolError,
    PublishFailed,
    RabbitSocksError,
    RpcError,
    UnknownBroker,
)
from rabbitsocks.frames import SharedFrame

if TYPE_CHECKING:
    from rabbitsocks.server import Listener, Server, mount, start_listener
    from rabbitsocks.services import Services

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "Callback",
    "CallbackLoadError",
    "CloseConnection",
    "ConfigError",
    "ConnectRequest",
    "ConnectionInfo",
    "ConnectionRefused",
    "Deny",
    "InvalidTopic",
    "Listener",
    "ListenerContext",
    "ProtocolError",
    "PublishFailed",
    "RabbitSocksError",
    "RpcError",
    "Server",
    "Services",
    "SharedFrame",
    "UnknownBroker",
    "Writer",
    "__version__",
    "current_connection",
    "mount",
    "start_listener",
]


def __getattr__(name: str) -> Any:
    # The server pulls in aiohttp and python-socketio: loaded on first use, so that
    # importing a callback module or the errors stays cheap.
    if name in ("Listener", "Server", "mount", "start_listener"):
        from rabbitsocks import server

        return getattr(server, name)
    if name == "Services":
        from rabbitsocks.services import Services

        return Services
    raise AttributeError(f"module 'rabbitsocks' has no attribute {name!r}")
