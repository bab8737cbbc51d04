"""Transports: what carries a connection's frames (bare WebSocket, Socket.IO).

Only this package (and the server that assembles it) imports aiohttp's web types. Each
transport owns its wire and turns it into calls on a transport-agnostic ``Connection``.
"""

import asyncio
import contextlib
import socket
import struct

#: Seconds a slow consumer's remaining buffer may drain before its TCP connection is cut.
ABORT_GRACE = 2.0

_LINGER_RESET = struct.pack("ii", 1, 0)


def cut_later(transport: asyncio.Transport, delay: float = ABORT_GRACE) -> None:
    """Reset ``transport``'s TCP connection in ``delay`` seconds unless it closed by then.

    SO_LINGER 0 makes the close a reset: the kernel drops the unsent data at once instead
    of holding it (in FIN-WAIT-1) for a peer that does not read.
    """

    asyncio.get_running_loop().call_later(delay, cut_now, transport)


def cut_now(transport: asyncio.Transport) -> None:
    """Reset ``transport``'s TCP connection (a no-op for one that closed already)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The remote IP address of a socket's transport (``""`` when it has none)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""
