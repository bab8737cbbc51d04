"""The transport-agnostic life of one connection: the callback lifecycle and its writer.

A transport adapter (bare WebSocket or Socket.IO) accepts a peer, calls the callback's
``init``, then builds a ``Connection`` and drives it::

    init ──ok──> open ──> handle_frame* ──> terminate      (exactly once, in ``finally``)
      └─raises─> refused (no terminate)

The ``Connection`` is also the ``Writer`` the callback receives: ``send`` and ``close`` and
nothing of the transport. ``send`` never blocks: the frame goes straight to the transport's
bounded outbound buffer, and a peer whose buffer is full is closed as a slow consumer
(4008) instead of letting memory grow or delaying anyone else.
"""

from __future__ import annotations

import contextvars
import enum
import itertools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rabbitsocks.callback import CallbackRunner
from rabbitsocks.errors import CloseConnection
from rabbitsocks.frames import SharedFrame
from rabbitsocks.stats import ListenerStats

if TYPE_CHECKING:
    from rabbitsocks.auth import ConnectRequest

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "Connection",
    "ConnectionInfo",
    "ConnectionState",
    "Transport",
    "current_connection",
    "new_connection_id",
]

logger = logging.getLogger("rabbitsocks.connection")

# Close codes, RFC 6455 section 7.4.1, and our private ones (4000-4999, section 7.4.2).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SLOW_CONSUMER = 4008

_ids = itertools.count(1)
_id_prefix = f"{os.getpid():x}"


def new_connection_id() -> str:
    """A short id, unique in this process and across the processes of one host."""
    return f"{_id_prefix}-{next(_ids):x}"


class ConnectionState(enum.Enum):
    OPENING = "opening"  # init succeeded, open not yet returned
    OPEN = "open"
    CLOSING = "closing"  # a close was requested or the peer went away
    CLOSED = "closed"  # terminate has run


class Transport(Protocol):
    """What a connection needs from its transport adapter."""

    def write(self, frame: str | bytes) -> bool:
        """Queue one frame for the peer without blocking. ``False``: the outbound buffer
        is over its limits (the frame may or may not have been queued)."""
        ...

    def write_shared(self, frame: SharedFrame) -> bool:
        """``write`` for a frame shared by many connections, using its cached encoding."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake. Idempotent."""
        ...

    def abort(self, code: int, reason: str) -> None:
        """Close now, without waiting for a peer that no longer reads. Idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Who a connection is, for logs and for callbacks that want to know.

    Callbacks get it from ``rabbitsocks.current_connection()`` while ``init``, ``open``,
    ``handle_frame`` or ``terminate`` runs.
    """

    id: str
    listener: str
    transport: str  # "websocket" or "socketio"
    path: str
    remote: str
    #: The verified claims of the client's token, when the listener checks tokens.
    claims: Mapping[str, Any] | None = None
    #: The handshake request (headers, query), as authorization hooks saw it.
    request: ConnectRequest | None = None
    #: The WebSocket subprotocol chosen at the handshake (see ``subprotocol_name``).
    subprotocol: str | None = None


_current: contextvars.ContextVar[ConnectionInfo] = contextvars.ContextVar("rabbitsocks_conn")


def current_connection() -> ConnectionInfo:
    """The connection whose callback is running (``LookupError`` outside a callback)."""
    return _current.get()


def enter_connection(info: ConnectionInfo) -> contextvars.Token[ConnectionInfo]:
    """Make ``info`` the current connection of this task (for ``init``)."""
    return _current.set(info)


def reset_connection(token: contextvars.Token[ConnectionInfo]) -> None:
    _current.reset(token)


class Connection:
    """One connection's callback lifecycle; also the callback's ``Writer``."""

    __slots__ = (
        "_closing_code",
        "_started",
        "callback",
        "info",
        "state",
        "stats",
        "status",
        "transport",
    )

    def __init__(
        self,
        callback: CallbackRunner,
        transport: Transport,
        info: ConnectionInfo,
        state: Any,
        stats: ListenerStats | None = None,
    ) -> None:
        self.callback = callback
        self.transport = transport
        self.info = info
        self.state = state
        self.stats = stats if stats is not None else ListenerStats()
        self.stats.opened[info.transport] += 1
        self.status = ConnectionState.OPENING
        self._closing_code: int | None = None
        self._started = time.monotonic()
        logger.info(
            "open %s remote=%s transport=%s listener=%s path=/%s",
            info.id,
            info.remote,
            info.transport,
            info.listener,
            info.path,
        )

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def closing(self) -> bool:
        return self.status in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    # --- Writer ---------------------------------------------------------------------------

    def send(self, frame: str | bytes) -> None:
        if self.status is ConnectionState.CLOSING or self.status is ConnectionState.CLOSED:
            return
        if not isinstance(frame, str | bytes | bytearray | memoryview):
            raise TypeError(f"send() takes str or bytes, not {type(frame).__name__}")
        stats = self.stats
        stats.frames_sent += 1
        stats.bytes_sent += len(frame)
        if not self.transport.write(frame if isinstance(frame, str | bytes) else bytes(frame)):
            self._slow_consumer()

    def send_shared(self, frame: SharedFrame) -> None:
        """Send a frame encoded once for many connections (the fan-out path)."""
        if self.status is ConnectionState.CLOSING or self.status is ConnectionState.CLOSED:
            return
        if not self.transport.write_shared(frame):
            self._slow_consumer()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.closing:
            return
        self.status = ConnectionState.CLOSING
        self._closing_code = code
        self.transport.close(code, reason)

    def _slow_consumer(self) -> None:
        if self.closing:
            return
        logger.warning("closing %s: slow consumer (outbound buffer full)", self.info.id)
        self.stats.slow_consumers += 1
        self.status = ConnectionState.CLOSING
        self._closing_code = CLOSE_SLOW_CONSUMER
        self.transport.abort(CLOSE_SLOW_CONSUMER, "slow consumer")

    # --- driven by the transport adapter -----------------------------------------------

    def peer_closed(self, code: int | None) -> None:
        """The transport is gone (peer close, network error, server shutdown)."""
        if self.status is not ConnectionState.CLOSED:
            self.status = ConnectionState.CLOSING
            if self._closing_code is None:
                self._closing_code = code

    async def run_open(self) -> None:
        """Call the callback's ``open``; an error closes this connection only."""
        token = _current.set(self.info)
        try:
            self.state = await self.callback.open(self, self.state)
        except Exception as exc:
            self._fail("open", exc)
        else:
            if self.status is ConnectionState.OPENING:
                self.status = ConnectionState.OPEN
        finally:
            _current.reset(token)

    async def handle(self, frame: str | bytes) -> None:
        """Call the callback's ``handle_frame``; an error closes this connection only."""
        if self.closing:
            return
        self.stats.frames_in += 1
        token = _current.set(self.info)
        try:
            self.state = await self.callback.handle_frame(frame, self.state)
        except Exception as exc:
            self._fail("handle_frame", exc)
        finally:
            _current.reset(token)

    async def run_terminate(self, code: int | None = None) -> None:
        """Call the callback's ``terminate``, once, whatever happened before."""
        if self.status is ConnectionState.CLOSED:
            return
        self.peer_closed(code)
        self.status = ConnectionState.CLOSED
        self.stats.closed[self.info.transport] += 1
        token = _current.set(self.info)
        try:
            await self.callback.terminate(self.state)
        except Exception:
            logger.exception(
                "callback %s failed in terminate on %s", self.callback.name, self.info.id
            )
        finally:
            _current.reset(token)
        logger.info(
            "close %s remote=%s transport=%s path=/%s duration=%.3fs code=%s",
            self.info.id,
            self.info.remote,
            self.info.transport,
            self.info.path,
            time.monotonic() - self._started,
            self._closing_code,
        )

    def _fail(self, where: str, exc: Exception) -> None:
        if isinstance(exc, CloseConnection):
            self.close(exc.code, exc.reason)
            return
        # Logged once, with the traceback; the peer learns only that it was our fault.
        self.stats.errors["callback"] += 1
        logger.error(
            "callback %s failed in %s on %s: %s: %s",
            self.callback.name,
            where,
            self.info.id,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        self.close(CLOSE_INTERNAL_ERROR, "internal error")
