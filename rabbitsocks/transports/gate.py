"""The gate every connection passes before a callback sees it: origin, limits, authorization.

Every way in calls ``Gate.admit`` with a ``ConnectRequest``: a bare WebSocket handshake, a
new Engine.IO session, and each Socket.IO namespace connection on a session. The checks, in
this order, are the same for all of them:

1. ``Origin`` not on the listener's allow-list: 403.
2. The listener is shutting down: 503.
3. Too many connections on the listener or from the remote address, or new ones from
   that address too fast (``connect_rate``): 503, with ``Retry-After``. A connection
   counts from the moment it passes this check (its slot is taken before authorization
   awaits anything, so a burst of handshakes cannot all pass the count while each waits
   for its hook), until it is released.
4. Connect authorization (token, hook): the hook's answer, 401 for a bad token, 503 when
   the authorization endpoint does not answer within the handshake timeout.

What counts as a connection: a bare WebSocket, a Socket.IO namespace connection, and an
Engine.IO session that has no namespace connected (its first namespace takes over its
slot, its last namespace to leave gives it back). So a client cannot multiply connections
past the limits with namespaces, nor hold memory with handshake-only sessions.

For Socket.IO both steps pass the gate: the Engine.IO handshake (a refusal is its HTTP
answer) and then each namespace connection (a refusal is a ``connect_error`` carrying the
reason), so an authorization hook sees the handshake and then each namespace by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rabbitsocks.auth import AuthDenied, ConnectAuthorizer
from rabbitsocks.connection import ConnectRequest
from rabbitsocks.origins import OriginPolicy
from rabbitsocks.stats import ListenerStats

__all__ = ["Admission", "AttemptRate", "Closable", "Gate", "Refusal", "Registry", "Slot"]

logger = logging.getLogger("rabbitsocks.gate")


@dataclass(frozen=True, slots=True)
class Refusal:
    """The answer to a refused attempt: an HTTP status, a reason, headers, a body."""

    status: int
    reason: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None

    @property
    def payload(self) -> bytes:
        return self.body if self.body is not None else f"{self.reason}\n".encode()


class Closable(Protocol):
    """What holds a slot: closed with 1001 when the listener shuts down."""

    def close(self, code: int, reason: str) -> None: ...


class Slot:
    """One counted connection. ``owner`` is what to close at shutdown, once there is one."""

    __slots__ = ("owner", "remote")

    def __init__(self, remote: str) -> None:
        self.remote = remote
        self.owner: Closable | None = None


class Registry:
    """The connections of one listener: counted in total and per remote address."""

    __slots__ = ("_idle", "_per_address", "_slots")

    def __init__(self) -> None:
        self._slots: set[Slot] = set()
        self._per_address: dict[str, int] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Slot]:
        return iter(list(self._slots))

    def count_from(self, remote: str) -> int:
        return self._per_address.get(remote, 0)

    def take(self, remote: str) -> Slot:
        slot = Slot(remote)
        self._slots.add(slot)
        self._per_address[remote] = self._per_address.get(remote, 0) + 1
        self._idle.clear()
        return slot

    def release(self, slot: Slot) -> None:
        if slot not in self._slots:
            return
        self._slots.discard(slot)
        left = self._per_address.get(slot.remote, 1) - 1
        if left > 0:
            self._per_address[slot.remote] = left
        else:
            self._per_address.pop(slot.remote, None)
        if not self._slots:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class AttemptRate:
    """A token bucket of new connections per remote address.

    Buckets that have filled up again are forgotten (checked every ``PRUNE_EVERY`` takes),
    so the table holds only addresses that connected within the last burst/rate seconds.
    """

    PRUNE_EVERY = 1024

    __slots__ = ("_buckets", "_takes", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # remote -> (tokens, when)
        self._takes = 0

    def take(self, remote: str) -> bool:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(remote, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        self._takes += 1
        if self._takes % self.PRUNE_EVERY == 0:
            self._prune(now)
        if tokens < 1.0:
            self._buckets[remote] = (tokens, now)
            return False
        self._buckets[remote] = (tokens - 1.0, now)
        return True

    def _prune(self, now: float) -> None:
        full = self.burst / self.rate  # seconds for an empty bucket to fill
        for remote, (_, stamp) in list(self._buckets.items()):
            if now - stamp > full:
                del self._buckets[remote]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted attempt: its counted slot, and its token's claims (if any)."""

    slot: Slot
    claims: dict[str, Any] | None


class Gate:
    """The checks of one listener, shared by all its transports."""

    def __init__(
        self,
        *,
        origins: OriginPolicy,
        authorizer: ConnectAuthorizer | None,
        max_connections: int,
        max_connections_per_address: int,
        timeout: float,
        stats: ListenerStats,
        connect_rate: float = 50.0,
        connect_burst: int = 500,
    ) -> None:
        self.origins = origins
        self.authorizer = authorizer
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.timeout = timeout
        self.stats = stats
        self.registry = Registry()
        #: New connections per remote address over time.
        self.attempts = AttemptRate(connect_rate, connect_burst)
        #: Set when the listener shuts down: every attempt is refused from then on.
        self.closing = False

    def check_origin(self, request: ConnectRequest) -> Refusal | None:
        origin = request.headers.get("Origin")
        if self.origins.allows(origin):
            return None
        logger.info("refused %s from %s: origin %r", request.path, request.remote, origin)
        self.stats.errors["refused_origin"] += 1
        return Refusal(403, f"origin {origin} is not allowed")

    def take_slot(self, remote: str) -> Slot | Refusal:
        """Count one more connection from ``remote``, or say why not."""
        if self.closing:
            return Refusal(503, "server is shutting down")
        registry = self.registry
        if len(registry) >= self.max_connections:
            self.stats.errors["refused_limit"] += 1
            return Refusal(503, "too many connections", {"Retry-After": "5"})
        if registry.count_from(remote) >= self.max_connections_per_address:
            self.stats.errors["refused_limit"] += 1
            return Refusal(503, "too many connections from your address", {"Retry-After": "5"})
        if not self.attempts.take(remote):
            self.stats.errors["refused_rate"] += 1
            return Refusal(
                503, "too many connections from your address too fast", {"Retry-After": "1"}
            )
        return registry.take(remote)

    async def authorize(self, request: ConnectRequest) -> dict[str, Any] | Refusal | None:
        """The token's claims (``None`` without one), or the refusal."""
        authorizer = self.authorizer
        if authorizer is None:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await authorizer.authorize(request)
        except TimeoutError:
            self.stats.errors["refused_auth"] += 1
            return Refusal(503, "authorization timed out")
        except AuthDenied as denied:
            self.stats.errors["refused_auth"] += 1
            logger.info(
                "refused %s from %s: %s %s",
                request.path,
                request.remote,
                denied.status,
                denied.reason,
            )
            return Refusal(denied.status, denied.reason, denied.headers, denied.body)

    async def admit(self, request: ConnectRequest, slot: Slot | None = None) -> Admission | Refusal:
        """Run every check; an ``Admission`` holding a counted slot, or the refusal.

        ``slot``: one the caller holds already (an Engine.IO session's, handed to its first
        namespace), used instead of taking another.
        """
        refusal = self.check_origin(request)
        if refusal is not None:
            return refusal
        if slot is None:
            taken = self.take_slot(request.remote)
            if isinstance(taken, Refusal):
                return taken
            slot = taken
            mine = True
        else:
            mine = False
        claims = await self.authorize(request)
        if isinstance(claims, Refusal):
            if mine:
                self.registry.release(slot)
            return claims
        if self.closing:
            if mine:
                self.registry.release(slot)
            return Refusal(503, "server is shutting down")
        return Admission(slot, claims)
