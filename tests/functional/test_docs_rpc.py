"""The examples of docs/rpc.md, run for real: the ``rpc:`` section configures the server
(on free ports), the environment overrides are applied, and the ``rabbitsocks publish``
lines, both curl examples and the Python client snippet publish to a subscriber through
real goridge and HTTP endpoints on the real RabbitMQ.

Each command's output is checked against the ``# ...`` line the page shows under it.
amq.topic is shared with every other test run, so the examples' ``chat.room`` topics are
renamed to a prefix of this test's own.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor

from rabbitsocks import Server
from rabbitsocks.config import ENVIRONMENT, Interface, RpcConfig, load_config, parse_config
from rabbitsocks.rpc import Message, Request, Response
from tests.support.docs import ROOT, code_blocks
from tests.support.examples import (
    rpc_goridge_port,
    rpc_http_port,
    run_shell,
    run_snippet,
    shell_env,
    shell_examples,
)
from tests.support.pubsub import (
    DEFAULT_AMQP_URL,
    WebSocketClient,
    amqp_url,
    unique,
    until_connected,
)

DOC = "rpc.md"
TOKEN = "s3cret"
#: The payload of the JSON curl example, 'hello {"x":1}' in base64.
JSON_PAYLOAD = 'hello {"x":1}'


def rpc_yaml() -> dict[str, Any]:
    (block,) = [b for b in code_blocks(DOC, "yaml") if b.startswith("rpc:")]
    document = yaml.safe_load(block)
    assert isinstance(document, dict)
    return document


def sh_block(containing: str) -> str:
    (block,) = [b for b in code_blocks(DOC, "sh") if containing in b]
    return block


def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is not installed: docs/rpc.md's examples need it (apt-get install curl)")
    return path


# --- the configuration, without a server ------------------------------------------------------


def test_the_rpc_section_shows_every_key_and_parses() -> None:
    document = rpc_yaml()
    assert set(document["rpc"]) == set(RpcConfig.__dataclass_fields__)
    config = parse_config({"listeners": [{"interface": 8080}], **document}, environ={})
    # A bare port binds loopback, as the page says.
    assert config.rpc.goridge == Interface("127.0.0.1", 6001)
    assert config.rpc.http == Interface("127.0.0.1", 8081)
    assert config.rpc.token == TOKEN
    defaults = RpcConfig()
    assert config.rpc.max_request_size == defaults.max_request_size
    assert config.rpc.confirm_timeout == defaults.confirm_timeout
    assert config.rpc.cors_origins == defaults.cors_origins == ()
    assert defaults.goridge is None
    assert defaults.http is None
    assert defaults.token is None


def test_the_default_configuration_serves_http_on_8081_and_no_goridge() -> None:
    rpc = load_config(None, environ={}).rpc
    assert rpc.http == Interface("127.0.0.1", 8081)
    assert rpc.goridge is None
    assert rpc.token is None


def overrides() -> list[tuple[str, str, str]]:
    """(variable, rpc key, value) of the page's table of environment overrides."""
    text = (ROOT / "docs" / DOC).read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(RABBITSOCKS_\w+)` \| `rpc\.(\w+)` \| `\1=(\S+)` \|$", text, re.M)
    assert len(rows) == 3, rows
    return rows


@pytest.mark.parametrize(("variable", "key", "value"), overrides())
def test_each_environment_override(variable: str, key: str, value: str) -> None:
    assert variable in ENVIRONMENT
    config = parse_config(
        {"listeners": [{"interface": 8080}]}, environ={variable: value}, source="<doc>"
    )
    expected: object = value
    if key in ("http", "goridge"):
        host, _, port = value.rpartition(":")
        expected = Interface(host or "127.0.0.1", int(port))
    assert getattr(config.rpc, key) == expected


# --- a server configured by the page's rpc section ------------------------------------------


@dataclass
class Bridge:
    server: Server
    client: WebSocketClient
    prefix: str

    @property
    def http(self) -> str:
        return f"127.0.0.1:{rpc_http_port(self.server)}"

    @property
    def goridge(self) -> int:
        return rpc_goridge_port(self.server)

    def rename(self, text: str) -> str:
        return text.replace("chat.room", f"{self.prefix}.room")

    async def received(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` messages, as (topic as in the page, payload), sorted."""
        frames = [json.loads(await self.client.next_text()) for _ in range(count)]
        got = [(f["topic"].replace(self.prefix, "chat"), f["payload"]) for f in frames]
        return sorted(got)


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    """The page's ``rpc:`` section on free ports, an amqp broker, and a WebSocket client
    that joined both example rooms."""
    rpc = rpc_yaml()["rpc"]
    rpc.update(goridge=0, http="127.0.0.1:0")
    config = parse_config(
        {
            "listeners": [{"interface": "127.0.0.1:0"}],
            "brokers": {"amqp": {"type": "amqp", "url": amqp_url()}},
            "rpc": rpc,
        },
        environ={},
    )
    server = Server(config)
    await server.start()
    prefix = unique("rpcdoc")
    try:
        await until_connected(server.services.brokers["amqp"])
        async with aiohttp.ClientSession() as http:
            client = await WebSocketClient.connect(http, server.listeners[0].port)
            await client.join(f"{prefix}.room1", f"{prefix}.room2")
            yield Bridge(server, client, prefix)
            await client.close()
    finally:
        await server.stop()


@pytest.mark.rabbitmq
async def test_the_publish_command_lines(bridge: Bridge) -> None:
    examples = shell_examples(sh_block("rabbitsocks publish"))
    delivered = [
        [("chat.room1", JSON_PAYLOAD)],
        [("chat.room1", "hi"), ("chat.room2", "hi")],
        [("chat.room1", "hello")],
        [("chat.room1", "later")],
    ]
    assert len(examples) == len(delivered)
    # The default configuration, pointed at this server the way the page says.
    env = shell_env(RABBITSOCKS_RPC_HTTP=bridge.http, RABBITSOCKS_RPC_TOKEN=TOKEN)
    for example, messages in zip(examples, delivered, strict=True):
        command = example.command.replace(
            "RABBITSOCKS_RPC_GORIDGE=6001", f"RABBITSOCKS_RPC_GORIDGE={bridge.goridge}"
        ).replace(DEFAULT_AMQP_URL, amqp_url())
        done = await run_shell(bridge.rename(command), env)
        done.check(bridge.rename(example.output))
        assert await bridge.received(len(messages)) == sorted(messages), example.command


@pytest.mark.rabbitmq
async def test_the_json_curl_example(bridge: Bridge) -> None:
    curl()
    (example,) = shell_examples(sh_block("application/json"))
    command = example.replace("127.0.0.1:8081", bridge.http)
    (await run_shell(bridge.rename(command.command))).check(command.output)
    assert await bridge.received(1) == [("chat.room1", JSON_PAYLOAD)]


@pytest.mark.rabbitmq
async def test_the_protobuf_curl_example(bridge: Bridge) -> None:
    curl()
    (example,) = shell_examples(sh_block("application/x-protobuf"))
    command = example.replace("127.0.0.1:8081", bridge.http)
    (await run_shell(bridge.rename(command.command))).check(command.output)
    assert await bridge.received(1) == [("chat.room1", "hello")]


@pytest.mark.rabbitmq
async def test_the_python_clients(bridge: Bridge) -> None:
    (snippet,) = [b for b in code_blocks(DOC, "python") if "GoridgeClient" in b]
    for old, new in (
        ('"127.0.0.1", 6001', f'"127.0.0.1", {bridge.goridge}'),
        ("127.0.0.1:8081", bridge.http),
    ):
        assert old in snippet
        snippet = snippet.replace(old, new)
    await asyncio.wait_for(run_snippet(bridge.rename(snippet), {}, "docs/rpc.md"), 30)
    assert await bridge.received(4) == sorted(
        [
            ("chat.room1", '{"x":1}'),
            ("chat.room2", '{"x":1}'),
            ("chat.room1", "hello"),  # PublishAsync over goridge
            ("chat.room1", "hello"),  # over HTTP, broker amqp
        ]
    )


# --- the messages and the captured frames --------------------------------------------------


def test_the_proto_block_is_the_messages_rabbitsocks_uses() -> None:
    (block,) = code_blocks(DOC, "proto")
    shown: dict[str, list[tuple[str, str, int]]] = {}
    for name, body in re.findall(r"message (\w+)\s*\{(.*?)\}", block, re.DOTALL):
        fields = re.findall(r"(repeated )?(\w+) (\w+) = (\d+);", body)
        shown[name] = [(f"{rep}{kind}", field, int(n)) for rep, kind, field, n in fields]
    kinds = {
        FieldDescriptor.TYPE_STRING: "string",
        FieldDescriptor.TYPE_BYTES: "bytes",
        FieldDescriptor.TYPE_BOOL: "bool",
        FieldDescriptor.TYPE_MESSAGE: "message",
    }
    actual: dict[str, list[tuple[str, str, int]]] = {}
    for message in (Message, Request, Response):
        rows = []
        for field in message.DESCRIPTOR.fields:
            kind = kinds[field.type]
            if kind == "message":
                assert field.message_type is not None
                kind = field.message_type.name
            repeated = "repeated " if field.is_repeated else ""
            rows.append((f"{repeated}{kind}", field.name, field.number))
        actual[message.DESCRIPTOR.name] = rows
    assert shown == actual


def test_the_captured_frames_are_the_test_vectors() -> None:
    (block,) = [b for b in code_blocks(DOC, "") if b.startswith("request ")]
    vectors = (ROOT / "tests" / "vectors" / "goridge-broadcast-publish.txt").read_text()
    request, reply = [line for line in vectors.splitlines() if not line.startswith("#")][:2]
    for line, frame in zip(block.splitlines(), (request, reply), strict=True):
        _, *words = line.split()
        hex_text = "".join(w.strip('"').encode().hex() if w.startswith('"') else w for w in words)
        head, dots, tail = hex_text.partition("...")
        if dots:  # abbreviated in the middle of the body
            assert frame.startswith(head)
            assert frame.endswith(tail)
        else:
            assert frame == head
    assert "so byte 0 is `0x15`" in (ROOT / "docs" / DOC).read_text().replace("\n", " ")
