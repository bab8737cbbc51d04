"""The life of one connection, whatever its transport: the driver every transport shares.

A transport adapter (bare WebSocket, a Socket.IO namespace) only moves bytes. Once the
gate admitted a peer and the callback's ``init`` accepted it, the adapter makes a
``Connection`` and from then on tells it three things: a frame arrived (``received``), the
peer can no longer be written to (``finished``), and nothing else. The ``Connection`` owns
the rest: running the callback (``open``, ``handle_frame`` one frame at a time and in
order, ``terminate`` exactly once), the inbound queue and its bound, the outbound bound and
the slow-consumer policy, and the ``Writer`` the callback gets.

Theory of operation
-------------------
The states and what moves between them are a table (``TRANSITIONS``), in the spirit of
h11's ``_state.py``; any other move is a bug and raises. Each transition is logged at
debug level::

    OPENING --opened--> OPEN
    OPENING, OPEN --close / peer_closed / abort--> CLOSING
    OPENING, OPEN, CLOSING --terminated--> CLOSED

``close`` is ours (the callback's ``writer.close``, an error in the callback, shutdown),
``peer_closed`` the peer's (a close frame, a reset, a Socket.IO disconnect), ``abort`` the
slow-consumer policy. ``terminated`` happens once the adapter says the wire is gone and
whatever the callback was doing is done.

Callbacks run in a task that exists only while there is work: it is started by the first
frame (or ``open``, or the end) that finds the connection idle, works through the inbound
queue, and ends when it is empty. An idle connection holds no task, no coroutine frame and
no timer: its cost is the adapter, this object and the callback's state. ``terminate``
runs in that task after the last ``handle_frame``, never beside it.

Flow control both ways is by bound, not by waiting: a peer that sends faster than its
frames are handled has its socket paused once ``max_inbound_frames`` frames or
``max_inbound_bytes`` bytes wait (TCP pushes back; what one read of the socket brought is
queued whole); a peer that reads slower than we send is closed as a slow consumer (4008)
once what it has not read passes ``max_outbound_bytes``, rather than letting memory grow
or delaying anybody else.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
import itertools
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from rabbitsocks.callback import CallbackRunner
from rabbitsocks.errors import CloseConnection
from rabbitsocks.frames import SharedFrame
from rabbitsocks.stats import ListenerStats

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_SLOW_CONSUMER",
    "TRANSITIONS",
    "ConnectRequest",
    "Connection",
    "ConnectionInfo",
    "Event",
    "Host",
    "State",
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

#: Frames handled in one turn of the event loop before the others get theirs.
TURN_FRAMES = 64

_ids = itertools.count(1)
_id_prefix = f"{os.getpid():x}"


def new_connection_id() -> str:
    """A short id, unique in this process and across the processes of one host."""
    return f"{_id_prefix}-{next(_ids):x}"


# --- who is connecting -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A connection attempt, as the gate, authorization hooks and callbacks see it."""

    path: str
    transport: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    remote: str
    method: str = "GET"
    #: The Socket.IO namespace being connected (``"/chat"``); ``None`` for bare WebSocket.
    namespace: str | None = None

    def as_json(self) -> dict[str, Any]:
        fields = {
            "method": self.method,
            "path": self.path,
            "transport": self.transport,
            "headers": _flatten(self.headers),
            "query": _flatten(self.query),
            "remote": self.remote,
        }
        if self.namespace is not None:
            fields["namespace"] = self.namespace
        return fields


def _flatten(pairs: Mapping[str, str]) -> dict[str, str]:
    """Plain ``str`` keys (multidict's are ``istr``), repeated names joined by ", "."""
    out: dict[str, str] = {}
    for key, value in pairs.items():
        name = str(key)
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


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
    #: The network connection (TCP, or Engine.IO session) this connection rides on: several
    #: Socket.IO namespaces share one, and limits per network connection are counted on it.
    wire: str = ""


_current: contextvars.ContextVar[ConnectionInfo] = contextvars.ContextVar("rabbitsocks_conn")


def current_connection() -> ConnectionInfo:
    """The connection whose callback is running (``LookupError`` outside a callback)."""
    return _current.get()


def enter_connection(info: ConnectionInfo) -> contextvars.Token[ConnectionInfo]:
    """Make ``info`` the current connection of this task (for ``init``)."""
    return _current.set(info)


def reset_connection(token: contextvars.Token[ConnectionInfo]) -> None:
    _current.reset(token)


# --- what the driver needs around it -------------------------------------------------------


class Transport(Protocol):
    """What a connection needs from its transport adapter. Nothing here blocks."""

    def write(self, frame: str | bytes, limit: int) -> bool:
        """Queue one frame for the peer. ``False``: the peer had more than ``limit`` bytes
        not yet read (judged before this frame, which may or may not have been queued)."""
        ...

    def write_shared(self, frame: SharedFrame, limit: int) -> bool:
        """``write`` for a frame shared by many connections, using its cached encoding."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake after what is queued. Idempotent."""
        ...

    def abort(self, code: int, reason: str) -> None:
        """Close now, without waiting for a peer that no longer reads. Idempotent."""
        ...

    def pause_reading(self) -> None:
        """Stop reading from the peer until ``resume_reading`` (inbound flow control)."""
        ...

    def resume_reading(self) -> None: ...


class Host(Protocol):
    """What a connection needs from the listener it belongs to."""

    @property
    def stats(self) -> ListenerStats: ...

    @property
    def max_outbound_bytes(self) -> int: ...

    @property
    def max_inbound_frames(self) -> int: ...

    @property
    def max_inbound_bytes(self) -> int: ...

    def release(self, conn: Connection) -> None:
        """``conn`` is over (``terminate`` has run): forget it."""
        ...


# --- the state machine -------------------------------------------------------------------


class State(enum.Enum):
    OPENING = "opening"  # init accepted it; open has not returned yet
    OPEN = "open"
    CLOSING = "closing"  # a close was asked for, or the peer went away
    CLOSED = "closed"  # terminate has run


class Event(enum.Enum):
    OPENED = "opened"  # the callback's open returned
    CLOSE = "close"  # we close: writer.close, an error in the callback, shutdown
    PEER_CLOSED = "peer_closed"  # the peer closed, or the network went
    ABORT = "abort"  # slow consumer: closed now
    TERMINATED = "terminated"  # terminate has run


TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.OPENING, Event.OPENED): State.OPEN,
    **{
        (state, event): State.CLOSING
        for state in (State.OPENING, State.OPEN, State.CLOSING)
        for event in (Event.CLOSE, Event.PEER_CLOSED, Event.ABORT)
    },
    (State.CLOSING, Event.OPENED): State.CLOSING,  # open returned after a close: stay
    **{
        (state, Event.TERMINATED): State.CLOSED
        for state in (State.OPENING, State.OPEN, State.CLOSING)
    },
}


# --- the connection ----------------------------------------------------------------------


class Connection:
    """One connection's callback lifecycle; also the callback's ``Writer``."""

    __slots__ = (
        "_code",
        "_finished",
        "_inbound",
        "_inbound_bytes",
        "_limit",
        "_opened",
        "_paused",
        "_runner",
        "_sendable",
        "_started",
        "_write_shared",
        "callback",
        "host",
        "info",
        "state",
        "status",
        "ticket",
        "transport",
    )

    def __init__(
        self,
        callback: CallbackRunner,
        transport: Transport,
        info: ConnectionInfo,
        state: Any,
        host: Host,
    ) -> None:
        self.callback = callback
        self.transport = transport
        self.info = info
        #: The callback's state (what ``init`` returned, then each procedure).
        self.state = state
        self.host = host
        self.status = State.OPENING
        self._sendable = True  # OPENING or OPEN: the hot path reads this, not ``status``
        self._limit = host.max_outbound_bytes
        self._write_shared = transport.write_shared
        self._code: int | None = None  # the close code, once known
        self._inbound: collections.deque[str | bytes] | None = None
        self._inbound_bytes = 0  # of the frames waiting in ``_inbound`` (str: characters)
        self._runner: asyncio.Task[None] | None = None
        self._opened = False
        self._finished = False
        self._paused = False
        self._started = time.monotonic()
        #: What the host counts this connection by (the gate's slot).
        self.ticket: object = None
        host.stats.opened[info.transport] += 1
        logger.info(
            "open %s remote=%s transport=%s listener=%s path=/%s",
            info.id,
            info.remote,
            info.transport,
            info.listener,
            info.path,
        )

    def __repr__(self) -> str:
        return f"<Connection {self.info.id} {self.status.value}>"

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def closing(self) -> bool:
        return self.status is State.CLOSING or self.status is State.CLOSED

    def _move(self, event: Event) -> None:
        old = self.status
        try:
            new = TRANSITIONS[old, event]
        except KeyError:
            raise RuntimeError(f"connection {self.info.id}: {event.value} in {old.value}") from None
        self.status = new
        self._sendable = new is State.OPENING or new is State.OPEN
        if new is not old and logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %s (%s)", self.info.id, old.value, new.value, event.value)

    # --- Writer: what the callback can do ----------------------------------------------

    def send(self, frame: str | bytes) -> None:
        if not self._sendable:
            return
        if not isinstance(frame, str | bytes):
            if not isinstance(frame, bytearray | memoryview):
                raise TypeError(f"send() takes str or bytes, not {type(frame).__name__}")
            frame = bytes(frame)
        self.host.stats.frames_sent += 1
        if not self.transport.write(frame, self._limit):
            self._slow_consumer()

    def send_shared(self, frame: SharedFrame) -> None:
        """Send a frame encoded once for many connections (the fan-out path)."""
        if self._sendable and not self._write_shared(frame, self._limit):
            self._slow_consumer()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.closing:
            return
        self._code = code
        self._move(Event.CLOSE)
        self.transport.close(code, reason)

    def _slow_consumer(self) -> None:
        if self.closing:
            return
        logger.warning("closing %s: slow consumer (outbound buffer full)", self.info.id)
        self.host.stats.slow_consumers += 1
        self._code = CLOSE_SLOW_CONSUMER
        self._move(Event.ABORT)
        self.transport.abort(CLOSE_SLOW_CONSUMER, "slow consumer")

    # --- driven by the transport adapter -----------------------------------------------

    def start(self) -> None:
        """The handshake is answered: run the callback's ``open``."""
        self._kick()

    def received(self, frame: str | bytes) -> None:
        """A frame from the peer: handled in order, after those before it."""
        if self.closing:
            return
        self.host.stats.frames_in += 1
        inbound = self._inbound
        if inbound is None:
            inbound = self._inbound = collections.deque()
        inbound.append(frame)
        self._inbound_bytes += len(frame)
        host = self.host
        if not self._paused and (
            len(inbound) >= host.max_inbound_frames or self._inbound_bytes >= host.max_inbound_bytes
        ):
            self._paused = True  # TCP pushes back on the peer until we catch up
            self.transport.pause_reading()
        if self._runner is None:
            self._kick()

    def peer_closed(self, code: int | None) -> None:
        """The peer closed (or the network went) but the wire may still finish a close."""
        if self.status is State.CLOSED:
            return
        if self._code is None:
            self._code = code
        self._move(Event.PEER_CLOSED)

    def finished(self, code: int | None = None) -> None:
        """The wire is gone: nothing more can be sent or received. ``terminate`` runs once
        the callback is done with what it was doing."""
        if self._finished:
            return
        self._finished = True
        self.peer_closed(code)
        if self._runner is None:
            self._kick()

    # --- the runner ----------------------------------------------------------------------

    def _kick(self) -> None:
        if self._runner is None and self.status is not State.CLOSED:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        _current.set(self.info)  # this task's own context: the callback's current connection
        try:
            if not self._opened:
                self._opened = True
                await self._open()
            handled = 0
            host = self.host
            while inbound := self._inbound:
                frame = inbound.popleft()
                self._inbound_bytes -= len(frame)
                if not self.closing:
                    await self._handle(frame)
                if (
                    self._paused
                    and len(inbound) <= host.max_inbound_frames // 2
                    and self._inbound_bytes <= host.max_inbound_bytes // 2
                ):
                    self._paused = False
                    self.transport.resume_reading()
                handled += 1
                if handled % TURN_FRAMES == 0:
                    # A callback that never awaits would keep the loop for as long as
                    # frames come: let every other connection have its turn.
                    await asyncio.sleep(0)
            self._inbound = None
            if self._finished and self.status is not State.CLOSED:
                await self._terminate()
        finally:
            self._runner = None

    async def _open(self) -> None:
        try:
            self.state = await self.callback.open(self, self.state)
        except Exception as exc:
            self._fail("open", exc)
        self._move(Event.OPENED)

    async def _handle(self, frame: str | bytes) -> None:
        try:
            self.state = await self.callback.handle_frame(frame, self.state)
        except Exception as exc:
            self._fail("handle_frame", exc)

    async def _terminate(self) -> None:
        stats = self.host.stats
        try:
            await self.callback.terminate(self.state)
        except Exception:
            logger.exception(
                "callback %s failed in terminate on %s", self.callback.name, self.info.id
            )
        finally:
            self._move(Event.TERMINATED)
            stats.closed[self.info.transport] += 1
            self.host.release(self)
        logger.info(
            "close %s remote=%s transport=%s path=/%s duration=%.3fs code=%s",
            self.info.id,
            self.info.remote,
            self.info.transport,
            self.info.path,
            time.monotonic() - self._started,
            self._code,
        )

    def _fail(self, where: str, exc: Exception) -> None:
        if isinstance(exc, CloseConnection):
            self.close(exc.code, exc.reason)
            return
        # Logged once, with the traceback; the peer learns only that it was our fault.
        self.host.stats.errors["callback"] += 1
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
