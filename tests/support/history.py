"""Helpers for the history tests: a bridge whose broker keeps a history pattern in a
stream of the test's own (deleted afterwards), and a client that resumes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika

from rabbitsocks.config import HistoryConfig
from tests.support.pubsub import (
    WAIT,
    Bridge,
    Clients,
    Frame,
    PubSubClient,
    Transport,
    amqp_url,
    bridge,
)


@contextlib.asynccontextmanager
async def deleted_afterwards(url: str, *streams: str) -> AsyncIterator[None]:
    """Delete the stream queues ``streams`` (this test's own) when done."""
    try:
        yield
    finally:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for name in streams:
                await channel.queue_delete(name)
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def history_bridge(
    url: str | Sequence[str],
    *history: HistoryConfig,
    clients: Clients | None = None,
    options: dict[str, Any] | None = None,
    publish_to: str | None = None,
    **amqp: Any,
) -> AsyncIterator[Bridge]:
    """A pubsub bridge on RabbitMQ (``url``, or a cluster's URLs) with ``history``, once
    every stream is live.
    ``clients`` are closed before the bridge stops (a client that reads nothing would
    hold its closing handshake up)."""
    # The bridge's publisher goes to RabbitMQ itself, whatever the broker goes through.
    direct = publish_to or amqp_url()
    async with bridge(
        "amqp",
        options,
        urls=[url] if isinstance(url, str) else list(url),
        publish_to=direct,
        history=history,
        **amqp,
    ) as handle:
        hub = handle.services.hub()
        assert hub.history is not None
        for stream in hub.history.streams:
            while not stream.ready:
                await _changed(stream)
        try:
            yield handle
        finally:
            if clients is not None:
                await clients.close()


async def _changed(stream: Any) -> None:
    async with asyncio.timeout(WAIT * 3):
        await asyncio.shield(stream.changed())


@dataclass
class Resumer:
    """A client of topics that keeps the last position it received per epoch, and joins
    with it each time it connects again."""

    topics: Sequence[str]
    transport: Transport
    #: Every message frame received, over every connection, in order.
    frames: list[Frame] = field(default_factory=list)
    #: The answers to each join: (@join, [@resume ...]).
    answers: list[list[Frame]] = field(default_factory=list)
    last: dict[str, int] = field(default_factory=dict)
    client: PubSubClient | None = None

    @property
    def payloads(self) -> list[str]:
        return [f["payload"] for f in self.frames]

    def since(self) -> dict[str, dict[str, Any]]:
        if not self.last:
            return {}
        ((epoch, offset),) = self.last.items()
        return {t: {"offset": offset, "epoch": epoch} for t in self.topics}

    async def connect(self, clients: Clients, port: int) -> list[Frame]:
        """Connect, join with the positions held; returns the answers (``@join`` then
        ``@resume`` frames, the replay not included)."""
        self.client = await clients.connect(self.transport, port)
        command: dict[str, Any] = {"command": "join", "topics": list(self.topics)}
        since = self.since()
        if since:
            command["since"] = since
        await self.client.send_command(command)
        answers = [await self.client.next()]
        assert answers[0]["topic"] == "@join", answers
        for position in answers[0].get("positions", {}).values():
            # Where the log stood: the position until a message says otherwise. It replaces
            # ours only when ours was not recovered (then @join gives one).
            self.last = {position["epoch"]: position["offset"]}
        if since:
            outcomes = set(self.topics)
            while outcomes:
                frame = await self.client.next()
                assert frame["topic"] == "@resume", frame
                outcomes -= set(frame["payload"])
                answers.append(frame)
        self.answers.append(answers)
        return answers

    def take(self, frame: Frame) -> None:
        if frame["topic"].startswith(("@", "#")):
            raise AssertionError(f"an answer where a message was expected: {frame}")
        self.frames.append(frame)
        if "offset" in frame:
            self.last = {frame["epoch"]: frame["offset"]}

    async def read(self, count: int, timeout: float = WAIT) -> list[Frame]:
        """Read ``count`` message frames."""
        assert self.client is not None
        got = []
        for _ in range(count):
            frame = await self.client.next(timeout)
            self.take(frame)
            got.append(frame)
        return got

    async def read_until(self, payload: str, timeout: float = WAIT) -> None:
        """Read message frames until one with ``payload``."""
        assert self.client is not None
        while True:
            frame = await self.client.next(timeout)
            self.take(frame)
            if frame["payload"] == payload:
                return

    async def drop(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


def recovered(answers: list[Frame]) -> bool:
    """Whether every ``@resume`` of a join's answers says ``recovered: true``."""
    resumes = [a for a in answers if a["topic"] == "@resume"]
    return bool(resumes) and all(a["recovered"] for a in resumes)


def dumps(frame: Frame) -> str:
    return json.dumps(frame, separators=(",", ":"))


async def join_logged(client: PubSubClient, *topics: str) -> dict[str, Any]:
    """Join ``topics`` (all accepted) and return the positions ``@join`` gives for those
    with history (the others have none)."""
    (answer,) = await client.command("join", topics)
    positions: dict[str, Any] = answer.pop("positions", {})
    assert answer == {"topic": "@join", "payload": list(topics)}
    return positions
