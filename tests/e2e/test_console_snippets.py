"""The browser-console snippets of README.md, docs/protocol.md and docs/callbacks.md,
typed into the console of a page in Debian's headless Chromium (``snippets.mjs``, driven by
playwright-core from npm).

The pubsub snippets run on the demo page of ``config/default.yaml`` on free ports (so
``io`` is our own copy of socket.io-client); when the script says a snippet has answered
its joins, the test publishes the tour's message through the RPC endpoint. The chat
snippet of docs/callbacks.md runs against ``rabbitsocks serve -c chat.yaml``, the guide's
own configuration and command. Each snippet's URLs are moved to the right port, and what
it logged is checked in order: for the README, the ``// ...`` line under the snippet, then
the frame the README promises. Nothing sleeps: each side waits for the other's line.

Fails, never skips, when Chromium, Node.js or the npm packages are missing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rabbitsocks.rpc import HttpRpcClient
from tests.support.browser import node_for_chromium, run_browser_script
from tests.support.docs import ROOT, code_blocks
from tests.support.examples import default_server, rpc_http_port
from tests.support.pubsub import ServeProcess

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("snippets.mjs")
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: Four browser tabs and three publishes take about 3 s.
DEADLINE = 45.0
TOPIC, PAYLOAD = "news.sport", "goal!"
JOINED = '{"topic":"@join","payload":["news.*"]}'
FRAME = '{"topic":"news.sport","payload":"goal!"}'


@dataclass(frozen=True)
class Snippet:
    name: str
    code: str
    #: Lines logged before the publish (the answers to join), and after it (0: no publish).
    before: int
    after: int
    #: Where it is typed: the demo page (with ``io``), or a blank page on loopback.
    demo: bool = True


def last_comment(snippet: str) -> str:
    """What a snippet says it logs: the ``// `` comment of its last line."""
    last = snippet.rstrip().splitlines()[-1]
    assert "// " in last, last
    return last.split("// ", 1)[1].strip()


def pubsub_snippets() -> list[tuple[Snippet, list[str]]]:
    """The console snippets of the pubsub protocol, with the lines each must log."""
    readme_ws, readme_sio = code_blocks("./README.md", "js")
    assert "new WebSocket(" in readme_ws
    assert "io(" in readme_sio
    assert f"both consoles log `{FRAME}`" in README
    assert "then its browser console" in README
    protocol = code_blocks("protocol.md", "js")[0]
    assert "new WebSocket(" in protocol
    assert "io(" in protocol
    return [
        (Snippet("README websocket", readme_ws, 1, 1), [last_comment(readme_ws), FRAME]),
        (Snippet("README socketio", readme_sio, 1, 1), [last_comment(readme_sio), FRAME]),
        # Both transports in one snippet, logging parsed frames: two of each line.
        (Snippet("protocol.md", protocol, 2, 2), [JOINED, JOINED, FRAME, FRAME]),
    ]


@contextlib.asynccontextmanager
async def chat_server(directory: Path) -> AsyncIterator[int]:
    """``rabbitsocks serve -c chat.yaml`` as docs/callbacks.md runs it, on a free port."""
    (command,) = code_blocks("callbacks.md", "sh")
    assert command == "rabbitsocks serve -c chat.yaml\n"
    (config,) = code_blocks("callbacks.md", "yaml")
    assert config.startswith("# chat.yaml\n")
    assert "127.0.0.1:8080" in config
    (directory / "chat.yaml").write_text(config.replace("127.0.0.1:8080", "127.0.0.1:0"))
    served = await ServeProcess.start("-c", str(directory / "chat.yaml"), amqp=False)
    try:
        yield served.port
    finally:
        await served.stop()


@contextlib.asynccontextmanager
async def blank_page() -> AsyncIterator[str]:
    """An empty page on loopback, a tab to type into (Chromium refuses connections to
    loopback from a page that is not on it, such as about:blank)."""

    async def page(request: web.Request) -> web.Response:
        # An icon of its own: no request for /favicon.ico, no 404 in the console.
        html = '<!doctype html><title>blank</title><link rel="icon" href="data:,">'
        return web.Response(text=html, content_type="text/html")

    runner = web.AppRunner(web.Application())
    runner.app.router.add_get("/", page)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


async def test_the_console_snippets_log_what_the_docs_say(tmp_path: Path) -> None:
    node_for_chromium()  # before starting anything: what is missing, and how to install it
    expected = pubsub_snippets()
    (chat,) = [b for b in code_blocks("callbacks.md", "js") if "/websocket/lobby" in b]
    expected.append((Snippet("callbacks.md chat", chat, 1, 0, demo=False), [last_comment(chat)]))
    async with (
        default_server() as server,
        chat_server(tmp_path) as chat_port,
        blank_page() as blank,
    ):
        port = server.listeners[0].port
        rpc_url = f"http://127.0.0.1:{rpc_http_port(server)}/rpc"
        typed = []
        for snippet, _ in expected:
            assert "127.0.0.1:8080" in snippet.code
            to = port if snippet.demo else chat_port
            typed.append(
                asdict(snippet)
                | {
                    "code": snippet.code.replace("127.0.0.1:8080", f"127.0.0.1:{to}"),
                    "page": f"http://127.0.0.1:{port}/" if snippet.demo else blank,
                    "io": snippet.demo,
                }
            )

        async def publish(request: dict[str, Any]) -> dict[str, Any]:
            async with HttpRpcClient(rpc_url) as rpc:
                await rpc.publish(TOPIC, PAYLOAD)
            return {"published": request["publish"]}

        logged = await run_browser_script(
            SCRIPT, {"SNIPPETS": json.dumps(typed)}, publish, DEADLINE
        )
    assert logged == {snippet.name: lines for snippet, lines in expected}
