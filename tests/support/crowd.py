"""Crowds of socket.io-client clients (tests/support/sio_crowd.mjs) with their default
transports, for the tests of ``serve --workers`` and of load balancers."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from tests.support.pubsub import AmqpPublisher, amqp_url
from tests.support.served import ROOT

__all__ = ["everyone_gets", "start_crowd"]


async def start_crowd(
    url: str, topic: str, count: int, n: int, sources: int = 0, **extra: object
) -> asyncio.subprocess.Process:
    """``n`` clients joined to ``topic`` expecting ``count`` messages each, from ``sources``
    addresses 127.0.0.2 and up when given, with ``extra`` client options."""
    env = {
        **os.environ,
        "URL": url,
        "N": str(n),
        "TOPIC": topic,
        "COUNT": str(count),
        "EXTRA": json.dumps(extra),
    }
    if sources:
        env["SOURCES"] = str(sources)
    return await asyncio.create_subprocess_exec(
        "node", str(ROOT / "tests" / "support" / "sio_crowd.mjs"),
        env=env, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip


async def _line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert line, "the node clients exited early"
    result: dict[str, Any] = json.loads(line)
    return result


async def everyone_gets(
    url: str, topic: str, messages: int, n: int, sources: int = 0, **extra: object
) -> dict[str, Any]:
    """Connect the crowd, publish ``messages`` numbered messages to ``topic`` on RabbitMQ,
    and return what the crowd reports (``received``, ``complete``, ``errors``)."""
    crowd = await start_crowd(url, topic, messages, n, sources, **extra)
    try:
        ready = await _line(crowd, 60)
        assert "ready" in ready, ready
        publisher = await AmqpPublisher.open(amqp_url())
        try:
            for i in range(messages):
                await publisher.publish(topic, str(i).encode())
        finally:
            await publisher.close()
        done = await _line(crowd, 60)
    finally:
        if crowd.returncode is None:
            crowd.kill()
        await crowd.wait()
    result: dict[str, Any] = done["done"]
    return result
