"""The examples of docs/protocol.md that are not wire transcripts (those are replayed by
test_pubsub_docs.py, its browser snippet by tests/e2e/test_console_snippets.py): the full
``join`` command, answered over both transports on RabbitMQ, and the JavaScript ``body``
function, run by Node.js on the frames the page shows."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from tests.support.docs import code_blocks
from tests.support.pubsub import TRANSPORTS, Transport, bridge, client_pool

DOC = "protocol.md"


@pytest.mark.rabbitmq
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_full_join_command_is_answered(transport: Transport) -> None:
    (command,) = [b for b in code_blocks(DOC, "json") if '"broker"' in b]
    body = json.loads(command)
    assert body["broker"] == "amqp"
    async with bridge("amqp") as rabbit, client_pool() as clients:
        client = await clients.connect(transport, rabbit.port)
        await client.send_text(command)
        assert await client.next() == {"topic": "@join", "payload": body["topics"]}


_RUN_BODY = """
const frames = JSON.parse(process.argv[1]);
const shown = frames.map((frame) => {
  const value = body(frame);
  return typeof value === "string" ? value : { bytes: Array.from(value) };
});
console.log(JSON.stringify(shown));
"""


async def test_the_body_function_decodes_both_kinds_of_frames() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: apt-get install -y nodejs (20 or newer)")
    (function,) = [b for b in code_blocks(DOC, "js") if "function body(frame)" in b]
    transcript = "\n".join(code_blocks(DOC, "text"))
    # The frames the page shows for a body that is not UTF-8 and for one that is.
    raw = '{"topic":"sensors.1.raw","payload":"AAH+","encoding":"base64"}'
    cafe = '{"topic":"news.café","payload":"café"}'
    assert f'publish sensors.1.raw b"\\x00\\x01\\xfe"\n← {raw}' in transcript
    assert f'publish news.café b"caf\\xc3\\xa9"\n← {cafe}' in transcript
    process = await asyncio.create_subprocess_exec(
        node,
        "-e",
        function + _RUN_BODY,
        json.dumps([json.loads(raw), json.loads(cafe)]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == [{"bytes": [0x00, 0x01, 0xFE]}, "café"]
