"""Plain counters kept by the server as it runs, read by the metrics endpoint.

Counting is an integer increment on an object the code already holds; turning counters
into Prometheus metrics happens only when ``/metrics`` is scraped (see ``metrics``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ListenerStats"]


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
