"""docs/protocol.md's resuming client, run for real: the JavaScript snippet under Node.js
(on the ws package of demo/node_modules), against a server whose memory broker keeps
history. It receives two messages, its connection drops, two more are published, it comes
back by itself with its position, and shows all of them once, in order, then the live
ones, without refetching anything."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from rabbitsocks import Services, start_listener
from rabbitsocks.brokers.memory import MemoryBroker
from rabbitsocks.config import HistoryConfig
from tests.support.docs import ROOT, code_blocks

HARNESS = """
import {{ createRequire }} from "node:module";
import * as readline from "node:readline";
const require = createRequire({package!r});
const Ws = require("ws");
const say = (...what) => console.log(JSON.stringify(what));
let current = null;
// The snippet's WebSocket, as a browser has it; the test can drop its connection.
globalThis.WebSocket = class extends Ws {{
  constructor(url) {{
    super(url);
    current = this;
    this.addEventListener("message", (e) => {{
      if (JSON.parse(e.data).topic === "@join") say("joined");
    }});
  }}
}};
// The snippet reconnects after a timeout: here, when the test says so.
let later = null;
const setTimeout = (fn) => {{ later = fn; say("away"); }};
const show = (f) => say("show", f.topic, f.payload, f.offset);
const refetch = (topics, why) => say("refetch", topics, why);
const lines = readline.createInterface({{ input: process.stdin }});
lines.on("line", (line) => {{
  if (line === "drop") current.terminate();
  if (line === "back") later();
  if (line === "quit") process.exit(0);
}});
{snippet}
connect();
"""


async def test_the_resuming_client_snippet(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "demo/node_modules/ws").is_dir():
        pytest.fail("Node.js and demo/node_modules (scripts/build-demo) are needed")
    (snippet,) = [b for b in code_blocks("protocol.md", "js") if "function connect()" in b]
    broker = MemoryBroker("memory", [HistoryConfig("chat.#")], epoch="k3j9")
    services = Services(brokers={"memory": broker})
    await services.start()
    listener = await start_listener("127.0.0.1:0", "callbacks.pubsub", services=services)
    script = HARNESS.format(
        package=str(ROOT / "demo/package.json"),
        snippet=snippet.replace("127.0.0.1:8080", f"127.0.0.1:{listener.port}"),
    )
    path = tmp_path / "client.mjs"
    path.write_text(script)
    process = await asyncio.create_subprocess_exec(
        node, str(path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ},
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None

    async def said() -> list[Any]:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line, (await process.stderr.read()).decode() if process.stderr else ""
        value: list[Any] = json.loads(line)
        return value

    async def tell(what: str) -> None:
        assert process.stdin is not None
        process.stdin.write(what.encode() + b"\n")
        await process.stdin.drain()

    try:
        assert await said() == ["joined"]
        await broker.publish("chat.1", b"a")
        await broker.publish("chat.2", b"b")
        assert await said() == ["show", "chat.1", "a", 0]
        assert await said() == ["show", "chat.2", "b", 1]
        await tell("drop")
        assert await said() == ["away"]
        await broker.publish("chat.1", b"c")
        await broker.publish("chat.3", b"not joined")
        await broker.publish("chat.2", b"d")
        await tell("back")
        assert await said() == ["joined"]
        assert await said() == ["show", "chat.1", "c", 2]
        assert await said() == ["show", "chat.2", "d", 4]
        await broker.publish("chat.1", b"e")
        assert await said() == ["show", "chat.1", "e", 5]
    finally:
        await tell("quit")
        await process.wait()
        await listener.stop()
        await services.close()
