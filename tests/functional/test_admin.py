"""The admin endpoint: /metrics, /health, /ready; and what the logs never contain."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets

from rabbitsocks import Server
from rabbitsocks.config import parse_config
from rabbitsocks.rpc.client import HttpRpcClient


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "rpc": {"http": 0},
            "admin": 0,
        },
        environ={},
    )
    srv = Server(config)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    raise AssertionError(f"{name} not in metrics")


async def test_health_and_ready(server: Server) -> None:
    assert server.admin_url is not None
    status, body = await get(server.admin_url + "health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, body = await get(server.admin_url + "ready")
    assert status == 200
    assert json.loads(body)["ready"] is True


async def test_gc_pauses_are_measured(server: Server) -> None:
    assert server.admin_url is not None
    _, before = await get(server.admin_url + "metrics")
    full = 'rabbitsocks_gc_pause_seconds_count{generation="2"}'
    collected = metric(before, full)
    gc.collect()  # a full collection, in this process: the server's
    _, after = await get(server.admin_url + "metrics")
    assert metric(after, full) >= collected + 1
    assert metric(after, 'rabbitsocks_gc_pause_seconds_sum{generation="2"}') > 0
    assert metric(after, 'rabbitsocks_gc_pause_seconds_bucket{generation="2",le="+Inf"}') == (
        metric(after, full)
    )


async def test_gc_callback_goes_with_the_server() -> None:
    config = parse_config({"listeners": [{"interface": "127.0.0.1:0"}], "admin": 0}, environ={})
    srv = Server(config)
    callbacks = len(gc.callbacks)
    await srv.start()
    assert len(gc.callbacks) == callbacks + 1
    await srv.stop()
    assert len(gc.callbacks) == callbacks


async def test_metrics_count_what_happened(server: Server) -> None:
    assert server.admin_url is not None
    assert server.rpc is not None
    port = server.listeners[0].port
    name = server.listeners[0].name
    async with websockets.connect(f"ws://127.0.0.1:{port}/websocket/") as ws:
        await ws.send(json.dumps({"command": "join", "topics": ["m.a", "m.b"]}))
        await asyncio.wait_for(ws.recv(), 5)
        async with HttpRpcClient(f"http://127.0.0.1:{server.rpc.http_port}/rpc") as rpc:
            await rpc.publish("m.a", "hello")
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["payload"] == "hello"
        await ws.send("not json")
        await asyncio.wait_for(ws.recv(), 5)
        status, text = await get(server.admin_url + "metrics")
    assert status == 200
    label = f'{{listener="{name}",transport="websocket"}}'
    assert metric(text, f"rabbitsocks_connections{label}") == 1
    assert metric(text, f"rabbitsocks_connections_opened_total{label}") == 1
    assert metric(text, f'rabbitsocks_frames_in_total{{listener="{name}"}}') == 2
    assert metric(text, f'rabbitsocks_frames_sent_total{{listener="{name}"}}') == 2
    assert metric(text, 'rabbitsocks_joins_total{broker="memory"}') == 2
    assert metric(text, 'rabbitsocks_live_topics{broker="memory"}') == 2
    assert metric(text, 'rabbitsocks_messages_in_total{broker="memory"}') == 1
    assert metric(text, 'rabbitsocks_deliveries_total{broker="memory"}') == 1
    assert metric(text, 'rabbitsocks_broker_connected{broker="memory"}') == 1
    assert metric(text, 'rabbitsocks_rpc_calls_total{method="broadcast.Publish",result="ok"}') == 1
    assert metric(text, "rabbitsocks_rpc_publish_seconds_count") == 1


async def test_ready_is_503_while_a_broker_is_down() -> None:
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "brokers": {"amqp": {"url": "amqp://guest:secretpw@127.0.0.1:9/"}},
            "admin": 0,
        },
        environ={},
    )
    srv = Server(config)
    await srv.start()
    try:
        assert srv.admin_url is not None
        status, body = await get(srv.admin_url + "ready")
        answer = json.loads(body)
        assert status == 503
        assert answer["problems"] == ["broker amqp is not connected"]
        assert "secretpw" not in body
        status, _ = await get(srv.admin_url + "health")
        assert status == 200
    finally:
        await srv.stop()


async def test_logs_carry_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rabbitsocks")
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "brokers": {"amqp": {"url": "amqp://guest:hunter2@127.0.0.1:9/"}},
            "default_broker": "memory",
        },
        environ={},
    )
    srv = Server(config)
    await srv.start()
    try:
        port = srv.listeners[0].port
        url = f"ws://127.0.0.1:{port}/websocket/room?token=tok3n-s3cret"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"command": "join", "topics": ["x"]}))
            await asyncio.wait_for(ws.recv(), 5)
    finally:
        await srv.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "open " in text
    assert "close " in text
    assert "path=/room" in text
    assert "hunter2" not in text
    assert "tok3n-s3cret" not in text
