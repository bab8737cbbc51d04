"""Which browser origins may open connections (the ``Origin`` header, RFC 6454).

Browsers send ``Origin`` with every WebSocket handshake and cross-origin request; checking
it stops another site's page from connecting with the user's cookies (cross-site WebSocket
hijacking). Clients that are not browsers send no ``Origin`` and are not restricted here:
they could forge any header anyway, and authorization is what stops them.

An allow-list entry is ``*`` (any origin), an exact origin (``https://app.example.com``,
``http://127.0.0.1:8080``) or a pattern whose host starts with ``*.``
(``https://*.example.com`` allows ``https://a.example.com`` and ``https://a.b.example.com``,
not ``https://example.com``).

Only well-formed origins match: ``scheme://host[:port]`` with an ``http`` or ``https``
scheme and a host that is a DNS name (letters, digits and hyphens in dot-separated labels),
an IPv4 address or a bracketed IPv6 address, and nothing else: no userinfo, path, query,
fragment or percent-escape. So ``https://evil.com#.example.com``, ``https://evil.com?.x``
or ``https://evil.com%2f.example.com`` match no pattern. Scheme and host compare
case-insensitively and a default port (80, 443) is the same as none, which is how a
browser serialises an origin (RFC 6454 section 6.1) and what entries are normalised to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

__all__ = ["OriginPolicy", "normalise_origin", "validate_origin_entry"]

# Matched with fullmatch: "$" alone would let a trailing newline through.
_SHAPE = re.compile(r"(https?)://(\*\.)?([^\[\]:/?#@\\%\s]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _dns_name(host: str) -> bool:
    """A host name of LDH labels (RFC 1123 section 2.1) whose last label is not numeric
    (a browser would read such a host as an IPv4 address)."""
    labels = host.split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _ip_literal(host: str) -> bool:
    """An IPv4 address in its canonical dotted form, or a bracketed IPv6 address."""
    try:
        if host.startswith("["):
            return ipaddress.ip_address(host[1:-1]).version == 6
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def _parse(text: str) -> tuple[str, bool, str, int | None] | None:
    """``(scheme, wildcard, host, port)`` of a well-formed origin or pattern, normalised."""
    match = _SHAPE.fullmatch(text.lower())
    if match is None:
        return None
    scheme, star, host, port_text = match.groups()
    if not (_dns_name(host) or (not star and _ip_literal(host))):
        return None
    port = int(port_text) if port_text is not None else None
    if port is not None and port > 65535:
        return None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return scheme, bool(star), host, port


def _serialise(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def normalise_origin(origin: str) -> str | None:
    """A well-formed origin as a browser serialises it; ``None`` for anything else."""
    parsed = _parse(origin)
    if parsed is None or parsed[1]:
        return None
    scheme, _, host, port = parsed
    return _serialise(scheme, host, port)


def validate_origin_entry(entry: str) -> str:
    """Return the normalised entry, or raise ``ValueError`` saying what is expected."""
    text = entry.strip()
    if text == "*":
        return text
    parsed = _parse(text.removesuffix("/"))
    if parsed is None:
        raise ValueError(
            f'expected "*", an origin like "https://app.example.com" or a pattern like'
            f' "https://*.example.com", got {entry!r}'
        )
    scheme, star, host, port = parsed
    return _serialise(scheme, f"*.{host}" if star else host, port)


class OriginPolicy:
    """An allow-list of origins; ``allows(origin)`` is the check."""

    __slots__ = ("_any", "_exact", "_patterns")

    def __init__(self, entries: Iterable[str]) -> None:
        normalised = [validate_origin_entry(entry) for entry in entries]
        self._any = "*" in normalised
        self._exact = frozenset(e for e in normalised if "://*." not in e and e != "*")
        # "https://*.example.com:8443" -> ("https", ".example.com", 8443)
        patterns = []
        for entry in normalised:
            parsed = _parse(entry)
            if parsed is not None and parsed[1]:
                scheme, _, base, port = parsed
                patterns.append((scheme, "." + base, port))
        self._patterns = tuple(patterns)

    @property
    def allows_any(self) -> bool:
        return self._any

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this ``Origin`` header may connect."""
        if origin is None or self._any:
            return True
        parsed = _parse(origin)
        if parsed is None or parsed[1]:
            return False  # not an origin a browser would send: nothing to allow
        scheme, _, host, port = parsed
        if _serialise(scheme, host, port) in self._exact:
            return True
        # The host is a whole DNS name, so what precedes the suffix is one or more labels.
        return any(
            scheme == p_scheme and port == p_port and host.endswith(suffix)
            for p_scheme, suffix, p_port in self._patterns
        )
