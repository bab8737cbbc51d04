"""One STOMP connection: the frames a client sends, and what each one does.

Theory of operation
-------------------
A session starts ``AWAITING`` its CONNECT (or STOMP) frame, which must come within the
listener's ``connect_timeout``; anything else first is an error. CONNECT negotiates the
version (``accept-version``) and heart-beats, runs the listener's connect authorization
with ``login`` and ``passcode`` (a JWT as passcode works, as with Web-STOMP's OAuth 2
backend), and answers CONNECTED: the session is ``CONNECTED``. DISCONNECT, an error, or
the connection going make it ``CLOSED``, for good.

Frames are handled one at a time, in order (the transport awaits each ``receive``). A
SUBSCRIBE's RECEIPT is sent once messages flow: for /topic/ and /exchange/<name>/<key>,
once RabbitMQ bound the process's queue (the hub's ``join``); for queues, once the consumer
is registered. A SEND's RECEIPT waits for RabbitMQ's publisher confirm. SENDs without a
receipt do not wait (at most ``MAX_IN_FLIGHT`` unconfirmed at once) but stay in order.

Subscriptions come in two kinds:

* *fan-out* (``/topic/<key>``, ``/exchange/<name>/<key>``): one hub subscription each, with
  a shared encoder (see ``messages.FanoutEncoder``). The hub's one queue per process means
  these are at most once: ACK and NACK of their messages are accepted and change nothing.
* *queue* (``/queue/``, ``/amq/queue/``, ``/exchange/<name>`` without a key, and the
  temp-queues of ``reply-to``): a consumer on the session's own AMQP channel, leased on
  first use, with a prefetch, and manual ACK/NACK in the ``client`` modes.

Transactions are held by ``transactions.Transactions`` and replayed here on COMMIT.

Errors (``StompError``, a refused authorization, a channel RabbitMQ closed) are answered
with one ERROR frame, whose ``message`` header says what and whose body says why, and the
connection is closed (STOMP 1.2, "ERROR"). Each is logged once, at info level.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import secrets
from typing import TYPE_CHECKING, Any

from rabbitsocks import __version__
from rabbitsocks.auth import AuthDenied, ConnectRequest
from rabbitsocks.callback import Writer
from rabbitsocks.connection import ConnectionInfo
from rabbitsocks.errors import BrokerError, InvalidTopic
from rabbitsocks.pubsub.hub import Hub, Subscription
from rabbitsocks.stomp.destinations import Destination, format_destination, parse_destination
from rabbitsocks.stomp.frames import (
    CLIENT_COMMANDS,
    Frame,
    FrameParser,
    StompError,
    encode_frame,
    negotiate_heartbeat,
    negotiate_version,
)
from rabbitsocks.stomp.heartbeat import GRACE
from rabbitsocks.stomp.messages import message_frame, queue_params, send_properties
from rabbitsocks.stomp.server import StompServer
from rabbitsocks.stomp.transactions import Transactions
from rabbitsocks.topics import validate_topic

if TYPE_CHECKING:
    from rabbitsocks.brokers.amqp_channels import LeasedChannel, QueueMessage

__all__ = ["SessionState", "StompConnectRequest", "StompSession"]

logger = logging.getLogger("rabbitsocks.stomp")

#: SENDs without a receipt whose confirms may be outstanding at once, per session.
MAX_IN_FLIGHT = 64
_ACK_MODES = ("auto", "client", "client-individual")
_DURABLE_HEADERS = ("durable", "persistent")
_TEMP_PREFIX = "/temp-queue/"


@dataclasses.dataclass(frozen=True, slots=True)
class StompConnectRequest(ConnectRequest):
    """The handshake request with the CONNECT frame's credentials: what the listener's
    connect hook sees of a STOMP client (a callable gets this object; an HTTP endpoint gets
    ``"login"`` and ``"passcode"`` in its JSON besides the handshake's fields)."""

    login: str | None = None
    passcode: str | None = None

    @classmethod
    def of(
        cls, request: ConnectRequest, login: str | None, passcode: str | None
    ) -> StompConnectRequest:
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(ConnectRequest)}
        return cls(**fields, login=login, passcode=passcode)

    def as_json(self) -> dict[str, Any]:
        payload = ConnectRequest.as_json(self)  # slots dataclasses lose zero-argument super()
        if self.login is not None:
            payload["login"] = self.login
        if self.passcode is not None:
            payload["passcode"] = self.passcode
        return payload


class SessionState(enum.Enum):
    AWAITING = "awaiting CONNECT"
    CONNECTED = "connected"
    CLOSED = "closed"


class _Subscription:
    """One SUBSCRIBE: a hub subscription, or a consumer on the session's channel."""

    __slots__ = ("ack", "fanout", "hub", "id", "tag")

    def __init__(self, sub_id: str, ack: str) -> None:
        self.id = sub_id
        self.ack = ack
        self.hub: Hub | None = None
        self.fanout: Subscription | None = None
        self.tag: str | None = None  # the consumer tag of a queue subscription


class StompSession:
    """The state of one STOMP connection; ``callbacks.stomp`` drives it."""

    __slots__ = (
        "_by_tag",
        "_channel",
        "_channel_lock",
        "_deadline",
        "_declared",
        "_expect_every",
        "_group",
        "_last_in",
        "_last_out",
        "_publishes",
        "_send_every",
        "_stamp",
        "_temp_queues",
        "_tokens",
        "_transactions",
        "claims",
        "info",
        "parser",
        "server",
        "session_id",
        "state",
        "subscriptions",
        "version",
        "writer",
    )

    def __init__(self, server: StompServer, info: ConnectionInfo | None) -> None:
        options = server.options
        self.server = server
        self.info = info
        self.writer: Writer | None = None
        self.state = SessionState.AWAITING
        self.version = "1.0"
        self.session_id = ""
        self.claims = info.claims if info is not None else None
        self.parser = FrameParser(
            max_frame_size=options.max_frame_size, max_headers=options.max_headers
        )
        self.subscriptions: dict[str, _Subscription] = {}
        self._by_tag: dict[str, _Subscription] = {}
        self._channel: LeasedChannel | None = None
        self._channel_lock: asyncio.Lock | None = None
        self._declared: set[str] | None = None
        self._temp_queues: dict[str, str] | None = None
        self._transactions: Transactions | None = None
        self._publishes: collections.deque[asyncio.Future[None]] | None = None
        self._send_every = 0.0
        self._expect_every = 0.0
        self._last_in = self._last_out = 0.0
        self._deadline = 0.0
        self._group = -1
        self._tokens = float(options.burst)
        self._stamp = 0.0

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def _id(self) -> str:
        return self.info.id if self.info is not None else "?"

    # --- life cycle (driven by callbacks.stomp) ---------------------------------------------

    def open(self, writer: Writer) -> None:
        self.writer = writer
        now = asyncio.get_running_loop().time()
        self._deadline = now + self.server.options.connect_timeout
        self._stamp = self._last_in = self._last_out = now
        self._group = self.server.ticker.add(self)

    async def receive(self, data: str | bytes) -> None:
        """Handle one WebSocket message: any number of frames, or part of one."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        self._last_in = loop.time()
        try:
            frames = self.parser.feed(data.encode("utf-8") if isinstance(data, str) else data)
            for frame in frames:
                if self.closed:
                    return
                if frame.command not in ("ACK", "NACK"):
                    await self._take_token(loop)
                try:
                    await self._dispatch(frame)
                except StompError as exc:
                    if exc.receipt is None:
                        exc.receipt = frame.headers.get("receipt")
                    raise
        except StompError as exc:
            self.fail(exc)

    async def close(self) -> None:
        """The connection is gone: undo every subscription, give the channel back."""
        self.state = SessionState.CLOSED
        self._stop_ticking()
        subscriptions, self.subscriptions = self.subscriptions, {}
        self._by_tag = {}
        for sub in subscriptions.values():
            if sub.hub is not None and sub.fanout is not None:
                await sub.hub.unregister(sub.fanout)
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()  # its consumers go; RabbitMQ requeues what was not acked

    def heartbeat(self) -> None:
        """Visited by the listener's ``Heartbeat`` once a second."""
        if not self.tick(asyncio.get_running_loop().time()):
            self._stop_ticking()

    def tick(self, now: float) -> bool:
        """One visit at ``now``; False: nothing more to watch."""
        if self.closed or self.writer is None:
            return False
        if self.state is SessionState.AWAITING:
            if now >= self._deadline:
                timeout = self.server.options.connect_timeout
                self.fail(StompError("Connect timeout", f"no CONNECT frame within {timeout:g}s"))
                return False
            return True
        if self._send_every and now - self._last_out >= self._send_every:
            self._last_out = now
            self.writer.send("\n")  # a heart-beat is an EOL
        if self._expect_every and now - self._last_in > self._expect_every * GRACE:
            silence = now - self._last_in
            self.fail(StompError("Heart-beat timeout", f"nothing received for {silence:.1f}s"))
            return False
        return bool(self._send_every or self._expect_every)

    def _stop_ticking(self) -> None:
        if self._group >= 0:
            self.server.ticker.discard(self, self._group)
            self._group = -1

    # --- sending ------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        writer = self.writer
        assert writer is not None
        try:
            writer.send(data.decode("utf-8"))
        except UnicodeDecodeError:
            writer.send(data)  # a body that is not text goes as a binary message

    def _reply(self, command: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self._send(encode_frame(command, headers, body, version=self.version))

    def _receipt(self, frame: Frame) -> None:
        receipt = frame.headers.get("receipt")
        if receipt is not None and not self.closed:
            self._reply("RECEIPT", [("receipt-id", receipt)])

    def fail(self, exc: StompError) -> None:
        """Answer ERROR and close: the end of the session."""
        if self.closed or self.writer is None:
            return
        logger.info("stomp %s: ERROR %s: %s", self._id, exc.message, exc.detail)
        headers = [("message", exc.message), ("content-type", "text/plain")]
        if exc.receipt is not None:
            headers.append(("receipt-id", exc.receipt))
        self._reply("ERROR", headers, exc.detail.encode("utf-8"))
        self.state = SessionState.CLOSED
        self._stop_ticking()
        self.writer.close(1000, f"STOMP ERROR: {exc.message}")

    async def _take_token(self, loop: asyncio.AbstractEventLoop) -> None:
        """A token bucket: a client over the rate is not read until it is back under it
        (its frames wait in the transport, whose inbound limit bounds them)."""
        options = self.server.options
        now = loop.time()
        self._tokens = min(float(options.burst), self._tokens + (now - self._stamp) * options.rate)
        self._stamp = now
        if self._tokens < 1.0:
            await asyncio.sleep((1.0 - self._tokens) / options.rate)
            self._tokens = 1.0
            self._stamp = loop.time()
        self._tokens -= 1.0

    # --- dispatch -----------------------------------------------------------------------------

    async def _dispatch(self, frame: Frame) -> None:
        command = frame.command
        if command not in CLIENT_COMMANDS:
            shown = command if len(command) <= 40 else command[:37] + "..."
            raise StompError("Unknown command", f"could not interpret command {shown!r}")
        if self.state is SessionState.AWAITING:
            if command not in ("CONNECT", "STOMP"):
                raise StompError("Illegal command", "you must log in using CONNECT first")
            await self._connect(frame)
            return
        transaction = frame.headers.get("transaction")
        if transaction is not None and command in ("SEND", "ACK", "NACK"):
            self._in_transaction(transaction, frame)
            return
        if command == "SEND":
            await self._send_frame(frame)
            return  # its receipt waits for the confirm
        if command == "SUBSCRIBE":
            await self._subscribe(frame)
        elif command == "UNSUBSCRIBE":
            await self._unsubscribe(frame)
        elif command in ("ACK", "NACK"):
            await self._ack(frame)
        elif command in ("BEGIN", "COMMIT", "ABORT"):
            await self._transaction(frame)
        elif command == "DISCONNECT":
            await self._disconnect(frame)
            return
        else:  # CONNECT or STOMP again
            raise StompError("Already connected", f"{command} may only be sent once")
        self._receipt(frame)

    # --- CONNECT, DISCONNECT --------------------------------------------------------------

    async def _connect(self, frame: Frame) -> None:
        headers = frame.headers
        options = self.server.options
        version = negotiate_version(headers.get("accept-version"))
        send_every, expect_every = negotiate_heartbeat(
            headers.get("heart-beat"), options.heart_beat_send, options.heart_beat_receive
        )
        self.claims = await self._authenticate(headers.get("login"), headers.get("passcode"))
        if self.closed:
            return
        self.version = self.parser.version = version
        self.session_id = f"session-{secrets.token_urlsafe(16)}"
        self.state = SessionState.CONNECTED
        self._send_every = send_every / 1000.0
        self._expect_every = expect_every / 1000.0
        self._last_out = asyncio.get_running_loop().time()
        if not (send_every or expect_every):
            self._stop_ticking()
        self._reply(
            "CONNECTED",
            [
                ("version", version),
                ("session", self.session_id),
                ("server", f"rabbitsocks/{__version__}"),
                ("heart-beat", f"{send_every},{expect_every}"),
            ],
        )
        self._receipt(frame)

    async def _authenticate(self, login: str | None, passcode: str | None) -> Any:
        """The claims of the connection, after the listener's connect authorization (if it
        has one) accepted the CONNECT's credentials, or the handshake's token."""
        authorizer = self.server.connect_auth
        info = self.info
        if authorizer is None:
            return self.claims
        request = info.request if info is not None else None
        if request is None:
            request = ConnectRequest(path="", transport="", headers={}, query={}, remote="")
        stomp_request = StompConnectRequest.of(request, login, passcode)
        try:
            return await authorizer.check(stomp_request, token=passcode or None)
        except AuthDenied as denied:
            who = f" for user '{login}'" if login else ""
            raise StompError("Bad CONNECT", f"access refused{who}: {denied.reason}") from None

    async def _disconnect(self, frame: Frame) -> None:
        await self._drain_publishes()
        self._receipt(frame)
        self.state = SessionState.CLOSED
        self._stop_ticking()
        assert self.writer is not None
        self.writer.close(1000, "")

    # --- SUBSCRIBE, UNSUBSCRIBE -------------------------------------------------------------

    async def _subscribe(self, frame: Frame) -> None:
        headers = frame.headers
        text = headers.get("destination")
        if text is None:
            raise StompError("Missing destination", "SUBSCRIBE must include a 'destination' header")
        sub_id = headers.get("id", text)
        if sub_id.startswith(_TEMP_PREFIX):
            raise StompError("Invalid id", f"SUBSCRIBE 'id' may not start with {_TEMP_PREFIX}")
        if len(sub_id.encode("utf-8")) > 200:
            raise StompError("Invalid id", "a subscription id may be at most 200 octets")
        if sub_id in self.subscriptions:
            raise StompError(
                "Duplicated subscription identifier",
                f"a subscription identified by '{sub_id}' already exists",
            )
        limit = self.server.options.max_subscriptions
        if len(self.subscriptions) >= limit:
            raise StompError("Too many subscriptions", f"a connection may hold {limit} at most")
        ack = headers.get("ack", "auto")
        if ack not in _ACK_MODES:
            raise StompError("Invalid header", "ack must be auto, client or client-individual")
        dest = parse_destination(text)
        if dest.kind in ("temp-queue", "reply-queue"):
            raise StompError(
                "Invalid destination", f"'{text}' is not a valid destination for 'SUBSCRIBE'"
            )
        await self.server.authorize("SUBSCRIBE", dest, text, self.info, self.claims)
        if dest.kind == "topic" or (dest.kind == "exchange" and dest.key):
            if any(headers.get(h, "").strip().lower() == "true" for h in _DURABLE_HEADERS):
                # Web-STOMP keeps a durable queue per such subscription; fan-out here has
                # one queue per process, which ends with it.
                raise StompError(
                    "Durable subscriptions not supported",
                    f"'{text}' fans out through the server's own queue: it cannot outlive "
                    "the connection (subscribe to a /queue/ bound to the exchange instead)",
                )
            await self._subscribe_fanout(sub_id, ack, dest)
        else:
            await self._subscribe_queue(sub_id, ack, dest, frame)

    async def _subscribe_fanout(self, sub_id: str, ack: str, dest: Destination) -> None:
        if dest.kind == "topic":
            hub = await self.server.topic_hub()
            pattern, exchange = dest.name, None
        else:
            hub = await self.server.exchange_hub(dest.name)
            pattern, exchange = dest.key or "", dest.name
        try:
            validate_topic(pattern, wildcards=True)
        except InvalidTopic as exc:
            raise StompError("Invalid destination", f"'{dest}': {exc}") from None
        if self.closed:
            return
        assert self.writer is not None
        encoder = self.server.encoder(self.version, sub_id, exchange, ack != "auto")
        sub = self.subscriptions[sub_id] = _Subscription(sub_id, ack)
        sub.hub = hub
        sub.fanout = hub.register(self.writer, encoder)
        result = await hub.join(sub.fanout, [pattern])
        if not result.done:
            if self.subscriptions.get(sub_id) is sub:
                del self.subscriptions[sub_id]
            await hub.unregister(sub.fanout)
            reason = next(iter(result.refused), "refused")
            raise StompError("Subscription failed", f"'{dest}': {reason}")

    async def _subscribe_queue(
        self, sub_id: str, ack: str, dest: Destination, frame: Frame
    ) -> None:
        headers = frame.headers
        options = self.server.options
        prefetch = options.prefetch
        if "prefetch-count" in headers:
            text = headers["prefetch-count"].strip()
            if (
                not (text.isascii() and text.isdigit())
                or not 1 <= int(text) <= options.max_prefetch
            ):
                raise StompError(
                    "Invalid header", f"prefetch-count must be from 1 to {options.max_prefetch}"
                )
            prefetch = int(text)
        channel = await self._lease()
        try:
            if dest.kind == "queue":
                queue = dest.name
                await channel.declare_queue(queue, **queue_params(headers, durable=True))
            elif dest.kind == "amqqueue":
                queue = dest.name
            else:  # /exchange/<name> without a key: a queue of this subscription, bound to it
                queue = await channel.declare_queue(
                    "", **queue_params(headers, durable=False, exclusive=True, auto_delete=True)
                )
                await channel.bind_queue(queue, dest.name, dest.key or "")
            if self.closed:
                return
            tag = f"T_{sub_id}"
            sub = self.subscriptions[sub_id] = self._by_tag[tag] = _Subscription(sub_id, ack)
            sub.tag = tag
            await channel.consume(
                queue,
                self._on_message,
                consumer_tag=tag,
                no_ack=ack == "auto",
                prefetch=prefetch,
                on_cancel=self._on_cancel,
            )
        except BrokerError as exc:
            raise StompError("Subscription failed", f"'{dest}': {exc}") from None

    async def _unsubscribe(self, frame: Frame) -> None:
        headers = frame.headers
        sub_id = headers.get("id") or headers.get("destination")
        if sub_id is None:
            raise StompError(
                "Missing destination or id",
                "UNSUBSCRIBE must include a 'destination' or 'id' header",
            )
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            raise StompError("No subscription found", f"no subscription '{sub_id}' to cancel")
        if sub.hub is not None and sub.fanout is not None:
            await sub.hub.unregister(sub.fanout)
        elif sub.tag is not None:
            self._by_tag.pop(sub.tag, None)
            channel = self._channel
            if channel is not None:
                try:
                    await channel.cancel(sub.tag)
                except BrokerError as exc:
                    raise StompError("Failed to cancel subscription", str(exc)) from None

    # --- queue consumers --------------------------------------------------------------------

    async def _lease(self) -> LeasedChannel:
        """This session's AMQP channel, leased on first use."""
        if self._channel is not None:
            return self._channel
        if self._channel_lock is None:
            self._channel_lock = asyncio.Lock()
        async with self._channel_lock:
            if self._channel is None:
                pool = self.server.channel_pool()
                try:
                    channel = await pool.lease(self._on_channel_closed)
                except BrokerError as exc:
                    raise StompError("Broker unavailable", str(exc)) from None
                if self.closed:
                    await channel.close()
                    raise StompError("Connection closed", "the connection went meanwhile")
                self._channel = channel
        return self._channel

    def _on_message(self, message: QueueMessage) -> None:
        sub = self._by_tag.get(message.consumer_tag)
        if sub is None or self.closed:
            return  # cancelled meanwhile; unacked, it goes back to the queue with the channel
        message_id = f"{message.consumer_tag}@@{self.session_id}@@{message.delivery_tag}"
        destination = format_destination(
            message.exchange, message.routing_key, self.server.options.topic_exchange
        )
        self._send(
            message_frame(
                version=self.version,
                subscription=sub.id,
                destination=destination,
                message_id=message_id,
                ack=message_id if sub.ack != "auto" and self.version == "1.2" else None,
                redelivered=message.redelivered,
                properties=message.properties,
                body=message.body,
            )
        )

    def _on_cancel(self, tag: str) -> None:
        sub = self._by_tag.pop(tag, None)
        if sub is not None:
            self.subscriptions.pop(sub.id, None)
            self.fail(
                StompError(
                    "Server cancelled subscription",
                    f"RabbitMQ cancelled subscription '{sub.id}' (was its queue deleted?)",
                )
            )

    def _on_channel_closed(self, reason: str) -> None:
        self._channel = None
        self.fail(StompError("AMQP channel closed", reason))

    # --- ACK, NACK ------------------------------------------------------------------------------

    async def _ack(self, frame: Frame) -> None:
        command = frame.command
        name = "id" if self.version == "1.2" else "message-id"
        value = frame.headers.get(name)
        if value is None:
            raise StompError("Missing header", f"{command} must include the '{name}' header")
        parts = value.rsplit("@@", 2)
        if len(parts) != 3 or not parts[0].startswith("T_") or not parts[2].isdigit():
            raise StompError("Invalid header", f"{command} must include a valid '{name}' header")
        tag, session, delivery = parts
        sub = self._by_tag.get(tag)
        if sub is None:
            if session == "fanout":
                return  # a fan-out message: at most once, nothing to acknowledge
            raise StompError("Subscription not found", f"message '{value}' has no subscription")
        if sub.ack == "auto":
            return  # RabbitMQ acknowledged it on delivery (Web-STOMP also lets this pass)
        channel = self._channel
        if channel is None:
            raise StompError("Subscription not found", f"message '{value}' has no subscription")
        multiple = sub.ack == "client"
        try:
            if command == "ACK":
                await channel.ack(int(delivery), multiple=multiple)
            else:
                requeue = frame.headers.get("requeue", "true").strip().lower() != "false"
                await channel.nack(int(delivery), multiple=multiple, requeue=requeue)
        except BrokerError as exc:
            raise StompError(f"{command} failed", str(exc)) from None

    # --- SEND ------------------------------------------------------------------------------------

    async def _send_frame(self, frame: Frame) -> None:
        headers = frame.headers
        text = headers.get("destination")
        if text is None:
            raise StompError("Missing destination", "SEND must include a 'destination' header")
        if "message-id" in headers:
            raise StompError("Invalid header", "'message-id' is not allowed on 'SEND'")
        dest = parse_destination(text)
        if dest.kind == "temp-queue":
            raise StompError(
                "Invalid destination", f"'{text}' is not a valid destination for 'SEND'"
            )
        await self.server.authorize("SEND", dest, text, self.info, self.claims)
        if not self.server.rabbitmq:
            if dest.kind != "topic":
                raise self.server.needs_rabbitmq(f"SEND to {dest.kind}")
            try:
                validate_topic(dest.name, wildcards=False)
                await self.server.hub.broker.publish(dest.name, frame.body)
            except (InvalidTopic, BrokerError) as exc:
                raise StompError("Send failed", f"'{text}': {exc}") from None
            self._receipt(frame)
            return
        reply_to = None
        reply_header = headers.get("reply-to")
        if reply_header is not None and reply_header.startswith(_TEMP_PREFIX):
            reply_to = await self._temp_queue(reply_header)
        properties = send_properties(headers, reply_to)
        exchange, routing_key = dest.routing
        if dest.kind == "topic":
            exchange = self.server.options.topic_exchange
        if len(routing_key.encode("utf-8")) > 255 or len(exchange.encode("utf-8")) > 255:
            raise StompError("Invalid destination", f"'{text}': names are at most 255 octets")
        channel = await self._lease()
        if dest.kind == "queue":
            await self._declare_once(channel, dest.name, headers)
        publish = asyncio.ensure_future(
            self._publish(channel, exchange, routing_key, frame, properties)
        )
        if "receipt" in headers:
            await publish
            return
        publishes = self._publishes
        if publishes is None:
            publishes = self._publishes = collections.deque()
        publishes.append(publish)
        publish.add_done_callback(self._published)
        while len(publishes) > MAX_IN_FLIGHT:
            await asyncio.wait({publishes[0]})

    async def _publish(
        self,
        channel: LeasedChannel,
        exchange: str,
        routing_key: str,
        frame: Frame,
        properties: dict[str, Any],
    ) -> None:
        try:
            await channel.publish(exchange, routing_key, frame.body, properties)
        except BrokerError as exc:
            text = frame.headers.get("destination", "")
            self.fail(
                StompError("Send failed", f"'{text}': {exc}", receipt=frame.headers.get("receipt"))
            )
            return
        self._receipt(frame)

    def _published(self, future: asyncio.Future[None]) -> None:
        publishes = self._publishes
        if publishes is not None:
            while publishes and publishes[0].done():
                publishes.popleft()

    async def _drain_publishes(self) -> None:
        if self._publishes:
            await asyncio.wait(set(self._publishes))

    async def _declare_once(
        self, channel: LeasedChannel, queue: str, headers: dict[str, str]
    ) -> None:
        """A SEND to /queue/<name> declares it, as Web-STOMP does, once per session."""
        declared = self._declared
        if declared is None:
            declared = self._declared = set()
        if queue in declared:
            return
        try:
            await channel.declare_queue(queue, **queue_params(headers, durable=True))
        except BrokerError as exc:
            raise StompError("Send failed", f"'/queue/{queue}': {exc}") from None
        if len(declared) < 1000:
            declared.add(queue)

    async def _temp_queue(self, text: str) -> str:
        """The queue behind ``/temp-queue/<name>`` in a SEND's reply-to: made and consumed
        on first use (exclusive, auto-delete); its messages arrive with ``subscription``
        set to the temp-queue destination, as with Web-STOMP."""
        name = text[len(_TEMP_PREFIX) :]
        if not name or "/" in name:
            raise StompError("Invalid header", f"reply-to '{text}' is not a valid temp-queue")
        queues = self._temp_queues
        if queues is None:
            queues = self._temp_queues = {}
        queue = queues.get(name)
        if queue is not None:
            return queue
        limit = self.server.options.max_subscriptions
        if len(self.subscriptions) >= limit:
            raise StompError("Too many subscriptions", f"a connection may hold {limit} at most")
        channel = await self._lease()
        try:
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            tag = f"T_{text}"
            sub = self.subscriptions[text] = self._by_tag[tag] = _Subscription(text, "auto")
            sub.tag = tag
            await channel.consume(
                queue,
                self._on_message,
                consumer_tag=tag,
                no_ack=True,
                prefetch=self.server.options.prefetch,
                on_cancel=self._on_cancel,
            )
        except BrokerError as exc:
            raise StompError("Send failed", f"reply-to '{text}': {exc}") from None
        queues[name] = queue
        return queue

    # --- transactions -----------------------------------------------------------------------

    def _in_transaction(self, name: str, frame: Frame) -> None:
        if self._transactions is None:
            self._transactions = Transactions(self.server.options.max_frame_size)
        self._transactions.hold(name, frame)
        if frame.command != "SEND":
            # As RabbitMQ does: an ACK or NACK is receipted when held, a SEND once its
            # confirm came after the COMMIT.
            self._receipt(frame)
            frame.headers.pop("receipt", None)

    async def _transaction(self, frame: Frame) -> None:
        command = frame.command
        name = frame.headers.get("transaction")
        if name is None:
            raise StompError(
                "Missing transaction", f"{command} must include a 'transaction' header"
            )
        if self._transactions is None:
            self._transactions = Transactions(self.server.options.max_frame_size)
        if command == "BEGIN":
            self._transactions.begin(name)
            return
        frames = self._transactions.end(name)
        if command == "COMMIT":
            for held in frames:
                try:
                    await self._dispatch(held)
                except StompError as exc:
                    if exc.receipt is None:
                        exc.receipt = held.headers.get("receipt")
                    raise
            await self._drain_publishes()
