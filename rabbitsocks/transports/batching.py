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

__all__ = ["BatchedSink", "TurnBuffer", "WriteBatcher"]


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

    The base of both transports' fast paths. ``_tcp`` is the socket's TCP transport, set
    by the subclass. The first frame of a turn is kept alone (most turns carry one
    message per socket, and bytes are not tracked by the cycle collector, where a list per
    socket per message would be); a second one makes a list.
    """

    __slots__ = ("_batcher", "_pending", "_tcp")

    def __init__(self, batcher: WriteBatcher) -> None:
        self._batcher = batcher
        self._pending: bytes | list[bytes] | None = None
        self._tcp: asyncio.Transport | None = None

    def _join_turn(self, data: bytes) -> bool:
        """Put ``data`` behind this turn's frames; False when none are waiting."""
        pending = self._pending
        if pending is None:
            return False
        if isinstance(pending, bytes):
            self._pending = [pending, data]
        else:
            pending.append(data)
        return True

    def _open_turn(self, data: bytes) -> None:
        """``data`` is this turn's first frame: written, with any that follow, at its end."""
        self._pending = data
        self._batcher.add(self)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        tcp = self._tcp
        if pending and tcp is not None and not tcp.is_closing():
            tcp.write(pending if isinstance(pending, bytes) else b"".join(pending))
