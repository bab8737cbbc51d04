"""The client's address, as the gate, the limits, the logs and the hooks see it.

Without a proxy it is the TCP peer. Behind proxies listed in ``trusted_proxies`` it is what
they say (``wire.proxy``): the PROXY protocol header at the start of the connection (with
``proxy_protocol``), then ``Forwarded`` and ``X-Forwarded-For``, walked from the right past
every trusted proxy (when the two name different clients, the proxy is the client: one
of them was written by the client). What anybody else says about addresses is ignored, so
a client cannot pick its own address for the per-address limit.

The internal connections of ``serve --workers`` (a request handed to the worker that owns
its Socket.IO session, see ``transports.affinity``) carry the client's address themselves:
those are trusted because they come over a Unix socket only the workers can reach.
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from collections.abc import Sequence

from rabbitsocks.transports import peer_address
from rabbitsocks.wire.proxy import Headers, client_of, forwarding_chains

__all__ = ["CLIENT_HEADER", "ClientAddresses"]

#: The header a worker forwarding a request to another puts the client's address in.
CLIENT_HEADER = "X-Rabbitsocks-Client"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddresses:
    """One listener's rules for who the client is."""

    def __init__(self, trusted_proxies: Sequence[str] = (), proxy_protocol: bool = False) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_proxies
        )
        self.proxy_protocol = proxy_protocol
        #: Clients named by a PROXY header (or a hand-off), by the connection's transport.
        self.proxied: weakref.WeakKeyDictionary[asyncio.BaseTransport, str] = (
            weakref.WeakKeyDictionary()
        )
        #: Connections that came over a workers' internal socket.
        self.internal: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    def trusted(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def expects_proxy_header(self, transport: asyncio.BaseTransport) -> bool:
        """Whether this connection starts with a PROXY protocol header."""
        return self.proxy_protocol and self.trusted(peer_address(transport))

    def resolve(self, transport: asyncio.BaseTransport | None, headers: Headers) -> str:
        """The client's address for a request on ``transport`` with ``headers``."""
        if transport is None:
            return ""
        if transport in self.internal:
            named = headers.getall(CLIENT_HEADER, ())
            if named:
                return named[0]
        peer = self.proxied.get(transport) or peer_address(transport)
        if not self.networks or not self.trusted(peer):
            return peer
        return client_of(peer, forwarding_chains(headers), self.trusted)
