"""The rabbitsocks exception tree.

Errors of the caller (bad configuration, misuse of the API) are kept apart from faults of
a peer (a client sending garbage) and faults of the broker (RabbitMQ unreachable, a publish
not confirmed). Library errors (aio-pika, aiohttp, python-socketio) are translated at the
adapter boundary with ``raise ... from exc``; nothing above the adapters catches them.

::

    RabbitSocksError
    ├── ConfigError                 the configuration is invalid (caller)
    ├── CallbackLoadError           a callback module cannot be imported or is incomplete
    ├── ConnectionRefused           raised by a callback's ``init`` to refuse a connection
    ├── CloseConnection             raised by a callback to close its connection with a code
    ├── ProtocolError               a peer sent something the protocol does not allow
    │   └── InvalidTopic            a topic is not a valid routing key or pattern
    ├── BrokerError                 a fault of the message broker
    │   ├── BrokerUnavailable       not connected (outage, reconnecting, closed)
    │   ├── UnknownBroker           a broker name that is not configured (caller)
    │   └── PublishFailed           a publish was not confirmed
    │       ├── PublishRefused      RabbitMQ nacked it
    │       └── PublishUnknown      no confirm came (timeout, connection lost): outcome unknown
    └── RpcError                    an RPC request was refused (validation, unknown method)
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "CallbackLoadError",
    "CloseConnection",
    "ConfigError",
    "ConnectionRefused",
    "InvalidTopic",
    "ProtocolError",
    "PublishFailed",
    "PublishRefused",
    "PublishUnknown",
    "RabbitSocksError",
    "RpcError",
    "UnknownBroker",
]


class RabbitSocksError(Exception):
    """Base class of every error raised by rabbitsocks."""


class ConfigError(RabbitSocksError):
    """The configuration is invalid.

    ``str(error)`` is one line naming the file, the key path and what was expected, for
    example ``config/x.yaml: listeners[0].interface: expected a port or "host:port", got 'x'``.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class CallbackLoadError(RabbitSocksError):
    """A callback module cannot be imported or lacks a required function."""


class ConnectionRefused(RabbitSocksError):
    """Raise from a callback's ``init`` to refuse a connection.

    Over bare WebSocket the client gets HTTP ``status`` with ``reason`` as the body; over
    Socket.IO it gets a ``connect_error`` whose message is ``reason``.
    """

    def __init__(self, reason: str, status: int = 403) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class CloseConnection(RabbitSocksError):
    """Raise from ``open`` or ``handle_frame`` to close the connection with ``code``.

    Codes follow RFC 6455 section 7.4: 1000 is a normal close, 4000-4999 are private.
    """

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}".rstrip())


class ProtocolError(RabbitSocksError):
    """A peer sent something the protocol does not allow."""


class InvalidTopic(ProtocolError):
    """A topic is not a valid AMQP routing key (or pattern, where patterns are allowed)."""


class BrokerError(RabbitSocksError):
    """A fault of the message broker."""


class BrokerUnavailable(BrokerError):
    """The broker is not connected: an outage, a reconnect in progress, or closed."""


class UnknownBroker(BrokerError):
    """A broker name that is not configured."""


class PublishFailed(BrokerError):
    """A publish was not confirmed. This class itself: RabbitMQ refused it before routing
    (a channel error such as no such exchange), so nobody received it."""


class PublishRefused(PublishFailed):
    """RabbitMQ nacked the publish: it did not take responsibility for the message. Some
    of its queues (subscribers) may have received it all the same, so a retry may
    duplicate it."""


class PublishUnknown(PublishFailed):
    """The publish was sent but no confirm came: within the confirm timeout, or before the
    connection was lost. The message may or may not have been routed."""


class RpcError(RabbitSocksError):
    """An RPC request was refused: invalid, too large, or an unknown method."""
