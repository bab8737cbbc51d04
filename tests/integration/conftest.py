"""Fixtures for the tests against the real RabbitMQ (127.0.0.1:5672, management on :15672),
and private nodes for the tests that stop, freeze or partition RabbitMQ (never the shared
one; see tests/support/rabbitmq.py).

These tests fail, never skip, when RabbitMQ is down: a skipped integration suite looks green.
``RABBITSOCKS_AMQP_URL`` and ``RABBITSOCKS_RABBITMQ_ADMIN_URL`` point them elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from tests.support.pubsub import amqp_url as reachable_amqp_url
from tests.support.rabbitmq import PrivateCluster, PrivateNode, rabbitmq_available

DEFAULT_ADMIN_URL = "http://guest:guest@127.0.0.1:15672"


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The AMQP URL of the test RabbitMQ; fails the test at once if nothing listens there."""
    return reachable_amqp_url()


class RabbitAdmin:
    """What the tests ask RabbitMQ itself: the management HTTP API, and ``rabbitmqctl``."""

    def __init__(self, session: aiohttp.ClientSession, base: str, vhost: str = "/") -> None:
        self._session = session
        self._base = base.rstrip("/") + "/api"
        self._vhost = quote(vhost, safe="")

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        async with self._session.request(method, self._base + path, json=body) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            text = await response.text()
            return json.loads(text) if text else None

    async def overview(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/overview")
        return result

    async def queue(self, name: str) -> dict[str, Any] | None:
        """The queue, or ``None`` if it does not exist."""
        result: dict[str, Any] | None = await self._request(
            "GET", f"/queues/{self._vhost}/{quote(name, safe='')}"
        )
        return result

    async def bindings(self, queue: str, exchange: str = "amq.topic") -> list[str]:
        """The binding keys from ``exchange`` to ``queue``, sorted (duplicates kept)."""
        found = await self._request(
            "GET", f"/queues/{self._vhost}/{quote(queue, safe='')}/bindings"
        )
        return sorted(b["routing_key"] for b in found or () if b["source"] == exchange)

    async def delete_queue(self, name: str) -> None:
        """Delete a queue as an operator would; ``rabbitmqctl`` because the HTTP API refuses
        to touch an exclusive queue of another connection."""
        await self.rabbitmqctl("-q", "delete_queue", name)

    async def exchange(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._request(
            "GET", f"/exchanges/{self._vhost}/{quote(name, safe='')}"
        )
        return result

    async def declare_exchange(self, name: str, type_: str = "topic", durable: bool = True) -> None:
        await self._request(
            "PUT",
            f"/exchanges/{self._vhost}/{quote(name, safe='')}",
            {"type": type_, "durable": durable},
        )

    async def delete_exchange(self, name: str) -> None:
        await self._request("DELETE", f"/exchanges/{self._vhost}/{quote(name, safe='')}")

    async def eventually(self, probe: Callable[[], Awaitable[bool]], what: str) -> None:
        """Poll external state until ``probe()`` holds (for 10 s at most): RabbitMQ sends no
        event when a binding or a queue goes."""
        deadline = time.monotonic() + 10.0
        while not await probe():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def rabbitmqctl(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {err.decode().strip()}")
        return out.decode()

    async def close_connections(self, connection_name: str, reason: str = "test") -> int:
        """``rabbitmqctl close_connection`` every connection named ``connection_name``.

        ``list_connections`` is read in its text form: its JSON form writes pids as
        ``#PID<...>``, which ``close_connection`` does not accept.
        """
        listing = await self.rabbitmqctl(
            "-q", "--no-table-headers", "list_connections", "pid", "client_properties"
        )
        needle = '{"connection_name",' + json.dumps(connection_name) + "}"
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if needle in line]
        for pid in pids:
            await self.rabbitmqctl("close_connection", pid, reason)
        return len(pids)


@pytest.fixture
async def rabbitmq_admin() -> AsyncIterator[RabbitAdmin]:
    """The management API of the test RabbitMQ (fails the test if it does not answer)."""
    parts = urlsplit(os.environ.get("RABBITSOCKS_RABBITMQ_ADMIN_URL", DEFAULT_ADMIN_URL))
    credentials = f"{parts.username or 'guest'}:{parts.password or 'guest'}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
        admin = RabbitAdmin(s, base)
        try:
            await admin.overview()
        except (aiohttp.ClientError, TimeoutError) as exc:
            pytest.fail(f"the RabbitMQ management API does not answer at {base} ({exc!r})")
        yield admin


# --- private RabbitMQ nodes (tests that stop, freeze or partition RabbitMQ) ----------------


@pytest.fixture(scope="session")
def private_node_session() -> Iterator[PrivateNode]:
    """A private single RabbitMQ node (rs-cluster-<pid>-10@localhost), started once
    per session: tests may stop_app, kill or freeze it, and must bring it back."""
    if not rabbitmq_available():
        pytest.fail("rabbitmq-server is not installed: the private-node tests need it")
    cluster = PrivateCluster.create(1, first=10)
    cluster.start()
    try:
        yield cluster.nodes[0]
    finally:
        cluster.cleanup()


@pytest.fixture
def private_node(private_node_session: PrivateNode) -> Iterator[PrivateNode]:
    """The private node, up and running again after the test, whatever it did to it."""
    yield private_node_session
    _restore(private_node_session)


@pytest.fixture(scope="session")
def private_cluster_session() -> Iterator[PrivateCluster]:
    """A private 3-node RabbitMQ cluster (rs-cluster-<pid>-1..3@localhost, with AMQPS
    listeners and a CA made for the session), started once per session."""
    if not rabbitmq_available():
        pytest.fail("rabbitmq-server is not installed: the private-cluster tests need it")
    cluster = PrivateCluster.create(3, tls=True)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def private_cluster(private_cluster_session: PrivateCluster) -> Iterator[PrivateCluster]:
    """The private cluster, whole again after the test (nodes thawed, restarted, healed)."""
    yield private_cluster_session
    cluster = private_cluster_session
    for node in cluster.nodes:
        _restore(node)
    cluster.heal()  # a frozen node comes back partitioned too


def _restore(node: PrivateNode) -> None:
    if node.running:
        node.thaw()
        node.ctl("start_app")  # a no-op on a running app
        node.await_startup()
    else:
        node.start()
