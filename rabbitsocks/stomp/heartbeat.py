"""STOMP heart-beats and the CONNECT deadline, for every session of a listener, from one timer.

A STOMP session may negotiate heart-beats both ways (STOMP 1.2, "Heart-beating"): we send
an EOL when ``send_every`` milliseconds have passed, and give up on a client from which
nothing arrived for ``expect_every`` times ``GRACE``. A timer per session would cost memory
on every connection (most browsers negotiate 10 s both ways); instead the listener's STOMP
server visits its sessions with a ``transports.heartbeat.Heartbeat`` of ``VISIT`` seconds
(the same wheel that pings bare WebSockets: ten groups, one visited each tenth of the
interval), so each session is looked at once a second and no turn of the loop visits them
all. The same visit closes a session that has not sent CONNECT within its deadline.
"""

from __future__ import annotations

__all__ = ["GRACE", "VISIT"]

#: How many of the negotiated intervals may pass without a frame before a client is taken
#: for dead: the spec asks for a tolerance, stomp.js allows twice its interval too.
GRACE = 2.0
#: Seconds between two visits of a session.
VISIT = 1.0
