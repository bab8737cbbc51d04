"""pubsub: the RoadRunner websockets protocol, with topics routed by a broker.

Clients send ``{"command": "join" | "leave", "topics": [...], "broker": "amqp"}`` and get
``@join`` / ``#join`` / ``@leave`` / ``#leave`` answers; messages arrive as
``{"topic": <routing key>, "payload": <body>}``. The frames are in ``docs/protocol.md``.

This module is thin glue: ``rabbitsocks.pubsub.protocol`` parses and encodes, the process's
``Hub`` per broker keeps the subscriptions and binds topics on the broker, and
``rabbitsocks.topics`` says which topics are valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rabbitsocks import ConnectionInfo, ListenerContext, Writer, current_connection
from rabbitsocks.auth import JoinAuthorizer, hook_from_config
from rabbitsocks.config import HookConfig, above, at_least, one_of
from rabbitsocks.connection import CLOSE_POLICY_VIOLATION
from rabbitsocks.errors import CloseConnection, InvalidTopic, ProtocolError, UnknownBroker
from rabbitsocks.pubsub.history import Position
from rabbitsocks.pubsub.hub import Hub, JoinResult, Subscription
from rabbitsocks.pubsub.protocol import (
    Command,
    encode_delivery,
    encode_error,
    encode_gap,
    encode_join_failed,
    encode_joined,
    encode_leave_failed,
    encode_left,
    encode_resumed,
    parse_command,
)
from rabbitsocks.services import Services
from rabbitsocks.topics import validate_topic

__all__ = ["Options", "PubSub", "setup"]


@dataclass(frozen=True, slots=True)
class Options:
    """The pubsub listener options (``listeners[].options`` in the configuration).

    The metadata is checked when the configuration is resolved (``rabbitsocks check`` and
    ``serve`` alike): ``broker`` must name a configured broker, the numbers their bounds.
    """

    #: Broker used by commands that name none; ``None``: the process's default broker.
    broker: str | None = field(default=None, metadata=one_of("brokers"))
    #: Allow ``*`` and ``#`` patterns in ``join``.
    wildcards: bool = True
    #: Topics one connection may have joined at once; more are refused with ``#join``.
    max_topics: int = field(default=100, metadata=at_least(1))
    #: Join authorization (RoadRunner's ``ws:joinTopics``): a callable or an HTTP endpoint.
    join_auth: HookConfig | None = None
    #: A token claim listing the topic patterns its bearer may join (needs ``auth.jwt``).
    topics_claim: str | None = None
    #: Commands per second per network connection (a token bucket shared by the namespaces
    #: of one Socket.IO session), and the burst above that rate.
    rate: float = field(default=20.0, metadata=above(0))
    burst: int = field(default=40, metadata=at_least(1))
    #: Commands refused for the rate (less those accepted since) before closing with 1008.
    max_rate_violations: int = field(default=100, metadata=at_least(1))


class CommandRate:
    """A token bucket of commands, shared by the connections of one network connection
    (the namespaces of one Socket.IO session), so that namespaces do not multiply it."""

    __slots__ = ("stamp", "tokens", "users", "violations")

    def __init__(self, burst: int) -> None:
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.violations = 0
        self.users = 0

    def take_token(self, rate: float, burst: int) -> bool:
        now = time.monotonic()
        self.tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            if self.violations:
                self.violations -= 1
            return True
        self.violations += 1
        return False


class Session:
    """One connection's pub/sub state: its writer, its subscription on each hub it joined
    topics on, and its network connection's command rate."""

    __slots__ = ("hubs", "info", "path", "rate", "writer")

    def __init__(self, path: str, rate: CommandRate) -> None:
        self.path = path
        self.writer: Writer | None = None
        #: Broker name -> the hub and this connection's subscription on it.
        self.hubs: dict[str, tuple[Hub, Subscription]] = {}
        self.info: ConnectionInfo | None = None
        self.rate = rate

    def topic_count(self) -> int:
        return sum(len(hub.topics_of(sub)) for hub, sub in self.hubs.values())

    def subscription(self, hub: Hub) -> Subscription:
        """This connection's subscription on ``hub``, made on first use."""
        entry = self.hubs.get(hub.broker.name)
        if entry is None:
            writer = self.writer
            assert writer is not None

            def on_gap(topics: list[str], start_ms: int, end_ms: int) -> None:
                writer.send(encode_gap(topics, start_ms, end_ms))

            sub = hub.register(writer, encode_delivery, on_gap)
            entry = self.hubs[hub.broker.name] = (hub, sub)
        return entry[1]


class PubSub:
    """The pubsub callback of one listener."""

    def __init__(
        self, options: Options, services: Services, authorizer: JoinAuthorizer | None = None
    ) -> None:
        self.options = options
        self.services = services
        self.authorizer = authorizer
        #: Command rates by network connection (``ConnectionInfo.wire``).
        self._rates: dict[str, CommandRate] = {}
        default = options.broker
        if default is not None and default not in services.hubs:
            raise LookupError(
                f"broker: expected one of the configured brokers"
                f" ({', '.join(services.hubs)}), got {default!r}"
            )

    def subprotocol_name(self) -> None:
        return None

    def init(self, path: str, options: Options) -> Session:
        try:
            info: ConnectionInfo | None = current_connection()
        except LookupError:  # driven by hand (a test double), not by a transport
            info = None
        wire = info.wire if info is not None else ""
        rate = self._rates.get(wire) if wire else None
        if rate is None:
            rate = CommandRate(self.options.burst)
            if wire:
                self._rates[wire] = rate
        rate.users += 1
        session = Session(path, rate)
        session.info = info
        return session

    def open(self, writer: Writer, session: Session) -> Session:
        session.writer = writer
        return session

    async def handle_frame(self, frame: str | bytes, session: Session) -> Session:
        writer = session.writer
        assert writer is not None
        options = self.options
        rate = session.rate
        if not rate.take_token(options.rate, options.burst):
            if rate.violations > options.max_rate_violations:
                raise CloseConnection(CLOSE_POLICY_VIOLATION, "rate limit exceeded")
            writer.send(encode_error(f"rate limit exceeded (max {options.rate:g} commands/s)"))
            return session
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
        rate = session.rate
        rate.users -= 1
        if not rate.users and session.info is not None:
            self._rates.pop(session.info.wire, None)
        for hub, sub in list(session.hubs.values()):
            await hub.unregister(sub)

    # --- commands -------------------------------------------------------------------------

    def _hub(self, command: Command, result: JoinResult) -> Hub | None:
        """The hub the command names; ``None``, with every topic refused, if none is."""
        try:
            return self.services.hub(command.broker or self.options.broker)
        except UnknownBroker as exc:
            for topic in command.topics:
                result.refuse(topic, str(exc))
            return None

    async def _join(self, command: Command, session: Session, writer: Writer) -> None:
        result = JoinResult()
        hub = self._hub(command, result)
        if hub is None:
            _answer(writer, result, encode_joined, encode_join_failed)
            return
        # Registered before anything awaits (the authorization hook): a terminate that runs
        # meanwhile (a Socket.IO disconnect is not ordered after our frames) then unregisters
        # it, and the hub refuses the join, instead of keeping a dead connection joined.
        sub = session.subscription(hub)
        valid = []
        since: dict[str, Position] = {}
        for topic in command.topics:
            position = command.since.get(topic) if command.since else None
            if isinstance(position, str):  # why the position given is not one
                result.refuse(topic, position)
                continue
            try:
                valid.append(validate_topic(topic, wildcards=self.options.wildcards))
            except InvalidTopic as exc:
                result.refuse(topic, str(exc))
                continue
            if position is not None:
                since[topic] = position
        if valid and self.authorizer is not None:
            valid, denied = await self.authorizer.split(valid, session.info)
            for reason, topics in denied.items():
                for topic in topics:
                    result.refuse(topic, reason)
        already = hub.topics_of(sub)
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
            joined = await hub.join(sub, allowed, since)
            result.done.extend(joined.done)
            for reason, topics in joined.refused.items():
                result.refused.setdefault(reason, []).extend(topics)
            result.resumed, result.replay = joined.resumed, joined.replay
            result.positions = joined.positions
        # Nothing awaits from here on: the answer, then the replay, then the live flow.
        if result.positions:
            positions = {
                t: Position(*result.positions[t]) for t in result.done if t in result.positions
            }
            writer.send(encode_joined(result.done, positions))
            for reason, topics in result.refused.items():
                writer.send(encode_join_failed(topics, reason))
        else:
            _answer(writer, result, encode_joined, encode_join_failed)
        if result.resumed:
            outcomes: dict[str | None, list[str]] = {}
            for topic in command.topics:
                if topic in result.resumed:
                    outcomes.setdefault(result.resumed[topic], []).append(topic)
            for outcome, resumed in outcomes.items():
                writer.send(encode_resumed(resumed, outcome))
        for frame in result.replay:
            writer.send_shared(frame)

    async def _leave(self, command: Command, session: Session, writer: Writer) -> None:
        result = JoinResult()
        hub = self._hub(command, result)
        if hub is not None and hub.broker.name in session.hubs:
            result = await hub.leave(session.hubs[hub.broker.name][1], command.topics)
        elif hub is not None:
            for topic in command.topics:
                result.refuse(topic, "not joined")
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
    authorizer = None
    if options.join_auth is not None or options.topics_claim is not None:
        hook = None
        if options.join_auth is not None:
            hook = hook_from_config(
                f"{context.name}: options.join_auth",
                options.join_auth,
                context.services.http_session,
            )
        authorizer = JoinAuthorizer(options.topics_claim, hook)
    return PubSub(options, context.services, authorizer)
