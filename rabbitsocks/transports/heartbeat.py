"""Server pings for bare WebSocket connections: one timer per listener, not per connection.

aiohttp's own heartbeat keeps a timer handle per connection and moves it on every frame
received: some 700 bytes per connection, and work on the receive path. Here a listener
has one ``Heartbeat``; connections are dealt round robin into ``SLICES`` groups, and every
``interval / SLICES`` seconds one group is visited, so a listener with many connections
never pings them all in one turn of the event loop.

On each visit (once per ``interval``) a connection that received any frame since the
last visit is left alone; a quiet one is sent a ping; one that was pinged on the last
visit and is still quiet is dropped as dead. A dead peer therefore goes between one and
two intervals after its last frame.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["SLICES", "Heartbeat", "Pingable"]

#: Groups a listener's connections are visited in, one group per ``interval / SLICES``.
SLICES = 10


class Pingable(Protocol):
    def heartbeat(self) -> None:
        """Visited once per interval: ping when quiet, drop when still quiet after a ping."""
        ...


class Heartbeat:
    """The connections one listener pings, and the timer that visits them."""

    __slots__ = ("_groups", "_handle", "_next", "_step", "_turn", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._step = interval / SLICES
        self._groups: list[set[Pingable]] = [set() for _ in range(SLICES)]
        self._next = 0  # the group the next connection joins
        self._turn = 0  # the group the next tick visits
        self._handle: asyncio.TimerHandle | None = None

    def add(self, conn: Pingable) -> int:
        """Start pinging ``conn``; returns its group, for ``discard``."""
        group = self._next
        self._next = (group + 1) % SLICES
        self._groups[group].add(conn)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._step, self._tick)
        return group

    def discard(self, conn: Pingable, group: int) -> None:
        self._groups[group].discard(conn)

    def __len__(self) -> int:
        return sum(map(len, self._groups))

    def _tick(self) -> None:
        turn = self._turn
        self._turn = (turn + 1) % SLICES
        for conn in list(self._groups[turn]):  # a visit may drop, and so discard, it
            conn.heartbeat()
        if any(self._groups):
            self._handle = asyncio.get_running_loop().call_later(self._step, self._tick)
        else:
            self._handle = None  # started again by the next ``add``

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
