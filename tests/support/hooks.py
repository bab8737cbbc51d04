"""Connect and join hooks named by import string in tests."""

from __future__ import annotations

from collections.abc import Iterable

from rabbitsocks import ConnectionInfo, ConnectRequest, Deny


def allow_if_vip(request: ConnectRequest) -> bool | Deny:
    """Allows ``?vip=yes``; refuses ``?vip=no`` with a custom 402; others with 403."""
    vip = request.query.get("vip")
    if vip == "yes":
        return True
    if vip == "no":
        return Deny(402, "pay first", {"X-Reason": "vip-only"})
    return False


async def only_public_topics(topics: list[str], connection: ConnectionInfo | None) -> Iterable[str]:
    assert connection is not None
    return [t for t in topics if t.startswith("public.")]


#: Namespaces the ``namespaces_but_secret`` hook was asked about (``None``: the handshake).
asked: list[str | None] = []


def namespaces_but_secret(request: ConnectRequest) -> bool | Deny:
    """Records what it is asked; refuses the Socket.IO namespace ``/secret``."""
    asked.append(request.namespace)
    if request.namespace == "/secret":
        return Deny(403, "not this one")
    return True


def stomp_login(request: ConnectRequest) -> bool | Deny:
    """STOMP's CONNECT credentials: alice/wonderland only."""
    credentials = (getattr(request, "login", None), getattr(request, "passcode", None))
    if credentials == ("alice", "wonderland"):
        return True
    return Deny(403, "wrong login or passcode")


async def public_destinations(
    destinations: list[str], connection: ConnectionInfo | None
) -> Iterable[str]:
    """STOMP SUBSCRIBE and SEND: destinations with a ``public.`` key only."""
    assert connection is not None
    return [d for d in destinations if d.rpartition("/")[2].startswith("public.")]
