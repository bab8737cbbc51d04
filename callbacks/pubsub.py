"""pubsub: the RoadRunner websockets protocol, with topics routed by a broker.

Clients send ``{"command": "join" | "leave", "topics": [...], "broker": "amqp"}`` and get
``@join`` / ``#join`` / ``@leave`` / ``#leave`` answers; messages arrive as
``{"topic": <routing key>, "payload": <body>}``. The frames are in ``docs/protocol.md``.

This module is thin glue: ``rabbitsocks.pubsub.protocol`` parses and encodes, the process's
``Hub`` per broker keeps the subscriptions and binds topics on the broker, and
``rabbitsocks.topics`` says which topics are valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rabbitsocks import ListenerContext, Writer
from rabbitsocks.errors import InvalidTopic, ProtocolError, UnknownBroker
from rabbitsocks.frames import SharedFrame
from rabbitsocks.pubsub.hub import Hub, JoinResult, Subscriber
from rabbitsocks.pubsub.protocol import (
    Command,
    encode_error,
    encode_join_failed,
    encode_joined,
    encode_leave_failed,
    encode_left,
    parse_command,
)
from rabbitsocks.services import Services
from rabbitsocks.topics import validate_topic

__all__ = ["Options", "PubSub", "setup"]


@dataclass(frozen=True, slots=True)
class Options:
    """The pubsub listener options (``listeners[].options`` in the configuration)."""

    #: Broker used by commands that name none; ``None``: the process's default broker.
    broker: str | None = None
    #: Allow ``*`` and ``#`` patterns in ``join``.
    wildcards: bool = True
    #: Topics one connection may have joined at once; more are refused with ``#join``.
    max_topics: int = 100

    def __post_init__(self) -> None:
        if self.max_topics < 1:
            raise ValueError("max_topics: expected a positive integer")


class _PlainSubscriber:
    """Adapts a writer without ``send_shared`` (a test double, a wrapper) to the hub."""

    __slots__ = ("writer",)

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def send_shared(self, frame: SharedFrame) -> None:
        self.writer.send(frame.data)


class Session:
    """One connection's pub/sub state: its writer and the hubs it joined topics on."""

    __slots__ = ("hubs", "path", "subscriber", "writer")

    def __init__(self, path: str) -> None:
        self.path = path
        self.writer: Writer | None = None
        self.subscriber: Subscriber | None = None
        self.hubs: dict[str, Hub] = {}

    def topic_count(self) -> int:
        assert self.subscriber is not None
        return sum(len(hub.topics_of(self.subscriber)) for hub in self.hubs.values())


class PubSub:
    """The pubsub callback of one listener."""

    def __init__(self, options: Options, services: Services) -> None:
        self.options = options
        self.services = services
        default = options.broker
        if default is not None and default not in services.hubs:
            raise LookupError(
                f"broker: expected one of the configured brokers"
                f" ({', '.join(services.hubs)}), got {default!r}"
            )

    def subprotocol_name(self) -> None:
        return None

    def init(self, path: str, options: Options) -> Session:
        return Session(path)

    def open(self, writer: Writer, session: Session) -> Session:
        session.writer = writer
        session.subscriber = (
            writer if hasattr(writer, "send_shared") else _PlainSubscriber(writer)  # type: ignore[assignment]
        )
        return session

    async def handle_frame(self, frame: str | bytes, session: Session) -> Session:
        writer = session.writer
        assert writer is not None
        try:
            command = parse_command(frame)
        except ProtocolError as exc:
            writer.send(encode_error(str(exc)))
            return session
        if command.command == "join":
            await self._join(command, session, writer)
        else:
            await self._leave(command, session, writer)
        return session

    async def terminate(self, session: Session) -> None:
        if session.subscriber is None:
            return
        for hub in session.hubs.values():
            await hub.unregister(session.subscriber)

    # --- commands -------------------------------------------------------------------------

    def _hub(self, command: Command) -> Hub:
        return self.services.hub(command.broker or self.options.broker)

    async def _join(self, command: Command, session: Session, writer: Writer) -> None:
        result = JoinResult()
        try:
            hub = self._hub(command)
        except UnknownBroker as exc:
            for topic in command.topics:
                result.refuse(topic, str(exc))
            _answer(writer, result, encode_joined, encode_join_failed)
            return
        valid = []
        for topic in command.topics:
            try:
                valid.append(validate_topic(topic, wildcards=self.options.wildcards))
            except InvalidTopic as exc:
                result.refuse(topic, str(exc))
        assert session.subscriber is not None
        name = hub.broker.name
        if name not in session.hubs:
            hub.register(session.subscriber)
            session.hubs[name] = hub
        already = hub.topics_of(session.subscriber)
        room = self.options.max_topics - session.topic_count()
        allowed = []
        for topic in valid:
            if topic in already:
                allowed.append(topic)
            elif room > 0:
                allowed.append(topic)
                room -= 1
            else:
                result.refuse(topic, f"too many topics (max {self.options.max_topics})")
        if allowed:
            joined = await hub.join(session.subscriber, allowed)
            result.done.extend(joined.done)
            for reason, topics in joined.refused.items():
                result.refused.setdefault(reason, []).extend(topics)
        _answer(writer, result, encode_joined, encode_join_failed)

    async def _leave(self, command: Command, session: Session, writer: Writer) -> None:
        result = JoinResult()
        try:
            hub = self._hub(command)
        except UnknownBroker as exc:
            for topic in command.topics:
                result.refuse(topic, str(exc))
            _answer(writer, result, encode_left, encode_leave_failed)
            return
        assert session.subscriber is not None
        if hub.broker.name not in session.hubs:
            for topic in command.topics:
                result.refuse(topic, "not joined")
        else:
            result = await hub.leave(session.subscriber, command.topics)
        _answer(writer, result, encode_left, encode_leave_failed)


def _answer(writer: Writer, result: JoinResult, ok: Any, failed: Any) -> None:
    """``@join`` with what succeeded (also when the command listed no topic), then one
    ``#join`` per refusal reason."""
    if result.done or not result.refused:
        writer.send(ok(result.done))
    for reason, topics in result.refused.items():
        writer.send(failed(topics, reason))


def setup(context: ListenerContext) -> PubSub:
    """Called once per listener: bind the callback to the process's hubs."""
    options = context.options
    if not isinstance(options, Options):  # started through the API with a mapping
        options = Options(**options)
    return PubSub(options, context.services)
