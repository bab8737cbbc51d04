"""Heartbeat: one timer per listener visits every connection once per interval."""

from __future__ import annotations

import asyncio
import time

from rabbitsocks.transports.heartbeat import SLICES, Heartbeat
from tests.support.procfs import wait_until


class Conn:
    def __init__(self, visits: asyncio.Queue[tuple[Conn, float]], hb: Heartbeat) -> None:
        self.visits = visits
        self.hb = hb
        self.ticks: list[int] = []  # the tick (its group) of each visit

    def heartbeat(self) -> None:
        self.ticks.append(self.hb._turn)
        self.visits.put_nowait((self, time.monotonic()))


async def test_every_connection_is_visited_once_per_interval_spread_over_ticks() -> None:
    interval = 0.2
    hb = Heartbeat(interval)
    visits: asyncio.Queue[tuple[Conn, float]] = asyncio.Queue()
    conns = [Conn(visits, hb) for _ in range(2 * SLICES)]
    for conn in conns:
        hb.add(conn)
    try:
        seen: dict[Conn, list[float]] = {}
        while sum(len(v) for v in seen.values()) < 2 * len(conns):
            conn, when = await asyncio.wait_for(visits.get(), 5)
            seen.setdefault(conn, []).append(when)
        assert set(seen) == set(conns)
        # Each tick visits one group of 2, not everyone at once.
        per_tick: dict[int, int] = {}
        for conn in conns:
            per_tick[conn.ticks[0]] = per_tick.get(conn.ticks[0], 0) + 1
        assert sorted(per_tick.values()) == [2] * SLICES
        for times in seen.values():
            if len(times) >= 2:  # timers never fire early: a whole interval between visits
                assert times[1] - times[0] >= interval * 0.9
    finally:
        hb.stop()


async def test_the_timer_stops_when_the_last_connection_goes() -> None:
    hb = Heartbeat(0.05)
    visits: asyncio.Queue[tuple[Conn, float]] = asyncio.Queue()
    conn = Conn(visits, hb)
    group = hb.add(conn)
    await asyncio.wait_for(visits.get(), 5)
    hb.discard(conn, group)
    assert len(hb) == 0
    # Within one more interval the timer sees nobody and does not reschedule itself.
    await wait_until(lambda: hb._handle is None, 5, "the timer to stop")
    assert visits.empty()
