"""``serve --workers N``: every request of a Socket.IO session reaches the worker that owns it.

Workers share their listening ports (SO_REUSEPORT), so the kernel hands each new TCP
connection to any of them. That is fine for a WebSocket, which is one connection, but an
Engine.IO session polling over HTTP makes many requests, on several connections; only the
worker that opened the session can serve them. So a session id starts with its owner's
number (``sid_prefix``), and a worker that receives a request for another worker's session
passes it on, in the cheapest way the connection allows:

* **Hand-off** (the first request of a plain TCP connection, polling or WebSocket upgrade):
  the socket itself moves to the owner, with the bytes read so far, over a Unix
  ``SOCK_SEQPACKET`` connection between the two workers (``SCM_RIGHTS``). When that
  connection's buffer is full (a burst), the request is relayed instead. The owner serves
  the connection from then on as if it had accepted it; the passing worker keeps nothing.
  A WebSocket that upgrades a session costs the other worker nothing after that first
  request.
* **Relay** (the first request of a TLS connection, whose encryption state cannot move):
  the bytes are piped to the owner's internal stream socket, behind a PROXY protocol line
  naming the client.
* **Forward** (a later request on a kept-alive connection aiohttp serves, from a browser
  whose connection pool mixes sessions): the request is made again to the owner's internal
  socket over HTTP, with the client's address in ``X-Rabbitsocks-Client``, and its answer
  is passed back.

The internal sockets live in a directory the supervisor creates for the run (mode 0700),
one pair per listener and worker: ``<listener>-<worker>.fd`` (hand-offs) and
``<listener>-<worker>.http`` (relays and forwards, served by the same front as the port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from rabbitsocks.transports.addresses import CLIENT_HEADER

__all__ = ["SID_DIGITS", "Affinity"]

logger = logging.getLogger("rabbitsocks.workers")

#: The first character of a session id names its worker: at most 64 workers.
SID_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
_MAX_MESSAGE = 64 * 1024
# Hop-by-hop fields (RFC 9110 section 7.6.1) and what aiohttp sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        CLIENT_HEADER.lower(),
    }
)


class Affinity:
    """Which worker owns a session, and how a request gets to it (see the module doc)."""

    def __init__(self, directory: Path, listener: int, worker: int, workers: int) -> None:
        if not 0 <= worker < workers <= len(SID_DIGITS):
            raise ValueError(f"expected 0 <= worker < workers <= {len(SID_DIGITS)}")
        self.directory = directory
        self.listener = listener
        self.worker = worker
        self.workers = workers
        self.sid_prefix = SID_DIGITS[worker]
        self._inbox: socket.socket | None = None
        #: Connected hand-off sockets: to each other worker, and from them.
        self._writers: dict[int, socket.socket] = {}
        self._readers: set[socket.socket] = set()
        self._internal: asyncio.AbstractServer | None = None
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._adopt: Callable[[socket.socket, bytes, str], None] | None = None
        #: Requests passed on to other workers, by how (the listener's ``stats.passed_on``).
        self.passed: Counter[str] = Counter()

    def path(self, worker: int, kind: str) -> str:
        return str(self.directory / f"{self.listener}-{worker}.{kind}")

    def owner(self, sid: str) -> int | None:
        """The worker a session id names, ``None`` when it names none."""
        index = SID_DIGITS.find(sid[:1]) if sid else -1
        return index if 0 <= index < self.workers else None

    def foreign(self, sid: str | None) -> int | None:
        """Another worker that owns ``sid``, or ``None`` (ours, or no session of anybody)."""
        if not sid:
            return None
        owner = self.owner(sid)
        return owner if owner is not None and owner != self.worker else None

    # --- start and stop ------------------------------------------------------------------

    async def start(
        self,
        internal: Callable[[], asyncio.Protocol],
        adopt: Callable[[socket.socket, bytes, str], None],
    ) -> None:
        """Listen on this worker's internal sockets: ``internal`` makes the protocol of a
        relayed or forwarded connection, ``adopt`` takes a handed-off socket, the bytes
        read from it and its client's address."""
        loop = asyncio.get_running_loop()
        self._adopt = adopt
        for kind in ("fd", "http"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(self.worker, kind))
        # SOCK_SEQPACKET: a connection per pair of workers, its messages kept whole (a
        # datagram socket's queue holds 10 by default: a burst of hand-offs overflowed it).
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        inbox.bind(self.path(self.worker, "fd"))
        inbox.listen(64)
        inbox.setblocking(False)
        self._inbox = inbox
        loop.add_reader(inbox.fileno(), self._accept)
        self._internal = await loop.create_unix_server(internal, self.path(self.worker, "http"))

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._inbox is not None:
            loop.remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
        for peer in self._readers:
            loop.remove_reader(peer.fileno())
            peer.close()
        self._readers.clear()
        for peer in self._writers.values():
            peer.close()
        self._writers.clear()
        if self._internal is not None:
            self._internal.close()
            self._internal = None
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        for kind in ("fd", "http"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(self.worker, kind))

    # --- hand-off --------------------------------------------------------------------------

    def hand_off(self, tcp: asyncio.Transport, data: bytes, owner: int, client: str) -> bool:
        """Move the socket of ``tcp`` (reading paused) to ``owner`` with ``data``, the bytes
        read from it; ``False`` if it could not go now (then the caller relays it)."""
        sock = tcp.get_extra_info("socket")
        if self._inbox is None or sock is None or len(data) > _MAX_MESSAGE - 256:
            return False
        message = client.encode("ascii", "replace") + b"\n" + data
        try:
            peer = self._writers.get(owner)
            if peer is None:
                peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    peer.connect(self.path(owner, "fd"))  # a local socket: at once
                except OSError:
                    peer.close()
                    raise
                peer.setblocking(False)
                self._writers[owner] = peer
            socket.send_fds(peer, [message], [sock.fileno()])
        except BlockingIOError:
            return False  # its buffer is full for now: relay this one
        except OSError as exc:
            logger.info("could not hand a connection to worker %d: %s", owner, exc)
            dead = self._writers.pop(owner, None)
            if dead is not None:
                dead.close()
            return False
        self.passed["hand-off"] += 1
        tcp.abort()  # closes our descriptor only: the owner holds its own
        return True

    def _accept(self) -> None:
        assert self._inbox is not None
        try:
            peer, _ = self._inbox.accept()
        except (BlockingIOError, InterruptedError):
            return
        peer.setblocking(False)
        self._readers.add(peer)
        asyncio.get_running_loop().add_reader(peer.fileno(), self._receive, peer)

    def _receive(self, peer: socket.socket) -> None:
        assert self._adopt is not None
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(peer, _MAX_MESSAGE, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("worker %d: reading a hand-off failed: %s", self.worker, exc)
                message, fds = b"", []
            if not message and not fds:  # the other worker is gone
                asyncio.get_running_loop().remove_reader(peer.fileno())
                self._readers.discard(peer)
                peer.close()
                return
            for extra in fds[1:]:
                os.close(extra)
            if not fds:
                continue
            client, _, data = message.partition(b"\n")
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            self._adopt(sock, data, client.decode("ascii", "replace"))

    # --- relay (TLS) -----------------------------------------------------------------------

    async def relay(self, tcp: asyncio.Transport, data: bytes, owner: int, client: str) -> None:
        """Pipe ``tcp`` (reading paused) to ``owner``'s internal socket for good."""
        loop = asyncio.get_running_loop()
        try:
            internal, back = await loop.create_unix_connection(
                lambda: _Pipe(tcp), self.path(owner, "http")
            )
        except OSError as exc:
            logger.info("could not relay a connection to worker %d: %s", owner, exc)
            tcp.abort()
            return
        self.passed["relay"] += 1
        if client:
            family, zero = ("TCP6", "::") if ":" in client else ("TCP4", "0.0.0.0")
            internal.write(f"PROXY {family} {client} {zero} 0 0\r\n".encode())
        internal.write(data)
        forth = _Pipe(internal)
        forth.reverse, back.reverse = back, forth
        tcp.set_protocol(forth)
        tcp.resume_reading()

    # --- forward (HTTP) --------------------------------------------------------------------

    async def forward(
        self, request: web.Request, owner: int, client: str, *, timeout: float
    ) -> web.StreamResponse:
        """Make ``request`` again to ``owner`` and answer with its response. The body must
        arrive within ``timeout`` seconds (408 otherwise)."""
        session = self._sessions.get(owner)
        if session is None or session.closed:
            session = self._sessions[owner] = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.path(owner, "http")),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[CLIENT_HEADER] = client
        try:
            async with asyncio.timeout(timeout):
                body = await request.read() if request.can_read_body else None
        except TimeoutError:
            late = web.Response(status=408, text=f"request body not received within {timeout:g}s\n")
            late.force_close()
            return late
        except (ConnectionError, RuntimeError):
            # The client left in the middle of its body (aiohttp raises either).
            transport = request.transport
            if transport is not None and not transport.is_closing():
                raise
            return web.Response(status=400, text="the request body did not arrive\n")
        self.passed["forward"] += 1
        try:
            async with session.request(
                request.method,
                f"http://worker{request.path_qs}",
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=answer.status, body=payload, headers=kept)
        except aiohttp.ClientError as exc:
            logger.info("could not forward a request to worker %d: %s", owner, exc)
            return web.Response(
                status=400,
                body=b'{"code":1,"message":"Session ID unknown"}',
                content_type="application/json",
            )


class _Pipe(asyncio.Protocol):
    """One direction of a relay: what its transport reads is written to ``other``. When its
    own transport cannot write fast enough, ``other`` (which feeds it) stops being read.

    An end of stream is passed on as one (a half-close) while the other direction may
    still carry an answer; once both directions have ended, both transports are closed
    (asyncio never closes a transport whose protocol kept it open at end of stream)."""

    __slots__ = ("ended", "other", "reverse")

    def __init__(self, other: asyncio.Transport) -> None:
        self.other = other
        #: The pipe of the other direction.
        self.reverse: _Pipe | None = None
        self.ended = False

    def data_received(self, data: bytes) -> None:
        self.other.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        reverse = self.reverse
        if (reverse is None or not reverse.ended) and self.other.can_write_eof():
            self.other.write_eof()
            return True  # the other direction goes on
        self.other.close()
        return False  # asyncio closes ours

    def connection_lost(self, exc: Exception | None) -> None:
        self.other.close()

    def pause_writing(self) -> None:
        self.other.pause_reading()

    def resume_writing(self) -> None:
        self.other.resume_reading()
