"""TLS to RabbitMQ: the settings of ``amqps://`` URLs and the client context made from them.

Apart from ``amqp_session.py`` because the configuration check (``plan.py``) loads the same
files the same way, and must not import aio-pika to do it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from rabbitsocks.config import BrokerTlsConfig

__all__ = ["AmqpTls", "TlsFileError"]


class TlsFileError(OSError):
    """A PEM file of ``AmqpTls`` did not load; ``field`` names the setting
    (``ca_file`` or ``cert_file``, the latter for the certificate and key pair)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class AmqpTls:
    """TLS settings for ``amqps://`` URLs (PEM files)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    server_name: str | None = None

    @classmethod
    def from_config(cls, config: BrokerTlsConfig) -> AmqpTls:
        return cls(
            config.ca_file, config.cert_file, config.key_file, config.verify, config.server_name
        )

    def context(self) -> ssl.SSLContext:
        """An SSL context for these settings (reads the files; ``TlsFileError``)."""
        context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
        context.server_name = self.server_name
        if self.ca_file:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise TlsFileError("ca_file", f"cannot load {self.ca_file!r}: {exc}") from None
        elif self.verify:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise TlsFileError(
                    "cert_file",
                    f"cannot load certificate {self.cert_file!r} and key {self.key_file!r}: {exc}",
                ) from None
        return context


class _NamedContext(ssl.SSLContext):
    """An SSL context that checks (and sends as SNI) ``server_name`` instead of the host
    the connection was opened to, when set: aiormq opens the socket with the URL's host."""

    server_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = self.server_name or server_hostname
        return super().wrap_bio(incoming, outgoing, server_side, name, session)
