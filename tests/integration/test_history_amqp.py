"""History on the real RabbitMQ, with real clients over both transports: replay then live
with nothing lost or repeated at the seam, resuming on another bridge, positions older
than retention, a bridge that loses RabbitMQ and continues its streams, #gap for topics
without history, and hostile positions. Each test has streams of its own, deleted after.

The bridge outages here are a TCP relay the test cuts (tests/support/relay.py): the
shared RabbitMQ is never stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from rabbitsocks.brokers import streams
from rabbitsocks.config import HistoryConfig
from tests.integration.conftest import RabbitAdmin
from tests.support.history import (
    Resumer,
    deleted_afterwards,
    history_bridge,
    join_logged,
    recovered,
)
from tests.support.procfs import wait_until
from tests.support.pubsub import (
    TRANSPORTS,
    WAIT,
    AmqpPublisher,
    Clients,
    Transport,
    client_pool,
    free_port,
    unique,
    until_connected,
)
from tests.support.relay import tcp_relay
from tests.support.served import serving

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


@pytest.fixture
async def prefix(amqp_url: str) -> AsyncIterator[str]:
    """Topic words of this test's own, whose stream (see ``chat``) is deleted after it."""
    prefix = unique("hist")
    async with deleted_afterwards(amqp_url, f"rs-test-{prefix}"):
        yield prefix


def chat(prefix: str, **settings: object) -> HistoryConfig:
    """The history of ``<prefix>.#`` in the test's own stream."""
    return HistoryConfig(f"{prefix}.#", stream=f"rs-test-{prefix}", **settings)  # type: ignore[arg-type]


async def publish_numbered(
    publisher: AmqpPublisher, topic: str, count: int, start: int = 0, pause: float = 0.0
) -> None:
    for i in range(start, start + count):
        await publisher.publish(topic, str(i).encode())
        if pause:
            await asyncio.sleep(pause)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_replay_then_live_without_gap_or_duplicate_at_the_seam(
    amqp_url: str, clients: Clients, prefix: str, transport: Transport
) -> None:
    """A client drops and resumes again and again while a producer publishes: it ends with
    every message once, in order, and every resume is recovered."""
    config = chat(prefix)
    topic = f"{prefix}.room"
    count = 300
    async with history_bridge(amqp_url, config, clients=clients) as rabbit:
        assert rabbit.publisher is not None
        client = Resumer([topic], transport)
        await client.connect(clients, rabbit.port)
        producer = asyncio.create_task(
            publish_numbered(rabbit.publisher, topic, count, pause=0.002)
        )
        last = str(count - 1)
        try:
            while True:
                await client.read(1)
                if client.payloads[-1] == last:
                    break
                await client.drop()  # missing whatever is published meanwhile
                answers = await client.connect(clients, rabbit.port)
                assert recovered(answers), answers
                if producer.done():
                    await client.read_until(last)
                    break
        finally:
            await producer
        assert client.payloads == [str(i) for i in range(count)]
        assert len(client.answers) > 5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_on_another_bridge(
    amqp_url: str, clients: Clients, prefix: str, transport: Transport
) -> None:
    """Left one bridge, back to another: to one that was running all along (its memory
    has the missed messages) and to one started after them (it reads RabbitMQ)."""
    config = chat(prefix)
    topic = f"{prefix}.1"
    async with (
        history_bridge(amqp_url, config, clients=clients) as first,
        history_bridge(amqp_url, config, clients=clients) as second,
    ):
        assert first.publisher is not None
        client = Resumer([topic], transport)
        await client.connect(clients, first.port)
        await publish_numbered(first.publisher, topic, 3)
        await client.read(3)
        await client.drop()
        await publish_numbered(first.publisher, f"{prefix}.other", 2)
        await publish_numbered(first.publisher, topic, 3, start=3)
        answers = await client.connect(clients, second.port)
        assert recovered(answers)
        await client.read(3)
        await client.drop()
        await publish_numbered(first.publisher, topic, 3, start=6)
        async with history_bridge(amqp_url, config, clients=clients) as third:
            hub = third.services.hub()
            assert hub.history is not None
            answers = await client.connect(clients, third.port)
            assert recovered(answers)
            # It read the stream's recent past when it started: from memory.
            assert hub.history.backfills == 1
            assert hub.history.broker_replays == 0
            await client.read(3)
            await first.publish(topic, b"9")
            await client.read(1)
        assert client.payloads == [str(i) for i in range(10)]


async def test_a_position_older_than_retention_is_not_recovered_then_live(
    amqp_url: str, clients: Clients, prefix: str
) -> None:
    # Small segments, so that RabbitMQ's retention drops the oldest ones soon.
    config = chat(prefix, max_bytes=20_000, segment_bytes=5_000, cache_messages=5)
    topic = f"{prefix}.1"
    async with history_bridge(amqp_url, config, clients=clients) as rabbit:
        assert rabbit.publisher is not None
        client = Resumer([topic], "websocket")
        await client.connect(clients, rabbit.port)
        await rabbit.publish(topic, b"first")
        await client.read(1)
        await client.drop()
        body = b"x" * 1000
        hub = rabbit.services.hub()
        assert hub.history is not None
        stream = hub.history.streams[0]
        # Retention is applied when a segment fills: publish until offset 0 is gone.
        for _ in range(200):
            await rabbit.publish(f"{prefix}.filler", body)
        await rabbit.publish(topic, b"sentinel")
        deadline = time.monotonic() + WAIT
        while stream.log.last < 201 and time.monotonic() < deadline:
            await asyncio.shield(stream.changed())
        answers = await client.connect(clients, rabbit.port)
        assert answers[1:] == [
            {
                "topic": "@resume",
                "payload": [topic],
                "recovered": False,
                "reason": "position left retention",
            }
        ]
        await rabbit.publish(topic, b"live")
        await client.read(1)
        assert client.payloads == ["first", "live"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_streams_continue_after_the_bridge_lost_rabbitmq(
    amqp_url: str, clients: Clients, prefix: str, transport: Transport
) -> None:
    """The bridge loses RabbitMQ: what producers publish meanwhile reaches its clients of
    history topics once RabbitMQ is back, once and in order; its clients of other topics
    get #gap instead."""
    config = chat(prefix)
    topic, plain = f"{prefix}.1", f"{prefix}plain"
    async with (
        tcp_relay(amqp_url) as relay,
        history_bridge(
            relay.url, config, clients=clients, reconnect_min=0.05, reconnect_max=0.2
        ) as rabbit,
    ):
        # rabbit.publish goes straight to RabbitMQ, not through the relay.
        client = await clients.connect(transport, rabbit.port)
        assert set(await join_logged(client, topic, plain)) == {topic}
        await rabbit.publish(topic, b"0")
        assert (await client.next())["payload"] == "0"
        before = int(time.time() * 1000)
        relay.down()
        broker = rabbit.services.hub().broker
        await wait_until(lambda: not broker.connected, WAIT, "the outage to be noticed")
        for i in range(1, 6):
            await rabbit.publish(topic, str(i).encode())
            await rabbit.publish(plain, b"lost")
        await relay.listen()
        await until_connected(broker)
        frames = [await client.next() for _ in range(6)]
        (gap,) = [f for f in frames if f["topic"] == "#gap"]
        assert gap["payload"] == [plain]
        assert before - 1000 <= gap["from"] <= gap["to"] <= int(time.time() * 1000)
        messages = [f["payload"] for f in frames if f["topic"] == topic]
        assert messages == ["1", "2", "3", "4", "5"]
        await rabbit.publish(plain, b"after")
        assert await client.next() == {"topic": plain, "payload": "after"}


async def test_a_deleted_stream_is_a_new_epoch(
    amqp_url: str, clients: Clients, prefix: str, rabbitmq_admin: RabbitAdmin
) -> None:
    config = chat(prefix)
    topic = f"{prefix}.1"
    name = config.stream_name("amq.topic")
    async with history_bridge(amqp_url, config, clients=clients) as rabbit:
        client = Resumer([topic], "websocket")
        await client.connect(clients, rabbit.port)
        await rabbit.publish(topic, b"old")
        await client.read(1)
        old_epoch = client.frames[0]["epoch"]
        await client.drop()
        stream = rabbit.services.hub().history.streams[0]  # type: ignore[union-attr]
        await rabbitmq_admin.delete_queue(name)
        deadline = time.monotonic() + WAIT * 2
        while stream.epoch == old_epoch:
            assert time.monotonic() < deadline, "the bridge kept the old epoch"
            await asyncio.wait_for(asyncio.shield(stream.changed()), WAIT * 2)
        answers = await client.connect(clients, rabbit.port)
        assert answers[1]["reason"] == "epoch changed"
        await rabbit.publish(topic, b"new")
        (frame,) = await client.read(1)
        assert frame["epoch"] == stream.epoch != old_epoch


async def test_hostile_positions_are_answered_and_disturb_nobody(
    amqp_url: str, clients: Clients, prefix: str
) -> None:
    config = chat(prefix, resume_timeout=0.5)
    topic = f"{prefix}.1"
    async with history_bridge(amqp_url, config, clients=clients) as rabbit:
        bystander = await clients.connect("websocket", rabbit.port)
        await join_logged(bystander, topic)
        hostile = await clients.connect("socketio", rabbit.port)
        stream = rabbit.services.hub().history.streams[0]  # type: ignore[union-attr]
        epoch = stream.epoch
        await hostile.send_command(
            {
                "command": "join",
                "topics": [topic, f"{prefix}.2", f"{prefix}.3"],
                "since": {
                    topic: {"offset": 2**62, "epoch": epoch},
                    f"{prefix}.2": {"offset": "1", "epoch": epoch},
                    f"{prefix}.3": {"offset": 1, "epoch": "x" * 65},
                },
            }
        )
        assert [await hostile.next() for _ in range(4)] == [
            {
                "topic": "@join",
                "payload": [topic],
                # Not recovered: where the log stands (nothing was published since).
                "positions": {topic: {"offset": stream.log.last, "epoch": epoch}},
            },
            {
                "topic": "#join",
                "payload": [f"{prefix}.2"],
                "reason": "invalid position: offset is not an integer",
            },
            {
                "topic": "#join",
                "payload": [f"{prefix}.3"],
                "reason": "invalid position: epoch is not a string of 1 to 64 characters",
            },
            {
                "topic": "@resume",
                "payload": [topic],
                "recovered": False,
                "reason": "position is ahead of the log",
            },
        ]
        await rabbit.publish(topic, b"for both")
        assert (await bystander.next())["payload"] == "for both"
        assert (await hostile.next())["payload"] == "for both"


@pytest.mark.slow
async def test_many_clients_resuming_on_a_fresh_bridge_share_one_read(
    amqp_url: str, clients: Clients, prefix: str
) -> None:
    """300 clients left a bridge; a bridge started afterwards takes them all at once. It
    read the stream's recent past once when it started, serves every resume from memory,
    and a bystander's live messages keep coming meanwhile."""
    config = chat(prefix)
    topic = f"{prefix}.room"
    count = 300
    async with history_bridge(amqp_url, config, clients=clients) as first:
        assert first.publisher is not None
        witness = Resumer([topic], "websocket")
        await witness.connect(clients, first.port)
        await publish_numbered(first.publisher, topic, 20)
        await witness.read(20)
    async with history_bridge(amqp_url, config, clients=clients) as second:
        assert second.publisher is not None
        hub = second.services.hub()
        assert hub.history is not None
        bystander = await clients.connect("websocket", second.port)
        await join_logged(bystander, f"{prefix}.live")
        resumers = [Resumer([topic], "websocket" if i % 2 else "socketio") for i in range(count)]

        async def resume(i: int, client: Resumer) -> None:
            seen = witness.frames[i % 10]  # each left after some message of the ten first
            client.last = {seen["epoch"]: seen["offset"]}
            answers = await client.connect(clients, second.port)
            assert recovered(answers), answers
            await client.read_until("19", timeout=WAIT * 2)
            assert client.payloads == [str(k) for k in range(i % 10 + 1, 20)]

        live = asyncio.create_task(publish_numbered(second.publisher, f"{prefix}.live", 50))
        await asyncio.gather(*(resume(i, c) for i, c in enumerate(resumers)))
        await live
        got = [await bystander.next() for _ in range(50)]
        assert [f["payload"] for f in got] == [str(i) for i in range(50)]
        assert hub.history.broker_replays == 0
        assert hub.history.backfills == 1
        assert hub.history.recovered == count


@pytest.mark.slow
async def test_resumes_older_than_memory_read_rabbitmq_a_few_at_a_time(
    amqp_url: str, clients: Clients, prefix: str
) -> None:
    """Positions older than what a bridge keeps in memory: each resume reads RabbitMQ, at
    most ``history_replays`` at once, and all are recovered."""
    config = chat(prefix, cache_messages=5)
    topic = f"{prefix}.room"
    async with history_bridge(amqp_url, config, clients=clients, history_replays=2) as rabbit:
        assert rabbit.publisher is not None
        witness = Resumer([topic], "websocket")
        await witness.connect(clients, rabbit.port)
        await publish_numbered(rabbit.publisher, topic, 30)
        await witness.read(30)
        history = rabbit.services.hub().history
        assert history is not None
        reading = {"now": 0, "most": 0}
        replay = history.source.replay

        async def counted(*args: Any) -> None:  # a spy on the real replay
            reading["now"] += 1
            reading["most"] = max(reading["most"], reading["now"])
            try:
                await replay(*args)
            finally:
                reading["now"] -= 1

        history.source.replay = counted  # type: ignore[method-assign]
        resumers = [Resumer([topic], "websocket") for _ in range(20)]

        async def resume(i: int, client: Resumer) -> None:
            seen = witness.frames[i % 10]
            client.last = {seen["epoch"]: seen["offset"]}
            answers = await client.connect(clients, rabbit.port)
            assert recovered(answers), answers
            await client.read_until("29")
            assert client.payloads == [str(k) for k in range(i % 10 + 1, 30)]

        await asyncio.gather(*(resume(i, c) for i, c in enumerate(resumers)))
        assert reading["most"] == 2
        assert history.broker_replays == 20


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resume_on_another_rabbitsocks_serve_process(
    amqp_url: str, clients: Clients, prefix: str, transport: Transport, tmp_path: Path
) -> None:
    """The same, across two real ``rabbitsocks serve`` processes configured from YAML."""
    ports = [free_port(), free_port()]
    configs = []
    for i, port in enumerate(ports):
        config = tmp_path / f"server{i}.yaml"
        config.write_text(
            f'listeners:\n  - interface: "127.0.0.1:{port}"\n'
            f'brokers:\n  amqp:\n    type: amqp\n    url: "{amqp_url}"\n'
            f'    history:\n      - topics: "{prefix}.#"\n        stream: "rs-test-{prefix}"\n'
        )
        configs.append(config)
    topic = f"{prefix}.1"
    publisher = await AmqpPublisher.open(amqp_url)
    try:
        async with serving(configs[0]), serving(configs[1]):
            client = Resumer([topic], transport)
            await client.connect(clients, ports[0])
            await publisher.publish(topic, b"0")
            await client.read(1)
            await client.drop()
            for i in (1, 2):
                await publisher.publish(topic, str(i).encode())
            answers = await client.connect(clients, ports[1])
            assert recovered(answers), answers
            await client.read(2)
            await publisher.publish(topic, b"3")
            await client.read(1)
            assert client.payloads == ["0", "1", "2", "3"]
            await clients.close()
    finally:
        await publisher.close()


async def test_epoch_markers_are_published_again_and_reach_no_client(
    amqp_url: str, clients: Clients, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "MARKER_EVERY", 10)
    config = chat(prefix)
    async with history_bridge(amqp_url, config, clients=clients) as rabbit:
        assert rabbit.publisher is not None
        client = Resumer([f"{prefix}.#"], "websocket")
        await client.connect(clients, rabbit.port)
        await publish_numbered(rabbit.publisher, f"{prefix}.1", 40)
        await client.read(40)
        epoch = client.frames[0]["epoch"]
        await rabbit.publish(f"{prefix}.1", b"end")
        await client.read(1)
        # Only messages reached the client; the stream holds markers between them.
        assert client.payloads == [*map(str, range(40)), "end"]
        markers = await _markers(amqp_url, config.stream_name("amq.topic"))
        assert len(markers) >= 4  # the first, and one per 10 to 12.5 entries since
        assert set(markers) == {epoch}


async def _markers(url: str, stream: str) -> list[str]:
    """The epoch tokens of the stream's markers, up to the message ``end``."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(stream, ensure=False)
        tokens: list[str] = []
        async with queue.iterator(arguments={"x-stream-offset": "first"}) as entries:
            async for message in entries:
                await message.ack()
                if message.body == b"end":
                    break
                token = (message.headers or {}).get("x-rabbitsocks-epoch")
                if isinstance(token, str):
                    tokens.append(token)
        return tokens
    finally:
        await connection.close()


@pytest.mark.slow
async def test_more_than_a_prefetch_published_during_an_outage_all_arrive(
    amqp_url: str, clients: Clients, prefix: str
) -> None:
    """1,200 messages published while the bridge was away: more than a stream consumer's
    prefetch (1,000) is waiting when it comes back, unacknowledged until the epoch is
    known; all of them, then the live flow, must arrive (a regression: the consumer once
    counted them as one acknowledgement, and RabbitMQ then sent nothing more)."""
    config = chat(prefix)
    topic = f"{prefix}.1"
    async with (
        tcp_relay(amqp_url) as relay,
        history_bridge(
            relay.url, config, clients=clients, reconnect_min=0.05, reconnect_max=0.2
        ) as rabbit,
    ):
        assert rabbit.publisher is not None
        client = Resumer([topic], "websocket")
        await client.connect(clients, rabbit.port)
        relay.down()
        broker = rabbit.services.hub().broker
        await wait_until(lambda: not broker.connected, WAIT, "the outage to be noticed")
        await publish_numbered(rabbit.publisher, topic, 1200)
        await relay.listen()
        await until_connected(broker)
        await publish_numbered(rabbit.publisher, topic, 1, start=1200)
        await client.read(1201, timeout=WAIT * 2)
        assert client.payloads == [str(i) for i in range(1201)]


async def test_joins_of_history_topics_during_an_outage(
    amqp_url: str, clients: Clients, prefix: str
) -> None:
    """While the bridge has no RabbitMQ: a history topic is joined (its stream continues
    after the outage), a position in memory is recovered, an older one is told why not."""
    config = chat(prefix, cache_messages=3)
    topic = f"{prefix}.1"
    async with (
        tcp_relay(amqp_url) as relay,
        history_bridge(relay.url, config, clients=clients, reconnect_min=5.0) as rabbit,
    ):
        assert rabbit.publisher is not None
        witness = Resumer([topic], "websocket")
        await witness.connect(clients, rabbit.port)
        await publish_numbered(rabbit.publisher, topic, 6)
        await witness.read(6)
        relay.down()
        broker = rabbit.services.hub().broker
        await wait_until(lambda: not broker.connected, WAIT, "the outage to be noticed")
        fresh = await clients.connect("socketio", rabbit.port)
        positions = await join_logged(fresh, topic)
        assert positions[topic]["offset"] == witness.frames[-1]["offset"]
        recent, old = Resumer([topic], "websocket"), Resumer([topic], "socketio")
        recent.last = {witness.frames[3]["epoch"]: witness.frames[3]["offset"]}
        old.last = {witness.frames[0]["epoch"]: witness.frames[0]["offset"]}
        assert recovered(await recent.connect(clients, rabbit.port))
        await recent.read(2)
        assert recent.payloads == ["4", "5"]
        answers = await old.connect(clients, rabbit.port)
        assert answers[1]["recovered"] is False
        assert answers[1]["reason"].startswith("replay failed: broker 'amqp' is not connected")
