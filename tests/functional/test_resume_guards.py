"""Resumes go through every check a join does (authorization, max_topics, wildcards, the
command rate) on a real server over both transports, with the memory broker's history:
a refused topic gets its #join and no @resume, and a resume flood is answered like any
command flood while a bystander is served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from rabbitsocks import Listener, Services, start_listener
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import HistoryConfig
from tests.support.pubsub import TRANSPORTS, Clients, Transport, client_pool


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with client_pool() as pool:
        yield pool


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    services = Services(brokers={"memory": MemoryBroker("memory", [HistoryConfig("#")], epoch="E")})
    await services.start()
    try:
        yield services
    finally:
        await services.close()


async def listen(services: Services, options: dict[str, Any]) -> Listener:
    return await start_listener("127.0.0.1:0", "callbacks.pubsub", options, services=services)


def since(*topics: str, offset: int = -1) -> dict[str, Any]:
    return {t: {"offset": offset, "epoch": "E"} for t in topics}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_topic_refused_by_the_join_checks_gets_no_resume(
    services: Services, clients: Clients, transport: Transport
) -> None:
    listener = await listen(
        services,
        {
            "join_auth": {"callable": "tests.support.hooks:only_public_topics"},
            "wildcards": False,
            "max_topics": 2,
        },
    )
    try:
        await services.brokers["memory"].publish("public.a", b"before")
        client = await clients.connect(transport, listener.port)
        topics = ["public.a", "private.b", "public.*", "public.c", "public.d"]
        await client.send_command({"command": "join", "topics": topics, "since": since(*topics)})
        assert [await client.next() for _ in range(5)] == [
            {"topic": "@join", "payload": ["public.a", "public.c"]},
            {"topic": "#join", "payload": ["public.*"], "reason": "wildcards are not allowed"},
            {"topic": "#join", "payload": ["private.b"], "reason": "not authorized"},
            {"topic": "#join", "payload": ["public.d"], "reason": "too many topics (max 2)"},
            {"topic": "@resume", "payload": ["public.a", "public.c"], "recovered": True},
        ]
        # What public.a missed (everything after -1), then nothing else before live.
        assert await client.next() == {
            "topic": "public.a",
            "payload": "before",
            "offset": 0,
            "epoch": "E",
        }
        await services.brokers["memory"].publish("public.c", b"live")
        assert (await client.next())["payload"] == "live"
    finally:
        await clients.close()  # first: a client that reads nothing would hold the 1001 up
        await listener.stop()


async def test_a_resume_flood_is_rate_limited_and_disturbs_nobody(
    services: Services, clients: Clients
) -> None:
    listener = await listen(services, {"rate": 5.0, "burst": 3})
    try:
        bystander = await clients.connect("websocket", listener.port)
        await bystander.send_command({"command": "join", "topics": ["news"]})
        assert (await bystander.next())["topic"] == "@join"
        flood = await clients.connect("socketio", listener.port)
        command = {"command": "join", "topics": ["news"], "since": since("news", offset=10**15)}
        for _ in range(10):
            await flood.send_command(command)
        answers = [await flood.next() for _ in range(10 + 3)]  # 3 answered: 2 frames each
        limited = [a for a in answers if a["topic"] == "#error"]
        assert len(limited) >= 6
        assert limited[0] == {
            "topic": "#error",
            "payload": "rate limit exceeded (max 5 commands/s)",
        }
        resumed = [a for a in answers if a["topic"] == "@resume"]
        assert resumed[0]["reason"] == "position is ahead of the log"
        assert all(r["reason"] == "already joined" for r in resumed[1:])
        await services.brokers["memory"].publish("news", b"still served")
        assert (await bystander.next())["payload"] == "still served"
    finally:
        await clients.close()  # first: a client that reads nothing would hold the 1001 up
        await listener.stop()
