"""STOMP destinations with the meaning RabbitMQ's STOMP plugins give them, and allow-lists.

A destination header names where a SUBSCRIBE reads from and a SEND writes to
(``rabbit_routing_util:parse_endpoint`` in RabbitMQ, and its STOMP guide):

=========================== ====================================================
``/topic/<key>``            the topic exchange (``amq.topic``), with ``*`` and ``#``
``/exchange/<name>[/<key>]`` any exchange; no key binds (and sends) with the empty key
``/queue/<name>``           a queue, declared (durable) on first use
``/amq/queue/<name>``       an existing queue, not declared
``/temp-queue/<name>``      a queue of this session, only in a SEND's ``reply-to``
``/reply-queue/<name>``     a queue named by an AMQP ``reply-to`` (``amq.gen-...``)
``<name>``                  a bare name is a queue, as ``/queue/<name>``
=========================== ====================================================

Names are split on ``/`` and ``%2F`` stands for a ``/`` inside one. In MESSAGE frames the
destination is made from the exchange and routing key a message came with, ``/`` and
``%`` and octets outside printable ASCII written as ``%XX``, as RabbitMQ does.

Allow-lists (``DestinationRules``) are written as destinations whose last part is an AMQP
topic pattern: ``/topic/news.#``, ``/exchange/amq.direct/*``, ``/queue/jobs.*``. A
requested destination is allowed when some rule of its kind and exchange covers it: every
routing key or queue name the request could match is matched by the rule (so ``/topic/a.*``
does not allow ``/topic/a.#``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from rabbitsocks.errors import InvalidTopic
from rabbitsocks.stomp.frames import StompError
from rabbitsocks.topics import pattern_covers, validate_topic

__all__ = [
    "Destination",
    "DestinationRules",
    "format_destination",
    "parse_destination",
]

Kind = Literal["topic", "exchange", "queue", "amqqueue", "temp-queue", "reply-queue"]

#: What RabbitMQ lists in its "Unknown destination" error.
PREFIXES = ("/temp-queue", "/exchange", "/topic", "/queue", "/amq/queue", "/reply-queue/")


@dataclass(frozen=True, slots=True)
class Destination:
    """A parsed destination header."""

    kind: Kind
    #: The exchange name (``exchange``), the routing key or pattern (``topic``), else the
    #: queue name (the temp-queue's own name for ``temp-queue``).
    name: str
    #: The routing key or pattern of an ``exchange`` destination; ``None``: none given.
    key: str | None = None

    @property
    def routing(self) -> tuple[str, str]:
        """``(exchange, routing key)`` a SEND publishes with; ``/topic/`` is ``amq.topic``
        (the session substitutes its configured topic exchange)."""
        if self.kind == "topic":
            return "amq.topic", self.name
        if self.kind == "exchange":
            return self.name, self.key or ""
        return "", self.name

    def __str__(self) -> str:
        if self.kind == "exchange":
            parts = [_quote(self.name)] + ([_quote(self.key)] if self.key is not None else [])
            return "/exchange/" + "/".join(parts)
        prefix = {
            "topic": "/topic/",
            "queue": "/queue/",
            "amqqueue": "/amq/queue/",
            "temp-queue": "/temp-queue/",
            "reply-queue": "/reply-queue/",
        }[self.kind]
        return prefix + (self.name if self.kind == "reply-queue" else _quote(self.name))


def _unquote(text: str) -> str:
    return text.replace("%2F", "/")


def _quote(text: str) -> str:
    return text.replace("/", "%2F")


def parse_destination(text: str) -> Destination:
    """Parse a destination header; ``StompError`` names what is wrong with it."""
    parts = text.split("/")
    if len(parts) == 1:
        if not text:
            raise StompError("Invalid destination", "the destination is empty")
        return Destination("queue", _unquote(text))
    if parts[0] != "":
        raise _unknown(text)
    kind = parts[1]
    if kind == "amq" and len(parts) > 2 and parts[2] == "queue":
        return _simple("amqqueue", parts[3:], text)
    if kind == "reply-queue" and len(parts) > 2:
        # Reply queue names may hold slashes: everything after the prefix is the name.
        name = text[len("/reply-queue/") :]
        if not name:
            raise StompError("Invalid destination", f"'{text}' names no queue")
        return Destination("reply-queue", name)
    if kind == "exchange":
        rest = parts[2:]
        if not rest or rest[0] == "" or len(rest) > 2:
            raise StompError(
                "Invalid destination",
                f"'{text}' is not a valid exchange destination "
                "(expected /exchange/<name> or /exchange/<name>/<routing key>)",
            )
        key = _unquote(rest[1]) if len(rest) == 2 else None
        return Destination("exchange", _unquote(rest[0]), key)
    if kind == "topic":
        return _simple("topic", parts[2:], text)
    if kind == "queue":
        return _simple("queue", parts[2:], text)
    if kind == "temp-queue":
        return _simple("temp-queue", parts[2:], text)
    raise _unknown(text)


def _simple(kind: Kind, rest: list[str], text: str) -> Destination:
    if len(rest) != 1 or not rest[0]:
        raise StompError(
            "Invalid destination",
            f"'{text}' is not a valid {kind} destination (expected one name after the prefix;"
            " write a '/' inside a name as %2F)",
        )
    return Destination(kind, _unquote(rest[0]))


def _unknown(text: str) -> StompError:
    shown = text if len(text) <= 100 else text[:97] + "..."
    return StompError(
        "Unknown destination",
        f"'{shown}' is not a valid destination; valid destination types are " + ", ".join(PREFIXES),
    )


def _escape_part(text: str) -> str:
    """RabbitMQ's destination escaping of a routing key: ``/``, ``%`` and octets outside
    printable ASCII as ``%XX``."""
    if text.isascii() and text.isprintable() and "/" not in text and "%" not in text:
        return text
    out = []
    for octet in text.encode("utf-8", "surrogateescape"):
        if octet == 0x2F or octet == 0x25 or octet < 32 or octet > 127:
            out.append(f"%{octet:02X}")
        else:
            out.append(chr(octet))
    return "".join(out)


def format_destination(exchange: str, routing_key: str, topic_exchange: str = "amq.topic") -> str:
    """The ``destination`` of a MESSAGE for a message from ``exchange`` with
    ``routing_key`` (``rabbit_stomp_util:format_destination``)."""
    if exchange == "":
        return "/queue/" + _escape_part(routing_key)
    if exchange == topic_exchange:
        return "/topic/" + _escape_part(routing_key)
    if routing_key == "":
        return "/exchange/" + _escape_part(exchange)
    return "/exchange/" + _escape_part(exchange) + "/" + _escape_part(routing_key)


# --- allow-lists ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: Kind
    exchange: str | None
    pattern: str


class DestinationRules:
    """Destinations a client may use, from patterns like ``/topic/news.#``."""

    __slots__ = ("_rules", "patterns")

    def __init__(self, patterns: Iterable[str], *, strict: bool = True) -> None:
        """``ValueError`` for an invalid pattern, or, without ``strict``, it is skipped
        (patterns from a token claim)."""
        rules = []
        kept = []
        for text in patterns:
            try:
                rules.append(self._parse_rule(text))
            except ValueError:
                if strict:
                    raise
                continue
            kept.append(text)
        self.patterns = tuple(kept)
        self._rules = tuple(rules)

    @staticmethod
    def _parse_rule(text: str) -> _Rule:
        try:
            dest = parse_destination(text)
        except StompError as exc:
            raise ValueError(f"{text!r}: {exc.detail or exc.message}") from None
        if dest.kind == "exchange":
            if dest.key is None:
                raise ValueError(
                    f"{text!r}: expected /exchange/<name>/<pattern> (# allows every key,"
                    " and the empty one)"
                )
            exchange: str | None = dest.name
            pattern = dest.key
        else:
            exchange = None
            pattern = dest.name
        try:
            validate_topic(pattern, wildcards=True)
        except InvalidTopic as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        return _Rule(dest.kind, exchange, pattern)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def allows(self, dest: Destination) -> bool:
        """Whether some rule covers ``dest``."""
        if dest.kind == "exchange":
            exchange: str | None = dest.name
            requested = dest.key or ""
        else:
            exchange = None
            requested = dest.name
        for rule in self._rules:
            if rule.kind != dest.kind or rule.exchange != exchange:
                continue
            if _covers(rule.pattern, requested):
                return True
        return False

    @classmethod
    def from_claim(cls, value: object) -> DestinationRules:
        """Rules from a token claim: a pattern or a list of them; invalid ones are ignored."""
        items: Sequence[object] = (
            [value] if isinstance(value, str) else (value if isinstance(value, list) else [])
        )
        return cls((item for item in items if isinstance(item, str)), strict=False)


def _covers(allowed: str, requested: str) -> bool:
    if requested == "":
        return pattern_covers(allowed, "")  # the empty key: no words, covered by "#"
    try:
        validate_topic(requested, wildcards=True)
    except InvalidTopic:
        # Not something a topic pattern can reason about (a '*' inside a word, a control
        # character): only an identical rule, or one allowing everything, covers it.
        return allowed in (requested, "#")
    return pattern_covers(allowed, requested)
