"""Coalescing writes: one ``transport.write`` per socket per turn of the event loop.

On the hot path most of the server's CPU is the ``send()`` system call behind each
``transport.write``. When several messages reach the same socket in one turn of the loop
(aiormq hands over a burst of deliveries together, or a callback answers and a delivery
follows), writing them separately costs one system call each. Instead, a socket's first
frame of the turn registers it with the listener's ``WriteBatcher``; later frames of the
same turn are appended; at the end of the turn every registered socket writes its frames
at once, in order. A frame waits at most until the loop has run what was already ready.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from rabbitsocks.stats import ListenerStats

__all__ = ["FLUSH_AT", "BatchedSink", "TurnBuffer", "WriteBatcher"]

#: Bytes of one turn's frames for one socket past which they are written at once rather
#: than at the end of the turn: a burst then goes to the kernel's socket buffer (which a
#: peer that reads drains), instead of counting whole against the outbound bound.
FLUSH_AT = 64 * 1024


class BatchedSink(Protocol):
    def flush(self) -> None:
        """Write what was gathered during this turn."""
        ...


class WriteBatcher:
    """The sockets that have frames waiting for the end of this turn."""

    __slots__ = ("_pending", "_scheduled")

    def __init__(self) -> None:
        self._pending: list[BatchedSink] = []
        self._scheduled = False

    def add(self, sink: BatchedSink) -> None:
        self._pending.append(sink)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._scheduled = False
        for sink in pending:
            sink.flush()


class TurnBuffer:
    """One socket's frames of this turn, written with one ``transport.write`` at its end.

    The base of the transports' own wires. ``_tcp`` is the socket's TCP transport, set by
    the subclass. The first frame of a turn is kept alone (most turns carry one message per
    socket, and bytes are not tracked by the cycle collector, where a list per socket per
    message would be); a second one makes a list. ``buffered`` counts what the peer has not
    read yet, this turn's frames included, for the outbound bound.
    """

    __slots__ = ("_batcher", "_pending", "_pending_size", "_stats", "_tcp")

    def __init__(self, batcher: WriteBatcher, stats: ListenerStats) -> None:
        self._batcher = batcher
        self._stats = stats
        self._pending: bytes | list[bytes] | None = None
        self._pending_size = 0
        self._tcp: asyncio.Transport | None = None

    @property
    def buffered(self) -> int:
        """Bytes written for the peer and not yet sent to it: this turn's and the kernel-
        side buffer's (asyncio's write buffer)."""
        tcp = self._tcp
        return self._pending_size + (tcp.get_write_buffer_size() if tcp is not None else 0)

    def _buffer(self, data: bytes) -> None:
        """Write ``data`` at the end of this turn, after the frames already waiting."""
        pending = self._pending
        self._pending_size += len(data)
        if pending is None:
            self._pending = data
            self._batcher.add(self)
        elif isinstance(pending, bytes):
            self._pending = [pending, data]
        else:
            pending.append(data)
        if self._pending_size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        size, self._pending_size = self._pending_size, 0
        tcp = self._tcp
        if pending and tcp is not None and not tcp.is_closing():
            tcp.write(pending if isinstance(pending, bytes) else b"".join(pending))
            self._stats.bytes_sent += size

    def _discard_turn(self) -> None:
        """Forget this turn's frames (a peer that is being cut reads none of them)."""
        self._pending = None
        self._pending_size = 0
