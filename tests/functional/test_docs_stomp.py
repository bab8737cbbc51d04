"""The examples of docs/stomp.md, run for real: the configuration is valid and serves what
it says, and the stomp.js snippet (under Node.js, on the ws package) subscribes, publishes
and prints what a producer sends."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from rabbitsocks import start_listener
from rabbitsocks.config import parse_config
from rabbitsocks.plan import plan_config
from rabbitsocks.services import Services
from tests.support.docs import ROOT, code_blocks
from tests.support.stomp import StompClient


def test_the_configuration_is_valid() -> None:
    (config,) = code_blocks("stomp.md", "yaml")
    parsed = plan_config(parse_config(yaml.safe_load(config), environ={})).config
    (listener,) = parsed.listeners
    assert listener.callback == "callbacks.stomp"
    assert listener.options.subscribe == ("/topic/#", "/queue/jobs.*")
    assert listener.options.send == ("/topic/chat.#",)


async def test_the_stompjs_snippet(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "demo/node_modules/@stomp/stompjs").is_dir():
        pytest.fail("Node.js and demo/node_modules (scripts/build-demo) are needed")
    (config,) = code_blocks("stomp.md", "yaml")
    options = parse_config(yaml.safe_load(config), environ={}).listeners[0].options
    services = Services.memory_only()
    await services.start()
    listener = await start_listener("127.0.0.1:0", "callbacks.stomp", options, services=services)
    (snippet,) = code_blocks("stomp.md", "js")
    # Node 20 has no WebSocket of its own, and the package lives in demo/node_modules.
    script = snippet.replace(
        'import { Client } from "@stomp/stompjs";',
        'import { createRequire } from "node:module";\n'
        f"const require = createRequire({str(ROOT / 'demo/package.json')!r});\n"
        'const { Client } = require("@stomp/stompjs");\n'
        'globalThis.WebSocket = require("ws");',
    ).replace("127.0.0.1:15674", f"127.0.0.1:{listener.port}")
    assert script.count("require(") == 2
    path = tmp_path / "snippet.mjs"
    path.write_text(script)
    process = await asyncio.create_subprocess_exec(
        node, str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        watcher = await StompClient.connect(f"ws://127.0.0.1:{listener.port}/websocket/")
        await watcher.subscribe("/topic/chat.room1")
        # The snippet publishes once connected and subscribed: then the producer's message
        # to news.sport cannot miss its subscription.
        assert (await watcher.message(timeout=15)).body == b"hello"
        await services.hub().broker.publish("news.sport", b"goal!")
        line = await asyncio.wait_for(process.stdout.readline(), 5)
        assert re.fullmatch(rb"goal!\n", line), line
        await watcher.disconnect()
    finally:
        process.kill()
        await process.wait()
        await listener.stop()
        await services.close()
