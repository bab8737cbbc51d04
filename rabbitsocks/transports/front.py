"""The first request of every TCP connection: who owns the connection from then on.

A listener's sockets accept connections into a ``FrontProtocol``, which reads the head of
the first request itself (``wire.http1``, strict and bounded) and gives the connection to
one owner for good:

* a WebSocket upgrade one of our transports wants (``/websocket/...``, an Engine.IO
  ``transport=websocket``) is answered by that transport, which then becomes the socket's
  protocol (``transport.set_protocol``): our own WebSocket wire, no aiohttp underneath;
* anything else goes to aiohttp: the listener's ``web.Server`` makes a request handler (the
  protocol aiohttp's own sites would have made), which gets the socket and the bytes read so
  far, and serves this request and any that follow on the connection.

Browsers open a new TCP connection for every WebSocket, so their upgrades are always a
first request. One that arrives later on a kept-alive connection is aiohttp's, and the
transports serve it through aiohttp (see ``transports.websocket``).

A client that has not sent a complete head within the handshake timeout is dropped, as is
one whose head is malformed or too large (answered with 400, 414, 431 or 505 and one log
line without its request target, which may carry a token).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from rabbitsocks.stats import ListenerStats
from rabbitsocks.transports import peer_address
from rabbitsocks.transports.addresses import ClientAddresses
from rabbitsocks.transports.affinity import Affinity
from rabbitsocks.transports.engineio import PATH as ENGINEIO_PATH
from rabbitsocks.wire import http1
from rabbitsocks.wire.http1 import HttpError, RequestHead, parse_request_head
from rabbitsocks.wire.proxy import ProxyHeaderError, parse_proxy_header

__all__ = ["Front", "FrontProtocol", "Upgrader"]

logger = logging.getLogger("rabbitsocks.front")


class Upgrader(Protocol):
    """A transport that serves some first requests on its own wire."""

    def wants(self, head: RequestHead) -> bool: ...

    async def upgrade(self, head: RequestHead, tcp: asyncio.Transport, rest: bytes) -> None:
        """Answer ``head`` (reading is paused) and own ``tcp`` from then on, or close it."""
        ...


class Front:
    """One listener's protocol factory for ``loop.create_server``."""

    def __init__(
        self,
        *,
        http: Callable[[], asyncio.Protocol],
        upgraders: list[Upgrader],
        timeout: float,
        stats: ListenerStats,
        addresses: ClientAddresses,
        internal: bool = False,
        affinity: Affinity | None = None,
    ) -> None:
        self.http = http
        self.upgraders = upgraders
        self.timeout = timeout
        self.stats = stats
        self.addresses = addresses
        #: Serves the workers' internal socket (see ``transports.affinity``).
        self.internal = internal
        #: With ``serve --workers``: where requests of other workers' sessions go.
        self.affinity = affinity
        self._tasks: set[asyncio.Task[Any]] = set()

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)

    def adopting(self, data: bytes, client: str) -> FrontProtocol:
        """The protocol of a connection another worker handed over, with the bytes it read
        and its client: they are its first bytes, before anything read from the socket."""
        protocol = FrontProtocol(self)
        protocol._adopted = (data, client)
        return protocol

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn_upgrade(
        self, upgrader: Upgrader, head: RequestHead, tcp: asyncio.Transport, rest: bytes
    ) -> None:
        self.spawn(self._upgrade(upgrader, head, tcp, rest))

    def pass_on(self, head: RequestHead, tcp: asyncio.Transport, data: bytes) -> bool:
        """Hand a request of another worker's session to that worker (see
        ``transports.affinity``); ``False`` when it is not one."""
        affinity = self.affinity
        if affinity is None or head.path != ENGINEIO_PATH:
            return False
        owner = affinity.foreign(head.query.get("sid"))
        if owner is None:
            return False
        client = self.addresses.resolve(tcp, head.headers)
        tcp.pause_reading()
        plain = tcp.get_extra_info("sslcontext") is None
        if not (plain and affinity.hand_off(tcp, data, owner, client)):
            self.spawn(affinity.relay(tcp, data, owner, client))
        return True

    async def _upgrade(
        self, upgrader: Upgrader, head: RequestHead, tcp: asyncio.Transport, rest: bytes
    ) -> None:
        try:
            await upgrader.upgrade(head, tcp, rest)
        except Exception:
            logger.exception("handshake from %s failed", peer_address(tcp))
            if not tcp.is_closing():
                tcp.write(http1.response(500, "internal error"))
                tcp.close()

    async def wait_upgrades(self) -> None:
        """Wait for the handshakes in progress (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))


class FrontProtocol(asyncio.Protocol):
    """A connection whose first request head is still being read."""

    __slots__ = ("_adopted", "_buffer", "_front", "_proxy_header", "_tcp", "_timer")

    def __init__(self, front: Front) -> None:
        self._front = front
        self._adopted: tuple[bytes, str] | None = None  # see ``Front.adopting``
        self._buffer = b""
        self._tcp: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._proxy_header = False  # a PROXY protocol header is still to be read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        self._tcp = cast(asyncio.Transport, transport)
        front = self._front
        addresses = front.addresses
        if front.internal:
            addresses.internal.add(transport)
            self._proxy_header = True  # a relayed connection names its client this way
        else:
            self._proxy_header = addresses.expects_proxy_header(transport)
        self._timer = asyncio.get_running_loop().call_later(front.timeout, self._too_slow)
        if self._adopted is not None:
            # Now, before the socket is read: what the client sent after the bytes the
            # other worker read must come after them (it was taken for a request head).
            data, client = self._adopted
            self._adopted = None
            self.adopted(data, client)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if self._tcp is not None:
            self._tcp.abort()

    def data_received(self, data: bytes) -> None:
        tcp = self._tcp
        assert tcp is not None
        buffer = self._buffer = self._buffer + data
        try:
            if self._proxy_header:
                buffer = self._read_proxy_header(tcp, buffer)
                if self._proxy_header:
                    return  # incomplete
            head = parse_request_head(buffer)
        except HttpError as exc:
            self._stop_timer()
            self._front.stats.errors["bad_request"] += 1
            logger.info("bad request from %s: %s (%d)", peer_address(tcp), exc.reason, exc.status)
            tcp.write(http1.response(exc.status, exc.reason))
            tcp.close()
            return
        if head is None:
            return
        self._stop_timer()
        self._buffer = b""
        if self._front.pass_on(head, tcp, buffer):
            return
        for upgrader in self._front.upgraders:
            if upgrader.wants(head):
                tcp.pause_reading()
                self._front.spawn_upgrade(upgrader, head, tcp, buffer[head.size :])
                return
        # aiohttp's, from this request on: its request handler takes the socket as a site of
        # its own would have given it, and re-reads the head from the bytes so far.
        handler = self._front.http()
        tcp.set_protocol(handler)
        handler.connection_made(tcp)
        handler.data_received(buffer)

    def adopted(self, data: bytes, client: str) -> None:
        """A connection another worker handed over: its client, and the bytes it read."""
        self._proxy_header = False  # read, if there was one, by the worker that accepted it
        if client and self._tcp is not None:
            self._front.addresses.proxied[self._tcp] = client
        if data:
            self.data_received(data)

    def _read_proxy_header(self, tcp: asyncio.Transport, buffer: bytes) -> bytes:
        """Consume the PROXY protocol header at the start of ``buffer``; what follows it."""
        if self._front.internal and not buffer.startswith((b"PROXY ", b"\r\n\r\n")):
            if len(buffer) < 6 and (b"PROXY "[: len(buffer)] == buffer or buffer == b"\r"):
                return buffer  # too short to tell yet
            self._proxy_header = False  # an internal request names its client in a header
            return buffer
        try:
            parsed = parse_proxy_header(buffer)
        except ProxyHeaderError as exc:
            raise HttpError(400, str(exc)) from None
        if parsed is None:
            return buffer
        client, size = parsed
        if client is not None:
            self._front.addresses.proxied[tcp] = client
        self._proxy_header = False
        self._buffer = buffer = buffer[size:]
        return buffer
