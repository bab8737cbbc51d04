"""The PROXY protocol header and forwarding headers (rabbitsocks/wire/proxy.py)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from multidict import CIMultiDict

from rabbitsocks.wire.proxy import (
    PROXY_V2_SIGNATURE,
    ProxyHeaderError,
    client_address,
    client_of,
    forwarding_chains,
    parse_proxy_header,
)


def v2(command: int, family: int, body: bytes) -> bytes:
    head = PROXY_V2_SIGNATURE + bytes((0x20 | command, family))
    return head + struct.pack("!H", len(body)) + body


V1_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
V2_TCP4 = v2(1, 0x11, bytes([192, 0, 2, 9, 10, 0, 0, 1]) + b"\x00\x01\x00\x02")
V2_TCP6 = v2(1, 0x21, ipaddress.IPv6Address("2001:db8::9").packed * 2 + b"\0" * 4)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (V1_TCP4 + b"GET /", ("192.0.2.1", len(V1_TCP4))),
        (V1_TCP6, ("2001:db8::1", len(V1_TCP6))),
        (b"PROXY UNKNOWN\r\n", (None, 15)),
        (b"PROXY TCP4 192.0.2.1", None),  # incomplete
        (b"PRO", None),
        (b"\r\n\r\n", None),
        (
            v2(1, 0x11, bytes([192, 0, 2, 9, 10, 0, 0, 1]) + b"\x00\x01\x00\x02") + b"GET",
            ("192.0.2.9", 28),
        ),
        (
            v2(1, 0x21, ipaddress.IPv6Address("2001:db8::9").packed * 2 + b"\0" * 4),
            ("2001:db8::9", 52),
        ),
        (v2(0, 0x00, b""), (None, 16)),  # LOCAL: a health check of the proxy's own
    ],
)
def test_headers_are_read(data: bytes, expected: tuple[str | None, int] | None) -> None:
    assert parse_proxy_header(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 not-an-ip 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 99999\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"PROXY " + b"x" * 200,
        b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x00",
        v2(5, 0x11, b"\0" * 12),
    ],
)
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


def headers(**fields: str) -> CIMultiDict[str]:
    return CIMultiDict((name.replace("_", "-"), value) for name, value in fields.items())


def test_each_forwarding_header_is_a_chain() -> None:
    chains = forwarding_chains(
        headers(
            Forwarded='for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711", for=unknown',
            X_Forwarded_For="203.0.113.1",
        )
    )
    assert chains == [["192.0.2.60", "2001:db8:cafe::17", None], ["203.0.113.1"]]
    assert forwarding_chains(headers(X_Forwarded_For="203.0.113.1, 10.0.0.2:80, junk")) == [
        ["203.0.113.1", "10.0.0.2", None]
    ]
    assert forwarding_chains(headers()) == []


TRUSTED = ipaddress.ip_network("10.0.0.0/8")


def trusted(address: str) -> bool:
    return ipaddress.ip_address(address) in TRUSTED


@pytest.mark.parametrize(
    ("peer", "chain", "client"),
    [
        ("203.0.113.5", ["1.1.1.1"], "203.0.113.5"),  # not a proxy: headers are ignored
        ("10.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("10.0.0.1", ["198.51.100.1", "203.0.113.7", "10.0.0.9"], "203.0.113.7"),
        ("10.0.0.1", ["10.0.0.3", "10.0.0.2"], "10.0.0.3"),  # all proxies: the leftmost
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.7", None], "10.0.0.1"),
    ],
)
def test_the_client_is_the_first_untrusted_hop_from_the_right(
    peer: str, chain: list[str | None], client: str
) -> None:
    assert client_address(peer, chain, trusted) == client


@pytest.mark.parametrize(
    ("chains", "client"),
    [
        ([], "10.0.0.1"),
        ([["203.0.113.7"]], "203.0.113.7"),
        ([["203.0.113.7"], ["203.0.113.7"]], "203.0.113.7"),  # both headers, one client
        ([["198.51.100.1", "203.0.113.7"], ["203.0.113.7"]], "203.0.113.7"),
        # Forwarded as the client wrote it, X-Forwarded-For as nginx appended to it (or the
        # reverse behind a proxy that writes Forwarded): neither can be believed.
        ([["198.51.100.99"], ["203.0.113.7"]], "10.0.0.1"),
        ([["203.0.113.7"], ["198.51.100.99", "203.0.113.7"]], "203.0.113.7"),
    ],
)
def test_headers_that_disagree_are_not_believed(
    chains: list[list[str | None]], client: str
) -> None:
    assert client_of("10.0.0.1", chains, trusted) == client
