"""The contract between the pub/sub hub and a message broker.

A broker is a topic router that the hub drives: it binds and unbinds AMQP topic patterns
(``*`` one word, ``#`` zero or more words; AMQP 0-9-1 topic exchange semantics) and calls
``on_delivery(delivery)`` (a ``messages.Delivery``) once per message that matches at least
one of its bindings. Reference counting of bindings across connections belongs to the hub,
not to the broker: the hub calls ``bind`` once when the first local connection joins a
pattern and ``unbind`` once when the last one leaves.

A broker that loses its connection keeps its set of bound patterns as the source of truth
and replays it when it reconnects, so subscribers never have to join again.

A broker configured with history patterns also has a ``history`` attribute (a
``BrokerHistory``): it delivers every message of each pattern's log, with its offset and
epoch, whether or not anything is bound, and tells the hub where each log's live flow
starts (``HistorySink``). See docs/architecture.md, "History and resume".

A broker on RabbitMQ also has a ``rabbitmq`` side (``RabbitMQ``): its exchange, sibling
brokers on other exchanges and extra connections (STOMP's queue and exchange destinations),
and the health of the node it is on (``/ready`` and ``/metrics``). Other brokers have
``rabbitmq = None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rabbitsocks.config import HistoryConfig
from rabbitsocks.messages import Delivery

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from rabbitsocks.stats import ProbeStats

__all__ = [
    "Broker",
    "BrokerHistory",
    "DeliveryHandler",
    "HistorySink",
    "ReplayHandler",
    "StateHandler",
]

#: Called on the event loop for every delivery. It must not block and must not raise; it
#: is the start of the hot path.
DeliveryHandler = Callable[[Delivery], None]

#: Called on the event loop when the broker connects (``True``) or loses its connection
#: (``False``).
StateHandler = Callable[[bool], None]


@runtime_checkable
class Broker(Protocol):
    """What the hub and the RPC service need from a message broker."""

    #: The name under which the broker is configured (``memory``, ``amqp``, ...).
    name: str

    @property
    def history(self) -> BrokerHistory | None:
        """Its history logs (history topics), or ``None`` when it keeps none."""
        ...

    @property
    def rabbitmq(self) -> RabbitMQ | None:
        """Its RabbitMQ side, or ``None`` when it is not on RabbitMQ."""
        ...

    @property
    def connected(self) -> bool:
        """Whether ``bind`` and ``publish`` can succeed right now."""
        ...

    async def start(
        self, on_delivery: DeliveryHandler, on_state: StateHandler | None = None
    ) -> None:
        """Connect and start consuming. Returns once connected, or once the first attempt
        (with several URLs, one attempt per URL) failed; a broker that could not connect
        keeps retrying in the background."""
        ...

    async def bind(self, pattern: str) -> None:
        """Start routing messages matching ``pattern`` to ``on_delivery``.

        Returns only once the binding is in effect. Raises ``BrokerUnavailable`` when not
        connected.
        """
        ...

    async def unbind(self, pattern: str) -> None:
        """Stop routing ``pattern``. Never raises for an outage: the binding is forgotten and
        will not be replayed (the server drops it with its queue anyway)."""
        ...

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        """Publish ``body`` with routing key ``topic`` to the broker's exchange.

        With ``confirm`` it returns once the broker confirmed the message, and raises
        ``PublishFailed`` on a nack or timeout and ``BrokerUnavailable`` when not connected.
        Without ``confirm`` it returns once the message is handed to the connection.
        """
        ...

    async def close(self) -> None:
        """Unbind everything and disconnect. Idempotent."""
        ...


#: Called by ``BrokerHistory.replay`` for each entry of a log, in order: its offset, and the
#: message (``None`` for an entry that is not one, such as an epoch marker). Returning
#: ``False`` ends the replay.
ReplayHandler = Callable[[int, Delivery | None], bool]


class HistorySink(Protocol):
    """What a broker's history tells the hub, on the event loop (besides the messages,
    which go to ``on_delivery`` with their ``stream``, ``offset`` and ``epoch``)."""

    def history_ready(self, stream: int, epoch: str, after: int) -> None:
        """From now on, every entry of log ``stream`` after offset ``after`` is delivered,
        in order, in ``epoch``. Called when the live flow starts, and again when it
        restarts: after a reconnect that continues where the last delivery was, ``epoch``
        and ``after`` are those of that delivery."""
        ...

    def history_position(self, stream: int, offset: int) -> None:
        """The live flow of log ``stream`` passed an entry that is not a message."""
        ...


class BrokerHistory(Protocol):
    """The history logs of a broker, one per ``HistoryConfig``, indexed as configured."""

    configs: tuple[HistoryConfig, ...]

    @property
    def max_replays(self) -> int:
        """Replays of older positions (reads of the broker) under way at once, at most."""
        ...

    #: Whether the hub's in-process log is the whole history (the memory broker), or a
    #: cache of a longer one that ``replay`` reads (RabbitMQ).
    authoritative: bool

    def attach(self, sink: HistorySink) -> None:
        """Where to report; called once, before the broker starts."""
        ...

    async def replay(self, stream: int, start: int, handler: ReplayHandler) -> None:
        """Read log ``stream`` from offset ``start`` (or the oldest entry retained, if
        later) and call ``handler`` with each entry until it returns ``False``. Raises
        ``BrokerUnavailable`` when disconnected, ``BrokerError`` if the broker refuses."""
        ...


class RabbitMQ(Protocol):
    """What a broker on RabbitMQ offers beyond ``Broker`` (``Broker.rabbitmq``)."""

    name: str
    #: Connections made to another node than the previous one.
    failovers: int
    #: The end-to-end probe's rounds and latencies.
    probes: ProbeStats

    @property
    def exchange(self) -> str:
        """The exchange the broker binds its queue to and publishes to."""
        ...

    @property
    def bindings(self) -> frozenset[str]:
        """The bound patterns: what RabbitMQ has, or will have again after a reconnect."""
        ...

    @property
    def safe_url(self) -> str:
        """The URL of the node it is on (else the next it will try), password masked."""
        ...

    @property
    def unready(self) -> str | None:
        """Why it should not be taken as delivering now (not connected, a failed probe),
        or ``None``."""
        ...

    def sibling(self, name: str, exchange: str) -> Broker:
        """A broker like this one (same nodes and settings) on ``exchange``, which must
        exist."""
        ...

    async def connect_more(self, purpose: str) -> AbstractConnection:
        """Another connection to the same RabbitMQ, for channels of the caller's own (which
        closes it). Raises ``BrokerUnavailable``."""
        ...
