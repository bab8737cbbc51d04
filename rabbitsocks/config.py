"""Configuration: YAML in, frozen dataclasses out, with one precise error per mistake.

Nothing past this module touches raw YAML. Every error is a ``ConfigError`` whose text is
one line naming the file, the key path and what was expected::

    config/x.yaml: listeners[0].websocket.heartbeat: expected a number, got 'often' (str)

The schema is the dataclasses below: a generic parser walks their type hints, so adding a
key is adding a field. A field's metadata can bound it (``above(0)``, ``at_least(1)``) or
tie it to names configured elsewhere (``one_of("brokers")``); the parser checks both, with
the key in the message. A callback module may declare an ``Options`` dataclass; the
listener's ``options`` mapping is parsed against it with the same parser, but not here:
this module is pure (no user module is imported while YAML is read), and ``plan.py``
resolves callbacks and their options once, for ``check`` and ``serve`` alike.

Environment overrides (``RABBITSOCKS_*``) are applied after the file is read; see
``ENVIRONMENT`` for the list.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from yarl import URL

from rabbitsocks.errors import ConfigError, InvalidTopic
from rabbitsocks.logs import mask_url, redact_url
from rabbitsocks.origins import validate_origin_entry
from rabbitsocks.topics import validate_topic

__all__ = [
    "DEFAULT_AMQP_URL",
    "ENVIRONMENT",
    "AuthConfig",
    "BrokerConfig",
    "BrokerTlsConfig",
    "Config",
    "HistoryConfig",
    "HookConfig",
    "Interface",
    "JwtConfig",
    "LimitsConfig",
    "ListenerConfig",
    "LogConfig",
    "RpcConfig",
    "SocketIOConfig",
    "TlsConfig",
    "WebSocketConfig",
    "above",
    "at_least",
    "check_fields",
    "default_config_path",
    "load_config",
    "one_of",
    "parse_amqp_url",
    "parse_amqp_urls",
    "parse_config",
    "parse_interface",
    "parse_options",
    "split_amqp_urls",
]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

#: Environment variables read on load, and what each overrides.
ENVIRONMENT: Mapping[str, str] = {
    "RABBITSOCKS_AMQP_URL": (
        "brokers.amqp.url: one URL, or several separated by spaces or commas"
        " (adds an amqp broker when none is configured)"
    ),
    "RABBITSOCKS_AMQP_EXCHANGE": "brokers.amqp.exchange",
    "RABBITSOCKS_DEFAULT_BROKER": "default_broker",
    "RABBITSOCKS_LISTEN": "listeners[0].interface (only when there is one listener)",
    "RABBITSOCKS_RPC_TOKEN": "rpc.token",
    "RABBITSOCKS_ADMIN": "admin (the metrics and health endpoint's interface)",
    "RABBITSOCKS_RPC_HTTP": "rpc.http",
    "RABBITSOCKS_RPC_GORIDGE": "rpc.goridge",
    "RABBITSOCKS_JWT_SECRET": "listeners[].auth.jwt.secret (every listener with auth.jwt)",
    "RABBITSOCKS_LOG_LEVEL": "log.level",
    "RABBITSOCKS_LOG_FORMAT": "log.format",
}

T = TypeVar("T")


class _Invalid(Exception):
    """A value does not fit: the message says what was expected. Internal to parsing."""


# --- field metadata the parser checks ------------------------------------------------------


def at_least(bound: float) -> dict[str, Any]:
    """Metadata of a numeric field that must be ``>= bound``."""
    return {"min": bound}


def above(bound: float) -> dict[str, Any]:
    """Metadata of a numeric field that must be ``> bound``."""
    return {"min": bound, "min_exclusive": True}


def one_of(names: str) -> dict[str, Any]:
    """Metadata of a field naming something configured elsewhere: ``one_of("brokers")``
    must be ``None`` or one of the names the parser is given as ``choices["brokers"]``."""
    return {"one_of": names}


# --- value types with their own syntax ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interface:
    """Where a listener binds. ``host`` ``None`` means every interface."""

    host: str | None
    port: int

    def __str__(self) -> str:
        if self.host is None:
            return str(self.port)
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_INTERFACE_EXPECTED = 'a port (8080) or "host:port" ("127.0.0.1:8080", "[::1]:8080")'


def parse_interface(raw: object) -> Interface:
    """Parse ``8080``, ``"8080"``, ``"127.0.0.1:8080"`` or ``"[::1]:8080"``."""
    if isinstance(raw, bool):
        raise _Invalid(f"expected {_INTERFACE_EXPECTED}, got {_show(raw)}")
    if isinstance(raw, int):
        return Interface(None, _port(raw))
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid(f"expected {_INTERFACE_EXPECTED}, got {_show(raw)}")
    text = raw.strip()
    host: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise _Invalid(f"expected {_INTERFACE_EXPECTED}, got {_show(raw)}")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise _Invalid(f'expected an IPv6 host in brackets ("[::1]:8080"), got {_show(raw)}')
    else:
        host, port_text = None, text
    if not port_text.isdigit():
        raise _Invalid(f"expected {_INTERFACE_EXPECTED}, got {_show(raw)}")
    return Interface(host or None, _port(int(port_text)))


def parse_private_interface(raw: object) -> Interface | None:
    """Like ``parse_interface``, but a bare port binds 127.0.0.1, never every interface:
    RPC and admin endpoints are for back ends and operators, not for the internet."""
    if raw is None:
        return None
    interface = parse_interface(raw)
    if interface.host is None:
        return Interface("127.0.0.1", interface.port)
    return interface


def _port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise _Invalid(f"expected a port between 0 and 65535, got {port}")
    return port


# --- the schema --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """A TLS certificate chain and its private key, both PEM files."""

    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """Bare WebSocket on ``/websocket/<path>``."""

    #: Interval of server pings: a connection silent for an interval is pinged, and cut if
    #: still silent an interval later. 0 turns server pings off (client pings are always
    #: answered).
    heartbeat: float = field(default=20.0, metadata=at_least(0))
    #: Largest message accepted from a client, in bytes; larger ones close with 1009.
    max_frame_size: int = field(default=1024 * 1024, metadata=at_least(1))
    #: Negotiate permessage-deflate (RFC 7692). It costs CPU and ~100 KiB per connection.
    compress: bool = False


@dataclass(frozen=True, slots=True)
class SocketIOConfig:
    """Socket.IO (protocol v5, Engine.IO v4) on ``/socket.io/``."""

    enabled: bool = True
    #: Engine.IO ping interval and timeout, in seconds.
    ping_interval: float = field(default=25.0, metadata=above(0))
    ping_timeout: float = field(default=20.0, metadata=above(0))
    #: Largest Engine.IO message or polling payload accepted from a client, in bytes (and
    #: largest total of one binary packet's attachments).
    max_frame_size: int = field(default=1024 * 1024, metadata=at_least(1))
    #: Engine.IO packets one polling request may carry.
    max_packets_per_payload: int = field(default=4096, metadata=at_least(1))
    #: Transports clients may use: ``polling`` (HTTP long-polling, socket.io-client's first
    #: step unless told otherwise) and ``websocket``. Without ``polling``, a load balancer
    #: needs no sticky sessions (every session is one WebSocket connection).
    transports: tuple[Literal["polling", "websocket"], ...] = ("polling", "websocket")
    #: A cookie set on the Engine.IO handshake holding the session id, for load balancers
    #: that stick a client to a server by cookie (``null``: none).
    cookie: str | None = None


def _parse_origins(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise _Invalid(f'expected a list of origins (["*"] allows any), got {_show(raw)}')
    for entry in raw:
        if not isinstance(entry, str):
            raise _Invalid(f"expected each origin to be a string, got {_show(entry)}")
    try:
        return tuple(validate_origin_entry(entry) for entry in raw)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _parse_networks(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise _Invalid(f'expected a list of networks (["10.0.0.0/8", "::1"]), got {_show(raw)}')
    networks = []
    for entry in raw:
        try:
            networks.append(str(ipaddress.ip_network(str(entry).strip(), strict=False)))
        except ValueError:
            raise _Invalid(
                f'expected an address or a network ("10.0.0.0/8", "::1"), got {_show(entry)}'
            ) from None
    return tuple(networks)


def _parse_origins_or_none(raw: object) -> tuple[str, ...]:
    return () if raw in (None, []) else _parse_origins(raw)


@dataclass(frozen=True, slots=True)
class HookConfig:
    """An authorization decision delegated to a Python callable or an HTTP endpoint."""

    #: ``"package.module:function"``, called with the request (and topics, for joins).
    callable: str | None = None
    #: An endpoint rabbitsocks POSTs the request to, as JSON; 200 allows.
    url: str | None = None
    #: Seconds to wait for the endpoint; no answer in time refuses (connect: 503).
    timeout: float = field(default=5.0, metadata=above(0))

    def __post_init__(self) -> None:
        if (self.callable is None) == (self.url is None):
            raise ValueError("expected exactly one of callable and url")
        if self.url is not None:
            _check_http_url(self.url)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """JSON Web Tokens checked at connect time; their claims reach the callbacks."""

    #: Shared secret for HS256/HS384/HS512; ``RABBITSOCKS_JWT_SECRET`` overrides it.
    secret: str | None = None
    #: PEM file with the RSA public key for RS256/RS384/RS512.
    public_key: str | None = None
    algorithms: tuple[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512"], ...] = (
        "HS256",
    )
    #: Query parameter carrying the token (``Authorization: Bearer`` works too).
    query_param: str = "token"
    audience: str | None = None
    issuer: str | None = None
    #: Refuse connections without a token (401). When false, they connect without claims.
    required: bool = True


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Connect authorization: a token, a hook, or both (the token is checked first)."""

    jwt: JwtConfig | None = None
    connect: HookConfig | None = None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-connection resource limits."""

    #: Open connections on this listener; more are refused with HTTP 503.
    max_connections: int = field(default=20_000, metadata=at_least(1))
    #: Open connections from one remote address; more are refused with HTTP 503.
    max_connections_per_address: int = field(default=1_000, metadata=at_least(1))
    #: New connections per second from one remote address (a token bucket; Socket.IO
    #: namespace connections count), and the burst above that rate; more get HTTP 503
    #: (or a Socket.IO ``connect_error``) with ``Retry-After``. Bounds churn: connecting
    #: and leaving in a loop costs the server (and its log) at most this much.
    connect_rate: float = field(default=50.0, metadata=above(0))
    connect_burst: int = field(default=500, metadata=at_least(1))
    #: Seconds a client has to send its handshake request (and a polling POST its body),
    #: and the server to authorize it.
    handshake_timeout: float = field(default=10.0, metadata=above(0))

    #: Bytes queued for one peer before it is closed as a slow consumer (4008).
    max_outbound_bytes: int = field(default=1024 * 1024, metadata=at_least(1))
    #: Frames queued for one peer before it is closed as a slow consumer (4008).
    max_outbound_frames: int = field(default=4096, metadata=at_least(1))
    #: Frames received and not yet handled before reading from the peer pauses.
    max_inbound_frames: int = field(default=256, metadata=at_least(1))
    #: Bytes of frames received and not yet handled before reading pauses.
    max_inbound_bytes: int = field(default=1024 * 1024, metadata=at_least(1))


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One port, its callback module and the callback's options."""

    interface: Interface = field(metadata={"parse": parse_interface})
    #: Import string of the callback module: ``package.module`` or ``package.module:attr``.
    callback: str = "callbacks.pubsub"
    #: Handed to the callback's ``init``: a mapping, or the callback's ``Options`` dataclass.
    options: Any = field(default_factory=dict)
    tls: TlsConfig | None = None
    #: Browser origins allowed to connect: ``"*"``, exact origins, ``https://*.example.com``.
    origins: tuple[str, ...] = field(default=("*",), metadata={"parse": _parse_origins})
    auth: AuthConfig = field(default_factory=AuthConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    socketio: SocketIOConfig = field(default_factory=SocketIOConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: Serve the demo page on ``GET /`` (built by ``scripts/build-demo``).
    demo: bool = False
    #: Networks of the proxies and load balancers in front of this listener (CIDR or
    #: address). Only from them are ``Forwarded``/``X-Forwarded-For`` (and the PROXY
    #: protocol, with ``proxy_protocol``) believed about the client's address.
    trusted_proxies: tuple[str, ...] = field(default=(), metadata={"parse": _parse_networks})
    #: Connections from ``trusted_proxies`` start with a PROXY protocol header (v1 or v2,
    #: HAProxy's ``send-proxy``) naming the client.
    proxy_protocol: bool = False
    #: The key path of this listener in its file (``listeners[0]``), for error messages.
    key: str = field(default="listeners[0]", metadata={"yaml": False})

    @property
    def name(self) -> str:
        return str(self.interface)


_URL_EXPECTED = "an amqp:// or amqps:// URL"


def parse_amqp_url(raw: object) -> str:
    """Check one AMQP URL the way the connection will read it (yarl, as aiormq does).

    A comma-separated list in one string used to pass here and then fail at every
    reconnect with "port can't be converted to integer": several URLs are a YAML list.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid(f"expected {_URL_EXPECTED}, got {_show(raw)}")
    text = raw.strip()
    shown = _show(mask_url(text))
    if not text.startswith(("amqp://", "amqps://")):
        raise _Invalid(f"expected {_URL_EXPECTED}, got {shown}")
    if re.search(r"[\s,]amqps?://", text):
        several = _show(", ".join(mask_url(u) for u in split_amqp_urls(text)))
        raise _Invalid(
            f"expected one URL, got several in one string {several}: write them as a YAML list"
            " (or, in RABBITSOCKS_AMQP_URL, separated by spaces or commas)"
        )
    try:
        url = URL(text)
        host, port = url.host, url.port
    except ValueError as exc:
        raise _Invalid(f"expected {_URL_EXPECTED}, got {shown}: {exc}") from None
    if not host:
        raise _Invalid(f"expected {_URL_EXPECTED} with a host, got {shown}")
    if port is not None and not 0 < port < 65536:
        raise _Invalid(f"expected a port between 1 and 65535, got {shown}")
    return text


def parse_amqp_urls(raw: object) -> tuple[str, ...]:
    """``url:`` as one URL or a list of them, tried in turn (failover)."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _Invalid(f"expected {_URL_EXPECTED} or a list of them, got an empty list")
    urls = []
    for index, item in enumerate(items):
        try:
            urls.append(parse_amqp_url(item))
        except _Invalid as exc:
            raise _Invalid(f"[{index}]: {exc}" if isinstance(raw, list) else str(exc)) from None
    return tuple(urls)


def split_amqp_urls(text: str) -> tuple[str, ...]:
    """The URLs of ``RABBITSOCKS_AMQP_URL``: one, or several separated by spaces or commas
    (a comma separates only before ``amqp://`` or ``amqps://``, so a password may hold one)."""
    return tuple(p for p in re.split(r"\s+|,\s*(?=amqps?://)", text.strip()) if p)


@dataclass(frozen=True, slots=True)
class BrokerTlsConfig:
    """TLS to RabbitMQ, for ``amqps://`` URLs. Without a CA file the system's CAs verify."""

    #: PEM file of the CA(s) that signed RabbitMQ's certificate.
    ca_file: str | None = None
    #: A client certificate chain and its key (PEM), for RabbitMQ's peer verification.
    cert_file: str | None = None
    key_file: str | None = None
    #: Verify RabbitMQ's certificate and host name. Off only for tests.
    verify: bool = True
    #: The name to check RabbitMQ's certificate against (and send as SNI), when it is not
    #: the URL's host (for example a URL with an IP address).
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise ValueError(f"{missing}: expected both cert_file and key_file, or neither")


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """A topic pattern whose messages a broker keeps in a log, so that clients can resume
    (``brokers.<name>.history[]``; see docs/protocol.md, "Resuming")."""

    #: The pattern (AMQP topic syntax): every message whose routing key it matches is kept.
    topics: str
    #: Retention: seconds a message is kept (RabbitMQ: the stream's ``x-max-age``).
    max_age: float = field(default=600.0, metadata=above(0))
    #: Retention: bytes the log may hold (RabbitMQ: ``x-max-length-bytes``, on disk; memory
    #: broker: bodies and routing keys, in memory).
    max_bytes: int = field(default=64 * 1024 * 1024, metadata=at_least(1))
    #: Retention: messages the log may hold (memory broker only; RabbitMQ streams retain by
    #: age and bytes).
    max_messages: int | None = field(default=None, metadata=at_least(1))
    #: Most messages one resume replays; a resume that misses more gets ``recovered: false``.
    replay_limit: int = field(default=1000, metadata=at_least(1))
    #: Most bytes of bodies one resume replays; past it, ``recovered: false``.
    replay_bytes: int = field(default=256 * 1024, metadata=at_least(1))
    #: Seconds a resume may wait: for RabbitMQ to replay, or for this process to reach a
    #: position another process delivered already.
    resume_timeout: float = field(default=10.0, metadata=above(0))
    #: RabbitMQ only: the stream queue's name (default ``rabbitsocks.history.<exchange>.<topics>``).
    stream: str | None = None
    #: RabbitMQ only: ``x-stream-max-segment-size-bytes``; retention deletes whole segments
    #: (default: ``max_bytes / 8``, at most RabbitMQ's 500 MB).
    segment_bytes: int | None = field(default=None, metadata=at_least(1))
    #: RabbitMQ only: the recent messages each process keeps in memory, so that most resumes
    #: do not read RabbitMQ.
    cache_messages: int = field(default=10_000, metadata=at_least(1))
    cache_bytes: int = field(default=16 * 1024 * 1024, metadata=at_least(1))

    def __post_init__(self) -> None:
        try:
            validate_topic(self.topics, wildcards=True)
        except InvalidTopic as exc:
            raise ValueError(
                f"topics: expected a topic pattern, got {self.topics!r}: {exc}"
            ) from None

    def stream_name(self, exchange: str) -> str:
        """The RabbitMQ stream queue that holds this pattern's log."""
        return self.stream or f"rabbitsocks.history.{exchange}.{self.topics}"

    @property
    def stream_segment_bytes(self) -> int:
        if self.segment_bytes is not None:
            return self.segment_bytes
        return max(4096, min(500_000_000, self.max_bytes // 8))


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """A message broker the pub/sub callback and RPC can use by name."""

    type: Literal["amqp", "memory"] = "amqp"
    #: AMQP URL(s) (``amqp://`` or ``amqps://``), tried in turn: one string or a list of the
    #: nodes of one cluster. ``RABBITSOCKS_AMQP_URL`` overrides it.
    url: tuple[str, ...] = field(default=(DEFAULT_AMQP_URL,), metadata={"parse": parse_amqp_urls})
    #: The topic exchange; declared (durable) when it is not a built-in ``amq.*`` one.
    exchange: str = "amq.topic"
    #: Seconds to wait for a publisher confirm before a publish's outcome is unknown. Below
    #: ``rpc.confirm_timeout``, so that RPC can tell "unknown" (504) apart.
    confirm_timeout: float = field(default=5.0, metadata=above(0))
    #: AMQP prefetch (unacknowledged deliveries in flight) of the process's queue.
    prefetch: int = field(default=2000, metadata=at_least(0))
    #: Seconds between reconnect attempts: from ``reconnect_min``, doubling (with jitter)
    #: up to ``reconnect_max``. Messages published while the bridge is reconnecting are
    #: not delivered, so a short ceiling loses fewer after an outage.
    reconnect_min: float = field(default=0.5, metadata=above(0))
    reconnect_max: float = field(default=10.0, metadata=above(0))
    #: Seconds a connection attempt (and each control request) may take.
    connect_timeout: float = field(default=5.0, metadata=above(0))
    #: AMQP heartbeat in seconds (0: off). A connection silent for about three times this
    #: is dropped, so a hung node is left in seconds rather than minutes.
    heartbeat: int = field(default=10, metadata=at_least(0))
    #: Seconds between end-to-end probes (a message to our own queue, expected back);
    #: 0 turns the probe off.
    probe_interval: float = field(default=2.0, metadata=at_least(0))
    #: Seconds a probe may take before the node is taken as not delivering: ``/ready`` says
    #: 503, and the broker leaves that node for the next URL.
    probe_timeout: float = field(default=3.0, metadata=above(0))
    #: Return to the first URL once it answers again (only with several URLs).
    rebalance: bool = False
    #: Seconds between attempts to return to the first URL.
    rebalance_interval: float = field(default=30.0, metadata=above(0))
    tls: BrokerTlsConfig = field(default_factory=BrokerTlsConfig)
    #: Topic patterns whose messages are kept so that clients can resume (docs/protocol.md).
    history: tuple[HistoryConfig, ...] = ()
    #: Resumes reading RabbitMQ at once in one process (those older than its memory); more
    #: wait their turn.
    history_replays: int = field(default=16, metadata=at_least(1))

    def __post_init__(self) -> None:
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise ValueError("expected 0 < reconnect_min <= reconnect_max")
        if self.heartbeat > 65535:
            # Connection.Tune's heartbeat is a short (AMQP 0-9-1, section 1.4.2.6).
            raise ValueError(f"heartbeat: expected at most 65535 seconds, got {self.heartbeat}")


@dataclass(frozen=True, slots=True)
class RpcConfig:
    """RPC publishing endpoints (Publish, PublishAsync); each is off when unset."""

    #: goridge TCP (RoadRunner's RPC protocol). A bare port binds 127.0.0.1.
    goridge: Interface | None = field(default=None, metadata={"parse": parse_private_interface})
    #: HTTP, ``POST /rpc/<method>``. A bare port binds 127.0.0.1.
    http: Interface | None = field(default=None, metadata={"parse": parse_private_interface})
    #: Bearer token required by the HTTP endpoint; ``RABBITSOCKS_RPC_TOKEN`` overrides it.
    token: str | None = None
    #: Largest request accepted, in bytes of protobuf.
    max_request_size: int = field(default=1024 * 1024, metadata=at_least(1))
    #: Seconds ``Publish`` waits for the broker's confirms of a whole request.
    confirm_timeout: float = field(default=10.0, metadata=above(0))
    #: Seconds a request may take to arrive once its first byte did (a goridge frame, an
    #: HTTP body); a slower one is cut, so that a stalled sender holds no buffer for long.
    read_timeout: float = field(default=10.0, metadata=above(0))
    #: Open goridge connections; more are refused with a ``busy`` error.
    goridge_max_connections: int = field(default=1024, metadata=at_least(1))
    #: Seconds a goridge connection may stay silent between calls before it is closed; 0
    #: never closes it (RoadRunner's PHP relay does not reconnect after the server hangs up).
    goridge_idle_timeout: float = field(default=0.0, metadata=at_least(0))
    #: Browser origins allowed to call the HTTP endpoint (CORS), besides the pages of
    #: listeners with ``demo: true``. Back ends send no ``Origin`` and are not affected.
    cors_origins: tuple[str, ...] = field(default=(), metadata={"parse": _parse_origins_or_none})

    @property
    def enabled(self) -> bool:
        return self.goridge is not None or self.http is not None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file."""

    listeners: tuple[ListenerConfig, ...]
    #: Brokers by name. ``memory`` always exists, whether listed or not.
    brokers: Mapping[str, BrokerConfig] = field(default_factory=dict)
    #: The broker used when a command or listener names none: ``amqp`` when such a broker is
    #: configured, else ``memory``.
    default_broker: str | None = None
    rpc: RpcConfig = field(default_factory=RpcConfig)
    #: Admin endpoint (``/metrics``, ``/health``, ``/ready``); off when unset. A bare port
    #: binds 127.0.0.1.
    admin: Interface | None = field(default=None, metadata={"parse": parse_private_interface})
    log: LogConfig = field(default_factory=LogConfig)
    #: Seconds allowed for a graceful shutdown before remaining connections are dropped.
    shutdown_timeout: float = field(default=10.0, metadata=at_least(0))
    #: Where this configuration came from, for error messages.
    source: str = field(default="<config>", metadata={"yaml": False})

    @property
    def broker_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("memory", *self.brokers)))

    @property
    def effective_default_broker(self) -> str:
        if self.default_broker is not None:
            return self.default_broker
        return "amqp" if "amqp" in self.brokers else "memory"


# --- the generic parser ------------------------------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


_EXPECTED_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


#: Names configured elsewhere that ``one_of`` fields refer to: ``{"brokers": (...)}``.
Choices = Mapping[str, Sequence[str]]


def _parse_value(tp: Any, raw: object, key: str, choices: Choices | None = None) -> Any:
    """Parse ``raw`` as type ``tp``; raise ``_KeyedInvalid`` naming ``key`` on a mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return raw
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(inner, raw, key, choices)
    if origin is Literal:
        if raw in args and type(raw) is type(args[0]):
            return raw
        names = ", ".join(repr(a) for a in args)
        raise _KeyedInvalid(key, f"expected one of {names}, got {_show(raw)}")
    if tp in _EXPECTED_NAMES:
        ok = (
            isinstance(raw, bool)
            if tp is bool
            else isinstance(raw, tp if tp is not float else (int, float))
            and not isinstance(raw, bool)
        )
        if not ok:
            raise _KeyedInvalid(key, f"expected {_EXPECTED_NAMES[tp]}, got {_show(raw)}")
        if tp is float and not math.isfinite(raw):  # type: ignore[arg-type]
            raise _KeyedInvalid(key, f"expected a finite number, got {_show(raw)}")
        return float(raw) if tp is float else raw  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(raw, list):
            raise _KeyedInvalid(key, f"expected a list, got {_show(raw)}")
        return tuple(
            _parse_value(args[0], item, f"{key}[{i}]", choices) for i, item in enumerate(raw)
        )
    if origin in (Mapping, dict):
        if not isinstance(raw, dict):
            raise _KeyedInvalid(key, f"expected a mapping, got {_show(raw)}")
        out = {}
        for name, value in raw.items():
            if not isinstance(name, str):
                raise _KeyedInvalid(key, f"expected string keys, got {_show(name)}")
            out[name] = _parse_value(args[1], value, f"{key}.{name}", choices)
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, raw, key, choices)
    raise TypeError(f"no parser for {tp!r}")  # a bug in the schema, not in the file


class _KeyedInvalid(Exception):
    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def _parse_dataclass(cls: type[T], raw: object, key: str, choices: Choices | None = None) -> T:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _KeyedInvalid(key, f"expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}  # type: ignore[arg-type]
    for name in raw:
        if name not in fields:
            where = f"{key}.{name}" if key else str(name)
            known = ", ".join(fields)
            expected = f"expected one of: {known}" if known else "expected no keys here"
            raise _KeyedInvalid(where, f"unknown key ({expected})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        where = f"{key}.{name}" if key else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _KeyedInvalid(where, "missing required key")
            continue
        parse: Callable[[object], Any] | None = f.metadata.get("parse")
        if parse is not None:
            try:
                values[name] = parse(raw[name])
            except _Invalid as exc:
                raise _KeyedInvalid(where, str(exc)) from None
        else:
            values[name] = _parse_value(hints[name], raw[name], where, choices)
        _check_field(f.metadata, values[name], where, choices, hints[name])
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        # __post_init__ checks (ours, a callback's Options) land here; one that starts with
        # a field's name ("url: expected ...") is reported at that field's key.
        name, sep, rest = str(exc).partition(": ")
        if sep and name in fields:
            raise _KeyedInvalid(f"{key}.{name}" if key else name, rest) from None
        raise _KeyedInvalid(key, str(exc)) from None


def _check_field(
    meta: Mapping[str, Any], value: Any, where: str, choices: Choices | None, tp: Any
) -> None:
    """The checks a field's metadata asks for (``at_least``, ``above``, ``one_of``);
    ``tp`` is the field's type, for the message."""
    bound = meta.get("min")
    if bound is not None and isinstance(value, int | float):
        exclusive = meta.get("min_exclusive", False)
        if not (value > bound if exclusive else value >= bound) or not math.isfinite(value):
            what = "an integer" if int in (tp, *typing.get_args(tp)) else "a number"
            shown = int(value) if isinstance(value, float) and value.is_integer() else value
            op = ">" if exclusive else ">="
            raise _KeyedInvalid(where, f"expected {what} {op} {bound:g}, got {shown!r}")
    names = meta.get("one_of")
    if names is not None and value is not None and choices is not None and names in choices:
        known = choices[names]
        if value not in known:
            raise _KeyedInvalid(
                where, f"expected one of the configured {names} ({', '.join(known)}), got {value!r}"
            )


def check_fields(
    obj: Any, key: str, choices: Choices | None = None, *, source: str = "<api>"
) -> None:
    """Check a dataclass built in code (not parsed) as the parser checks one it builds:
    the metadata of its fields and of the dataclasses it holds. ``ConfigError`` if not."""
    try:
        _check_fields(obj, key, choices)
    except _KeyedInvalid as exc:
        raise ConfigError(source, exc.key, exc.message) from None


def _check_fields(obj: Any, key: str, choices: Choices | None) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{key}.{f.name}" if key else f.name
        _check_field(f.metadata, value, where, choices, hints[f.name])
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _check_fields(value, where, choices)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item) and not isinstance(item, type):
                    _check_fields(item, f"{where}[{i}]", choices)


def _check_http_url(url: str) -> None:
    """An authorization endpoint must be an http(s) URL a client can use as written."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number: a password with an unencoded "/"?
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(
            f"url: expected an http(s) URL (percent-encode a password's reserved"
            f" characters), got {redact_url(url)!r}"
        )


# --- loading -----------------------------------------------------------------------------


def default_config_path() -> Path:
    """``config/default.yaml``: shipped in the wheel as ``rabbitsocks/default.yaml``."""
    packaged = resources.files("rabbitsocks").joinpath("default.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "config" / "default.yaml"


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, validate and return a configuration file (the default one when ``path`` is None).

    Raises ``ConfigError`` on the first mistake found. Callback modules are not imported
    here (their options stay a raw mapping): see ``rabbitsocks.plan``.
    """
    file = Path(path) if path is not None else default_config_path()
    source = str(path) if path is not None else str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, where, f"not valid YAML: {problem}") from None
    return parse_config(raw, source=source, environ=environ)


def parse_config(
    raw: object,
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already-parsed YAML document. See ``load_config``."""
    env = os.environ if environ is None else environ
    try:
        config = _parse_dataclass(Config, raw, "")
    except _KeyedInvalid as exc:
        raise ConfigError(source, exc.key, exc.message) from None
    if not config.listeners:
        raise ConfigError(source, "listeners", "expected at least one listener")
    config = dataclasses.replace(
        config,
        source=source,
        listeners=tuple(
            dataclasses.replace(listener, key=f"listeners[{i}]")
            for i, listener in enumerate(config.listeners)
        ),
    )
    config = _apply_environment(config, env)
    _check_brokers(config)
    return config


def _check_brokers(config: Config) -> None:
    for name, broker in config.brokers.items():
        if name == "memory" and broker.type != "memory":
            raise ConfigError(config.source, "brokers.memory.type", "expected 'memory'")
        if broker.type == "amqp":
            for index, url in enumerate(broker.url):
                key = f"brokers.{name}.url" + (f"[{index}]" if len(broker.url) > 1 else "")
                try:
                    parse_amqp_url(url)
                except _Invalid as exc:
                    raise ConfigError(config.source, key, str(exc)) from None
            tls = broker.tls
            if tls != BrokerTlsConfig() and not any(u.startswith("amqps:") for u in broker.url):
                raise ConfigError(
                    config.source,
                    f"brokers.{name}.tls",
                    "set, but no URL is amqps:// (TLS applies to amqps:// URLs only)",
                )
            for attr in ("ca_file", "cert_file", "key_file"):
                path = getattr(tls, attr)
                if path is not None and not os.path.isfile(path):
                    raise ConfigError(
                        config.source, f"brokers.{name}.tls.{attr}", f"no such file: {path!r}"
                    )
        _check_history(config.source, f"brokers.{name}", broker)
    default = config.effective_default_broker
    if default not in config.broker_names:
        raise ConfigError(
            config.source,
            "default_broker",
            f"expected one of the configured brokers ({', '.join(config.broker_names)}),"
            f" got {default!r}",
        )
    for listener in config.listeners:
        jwt = listener.auth.jwt
        if jwt is None:
            continue
        key = f"{listener.key}.auth.jwt"
        hs = any(a.startswith("HS") for a in jwt.algorithms)
        rs = any(a.startswith("RS") for a in jwt.algorithms)
        if hs and not jwt.secret:
            raise ConfigError(
                config.source,
                f"{key}.secret",
                "expected a secret for HS algorithms (or set RABBITSOCKS_JWT_SECRET)",
            )
        if rs and not jwt.public_key:
            raise ConfigError(
                config.source, f"{key}.public_key", "expected a PEM file for RS algorithms"
            )
    ports: dict[int, str] = {}
    endpoints = [(f"{li.key}.interface", li.interface) for li in config.listeners]
    endpoints += [
        (key, iface)
        for key, iface in (
            ("rpc.goridge", config.rpc.goridge),
            ("rpc.http", config.rpc.http),
            ("admin", config.admin),
        )
        if iface is not None
    ]
    for key, interface in endpoints:
        port = interface.port
        if port and port in ports:
            raise ConfigError(
                config.source,
                key,
                f"port {port} is already used by {ports[port]} (expected a distinct port)",
            )
        ports[port] = key.removesuffix(".interface")


_AMQP_ONLY_HISTORY = ("stream", "segment_bytes", "cache_messages", "cache_bytes")


def _check_history(source: str, key: str, broker: BrokerConfig) -> None:
    """What one history entry cannot say about itself: keys of the other broker type,
    a pattern listed twice, a stream name RabbitMQ would refuse."""
    seen: dict[str, int] = {}
    defaults = HistoryConfig("#")
    for i, history in enumerate(broker.history):
        where = f"{key}.history[{i}]"
        if history.topics in seen:
            raise ConfigError(
                source,
                f"{where}.topics",
                f"expected each pattern once, got {history.topics!r} again"
                f" (also {key}.history[{seen[history.topics]}])",
            )
        seen[history.topics] = i
        if broker.type == "memory":
            for name in _AMQP_ONLY_HISTORY:
                if getattr(history, name) != getattr(defaults, name):
                    raise ConfigError(
                        source, f"{where}.{name}", "applies to RabbitMQ (type: amqp) only"
                    )
            continue
        if history.max_messages is not None:
            raise ConfigError(
                source,
                f"{where}.max_messages",
                "RabbitMQ streams retain by age and bytes only (use max_age, max_bytes)",
            )
        name = history.stream_name(broker.exchange)
        if len(name.encode("utf-8")) > 255 or name.startswith("amq."):
            raise ConfigError(
                source,
                f"{where}.stream",
                f"expected a queue name of at most 255 bytes not starting with 'amq.',"
                f" got {_show(name)}",
            )
    names = [h.stream_name(broker.exchange) for h in broker.history]
    if broker.type == "amqp" and len(set(names)) != len(names):
        raise ConfigError(source, f"{key}.history", "expected a distinct stream per pattern")


def parse_options(
    schema: type[Any] | None, raw: object, key: str = "options", choices: Choices | None = None
) -> Any:
    """A listener's options parsed against a callback's ``Options`` dataclass (``schema``):
    a mapping is parsed, an instance is checked; without a schema the mapping is kept as is.
    ``choices`` gives the names ``one_of`` fields may take. Raises ``ConfigError`` with
    ``source`` left to the caller (``<options>``); ``plan.py`` is where it is called."""
    try:
        if schema is None:
            if raw is None:
                return {}
            if not isinstance(raw, Mapping):
                raise _KeyedInvalid(key, f"expected a mapping, got {_show(raw)}")
            return raw
        if isinstance(raw, schema):
            _check_fields(raw, key, choices)
            return raw
        if isinstance(raw, Mapping) and not isinstance(raw, dict):
            raw = dict(raw)
        return _parse_dataclass(schema, raw, key, choices)
    except _KeyedInvalid as exc:
        raise ConfigError("<options>", exc.key, exc.message) from None


def _apply_environment(config: Config, env: Mapping[str, str]) -> Config:
    def invalid(var: str, message: str) -> ConfigError:
        return ConfigError("environment", var, message)

    brokers = dict(config.brokers)
    url = env.get("RABBITSOCKS_AMQP_URL", "")
    if url.strip():
        urls = split_amqp_urls(url)
        for index, one in enumerate(urls):
            try:
                parse_amqp_url(one)
            except _Invalid as exc:
                where = f" (URL {index + 1} of {len(urls)})" if len(urls) > 1 else ""
                raise invalid("RABBITSOCKS_AMQP_URL", f"{exc}{where}") from None
        current = brokers.get("amqp", BrokerConfig())
        brokers["amqp"] = dataclasses.replace(current, url=urls)
    exchange = env.get("RABBITSOCKS_AMQP_EXCHANGE")
    if exchange:
        if "amqp" not in brokers:
            raise invalid("RABBITSOCKS_AMQP_EXCHANGE", "expected an amqp broker to apply it to")
        brokers["amqp"] = dataclasses.replace(brokers["amqp"], exchange=exchange)
    config = dataclasses.replace(config, brokers=brokers)

    def endpoint(var: str) -> Interface | None:
        value = env.get(var, "")
        try:
            return parse_private_interface(int(value) if value.isdigit() else value)
        except _Invalid as exc:
            raise invalid(var, str(exc)) from None

    if env.get("RABBITSOCKS_ADMIN"):
        config = dataclasses.replace(config, admin=endpoint("RABBITSOCKS_ADMIN"))
    if env.get("RABBITSOCKS_RPC_HTTP"):
        rpc = dataclasses.replace(config.rpc, http=endpoint("RABBITSOCKS_RPC_HTTP"))
        config = dataclasses.replace(config, rpc=rpc)
    if env.get("RABBITSOCKS_RPC_GORIDGE"):
        rpc = dataclasses.replace(config.rpc, goridge=endpoint("RABBITSOCKS_RPC_GORIDGE"))
        config = dataclasses.replace(config, rpc=rpc)
    if token := env.get("RABBITSOCKS_RPC_TOKEN"):
        config = dataclasses.replace(config, rpc=dataclasses.replace(config.rpc, token=token))
    if secret := env.get("RABBITSOCKS_JWT_SECRET"):
        config = dataclasses.replace(
            config,
            listeners=tuple(
                dataclasses.replace(
                    li,
                    auth=dataclasses.replace(
                        li.auth, jwt=dataclasses.replace(li.auth.jwt, secret=secret)
                    ),
                )
                if li.auth.jwt is not None
                else li
                for li in config.listeners
            ),
        )
    if default := env.get("RABBITSOCKS_DEFAULT_BROKER"):
        config = dataclasses.replace(config, default_broker=default)
    if listen := env.get("RABBITSOCKS_LISTEN"):
        if len(config.listeners) != 1:
            raise invalid("RABBITSOCKS_LISTEN", "expected a configuration with one listener")
        try:
            interface = parse_interface(int(listen) if listen.isdigit() else listen)
        except _Invalid as exc:
            raise invalid("RABBITSOCKS_LISTEN", str(exc)) from None
        config = dataclasses.replace(
            config, listeners=(dataclasses.replace(config.listeners[0], interface=interface),)
        )
    log = config.log
    for var, attr, tp in (
        ("RABBITSOCKS_LOG_LEVEL", "level", LogConfig.__dataclass_fields__["level"]),
        ("RABBITSOCKS_LOG_FORMAT", "format", LogConfig.__dataclass_fields__["format"]),
    ):
        if value := env.get(var):
            hint = typing.get_type_hints(LogConfig)[tp.name]
            try:
                parsed = _parse_value(hint, value.lower(), var)
            except _KeyedInvalid as exc:
                raise invalid(var, exc.message) from None
            log = dataclasses.replace(log, **{attr: parsed})
    return dataclasses.replace(config, log=log)
