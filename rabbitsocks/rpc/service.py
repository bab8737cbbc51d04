"""Publish and PublishAsync: RoadRunner's broadcast RPC, over any ``Broker``.

Both transports (goridge TCP, HTTP) decode a ``Request`` and hand it to
``PublishService.call``; everything about what a publish means lives here.

* Validation is all or nothing and comes first: the request size, at least one message,
  at least one valid topic per message (``validate_topic(..., wildcards=False)``), a known
  and connected broker per message. One bad topic and nothing of the request is published.
* ``Publish`` publishes every message to every topic it lists, in order, with publisher
  confirms, and answers ``ok=true`` only once all are confirmed; the whole request shares
  one deadline, ``confirm_timeout``.
* ``PublishAsync`` validates, queues the request for a background publisher and answers at
  once. The publisher still asks for confirms, so that a nack is logged and counted in
  ``stats`` rather than lost silently. The queue is bounded; a full queue refuses the
  request (``PublisherBusy``) rather than growing without limit.

Errors are the exceptions of ``rabbitsocks.errors`` plus the few below; ``error_kind``
sorts them for the transports, which turn them into error frames or HTTP statuses.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from rabbitsocks.brokers.base import Broker
from rabbitsocks.errors import (
    BrokerError,
    BrokerUnavailable,
    InvalidTopic,
    PublishFailed,
    PublishRefused,
    PublishUnknown,
    RpcError,
    UnknownBroker,
)
from rabbitsocks.rpc.pb import Request, Response
from rabbitsocks.topics import validate_topic

__all__ = [
    "DEFAULT_ASYNC_QUEUE_BYTES",
    "DEFAULT_ASYNC_QUEUE_MESSAGES",
    "DEFAULT_CONFIRM_TIMEOUT",
    "DEFAULT_MAX_REQUEST_BYTES",
    "METHODS",
    "AsyncPublishStats",
    "ConfirmTimeout",
    "Encoding",
    "ErrorKind",
    "PublishService",
    "PublisherBusy",
    "RequestTooLarge",
    "UnknownMethod",
    "decode_request",
    "describe_error",
    "encode_response",
    "error_kind",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES: Final = 1024 * 1024
DEFAULT_CONFIRM_TIMEOUT: Final = 10.0
DEFAULT_ASYNC_QUEUE_MESSAGES: Final = 10_000
DEFAULT_ASYNC_QUEUE_BYTES: Final = 64 * 1024 * 1024

#: Method name -> whether it waits for confirms. ``broadcast.*`` is what RoadRunner's
#: broadcast plugin serves today; ``websockets.*`` is the older websockets plugin's name.
METHODS: Final[Mapping[str, bool]] = {
    "broadcast.Publish": True,
    "broadcast.PublishAsync": False,
    "websockets.Publish": True,
    "websockets.PublishAsync": False,
}

# Failures of the background publisher are logged at most this often; the rest are counted.
_FAILURE_LOG_INTERVAL = 1.0


class UnknownMethod(RpcError):
    """The method name is not one this service serves."""


class RequestTooLarge(RpcError):
    """The request is over the configured size limit."""


class PublisherBusy(RpcError):
    """PublishAsync refused a request because the background queue is full."""


class ConfirmTimeout(PublishUnknown):
    """Publish gave up waiting for confirms (its own deadline, ``confirm_timeout``); the
    messages may or may not have been routed."""


class Encoding(enum.Enum):
    """How a ``Request`` / ``Response`` is encoded on the wire."""

    PROTOBUF = "protobuf"
    #: The proto3 JSON mapping: ``{"messages": [{"topics": [...], "payload": "<base64>"}]}``.
    JSON = "json"


class ErrorKind(enum.Enum):
    """What went wrong, as the transports tell it; the value prefixes error texts."""

    INVALID_REQUEST = "invalid request"
    UNKNOWN_METHOD = "unknown method"
    TOO_LARGE = "request too large"
    BUSY = "busy"
    BROKER_UNAVAILABLE = "broker unavailable"
    #: RabbitMQ refused before routing (no such exchange): nobody received it.
    PUBLISH_FAILED = "publish failed"
    #: RabbitMQ nacked: it did not take responsibility; some subscribers may have it.
    PUBLISH_REFUSED = "publish refused"
    #: RPC's own deadline passed with confirms outstanding: outcome unknown.
    CONFIRM_TIMEOUT = "confirm timeout"
    #: The broker's confirm timeout passed, or the connection was lost, after sending.
    OUTCOME_UNKNOWN = "outcome unknown"
    INTERNAL = "internal error"


def error_kind(exc: BaseException) -> ErrorKind:
    """Sort an exception raised by ``PublishService`` for the transports."""
    # Subclasses before their bases.
    if isinstance(exc, UnknownMethod):
        return ErrorKind.UNKNOWN_METHOD
    if isinstance(exc, RequestTooLarge):
        return ErrorKind.TOO_LARGE
    if isinstance(exc, PublisherBusy):
        return ErrorKind.BUSY
    if isinstance(exc, RpcError | InvalidTopic | UnknownBroker):
        return ErrorKind.INVALID_REQUEST
    if isinstance(exc, BrokerUnavailable):
        return ErrorKind.BROKER_UNAVAILABLE
    if isinstance(exc, ConfirmTimeout):
        return ErrorKind.CONFIRM_TIMEOUT
    if isinstance(exc, PublishUnknown):
        return ErrorKind.OUTCOME_UNKNOWN
    if isinstance(exc, PublishRefused):
        return ErrorKind.PUBLISH_REFUSED
    if isinstance(exc, PublishFailed):
        return ErrorKind.PUBLISH_FAILED
    return ErrorKind.INTERNAL


def describe_error(exc: BaseException) -> str:
    """The one-line error text sent to RPC clients: ``"<kind>: <message>"``.

    An unexpected exception is not described beyond its kind: its text may leak internals.
    """
    kind = error_kind(exc)
    if kind is ErrorKind.INTERNAL:
        return f"{kind.value}: see the server log"
    return f"{kind.value}: {exc}"


def decode_request(body: bytes, encoding: Encoding) -> Request:
    """Parse a ``Request``; ``RpcError`` if ``body`` is not one."""
    if encoding is Encoding.PROTOBUF:
        try:
            return Request.FromString(body)
        except DecodeError as exc:
            raise RpcError(f"the body is not a protobuf Request: {exc}") from exc
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RpcError("the JSON body is not UTF-8") from exc
    try:
        return json_format.Parse(text, Request())
    # json.loads raises RecursionError, not ValueError, on absurdly nested input.
    except (json_format.ParseError, RecursionError) as exc:
        raise RpcError(f"the body is not a JSON Request: {exc}") from exc


def encode_response(response: Response, encoding: Encoding) -> bytes:
    """Serialise a ``Response``; JSON always spells out ``ok``, even when false."""
    if encoding is Encoding.PROTOBUF:
        data: bytes = response.SerializeToString()
        return data
    text: str = json_format.MessageToJson(
        response, indent=None, always_print_fields_with_no_presence=True
    )
    return text.encode("utf-8")


@dataclass(slots=True)
class AsyncPublishStats:
    """Counters of the PublishAsync background publisher (messages, one per topic)."""

    accepted: int = 0
    published: int = 0
    failed: int = 0
    #: PublishAsync requests refused because the queue was full.
    refused: int = 0


@dataclass(frozen=True, slots=True)
class _Publication:
    """One message to one topic on one broker; ``index`` is its message's position."""

    broker: Broker
    topic: str
    body: bytes
    index: int

    def __str__(self) -> str:
        return f"messages[{self.index}] to {self.topic!r} on broker {self.broker.name!r}"


@dataclass(frozen=True, slots=True)
class _Batch:
    publications: list[_Publication]
    size: int


class PublishService:
    """Publish / PublishAsync over ``brokers``, keyed by their configured names.

    A message with no ``broker`` goes to ``default_broker``. ``close`` drains the
    PublishAsync queue (for at most its ``grace``); call it after the transports have
    stopped and before the brokers close.
    """

    def __init__(
        self,
        brokers: Mapping[str, Broker],
        default_broker: str,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        async_queue_messages: int = DEFAULT_ASYNC_QUEUE_MESSAGES,
        async_queue_bytes: int = DEFAULT_ASYNC_QUEUE_BYTES,
    ) -> None:
        if default_broker not in brokers:
            raise UnknownBroker(f"the default broker {default_broker!r} is not configured")
        if max_request_bytes <= 0 or confirm_timeout <= 0:
            raise ValueError("max_request_bytes and confirm_timeout must be positive")
        if async_queue_messages <= 0 or async_queue_bytes <= 0:
            raise ValueError("the PublishAsync queue limits must be positive")
        self._brokers = dict(brokers)
        self.default_broker = default_broker
        self.max_request_bytes = max_request_bytes
        self.confirm_timeout = confirm_timeout
        self.async_queue_messages = async_queue_messages
        self.async_queue_bytes = async_queue_bytes
        self.stats = AsyncPublishStats()
        #: Calls answered, by (method, result): "ok" or the error kind.
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Called with the seconds each successful ``Publish`` took (confirms included).
        self.observe_publish: Callable[[float], None] | None = None
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue()
        self._queued_messages = 0
        self._queued_bytes = 0
        self._publisher: asyncio.Task[None] | None = None
        self._closed = False
        self._last_failure_log = -_FAILURE_LOG_INTERVAL
        self._unlogged_failures = 0

    def wire_limit(self, encoding: Encoding) -> int:
        """The most body bytes a transport should read for one request.

        The limit itself applies to the protobuf size; base64 makes JSON up to 4/3 larger,
        plus its syntax, so JSON bodies get twice the room before they are even parsed.
        """
        if encoding is Encoding.PROTOBUF:
            return self.max_request_bytes
        return 2 * self.max_request_bytes

    def check_method(self, method: str) -> bool:
        """Whether ``method`` waits for confirms; ``UnknownMethod`` if it is not served.

        Transports call it before decoding the body, so that a wrong method name is
        reported as such whatever the body holds.
        """
        waits = METHODS.get(method)
        if waits is None:
            raise UnknownMethod(f"{method!r}; this server serves {', '.join(METHODS)}")
        return waits

    async def call(self, method: str, request: Request) -> Response:
        """Serve ``method``; ``UnknownMethod`` if it is not one of ``METHODS``."""
        known = method if method in METHODS else "unknown"
        started = time.perf_counter()
        try:
            if self.check_method(method):
                response = await self.publish(request)
                if self.observe_publish is not None:
                    self.observe_publish(time.perf_counter() - started)
            else:
                response = await self.publish_async(request)
        except BaseException as exc:
            self.calls[(known, error_kind(exc).value)] += 1
            raise
        self.calls[(known, "ok")] += 1
        return response

    async def publish(self, request: Request) -> Response:
        """Publish everything in ``request`` and wait until the broker confirmed all of it.

        Raises ``BrokerUnavailable``, ``PublishFailed`` (``ConfirmTimeout`` past the
        deadline) or a validation error; never answers ``ok=false``.
        """
        batch = self.validate(request)
        total = len(batch.publications)
        confirmed = 0
        current: _Publication | None = None
        try:
            async with asyncio.timeout(self.confirm_timeout):
                for current in batch.publications:
                    await current.broker.publish(current.topic, current.body, confirm=True)
                    confirmed += 1
        except TimeoutError as exc:
            raise ConfirmTimeout(
                f"{current} not confirmed within {self.confirm_timeout:g}s "
                f"({confirmed} of {total} publishes confirmed)"
            ) from exc
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(
                f"{current}: {exc} ({confirmed} of {total} publishes confirmed)"
            ) from exc
        except PublishFailed as exc:
            # The same class: refused, unknown and failed ask different things of a caller.
            raise type(exc)(
                f"{current}: {exc} ({confirmed} of {total} publishes confirmed)"
            ) from exc
        return Response(ok=True)

    async def publish_async(self, request: Request) -> Response:
        """Validate ``request``, queue it for the background publisher, answer ``ok=true``.

        Raises ``PublisherBusy`` when the queue is full, a validation error otherwise.
        """
        batch = self.validate(request)
        count = len(batch.publications)
        # An idle queue takes any valid request, so that no request is too big to ever fit.
        if self._queued_messages and (
            self._queued_messages + count > self.async_queue_messages
            or self._queued_bytes + batch.size > self.async_queue_bytes
        ):
            self.stats.refused += 1
            raise PublisherBusy(
                f"the PublishAsync queue is full ({self._queued_messages} messages, "
                f"{self._queued_bytes} bytes pending); retry later"
            )
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(
                self._run_publisher(), name="rabbitsocks-rpc-publisher"
            )
        self._queued_messages += count
        self._queued_bytes += batch.size
        self.stats.accepted += count
        self._queue.put_nowait(batch)
        return Response(ok=True)

    def validate(self, request: Request) -> _Batch:
        """Check all of ``request`` and resolve it to publications, or raise.

        ``RequestTooLarge``, ``RpcError``, ``InvalidTopic``, ``UnknownBroker``, then
        ``BrokerUnavailable`` (also once the service is closed).
        """
        if self._closed:
            raise BrokerUnavailable("the RPC service is shutting down")
        size = request.ByteSize()
        if size > self.max_request_bytes:
            raise RequestTooLarge(
                f"the request is {size} bytes, over the limit of {self.max_request_bytes}"
            )
        if not request.messages:
            raise RpcError("the request has no messages")
        publications: list[_Publication] = []
        used: dict[str, Broker] = {}
        for index, message in enumerate(request.messages):
            name = message.broker or self.default_broker
            broker = self._brokers.get(name)
            if broker is None:
                raise UnknownBroker(
                    f"messages[{index}].broker: {name!r} is not configured "
                    f"(configured: {', '.join(sorted(self._brokers))})"
                )
            used[name] = broker
            if not message.topics:
                raise RpcError(f"messages[{index}].topics: no topics")
            for position, topic in enumerate(message.topics):
                try:
                    validate_topic(topic, wildcards=False)
                except InvalidTopic as exc:
                    raise InvalidTopic(
                        f"messages[{index}].topics[{position}] {topic!r}: {exc}"
                    ) from exc
                publications.append(_Publication(broker, topic, message.payload, index))
        # Checked last, and for every broker, so that an outage refuses the whole request
        # instead of failing it halfway through.
        for name, broker in used.items():
            if not broker.connected:
                raise BrokerUnavailable(f"broker {name!r} is not connected")
        return _Batch(publications, size)

    async def close(self, grace: float = 5.0) -> None:
        """Refuse new requests, let the queue drain for up to ``grace`` s, stop. Idempotent."""
        self._closed = True
        publisher, self._publisher = self._publisher, None
        if publisher is None:
            return
        try:
            async with asyncio.timeout(grace):
                await self._queue.join()
        except TimeoutError:
            logger.warning(
                "RPC service closed with %d PublishAsync messages unpublished",
                self._queued_messages,
            )
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
        self.stats.failed += self._queued_messages
        self._queued_messages = self._queued_bytes = 0

    async def _run_publisher(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                for publication in batch.publications:
                    # Only cancellation (close) escapes: what is left, the message in
                    # flight included, stays counted for close to report as failed.
                    await self._publish_in_background(publication)
                    self._queued_messages -= 1
            finally:
                self._queued_bytes -= batch.size
                self._queue.task_done()

    async def _publish_in_background(self, publication: _Publication) -> None:
        try:
            async with asyncio.timeout(self.confirm_timeout):
                await publication.broker.publish(publication.topic, publication.body, confirm=True)
        except (BrokerError, TimeoutError) as exc:
            self._count_failure(publication, exc)
        except Exception:
            # A broker adapter bug must not kill the publisher and strand the queue.
            logger.exception("PublishAsync: %s raised unexpectedly", publication)
            self.stats.failed += 1
        else:
            self.stats.published += 1

    def _count_failure(self, publication: _Publication, exc: BaseException) -> None:
        self.stats.failed += 1
        now = time.monotonic()
        if now - self._last_failure_log < _FAILURE_LOG_INTERVAL:
            self._unlogged_failures += 1
            return
        reason = "not confirmed in time" if isinstance(exc, TimeoutError) else str(exc)
        suppressed = self._unlogged_failures
        self._last_failure_log, self._unlogged_failures = now, 0
        logger.warning(
            "PublishAsync: %s failed: %s%s",
            publication,
            reason,
            f" ({suppressed} more failures since the last report)" if suppressed else "",
        )
