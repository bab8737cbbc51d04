"""Who the client is behind a proxy: the PROXY protocol header and forwarding headers.

Pure functions, no I/O. A proxy tells the server the address of the client it relays in one
of three ways, each trusted only when the proxy itself is (see ``transports.acceptor``):

* the PROXY protocol (HAProxy's ``send-proxy``, version 1 text or version 2 binary),
  a header before the first byte of the connection;
* ``Forwarded: for=...`` (RFC 7239);
* ``X-Forwarded-For: client, proxy1, proxy2``.

``client_address`` walks a forwarding chain from the right, past every trusted proxy, to
the first address that is not one: the client. Addresses a client wrote itself at the left
of the chain are never believed past an untrusted hop, and a header the client wrote
whole (the one its proxy does not use) is never believed against the other
(``client_of``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = [
    "PROXY_V2_SIGNATURE",
    "ProxyHeaderError",
    "client_address",
    "client_of",
    "forwarding_chains",
    "parse_proxy_header",
]

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the longest valid version 1 line, CRLF included


class ProxyHeaderError(Exception):
    """A malformed PROXY protocol header."""


def parse_proxy_header(data: bytes) -> tuple[str | None, int] | None:
    """The client address a PROXY header at the start of ``data`` carries (``None`` for a
    LOCAL or UNKNOWN connection: a health check), and the bytes it takes; ``None`` while
    it is incomplete. Raises ``ProxyHeaderError`` for anything else."""
    if data[:1] == b"\r":
        if not PROXY_V2_SIGNATURE.startswith(bytes(data[:12])):
            raise ProxyHeaderError("malformed PROXY v2 signature")
        return _v2(data)
    if not b"PROXY ".startswith(bytes(data[:6])):
        raise ProxyHeaderError("expected a PROXY protocol header")
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyHeaderError("PROXY header line too long")
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY header")
    try:
        source = ipaddress.ip_address(parts[2])
        ipaddress.ip_address(parts[3])
        if not (0 <= int(parts[4]) <= 65535 and 0 <= int(parts[5]) <= 65535):
            raise ValueError
    except ValueError:
        raise ProxyHeaderError("malformed PROXY header address") from None
    if source.version != (4 if parts[1] == "TCP4" else 6):
        raise ProxyHeaderError("PROXY header address of the wrong family")
    return str(source), end + 2


def _v2(data: bytes) -> tuple[str | None, int] | None:
    if len(data) < 16:
        return None
    if data[:12] != PROXY_V2_SIGNATURE:
        raise ProxyHeaderError("malformed PROXY v2 signature")
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    if len(data) < 16 + length:
        return None
    size = 16 + length
    if version_command & 0x0F == 0:  # LOCAL: the proxy's own connection
        return None, size
    if version_command & 0x0F != 1:
        raise ProxyHeaderError("unknown PROXY v2 command")
    body = data[16:size]
    if family >> 4 == 1 and len(body) >= 12:  # AF_INET
        return str(ipaddress.IPv4Address(body[:4])), size
    if family >> 4 == 2 and len(body) >= 36:  # AF_INET6
        return str(ipaddress.IPv6Address(body[:16])), size
    if family >> 4 in (0, 3):  # AF_UNSPEC, AF_UNIX: no address to believe
        return None, size
    raise ProxyHeaderError("malformed PROXY v2 address")


def _node(text: str) -> str | None:
    """The address of a ``Forwarded`` node or an ``X-Forwarded-For`` entry, without port
    or brackets; ``None`` for an obfuscated or unknown node."""
    node = text.strip().strip('"')
    if node.startswith("["):
        node = node[1 : node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None


class Headers(Protocol):
    """Header fields that may repeat (a ``multidict``)."""

    def getall(self, key: str, default: Any) -> Sequence[str]: ...


def forwarding_chains(headers: Headers) -> list[list[str | None]]:
    """The chains of client addresses a request's forwarding headers claim, one per header
    present (``Forwarded``, then ``X-Forwarded-For``), each left (the original client) to
    right (the last proxy's client)."""
    getall = headers.getall
    chains: list[list[str | None]] = []
    forwarded = getall("Forwarded", ())
    if forwarded:
        chain: list[str | None] = []
        for value in forwarded:
            for element in value.split(","):
                for pair in element.split(";"):
                    name, _, node = pair.partition("=")
                    if name.strip().lower() == "for":
                        chain.append(_node(node))
        chains.append(chain)
    forwarded_for = getall("X-Forwarded-For", ())
    if forwarded_for:
        chains.append([_node(part) for value in forwarded_for for part in value.split(",")])
    return chains


def client_address(peer: str, chain: Sequence[str | None], trusted: Callable[[str], bool]) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, then the rightmost
    address of ``chain`` that is not one (the client of the outermost trusted proxy)."""
    address = peer
    for hop in reversed(chain):
        if not trusted(address):
            return address
        if hop is None:  # obfuscated or unknown: the trusted proxy's word ends here
            return address
        address = hop
    return address


def client_of(
    peer: str, chains: Sequence[Sequence[str | None]], trusted: Callable[[str], bool]
) -> str:
    """The client's address from every forwarding header of a request (``client_address``
    of each chain). A proxy appends to one header and passes the other on as the client
    wrote it (nginx sets ``X-Forwarded-For`` and forwards a client's ``Forwarded``; a proxy
    using ``Forwarded`` does the reverse), and which one ours wrote cannot be told from the
    request: when the headers name different clients, neither is believed and the client
    is ``peer``, the proxy itself."""
    clients = {client_address(peer, chain, trusted) for chain in chains}
    if len(clients) == 1:
        return clients.pop()
    return peer
