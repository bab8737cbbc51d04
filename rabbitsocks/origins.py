"""Which browser origins may open connections (the ``Origin`` header, RFC 6454).

Browsers send ``Origin`` with every WebSocket handshake and cross-origin request; checking
it stops another site's page from connecting with the user's cookies (cross-site WebSocket
hijacking). Clients that are not browsers send no ``Origin`` and are not restricted here:
they could forge any header anyway, and authorization is what stops them.

An allow-list entry is ``*`` (any origin), an exact origin (``https://app.example.com``,
``http://127.0.0.1:8080``) or a pattern whose host starts with ``*.``
(``https://*.example.com`` allows ``https://a.example.com`` and ``https://a.b.example.com``,
not ``https://example.com``). Scheme and host compare case-insensitively; the port must
match exactly (an origin carries its port only when it is not the scheme's default).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["OriginPolicy", "validate_origin_entry"]

_ORIGIN = re.compile(r"^(https?)://(\*\.)?([a-z0-9.\-]+|\[[0-9a-f:.]+\])(:\d{1,5})?$")


def validate_origin_entry(entry: str) -> str:
    """Return the normalised entry, or raise ``ValueError`` saying what is expected."""
    text = entry.strip().lower().rstrip("/")
    if text == "*" or _ORIGIN.match(text):
        return text
    raise ValueError(
        f'expected "*", an origin like "https://app.example.com" or a pattern like'
        f' "https://*.example.com", got {entry!r}'
    )


class OriginPolicy:
    """An allow-list of origins; ``allows(origin)`` is the check."""

    __slots__ = ("_any", "_exact", "_suffixes")

    def __init__(self, entries: Iterable[str]) -> None:
        normalised = [validate_origin_entry(entry) for entry in entries]
        self._any = "*" in normalised
        self._exact = frozenset(e for e in normalised if "*." not in e and e != "*")
        # "https://*.example.com:8443" -> ("https://", ".example.com:8443")
        self._suffixes = tuple(
            (e.split("*.", 1)[0], "." + e.split("*.", 1)[1]) for e in normalised if "*." in e
        )

    @property
    def allows_any(self) -> bool:
        return self._any

    def allows(self, origin: str | None) -> bool:
        """Whether a request with this ``Origin`` header may connect."""
        if origin is None or self._any:
            return True
        origin = origin.strip().lower()
        if origin in self._exact:
            return True
        for scheme, suffix in self._suffixes:
            if origin.startswith(scheme) and origin.endswith(suffix):
                label = origin[len(scheme) : -len(suffix)]
                if label and "/" not in label and ":" not in label and "@" not in label:
                    return True
        return False
