"""PublishService: Publish / PublishAsync semantics over the in-process broker.

Failures RabbitMQ would produce (a nack, a confirm that never comes) cannot be provoked in
``MemoryBroker``; ``ScriptedBroker`` below stands in for them, and the integration tier
checks the same against the real RabbitMQ.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from rabbitsocks.brokers.base import Broker
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.errors import (
    BrokerUnavailable,
    InvalidTopic,
    PublishFailed,
    PublishRefused,
    PublishUnknown,
    RpcError,
    UnknownBroker,
)
from rabbitsocks.rpc.pb import Message, Request, Response
from rabbitsocks.rpc.service import (
    METHODS,
    ConfirmTimeout,
    Encoding,
    ErrorKind,
    PublisherBusy,
    PublishService,
    RequestTooLarge,
    UnknownMethod,
    decode_request,
    describe_error,
    encode_response,
    error_kind,
)
from tests.support.brokers import StubBroker
from tests.support.deliveries import Deliveries, record_all

WAIT = 5.0


class ScriptedBroker(StubBroker):
    """A broker whose publishes stall (until released) or fail, as told."""

    def __init__(self, name: str = "scripted") -> None:
        super().__init__(name)
        self.release = asyncio.Event()
        self.stall = False
        self.fail_on: set[str] = set()
        self.published: list[str] = []
        self.started = asyncio.Event()

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        self.started.set()
        if self.stall:
            await self.release.wait()
        if topic in self.fail_on:
            raise PublishFailed("nacked by the broker")
        self.published.append(topic)


def request(*messages: Message) -> Request:
    return Request(messages=list(messages))


def message(*topics: str, payload: bytes = b"p", broker: str = "") -> Message:
    return Message(topics=list(topics), payload=payload, broker=broker)


@pytest.fixture
async def memory() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def deliveries(memory: MemoryBroker) -> Deliveries:
    return await record_all(memory)


async def test_scripted_broker_is_a_broker() -> None:
    assert isinstance(ScriptedBroker(), Broker)


async def test_publish_every_message_to_every_topic_in_order(
    memory: MemoryBroker, deliveries: Deliveries
) -> None:
    service = PublishService({"memory": memory}, "memory")
    answer = await service.publish(
        request(message("a.b", "c", payload=b"one"), message("d", payload=b"two"))
    )
    assert answer == Response(ok=True)
    assert deliveries.items == [("a.b", b"one"), ("c", b"one"), ("d", b"two")]


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (message(), RpcError, r"messages\[1\]\.topics: no topics"),
        # The reasons are topics.py's; what matters here is the path and the type.
        (message(""), InvalidTopic, r"messages\[1\]\.topics\[0\] '': "),
        (message("ok", "a.*"), InvalidTopic, r"messages\[1\]\.topics\[1\] 'a\.\*': "),
        (message("a.#"), InvalidTopic, r"messages\[1\]\.topics\[0\] 'a\.#': "),
        (message("x" * 256), InvalidTopic, r"messages\[1\]\.topics\[0\] 'xxx"),
        (message("a\nb"), InvalidTopic, r"messages\[1\]\.topics\[0\] 'a\\nb': "),
        (message("ok", broker="nope"), UnknownBroker, r"messages\[1\]\.broker: 'nope'"),
    ],
)
async def test_validation_is_all_or_nothing(
    memory: MemoryBroker,
    deliveries: Deliveries,
    bad: Message,
    error: type[Exception],
    match: str,
) -> None:
    service = PublishService({"memory": memory}, "memory")
    mixed = request(message("good.one"), bad, message("good.two"))
    with pytest.raises(error, match=match):
        await service.publish(mixed)
    with pytest.raises(error, match=match):
        await service.publish_async(mixed)
    assert deliveries.items == []
    assert service.stats.accepted == 0


async def test_empty_request_is_refused(memory: MemoryBroker, deliveries: Deliveries) -> None:
    service = PublishService({"memory": memory}, "memory")
    with pytest.raises(RpcError, match="no messages"):
        await service.publish(Request())


async def test_size_limit(memory: MemoryBroker, deliveries: Deliveries) -> None:
    service = PublishService({"memory": memory}, "memory", max_request_bytes=100)
    fits = request(message("t", payload=bytes(80)))
    assert fits.ByteSize() <= 100
    await service.publish(fits)
    too_big = request(message("t", payload=bytes(100)))
    with pytest.raises(RequestTooLarge, match="over the limit of 100"):
        await service.publish(too_big)
    assert len(deliveries.items) == 1


async def test_default_size_limit_is_one_mebibyte(memory: MemoryBroker) -> None:
    service = PublishService({"memory": memory}, "memory")
    assert service.max_request_bytes == 1024 * 1024


async def test_broker_chosen_per_message(deliveries: Deliveries, memory: MemoryBroker) -> None:
    other = MemoryBroker("other")
    other_deliveries = Deliveries()
    await other.start(other_deliveries)
    await other.bind("#")
    service = PublishService({"memory": memory, "other": other}, "memory")
    await service.publish(request(message("a"), message("b", broker="other")))
    assert deliveries.items == [("a", b"p")]
    assert other_deliveries.items == [("b", b"p")]


async def test_unknown_default_broker_is_refused(memory: MemoryBroker) -> None:
    with pytest.raises(UnknownBroker):
        PublishService({"memory": memory}, "amqp")


async def test_broker_down_refuses_the_whole_request(
    deliveries: Deliveries, memory: MemoryBroker
) -> None:
    down = MemoryBroker("down")  # never started: not connected
    service = PublishService({"memory": memory, "down": down}, "memory")
    both = request(message("a"), message("b", broker="down"))
    with pytest.raises(BrokerUnavailable, match="'down' is not connected"):
        await service.publish(both)
    with pytest.raises(BrokerUnavailable):
        await service.publish_async(both)
    assert deliveries.items == []


async def test_nack_is_an_error_with_progress() -> None:
    broker = ScriptedBroker()
    broker.fail_on = {"second"}
    service = PublishService({"s": broker}, "s")
    with pytest.raises(PublishFailed, match=r"'second'.*nacked.*\(1 of 3 publishes confirmed\)"):
        await service.publish(request(message("first", "second", "third")))
    assert broker.published == ["first"]


async def test_confirm_timeout() -> None:
    broker = ScriptedBroker()
    broker.stall = True
    service = PublishService({"s": broker}, "s", confirm_timeout=0.05)
    with pytest.raises(ConfirmTimeout, match=r"not confirmed within 0\.05s") as info:
        await service.publish(request(message("t")))
    assert isinstance(info.value, PublishFailed)


async def test_broker_lost_midway() -> None:
    class Dropping(ScriptedBroker):
        async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
            raise BrokerUnavailable("connection lost")

    service = PublishService({"s": Dropping()}, "s")
    with pytest.raises(BrokerUnavailable, match=r"connection lost \(0 of 1"):
        await service.publish(request(message("t")))


async def test_publish_async_answers_before_delivery(
    memory: MemoryBroker, deliveries: Deliveries
) -> None:
    service = PublishService({"memory": memory}, "memory")
    answer = await service.publish_async(request(message("a", "b", payload=b"x")))
    assert answer == Response(ok=True)
    # The background publisher has not had a turn yet.
    assert deliveries.items == []
    assert await deliveries.wait_for(2) == [("a", b"x"), ("b", b"x")]
    await service.close()
    assert service.stats.accepted == 2
    assert service.stats.published == 2
    assert service.stats.failed == 0


async def test_publish_async_failures_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = ScriptedBroker()
    broker.fail_on = {"bad"}
    service = PublishService({"s": broker}, "s")
    with caplog.at_level(logging.WARNING, logger="rabbitsocks.rpc.service"):
        await service.publish_async(request(message("good", "bad", "good2")))
        await service.close()
    assert broker.published == ["good", "good2"]
    assert service.stats.published == 2
    assert service.stats.failed == 1
    assert "'bad'" in caplog.text
    assert "nacked" in caplog.text


async def test_publish_async_queue_is_bounded() -> None:
    broker = ScriptedBroker()
    broker.stall = True
    service = PublishService({"s": broker}, "s", async_queue_messages=3)
    await service.publish_async(request(message("a", "b")))
    await service.publish_async(request(message("c")))
    with pytest.raises(PublisherBusy, match="queue is full"):
        await service.publish_async(request(message("d")))
    assert service.stats.refused == 1
    broker.release.set()
    await service.close()
    assert broker.published == ["a", "b", "c"]
    assert service.stats.published == 3


async def test_an_idle_queue_takes_any_valid_request() -> None:
    broker = ScriptedBroker()
    service = PublishService({"s": broker}, "s", async_queue_messages=1, async_queue_bytes=1)
    await service.publish_async(request(message("a", "b", "c", payload=bytes(100))))
    await service.close()
    assert broker.published == ["a", "b", "c"]


async def test_close_gives_up_on_a_stuck_queue() -> None:
    broker = ScriptedBroker()
    broker.stall = True
    service = PublishService({"s": broker}, "s")
    await service.publish_async(request(message("a", "b")))
    await asyncio.wait_for(broker.started.wait(), WAIT)
    await service.close(grace=0.01)
    assert service.stats.failed == 2
    assert service.stats.published == 0
    with pytest.raises(BrokerUnavailable, match="shutting down"):
        await service.publish(request(message("a")))
    await service.close()  # idempotent


async def test_call_dispatches_the_four_methods(
    memory: MemoryBroker, deliveries: Deliveries
) -> None:
    service = PublishService({"memory": memory}, "memory")
    assert set(METHODS) == {
        "broadcast.Publish",
        "broadcast.PublishAsync",
        "websockets.Publish",
        "websockets.PublishAsync",
    }
    for index, method in enumerate(METHODS):
        assert await service.call(method, request(message(f"t{index}"))) == Response(ok=True)
    await deliveries.wait_for(4)
    await service.close()
    with pytest.raises(UnknownMethod, match=r"'broadcast\.Nope'"):
        await service.call("broadcast.Nope", request(message("t")))


def test_decode_protobuf_and_json() -> None:
    wanted = request(message("a.b", payload=b"\x00\xffhi"))
    assert decode_request(wanted.SerializeToString(), Encoding.PROTOBUF) == wanted
    text = b'{"messages": [{"topics": ["a.b"], "payload": "AP9oaQ==", "broker": ""}]}'
    assert decode_request(text, Encoding.JSON) == wanted


@pytest.mark.parametrize(
    ("body", "encoding", "match"),
    [
        (b"\xff\xff\xff", Encoding.PROTOBUF, "not a protobuf Request"),
        (b"\x0a\x05\x12\x03\xff\xfe\xfd", Encoding.PROTOBUF, "not a protobuf Request"),
        (b"{not json", Encoding.JSON, "not a JSON Request"),
        (b'{"messages": [{"topic": ["a"]}]}', Encoding.JSON, "not a JSON Request"),
        (b'{"messages": [{"payload": 5}]}', Encoding.JSON, "not a JSON Request"),
        (b'{"messages": 5}', Encoding.JSON, "not a JSON Request"),
        (b"[" * 100_000 + b"]" * 100_000, Encoding.JSON, "not a JSON Request"),
        (b'{"messages": [{"topics": ["\xff"]}]}', Encoding.JSON, "not UTF-8"),
    ],
)
def test_undecodable_bodies(body: bytes, encoding: Encoding, match: str) -> None:
    with pytest.raises(RpcError, match=match):
        decode_request(body, encoding)


def test_encode_response() -> None:
    assert encode_response(Response(ok=True), Encoding.PROTOBUF) == b"\x08\x01"
    assert encode_response(Response(ok=False), Encoding.PROTOBUF) == b""
    assert encode_response(Response(ok=False), Encoding.JSON) == b'{"ok": false}'
    assert encode_response(Response(ok=True), Encoding.JSON) == b'{"ok": true}'


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (UnknownMethod("m"), ErrorKind.UNKNOWN_METHOD),
        (RequestTooLarge("big"), ErrorKind.TOO_LARGE),
        (PublisherBusy("full"), ErrorKind.BUSY),
        (RpcError("bad"), ErrorKind.INVALID_REQUEST),
        (InvalidTopic("bad"), ErrorKind.INVALID_REQUEST),
        (UnknownBroker("who"), ErrorKind.INVALID_REQUEST),
        (BrokerUnavailable("down"), ErrorKind.BROKER_UNAVAILABLE),
        (ConfirmTimeout("slow"), ErrorKind.CONFIRM_TIMEOUT),
        (PublishFailed("no exchange"), ErrorKind.PUBLISH_FAILED),
        (PublishRefused("nack"), ErrorKind.PUBLISH_REFUSED),
        (PublishUnknown("no confirm"), ErrorKind.OUTCOME_UNKNOWN),
        (KeyError("oops"), ErrorKind.INTERNAL),
    ],
)
def test_error_kinds(exc: Exception, kind: ErrorKind) -> None:
    assert error_kind(exc) is kind


def test_describe_error_hides_internal_details() -> None:
    assert describe_error(PublishFailed("nacked")) == "publish failed: nacked"
    assert describe_error(KeyError("secret")) == "internal error: see the server log"


@pytest.mark.parametrize("error", [PublishRefused, PublishUnknown, PublishFailed])
async def test_publish_keeps_the_kind_of_the_brokers_error(error: type[PublishFailed]) -> None:
    # A back end must be able to tell "refused" (nack), "unknown" and "failed" apart.
    class Failing(StubBroker):
        async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
            raise error("why")

    service = PublishService({"b": Failing("b")}, "b")
    with pytest.raises(error) as info:
        await service.publish(Request(messages=[Message(topics=["t"], payload=b"p")]))
    assert type(info.value) is error
    assert "(0 of 1 publishes confirmed)" in str(info.value)
