"""The RabbitMQ broker: the ``Broker`` protocol over aio-pika, with its own reconnect loop.

This module and its two neighbours, ``amqp_session`` (a session's channels, TLS, backoff)
and ``amqp_probe`` (the end-to-end probe), are the only ones of rabbitsocks that import
aio-pika (and aiormq, the protocol layer under it); every error they raise is translated
here into ``BrokerUnavailable``, ``PublishFailed`` (``PublishRefused``, ``PublishUnknown``)
or ``BrokerError``.

Theory of operation
-------------------
An ``AmqpBroker`` has a list of URLs, the nodes of one RabbitMQ cluster, the first one
preferred. It holds at most one AMQP connection at a time, a *session*, to one of them,
with three channels on it:

* **consume**: one exclusive, auto-delete, server-named queue (it dies with the connection,
  so a crashed or ``kill -9``-ed process leaves nothing behind; it lives on the node we are
  connected to), consumed with ``no_ack``. Deliveries go from aiormq's consumer callback
  straight to ``on_delivery`` as a ``Delivery`` (routing key, body, pamqp's properties
  object as is): no ``IncomingMessage`` is built. A bridge fans out ephemeral messages, and
  an unacknowledged message has nowhere to be redelivered once the exclusive queue is gone,
  so acknowledgements would buy nothing but one more frame per batch. Deliveries through
  the default exchange (``""``) are the probe's (below) and never reach ``on_delivery``.
* **control**: exchange and queue bindings (``Queue.Bind`` / ``Queue.Unbind``). It is kept
  apart from the consume channel on purpose: a channel error (a bind to an exchange deleted
  behind our back, 404) or an RPC cancelled mid-flight (aiormq then closes the channel)
  would otherwise cancel the consumer, and an auto-delete queue is deleted with its last
  consumer, taking every binding with it. A closed control channel is reopened on next use.
* **publish**: publisher-confirm mode. A publish RabbitMQ refuses with a channel error (for
  instance 404, no such exchange) closes this channel; the publish fails with
  ``PublishFailed`` and the next publish reopens it.

A supervisor task owns the session::

    IDLE --start--> CONNECTING --set up--> CONNECTED --connection or consumer lost,--> WAITING
                      ^   |                    |       or the probe failed            |
                      |   +--failed------------|-------(next URL)------------------> WAITING
                      |                        +--rebalance: a new session on the first URL
                      |                           is set up, then replaces this one (CONNECTED)
                      +------------------- jitter or backoff --------------------------+
    any state --close--> CLOSED

Setting up means: connect to the current URL, declare the exchange unless it is a built-in
``amq.*`` one, declare the queue, consume, then replay every pattern of the registry
(``_patterns``), the source of truth. Only then is the broker ``connected`` and
``on_state(True)`` called. When the connection closes, or the consume channel does, or
RabbitMQ cancels the consumer, or the probe fails, the broker is disconnected in that same
callback and ``on_state(False)`` is called.

Failover: after a lost session the supervisor tries the *next* URL first (the node it lost
is the least likely to answer), after a jitter of up to ``reconnect_min`` so that processes
that lost one node together do not land on the next one in lockstep. A failed attempt moves
on to the next URL at once; once every URL has failed in a row, it backs off (exponential
from ``reconnect_min`` to ``reconnect_max``, with jitter) before the next round. With one
URL that is the plain reconnect loop. While disconnected, ``bind`` raises
``BrokerUnavailable`` and ``unbind`` only forgets the pattern, so the registry holds exactly
what the next session must bind.

The probe (``amqp_probe``): a connection that looks healthy is not proof of delivery (a
frozen node keeps TCP open for minutes; a node partitioned from the others accepts our
queue and bindings, and no publisher on another node reaches it). Every ``probe_interval``
seconds the session publishes a message to its own queue through the default exchange and
expects it back within ``probe_timeout``; with several URLs it also publishes one through a
connection to another node, so the probe crosses the cluster as a publisher's message does.
A failed probe makes ``unready`` say why (``/ready`` answers 503) and the broker leaves the
node for the next URL. Probes need no binding and are addressed to our queue only, so no
client's pattern (not even ``#``) can ever receive one.

Rebalancing (``rebalance``): while on a URL other than the first, every
``rebalance_interval`` seconds the supervisor sets up a complete session on the first URL
(queue, consumer, every binding, a passing probe) *before* it switches binds, unbinds and
publishes to it and closes the old one. Nothing is lost; a message routed while both
queues are bound arrives twice (the window is the replay time, milliseconds).

Binds and unbinds (and the replay) are serialised by one lock: RPCs on one channel are
serialised by aiormq anyway, and the lock makes "the registry matches RabbitMQ" hold for
a bind and an unbind of the same pattern that race each other.

Our connections decode AMQP short strings leniently (``rabbitsocks.compat``): they are
opened inside ``lenient_shortstr()``, and only their reader tasks see that.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aio_pika
import aio_pika.abc
import aiormq
import aiormq.abc
from yarl import URL

from rabbitsocks.brokers.amqp_probe import Probe
from rabbitsocks.brokers.amqp_session import (
    CONNECTION_ERRORS,
    AmqpTls,
    Channel,
    Session,
    backoff_delay,
    reason,
)
from rabbitsocks.brokers.base import DeliveryHandler, StateHandler
from rabbitsocks.brokers.streams import StreamHistory
from rabbitsocks.compat import lenient_shortstr
from rabbitsocks.config import HistoryConfig
from rabbitsocks.errors import (
    BrokerError,
    BrokerUnavailable,
    PublishFailed,
    PublishRefused,
    PublishUnknown,
)
from rabbitsocks.logs import mask_url
from rabbitsocks.messages import Delivery
from rabbitsocks.stats import ProbeStats

__all__ = ["AmqpBroker", "AmqpTls", "backoff_delay"]

log = logging.getLogger(__name__)

# What opening a connection may raise besides losing it.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
    TimeoutError,
)


class _State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting"
    CLOSED = "closed"


class AmqpBroker:
    """A ``Broker`` on RabbitMQ: one exclusive queue per process, bound once per pattern.

    ``url`` is an AMQP URL (``amqp://user:password@host:port/vhost``) or a sequence of them,
    the nodes of one cluster, tried in turn (the first is preferred); query parameters are
    passed to aiormq. ``exchange`` is a topic exchange; unless it is a built-in ``amq.*``
    exchange, or ``declare_exchange`` is false, it is declared (durable) at each connect.
    ``confirm_timeout`` bounds how long a confirmed publish waits for RabbitMQ;
    ``connect_timeout`` bounds a connection attempt and each control request (declare,
    bind, unbind). After a connection loss the broker reconnects by itself (the next URL
    first), waiting between ``reconnect_min`` and ``reconnect_max`` seconds between rounds
    of attempts.

    ``heartbeat`` is the AMQP heartbeat in seconds (0: off; a ``heartbeat`` query parameter
    in a URL wins). ``probe_interval`` (0: off) and ``probe_timeout`` drive the end-to-end
    probe; ``rebalance`` returns to the first URL, tried every ``rebalance_interval`` s.
    ``tls`` applies to ``amqps://`` URLs.

    ``prefetch`` is the ``basic.qos`` prefetch count. It only limits *unacknowledged*
    deliveries, and this broker consumes with ``no_ack``, so it is sent for the record (it
    shows in the management UI) but does not throttle anything: back-pressure on deliveries
    comes from TCP and aiormq's bounded frame queues.

    ``on_state`` is called on changes only: ``True`` once connected (at start too),
    ``False`` when an established connection is lost. A broker that could not connect at
    ``start`` is not ``connected`` and says nothing until it is. ``close`` calls neither.
    """

    #: Unconfirmed publishes (``confirm=False``) whose confirms are still awaited; past this,
    #: ``publish(confirm=False)`` waits for room, so a flood cannot grow memory without bound.
    MAX_UNCONFIRMED = 10_000
    #: Binds pipelined per round trip when a reconnect replays the registry.
    REPLAY_CHUNK = 500

    def __init__(
        self,
        name: str = "amqp",
        url: str | Sequence[str] = "amqp://guest:guest@127.0.0.1:5672/",
        exchange: str = "amq.topic",
        *,
        prefetch: int = 1000,
        confirm_timeout: float = 5.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        connect_timeout: float = 5.0,
        declare_exchange: bool = True,
        heartbeat: int = 10,
        probe_interval: float = 0.0,
        probe_timeout: float = 3.0,
        rebalance: bool = False,
        rebalance_interval: float = 30.0,
        tls: AmqpTls | None = None,
        history: Sequence[HistoryConfig] = (),
        history_replays: int = 16,
    ) -> None:
        if reconnect_min <= 0 or reconnect_max < reconnect_min:
            raise ValueError("expected 0 < reconnect_min <= reconnect_max")
        urls = (url,) if isinstance(url, str) else tuple(url)
        if not urls:
            raise ValueError("expected at least one URL")
        self.name = name
        #: Publishes with ``confirm=False`` that failed after ``publish`` returned.
        self.publish_failures = 0
        #: Sessions opened on a node other than the one the previous session was on.
        self.failovers = 0
        #: Probe rounds and latencies, for metrics.
        self.probes = ProbeStats()
        self._urls = urls
        self._safe_urls = tuple(mask_url(u) for u in urls)
        self._exchange = exchange
        self._prefetch = prefetch
        self._confirm_timeout = confirm_timeout
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._connect_timeout = connect_timeout
        self._declare_exchange = declare_exchange
        self._heartbeat = heartbeat
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._rebalance = rebalance and len(urls) > 1
        self._rebalance_interval = rebalance_interval
        self._tls = tls
        self._ssl_context: ssl.SSLContext | None = None
        #: The history patterns' streams (brokers/streams.py), told of each session.
        self.history: StreamHistory | None = None
        if history:
            self.history = StreamHistory(
                name, exchange, history, max_replays=history_replays, timeout=connect_timeout
            )

        self._state = _State.IDLE
        self._session: Session | None = None
        self._next_node = 0
        self._last_node: int | None = None
        #: Why the broker is not ready while it is connected (a probe failed), or ``None``.
        self._unready: str | None = None
        self._patterns: set[str] = set()
        self._control_lock = asyncio.Lock()
        self._on_delivery: DeliveryHandler | None = None
        self._on_state: StateHandler | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._outage_since: float | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._unconfirmed = asyncio.Semaphore(self.MAX_UNCONFIRMED)
        self._failure_logged = False

    # -- what tests and metrics read -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._state is _State.CONNECTED

    @property
    def rabbitmq(self) -> AmqpBroker:
        """This broker is on RabbitMQ: its exchange, siblings, node health (``Broker``)."""
        return self

    @property
    def queue_name(self) -> str | None:
        """The server-named queue of the current connection, if connected."""
        session = self._session
        return session.queue if session is not None else None

    @property
    def bindings(self) -> frozenset[str]:
        """The bound patterns: what RabbitMQ has, or will have again after a reconnect."""
        return frozenset(self._patterns)

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs, with their passwords masked, for messages."""
        return self._safe_urls

    @property
    def safe_url(self) -> str:
        """The URL of the current node (else the first one), password masked."""
        session = self._session
        return self._safe_urls[session.node if session is not None else self._next_node]

    @property
    def node(self) -> int | None:
        """Index in ``urls`` of the node the broker is connected to."""
        session = self._session
        return session.node if session is not None and self.connected else None

    @property
    def unready(self) -> str | None:
        """Why this broker should not be taken as delivering now, or ``None``: not connected,
        or the last probe failed, or no probe has passed on this connection yet."""
        if self._state is not _State.CONNECTED:
            return "not connected"
        return self._unready

    @property
    def exchange(self) -> str:
        """The exchange this broker binds its queue to and publishes to."""
        return self._exchange

    def sibling(self, name: str, exchange: str) -> AmqpBroker:
        """A broker like this one (same RabbitMQ nodes, same settings) on another exchange,
        which it does not declare: it must exist, with whatever type it has. STOMP's
        ``/exchange/<name>/<key>`` destinations fan out through one such broker's hub per
        exchange."""
        return AmqpBroker(
            name,
            self._urls,
            exchange,
            prefetch=self._prefetch,
            confirm_timeout=self._confirm_timeout,
            reconnect_min=self._reconnect_min,
            reconnect_max=self._reconnect_max,
            connect_timeout=self._connect_timeout,
            declare_exchange=False,
            heartbeat=self._heartbeat,
            probe_interval=self._probe_interval,
            probe_timeout=self._probe_timeout,
            rebalance=self._rebalance,
            rebalance_interval=self._rebalance_interval,
            tls=self._tls,
        )

    async def connect_more(self, purpose: str) -> aio_pika.abc.AbstractConnection:
        """Another AMQP connection to this broker's RabbitMQ, with its settings, for an
        adapter that needs channels of its own (``amqp_channels``: STOMP queue consumers
        and publishes): to the node the broker is on (else the next one it will try), with
        the same heartbeat and TLS, decoding leniently as ours do. The caller closes it.
        Raises ``BrokerUnavailable``."""
        session = self._session
        url = self._connect_url(session.node if session is not None else self._next_node)
        if self._tls is not None and url.startswith("amqps:") and self._ssl_context is None:
            self._ssl_context = await asyncio.to_thread(self._tls.context)
        try:
            with lenient_shortstr():
                async with asyncio.timeout(self._connect_timeout):
                    return await aio_pika.connect(
                        url,
                        ssl_context=self._ssl_context if url.startswith("amqps:") else None,
                        client_properties={
                            "connection_name": f"rabbitsocks {self.name} {purpose} pid "
                            f"{os.getpid()}"
                        },
                    )
        except _CONNECT_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def __repr__(self) -> str:
        return f"<AmqpBroker {self.name!r} {self.safe_url} {self._state.value}>"

    # -- the Broker protocol ---------------------------------------------------------------

    async def start(
        self, on_delivery: DeliveryHandler, on_state: StateHandler | None = None
    ) -> None:
        if self._state is not _State.IDLE:
            raise RuntimeError(f"broker {self.name!r} was already started")
        if self._tls is not None and any(u.startswith("amqps:") for u in self._urls):
            self._ssl_context = await asyncio.to_thread(self._tls.context)
        self._on_delivery = on_delivery
        self._on_state = on_state
        if self.history is not None:
            self.history.started(on_delivery)
        self._state = _State.CONNECTING
        first = self._first_attempt = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"rabbitsocks amqp broker {self.name}"
        )
        await first

    async def bind(self, pattern: str) -> None:
        self._require_session()
        if pattern in self._patterns:
            return
        async with self._control_lock:
            session = self._require_session()
            if pattern in self._patterns:
                return
            try:
                async with asyncio.timeout(self._connect_timeout):
                    control = await self._control(session)
                    await control.queue_bind(session.queue, self._exchange, routing_key=pattern)
            except asyncio.CancelledError:
                # The Bind may have reached RabbitMQ: take it back, as nobody will unbind a
                # pattern whose bind never returned.
                session.control.abandoned = True
                if self._state is _State.CONNECTED:
                    self._spawn(self._unbind_orphan(pattern))
                raise
            except TimeoutError as exc:
                session.control.abandoned = True
                raise BrokerUnavailable(
                    f"broker {self.name!r}: RabbitMQ did not answer Queue.Bind {pattern!r} "
                    f"within {self._connect_timeout:g}s"
                ) from exc
            except aiormq.exceptions.AMQPChannelError as exc:
                raise BrokerError(
                    f"broker {self.name!r}: RabbitMQ refused to bind {pattern!r} "
                    f"to exchange {self._exchange!r}: {reason(exc)}"
                ) from exc
            except CONNECTION_ERRORS as exc:
                raise self._unavailable(exc) from exc
            if self._session is not session:
                # Bound on a queue that died with its connection before we got here.
                raise self._unavailable(None)
            self._patterns.add(pattern)

    async def unbind(self, pattern: str) -> None:
        async with self._control_lock:
            if pattern not in self._patterns:
                return
            self._patterns.discard(pattern)
            session = self._session
            if session is None:
                return  # the queue went with the connection; the registry forgets it
            await self._queue_unbind(session, pattern)

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        session = self._require_session()
        if confirm:
            await self._publish(session, topic, body)
            return
        await self._unconfirmed.acquire()
        self._spawn(self._publish_unconfirmed(session, topic, body))
        # One turn of the loop lets the task write the frames to the connection (or queue
        # up, in order, on the channel's lock behind earlier publishes): "handed off".
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)
        if self._background:
            # Give confirms in flight a chance before the connection goes.
            await asyncio.wait(set(self._background), timeout=self._confirm_timeout)
        if self.history is not None:
            await self.history.close()
        session, self._session = self._session, None
        if session is not None:
            await self._discard(session)
        leftovers = set(self._background)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        self._patterns.clear()

    # -- the supervisor --------------------------------------------------------------------

    async def _supervise(self) -> None:
        count = len(self._urls)
        attempt = 0  # backoff rounds since the last session
        failures = 0  # failed attempts in a row
        with lenient_shortstr():  # our connections, and only they, decode leniently
            while True:
                node = self._next_node
                self._state = _State.CONNECTING
                try:
                    session = await self._open_session(node)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._attempt_failed(node, exc)
                    failures += 1
                    self._next_node = (node + 1) % count
                    if failures % count:
                        continue  # the next URL at once
                    # Every URL failed: ``start`` returns (not connected) after one round.
                    if self._first_attempt is not None and not self._first_attempt.done():
                        self._first_attempt.set_result(None)
                    self._state = _State.WAITING
                    delay = backoff_delay(attempt, self._reconnect_min, self._reconnect_max)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                if self._state is _State.CLOSED:  # close() raced the last step of the set-up
                    await self._discard(session)
                    return
                failures = 0
                self._session_up(session)
                session = await self._serve(session)
                await self._discard(session)
                self._state = _State.WAITING
                if count == 1:
                    await asyncio.sleep(backoff_delay(0, self._reconnect_min, self._reconnect_max))
                    attempt = 1
                else:
                    # The next node first; jitter spreads the processes that lost this one.
                    self._next_node = (session.node + 1) % count
                    await asyncio.sleep(random.uniform(0, self._reconnect_min))
                    attempt = 0

    async def _serve(self, session: Session) -> Session:
        """Run the probe (and rebalancing) for the session; return the session that was
        lost (a rebalanced one replaces ``session``)."""
        while True:
            probe = None
            if self._probe_interval > 0:
                probe = Probe(
                    self,
                    session,
                    interval=self._probe_interval,
                    timeout=self._probe_timeout,
                    on_failure=self._probe_failed,
                    on_success=self._probe_passed,
                )
                probe.start()
            try:
                if not self._rebalance or session.node == 0:
                    await session.lost.wait()
                    return session
                replacement = await self._wait_or_rebalance(session)
            finally:
                if probe is not None:
                    await probe.stop()
            if replacement is None or not await self._switch(session, replacement):
                return session
            session = replacement

    async def _wait_or_rebalance(self, session: Session) -> Session | None:
        """Until ``session`` is lost (``None``), or a session on the first URL is set up."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._rebalance_interval):
                    await session.lost.wait()
            if session.lost.is_set():
                return None
            try:
                candidate = await self._open_session(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("broker %r: first URL not back yet: %s", self.name, reason(exc))
                continue
            if self._probe_interval > 0:
                problem = await Probe(
                    self, candidate, interval=0, timeout=self._probe_timeout
                ).once()
                if problem is not None:
                    log.info(
                        "broker %r: not returning to %s: %s",
                        self.name,
                        self._safe_urls[0],
                        problem,
                    )
                    await self._discard(candidate)
                    continue
            return candidate

    async def _switch(self, old: Session, new: Session) -> bool:
        """Make ``new`` (set up and bound) the session, then close ``old``. ``False`` (and
        ``new`` closed) if either was lost meanwhile: the supervisor then reconnects."""
        async with self._control_lock:
            # Patterns bound meanwhile went to ``old`` only: bind them on ``new`` too.
            try:
                await self._replay(new)
            except Exception as exc:
                log.debug("broker %r: rebalancing failed: %s", self.name, reason(exc))
                await self._discard(new)
                return False
            if old.lost.is_set() or not new.alive:
                await self._discard(new)
                return False
            self._session = new
            if self.history is not None:
                # The streams follow: consumed on the new session from where they were.
                self.history.session_up(new.connection)
        log.info(
            "broker %r: back on %s (from %s), queue %s, %d pattern(s) bound",
            self.name,
            self._safe_urls[new.node],
            self._safe_urls[old.node],
            new.queue,
            len(self._patterns),
        )
        self.failovers += 1
        self._last_node = new.node
        self._watch(new)
        await self._discard(old)
        return True

    def _connect_url(self, node: int) -> str:
        url = URL(self._urls[node])
        if "heartbeat" not in url.query:
            url = url.update_query(heartbeat=str(self._heartbeat))
        return str(url)

    async def _open_session(self, node: int) -> Session:
        url = self._connect_url(node)
        async with asyncio.timeout(self._connect_timeout):
            connection = await aio_pika.connect(
                url,
                ssl_context=self._ssl_context if url.startswith("amqps:") else None,
                client_properties={"connection_name": f"rabbitsocks {self.name} pid {os.getpid()}"},
            )
        try:
            async with asyncio.timeout(self._connect_timeout):
                control = await Channel.open(connection, confirms=False)
                if self._declare_exchange and not self._exchange.startswith("amq."):
                    await control.raw.exchange_declare(
                        self._exchange, exchange_type="topic", durable=True
                    )
                consume = await Channel.open(connection, confirms=False)
                declared = await consume.raw.queue_declare("", exclusive=True, auto_delete=True)
                queue = declared.queue
                if queue is None:  # pragma: no cover - RabbitMQ always names the queue
                    raise BrokerError("RabbitMQ did not name the queue")
                waiters: dict[bytes, asyncio.Future[None]] = {}
                await consume.raw.basic_qos(prefetch_count=self._prefetch)
                await consume.raw.basic_consume(queue, self._consumer(waiters), no_ack=True)
                publish = await Channel.open(connection, confirms=True)
            session = Session(connection, consume, control, publish, queue, node, waiters)
            async with self._control_lock:
                await self._replay(session)
            if not session.alive or consume.is_closed:
                raise BrokerUnavailable("the connection closed while it was being set up")
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return session

    def _watch(self, session: Session) -> None:
        """Lose ``session`` when its connection, consume channel or consumer goes."""
        session.connection.close_callbacks.add(lambda _, exc: self._lose(session, exc))
        session.consume.channel.close_callbacks.add(lambda _, exc: self._lose(session, exc))
        session.consume.raw.on_consumer_cancel_callbacks.add(
            lambda _: self._lose(session, BrokerError("RabbitMQ cancelled the consumer"))
        )
        if not session.alive or session.consume.is_closed:
            self._lose(session, None)

    async def _replay(self, session: Session) -> None:
        """Bind every pattern of the registry to the new queue.

        Patterns cannot change meanwhile: bind refuses while disconnected and unbind waits for
        the control lock, which the caller holds. The Binds are pipelined (``nowait``) in
        chunks, each closed by a synchronous ``Queue.Declare(passive)``: RabbitMQ handles the
        methods of one channel in order, so its Declare-Ok means every Bind before it is in
        effect, and a refused Bind closes the channel, which fails that Declare. That is 2 to
        3 times faster than a round trip per Bind, and recovery time grows with the number of
        patterns.
        """
        channel = session.control.raw
        patterns = sorted(self._patterns)
        for start in range(0, len(patterns), self.REPLAY_CHUNK):
            for pattern in patterns[start : start + self.REPLAY_CHUNK]:
                await channel.queue_bind(
                    session.queue, self._exchange, routing_key=pattern, nowait=True
                )
            async with asyncio.timeout(self._connect_timeout):
                await channel.queue_declare(session.queue, passive=True)

    def _consumer(
        self, probe_waiters: dict[bytes, asyncio.Future[None]]
    ) -> Callable[[aiormq.abc.DeliveredMessage], Coroutine[Any, Any, None]]:
        on_delivery = self._on_delivery
        assert on_delivery is not None
        broker = self.name

        # The hot path. aiormq runs this once per Basic.Deliver, in a task of its own.
        async def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            method: Any = message.delivery
            exchange: str = method.exchange
            if not exchange:
                # The default exchange: only a probe (ours, or anyone's who knows our
                # queue's name) comes this way; never a client's message.
                waiter = probe_waiters.pop(message.body, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return
            routing_key: str = method.routing_key
            try:
                on_delivery(
                    Delivery(routing_key, message.body, message.header.properties, exchange)
                )
            except Exception:
                log.exception("broker %r: on_delivery failed for %r", broker, routing_key)

        return deliver

    def _session_up(self, session: Session) -> None:
        self._session = session
        self._state = _State.CONNECTED
        if self.history is not None:
            self.history.session_up(session.connection)
        self._unready = "no probe has passed on this connection yet" if self._probing else None
        if self._last_node is not None and self._last_node != session.node:
            self.failovers += 1
        self._last_node = session.node
        self._watch(session)
        url = self._safe_urls[session.node]
        if self._outage_since is not None:
            log.info(
                "broker %r: connected to %s again after %.1fs, queue %s, %d pattern(s) rebound",
                self.name,
                url,
                time.monotonic() - self._outage_since,
                session.queue,
                len(self._patterns),
            )
            self._outage_since = None
        else:
            log.info("broker %r: connected to %s, queue %s", self.name, url, session.queue)
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)
        self._notify(True)

    @property
    def _probing(self) -> bool:
        return self._probe_interval > 0

    def _probe_passed(self, session: Session) -> None:
        if session is self._session:
            self._unready = None

    def _probe_failed(self, session: Session, problem: str) -> None:
        """The probe says ``session``'s node does not deliver: leave it."""
        if session is not self._session or self._state is not _State.CONNECTED:
            return
        self._unready = problem
        # Logged by _lose: "lost the connection to <url> (BrokerError: <problem>)".
        self._lose(session, BrokerError(f"end-to-end probe: {problem}"))
        # The connection may look healthy (a frozen node): close it without waiting for it.
        self._spawn(self._discard(session))

    def _attempt_failed(self, node: int, exc: Exception) -> None:
        url = self._safe_urls[node]
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            expected = isinstance(exc, (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError))
            others = " (then the other URLs)" if len(self._urls) > 1 else ""
            log.warning(
                "broker %r: cannot connect to %s%s (%s); retrying in the background. Is"
                " RabbitMQ running there? Start it, or point RABBITSOCKS_AMQP_URL at one.",
                self.name,
                url,
                others,
                reason(exc),
                exc_info=None if expected else exc,
            )
        else:
            log.debug("broker %r: connecting to %s failed: %s", self.name, url, reason(exc))

    def _lose(self, session: Session, exc: BaseException | None) -> None:
        """The connection or the consumer of ``session`` is gone: disconnected, at once."""
        session.lost.set()
        for waiter in session.probe_waiters.values():
            if not waiter.done():
                waiter.cancel()
        if session is not self._session or self._state is not _State.CONNECTED:
            return  # a session still being set up, or one we are closing ourselves
        if self.history is not None:
            self.history.session_lost()
        self._session = None
        self._state = _State.WAITING
        self._outage_since = time.monotonic()
        log.warning(
            "broker %r: lost the connection to %s (%s); reconnecting",
            self.name,
            self._safe_urls[session.node],
            reason(exc),
        )
        self._notify(False)

    async def _discard(self, session: Session) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._connect_timeout):
                await session.connection.close()

    def _notify(self, connected: bool) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(connected)
        except Exception:
            log.exception("broker %r: on_state(%r) failed", self.name, connected)

    # -- what the probe uses ---------------------------------------------------------------

    def other_urls(self, session: Session) -> list[tuple[str, str]]:
        """(URL to connect to, masked URL) of every node but ``session``'s, next one first."""
        count = len(self._urls)
        order = [(session.node + step) % count for step in range(1, count)]
        return [(self._connect_url(i), self._safe_urls[i]) for i in order]

    def ssl_context_for(self, url: str) -> ssl.SSLContext | None:
        return self._ssl_context if url.startswith("amqps:") else None

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    # -- control ---------------------------------------------------------------------------

    def _require_session(self) -> Session:
        session = self._session
        if session is None or self._state is not _State.CONNECTED:
            raise self._unavailable(None)
        return session

    def _unavailable(self, exc: BaseException | None) -> BrokerUnavailable:
        state = "closed" if self._state is _State.CLOSED else "not connected"
        if self._state is _State.IDLE:
            state = "not started"
        where = self._safe_urls[0] if len(self._urls) == 1 else " or ".join(self._safe_urls)
        detail = f" ({reason(exc)})" if exc is not None else ""
        return BrokerUnavailable(f"broker {self.name!r} is {state} to {where}{detail}")

    async def _control(self, session: Session) -> aiormq.abc.AbstractChannel:
        """The control channel, reopened if RabbitMQ (or a cancelled RPC) closed it."""
        if session.control.is_closed:
            session.control = await Channel.open(session.connection, confirms=False)
        return session.control.raw

    async def _queue_unbind(self, session: Session, pattern: str) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                control = await self._control(session)
                await control.queue_unbind(session.queue, self._exchange, routing_key=pattern)
        except asyncio.CancelledError:
            # Cancelled unbinding: the binding may outlive the registry entry. Try again in
            # the background (not while closing: the queue is about to go anyway).
            session.control.abandoned = True
            if self._state is _State.CONNECTED:
                self._spawn(self._unbind_orphan(pattern))
            raise
        except TimeoutError:
            session.control.abandoned = True
            log.warning(
                "broker %r: RabbitMQ did not answer Queue.Unbind %r within %gs",
                self.name,
                pattern,
                self._connect_timeout,
            )
        except CONNECTION_ERRORS as exc:
            # The queue goes with the connection, and the pattern is out of the registry.
            log.debug("broker %r: unbind %r: %s", self.name, pattern, reason(exc))
        except aiormq.exceptions.AMQPError as exc:
            log.warning("broker %r: could not unbind %r: %s", self.name, pattern, reason(exc))

    async def _unbind_orphan(self, pattern: str) -> None:
        async with self._control_lock:
            session = self._session
            if session is not None and pattern not in self._patterns:
                await self._queue_unbind(session, pattern)

    # -- publishing ------------------------------------------------------------------------

    async def publish_channel(self, session: Session) -> aiormq.abc.AbstractChannel:
        """``session``'s publish channel (confirm mode), reopened if it was closed."""
        if not session.publish.is_closed:
            return session.publish.raw
        async with session.publish_reopen:
            if session.publish.is_closed:
                try:
                    session.publish = await Channel.open(session.connection, confirms=True)
                except CONNECTION_ERRORS as exc:
                    raise self._unavailable(exc) from exc
        return session.publish.raw

    async def _publish(self, session: Session, topic: str, body: bytes) -> None:
        channel = await self.publish_channel(session)
        try:
            await channel.basic_publish(
                body,
                exchange=self._exchange,
                routing_key=topic,
                timeout=self._confirm_timeout,
            )
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishRefused(
                f"broker {self.name!r}: RabbitMQ nacked the message to {topic!r}: it did not"
                " take responsibility for it (some subscribers may have received it)"
            ) from exc
        except TimeoutError as exc:
            raise PublishUnknown(
                f"broker {self.name!r}: the message to {topic!r} was not confirmed "
                f"within {self._confirm_timeout:g}s (outcome unknown)"
            ) from exc
        except aiormq.exceptions.AMQPChannelError as exc:
            raise self._channel_refused(topic, exc) from exc
        except aiormq.exceptions.ChannelInvalidStateError as exc:
            if self._session is session and session.alive:
                # The channel closed under this publish: RabbitMQ refused a concurrent one.
                raise self._channel_refused(topic, session.publish.closed_by or exc) from exc
            raise self._lost_in_flight(topic, exc) from exc
        except CONNECTION_ERRORS as exc:
            raise self._lost_in_flight(topic, exc) from exc

    def _lost_in_flight(self, topic: str, exc: BaseException) -> PublishUnknown:
        return PublishUnknown(
            f"broker {self.name!r}: the connection was lost before RabbitMQ confirmed the "
            f"message to {topic!r} (outcome unknown: {reason(exc)})"
        )

    def _channel_refused(self, topic: str, exc: BaseException) -> PublishFailed:
        return PublishFailed(
            f"broker {self.name!r}: RabbitMQ closed the publish channel on the message to "
            f"{topic!r} via exchange {self._exchange!r}: {reason(exc)}"
        )

    async def _publish_unconfirmed(self, session: Session, topic: str, body: bytes) -> None:
        try:
            await self._publish(session, topic, body)
        except BrokerError as exc:
            self.publish_failures += 1
            if not self._failure_logged:
                self._failure_logged = True
                log.warning("%s; further failures are only counted until a publish succeeds", exc)
        else:
            self._failure_logged = False
        finally:
            self._unconfirmed.release()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
