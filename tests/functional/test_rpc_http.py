"""``POST /rpc/<method>`` on a real aiohttp server, with aiohttp and our HTTP client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.errors import (
    BrokerUnavailable,
    PublishFailed,
    PublishRefused,
    PublishUnknown,
    RpcError,
)
from rabbitsocks.rpc import HttpRpcClient, Message, Request, Response
from rabbitsocks.rpc.http import add_rpc_routes, make_rpc_app
from rabbitsocks.rpc.service import (
    ConfirmTimeout,
    Encoding,
    PublishService,
    RequestTooLarge,
    UnknownMethod,
)
from tests.support.apps import Serve, app_server
from tests.support.brokers import StubBroker
from tests.support.deliveries import Deliveries, record_all

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


class RefusingBroker(StubBroker):
    """Stands in for RabbitMQ nacking (``nack``), never confirming (``stall``) or losing
    the connection before the confirm (``unknown``).

    Neither can be provoked in ``MemoryBroker``; the integration tier covers the real one.
    """

    def __init__(self, name: str, mode: str) -> None:
        super().__init__(name)
        self.mode = mode

    async def publish(self, topic: str, body: bytes, *, confirm: bool = True) -> None:
        if self.mode == "nack":
            raise PublishRefused("nacked")
        if self.mode == "unknown":
            raise PublishUnknown("the connection was lost before the confirm")
        await asyncio.Event().wait()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve an app on 127.0.0.1, port 0; returns its base URL."""
    async with app_server() as start:
        yield start


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    memory = MemoryBroker()
    yield memory
    await memory.close()


@pytest.fixture
async def deliveries(broker: MemoryBroker) -> Deliveries:
    return await record_all(broker)


@pytest.fixture
async def service(broker: MemoryBroker) -> AsyncIterator[PublishService]:
    nack = RefusingBroker("nack", "nack")
    stall = RefusingBroker("stall", "stall")
    unknown = RefusingBroker("unknown", "unknown")
    publish_service = PublishService(
        {"memory": broker, "nack": nack, "stall": stall, "unknown": unknown},
        "memory",
        max_request_bytes=4096,
        confirm_timeout=0.2,
    )
    yield publish_service
    await publish_service.close()


@pytest.fixture
async def url(serve: Serve, service: PublishService) -> str:
    return await serve(make_rpc_app(service))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def publish_request(*topics: str, payload: bytes = b"p", broker: str = "") -> Request:
    return Request(messages=[Message(topics=list(topics), payload=payload, broker=broker)])


async def test_protobuf_publish(
    url: str, http: aiohttp.ClientSession, deliveries: Deliveries
) -> None:
    body = publish_request("a.b", "c", payload=b"\x00bin").SerializeToString()
    async with http.post(f"{url}/rpc/broadcast.Publish", data=body, headers=PROTOBUF) as reply:
        assert reply.status == 200
        assert reply.content_type == "application/x-protobuf"
        assert Response.FromString(await reply.read()) == Response(ok=True)
    assert deliveries.items == [("a.b", b"\x00bin"), ("c", b"\x00bin")]


async def test_json_publish(url: str, http: aiohttp.ClientSession, deliveries: Deliveries) -> None:
    payload = base64.b64encode(b'{"x":1}').decode()
    body = {"messages": [{"topics": ["chat.room1"], "payload": payload}]}
    async with http.post(f"{url}/rpc/websockets.Publish", json=body) as reply:
        assert reply.status == 200
        assert reply.content_type == "application/json"
        assert await reply.json() == {"ok": True}
    assert deliveries.items == [("chat.room1", b'{"x":1}')]


async def test_publish_async_answers_ok_and_arrives(
    url: str, http: aiohttp.ClientSession, deliveries: Deliveries
) -> None:
    body = publish_request("later").SerializeToString()
    async with http.post(f"{url}/rpc/broadcast.PublishAsync", data=body, headers=PROTOBUF) as reply:
        assert reply.status == 200
        assert Response.FromString(await reply.read()).ok
    assert await deliveries.wait_for(1) == [("later", b"p")]


@pytest.mark.parametrize(
    ("body", "headers", "match"),
    [
        (b"\xff\xff\xff\xff", PROTOBUF, "not a protobuf Request"),
        (b"", PROTOBUF, "no messages"),
        (b"{", JSON, "not a JSON Request"),
        (b'{"messages": [{"topics": ["a"], "color": "red"}]}', JSON, "not a JSON Request"),
        (b"\xff\xfe", JSON, "not UTF-8"),
        (b'{"messages": [{"topics": []}]}', JSON, "no topics"),
        (b'{"messages": [{"topics": ["ok", "a.#"]}]}', JSON, "messages[0].topics[1] 'a.#': "),
        (b'{"messages": [{"topics": ["ok"], "broker": "x"}]}', JSON, "'x' is not configured"),
    ],
)
async def test_bad_bodies_get_400_and_publish_nothing(
    url: str,
    http: aiohttp.ClientSession,
    deliveries: Deliveries,
    body: bytes,
    headers: dict[str, str],
    match: str,
) -> None:
    async with http.post(f"{url}/rpc/broadcast.Publish", data=body, headers=headers) as reply:
        assert reply.status == 400
        assert reply.content_type == "application/json"
        error = (await reply.json())["error"]
        assert error.startswith("invalid request: ")
        assert match in error
    assert deliveries.items == []


async def test_unknown_method_is_404(url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{url}/rpc/broadcast.Nope", data=b"", headers=PROTOBUF) as reply:
        assert reply.status == 404
        assert "unknown method: 'broadcast.Nope'" in (await reply.json())["error"]


async def test_unsupported_content_type_is_415(url: str, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{url}/rpc/broadcast.Publish", data=b"x", headers={"Content-Type": "text/plain"}
    ) as reply:
        assert reply.status == 415
        assert "application/x-protobuf" in (await reply.json())["error"]


async def test_get_is_405(url: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{url}/rpc/broadcast.Publish") as reply:
        assert reply.status == 405


async def test_too_large_is_413(
    url: str, http: aiohttp.ClientSession, deliveries: Deliveries
) -> None:
    body = publish_request("t", payload=bytes(5000)).SerializeToString()
    async with http.post(f"{url}/rpc/broadcast.Publish", data=body, headers=PROTOBUF) as reply:
        assert reply.status == 413

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold while reading.
        for _ in range(10):
            yield bytes(1000)

    async with http.post(f"{url}/rpc/broadcast.Publish", data=chunked(), headers=PROTOBUF) as reply:
        assert reply.status == 413
    assert deliveries.items == []


async def test_broker_down_is_503(serve: Serve, http: aiohttp.ClientSession) -> None:
    down = MemoryBroker()  # never started
    url = await serve(make_rpc_app(PublishService({"memory": down}, "memory")))
    body = publish_request("t").SerializeToString()
    async with http.post(f"{url}/rpc/broadcast.Publish", data=body, headers=PROTOBUF) as reply:
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
        assert (await reply.json())["error"].startswith("broker unavailable: ")


async def test_nack_is_502_and_timeout_is_504(url: str, http: aiohttp.ClientSession) -> None:
    nacked = publish_request("t", broker="nack").SerializeToString()
    async with http.post(f"{url}/rpc/broadcast.Publish", data=nacked, headers=PROTOBUF) as reply:
        assert reply.status == 502
        assert (await reply.json())["error"].startswith("publish refused: ")
    unknown = publish_request("t", broker="unknown").SerializeToString()
    async with http.post(f"{url}/rpc/broadcast.Publish", data=unknown, headers=PROTOBUF) as reply:
        assert reply.status == 504
        assert (await reply.json())["error"].startswith("outcome unknown: ")
    stalled = publish_request("t", broker="stall").SerializeToString()
    async with http.post(f"{url}/rpc/broadcast.Publish", data=stalled, headers=PROTOBUF) as reply:
        assert reply.status == 504
        assert (await reply.json())["error"].startswith("confirm timeout: ")


async def test_bearer_token(
    serve: Serve, service: PublishService, http: aiohttp.ClientSession, deliveries: Deliveries
) -> None:
    url = await serve(make_rpc_app(service, token="s3cret"))
    body = publish_request("t").SerializeToString()
    for headers in (
        PROTOBUF,
        {**PROTOBUF, "Authorization": "Bearer wrong"},
        {**PROTOBUF, "Authorization": "Basic s3cret"},
        {**PROTOBUF, "Authorization": "Bearer"},
    ):
        # An unauthenticated caller learns nothing, not even whether a method exists.
        for method in ("broadcast.Publish", "broadcast.Nope"):
            async with http.post(f"{url}/rpc/{method}", data=body, headers=headers) as reply:
                assert reply.status == 401
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
                assert "unauthorized" in (await reply.json())["error"]
    assert deliveries.items == []
    good = {**PROTOBUF, "Authorization": "bearer s3cret"}
    async with http.post(f"{url}/rpc/broadcast.Publish", data=body, headers=good) as reply:
        assert reply.status == 200
    assert deliveries.items == [("t", b"p")]


async def test_routes_on_an_existing_app(
    serve: Serve, service: PublishService, http: aiohttp.ClientSession, deliveries: Deliveries
) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    add_rpc_routes(app, service, prefix="/internal/rpc/")
    url = await serve(app)
    async with http.get(f"{url}/health") as reply:
        assert await reply.text() == "ok"
    body = publish_request("t").SerializeToString()
    async with http.post(
        f"{url}/internal/rpc/broadcast.Publish", data=body, headers=PROTOBUF
    ) as reply:
        assert reply.status == 200
    assert deliveries.items == [("t", b"p")]


@pytest.mark.parametrize("encoding", list(Encoding))
async def test_client(url: str, deliveries: Deliveries, encoding: Encoding) -> None:
    async with HttpRpcClient(f"{url}/rpc/", encoding=encoding) as client:
        await client.publish(["x", "y"], "text")
        await client.publish("z", b"\x00", wait=False)
        await deliveries.wait_for(3)
        assert deliveries.items == [("x", b"text"), ("y", b"text"), ("z", b"\x00")]
        response = await client.publish_request(publish_request("w"), async_=False)
        assert response == Response(ok=True)


async def test_client_raises_the_servers_errors(
    serve: Serve, url: str, service: PublishService, deliveries: Deliveries
) -> None:
    async with HttpRpcClient(f"{url}/rpc") as client:
        with pytest.raises(RpcError, match=r"topics\[0\] 'a\.\*'"):
            await client.publish("a.*", b"x")
        with pytest.raises(UnknownMethod):
            await client.call("broadcast.Nope", publish_request("t"))
        with pytest.raises(RequestTooLarge):
            await client.publish("t", bytes(5000))
        with pytest.raises(ConfirmTimeout):
            await client.publish("t", b"x", broker="stall")
        with pytest.raises(PublishFailed, match="nacked"):
            await client.publish("t", b"x", broker="nack")
    down_url = await serve(make_rpc_app(PublishService({"m": MemoryBroker()}, "m")))
    async with HttpRpcClient(f"{down_url}/rpc") as client:
        with pytest.raises(BrokerUnavailable):
            await client.publish("t", b"x")
    secured = await serve(make_rpc_app(service, token="tok"))
    async with HttpRpcClient(f"{secured}/rpc") as client:
        with pytest.raises(RpcError, match="unauthorized"):
            await client.publish("t", b"x")
    async with HttpRpcClient(f"{secured}/rpc", token="tok") as client:
        await client.publish("t", b"x")
    assert deliveries.items == [("t", b"x")]


async def test_error_body_is_json_for_protobuf_requests(
    url: str, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{url}/rpc/broadcast.Publish", data=b"\x0a\x00", headers=PROTOBUF
    ) as reply:
        assert reply.status == 400
        assert json.loads(await reply.read()) == {
            "error": "invalid request: messages[0].topics: no topics"
        }
