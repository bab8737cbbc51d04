"""STOMP heart-beats and the CONNECT deadline, for every session of a listener, from one timer.

A STOMP session may negotiate heart-beats both ways (STOMP 1.2, "Heart-beating"): we send
an EOL when ``send_every`` milliseconds have passed, and give up on a client from which
nothing arrived for ``expect_every`` times ``GRACE``. A timer per session would cost memory
on every connection (most browsers negotiate 10 s both ways); instead one ``Ticker`` per
listener visits its sessions, in ``SLICES`` groups, one group every ``STEP`` seconds, so each
session is looked at once a second and no turn of the loop visits them all.

The same visit closes a session that has not sent CONNECT within its deadline.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["GRACE", "SLICES", "STEP", "Tickable", "Ticker"]

#: How many of the negotiated intervals may pass without a frame before a client is taken
#: for dead: the spec asks for a tolerance, stomp.js allows twice its interval too.
GRACE = 2.0
#: Groups of sessions, one visited each ``STEP`` seconds: every session once a second.
SLICES = 10
STEP = 0.1


class Tickable(Protocol):
    def tick(self, now: float) -> bool:
        """Visited about once a second with ``time.monotonic()``; False: stop visiting."""
        ...


class Ticker:
    """The sessions of one listener that have heart-beats or a CONNECT deadline."""

    __slots__ = ("_groups", "_handle", "_next", "_turn")

    def __init__(self) -> None:
        self._groups: list[set[Tickable]] = [set() for _ in range(SLICES)]
        self._next = 0
        self._turn = 0
        self._handle: asyncio.TimerHandle | None = None

    def add(self, session: Tickable) -> int:
        """Visit ``session`` from now on; returns its group, for ``discard``."""
        group = self._next
        self._next = (group + 1) % SLICES
        self._groups[group].add(session)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(STEP, self._tick)
        return group

    def discard(self, session: Tickable, group: int) -> None:
        self._groups[group].discard(session)

    def __len__(self) -> int:
        return sum(map(len, self._groups))

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        turn = self._turn
        self._turn = (turn + 1) % SLICES
        group = self._groups[turn]
        now = loop.time()
        for session in list(group):
            if not session.tick(now):
                group.discard(session)
        if any(self._groups):
            self._handle = loop.call_later(STEP, self._tick)
        else:
            self._handle = None

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
