"""Plain counters kept by the server as it runs, read by the metrics endpoint.

Counting is an integer increment on an object the code already holds; turning counters
into Prometheus metrics happens only when ``/metrics`` is scraped (see ``metrics``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["PROBE_BUCKETS", "ListenerStats", "ProbeStats"]


@dataclass(slots=True)
class ListenerStats:
    """What happened on one listener since start-up."""

    #: Connections opened and closed, by transport ("websocket", "socketio").
    opened: Counter[str] = field(default_factory=Counter)
    closed: Counter[str] = field(default_factory=Counter)
    #: Connections closed because their outbound buffer was full (4008).
    slow_consumers: int = 0
    #: Frames received from clients.
    frames_in: int = 0
    #: Frames callbacks sent with ``writer.send`` (fan-out deliveries are the hub's).
    frames_sent: int = 0
    bytes_sent: int = 0
    #: Requests of another worker's Socket.IO session passed to it (``serve --workers``), by
    #: how: "hand-off", "relay", "forward".
    passed_on: Counter[str] = field(default_factory=Counter)
    #: Errors by kind: "callback" (a callback raised), and refused handshakes by reason
    #: ("origin", "limit", "auth", "init").
    errors: Counter[str] = field(default_factory=Counter)


#: Upper bounds (seconds) of the broker probe's latency histogram.
PROBE_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class ProbeStats:
    """A broker's end-to-end probes since start-up: passed ones by latency, and failures."""

    #: Counts per bucket of ``PROBE_BUCKETS`` (not cumulative), plus one for +Inf.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(PROBE_BUCKETS) + 1))
    latency_sum: float = 0.0
    passed: int = 0
    failed: int = 0
    #: The round trip of the last passing probe (through our own node), in seconds.
    last_latency: float | None = None

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(PROBE_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.passed += 1
        self.last_latency = seconds
