"""Every example of README.md, run for real (the browser console snippets run in Chromium:
``tests/e2e/test_console_snippets.py``).

The tour's server is ``config/default.yaml`` itself, moved to free ports with the
environment overrides (``tests.support.examples.default_server``). Expected output is read
from the README: the ``# ...`` comment after a ``print``, the ``# ...`` line after a
command, the frame the text promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from rabbitsocks import __version__
from rabbitsocks.cli import main as cli_main
from rabbitsocks.config import Interface, load_config
from rabbitsocks.rpc import HttpRpcClient
from tests.support.docs import ROOT, code_blocks
from tests.support.examples import (
    PrintCapture,
    default_server,
    rpc_http_port,
    run_shell,
    run_snippet,
    shell_env,
    shell_examples,
    venv_link,
)
from tests.support.pubsub import (
    TRANSPORTS,
    WebSocketClient,
    amqp_url,
    client_pool,
    unique,
    until_connected,
)

#: ``code_blocks`` reads a path without a slash from docs/: the README is ``./README.md``.
README_MD = "./README.md"
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: The message the tour publishes, and the frame it promises every subscriber.
TOPIC, PAYLOAD = "news.sport", "goal!"
FRAME = '{"topic":"news.sport","payload":"goal!"}'


def block(lang: str, containing: str) -> str:
    """The one ``lang`` block of the README that contains ``containing``."""
    (found,) = [b for b in code_blocks(README_MD, lang) if containing in b]
    return found


def python_block(containing: str) -> str:
    return block("python", containing)


def comments_after_print(snippet: str) -> list[str]:
    """What the snippet says each ``print`` prints: the comments after them, in order."""
    return re.findall(r"print\(.*\)  # (.*)$", snippet, re.MULTILINE)


async def publish_over_rpc(port: int, topic: str = TOPIC, payload: str = PAYLOAD) -> None:
    async with HttpRpcClient(f"http://127.0.0.1:{port}/rpc") as rpc:
        await rpc.publish(topic, payload)


# --- the two commands and the tour's endpoints --------------------------------------------------


def test_the_two_commands_are_scripts_of_the_repository() -> None:
    two = block("sh", "scripts/test")
    commands = [line.split("#")[0].strip() for line in two.splitlines()]
    assert commands == ["scripts/serve", "scripts/test"]
    for command in commands:
        assert (ROOT / command).stat().st_mode & 0o111, f"{command} is not executable"


def test_the_tour_table_is_the_default_configuration() -> None:
    config = load_config(None, environ={})
    (listener,) = config.listeners
    assert listener.interface == Interface("127.0.0.1", 8080)
    assert listener.callback == "callbacks.pubsub"
    assert listener.demo
    assert config.rpc.http == Interface("127.0.0.1", 8081)
    assert config.rpc.goridge is None
    assert config.admin == Interface("127.0.0.1", 8082)
    assert config.effective_default_broker == "memory"
    table = README.split("## A two-minute tour")[1].split("```")[0]
    for url in (
        "http://127.0.0.1:8080/",
        "ws://127.0.0.1:8080/websocket/",
        "http://127.0.0.1:8080/socket.io/",
        "http://127.0.0.1:8081/rpc/",
        "http://127.0.0.1:8082/",
    ):
        assert url in table


async def test_the_default_server_serves_what_the_tour_lists() -> None:
    async with default_server() as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.listeners[0].port}"
        async with http.get(f"{base}/") as page:
            assert page.status == 200, "the demo page is not built: run scripts/build-demo"
            assert page.content_type == "text/html"
        async with http.get(f"{base}/socket.io/?EIO=4&transport=polling") as engineio:
            assert engineio.status == 200
        assert server.admin_url is not None
        for probe in ("health", "ready", "metrics"):
            async with http.get(f"{server.admin_url}{probe}") as answer:
                assert answer.status == 200, probe
        rpc = f"http://127.0.0.1:{rpc_http_port(server)}/rpc/broadcast.Publish"
        body = {"messages": [{"topics": ["tour"], "payload": ""}]}
        async with http.post(rpc, json=body) as published:
            assert (published.status, await published.json()) == (200, {"ok": True})


# --- publishing from the shell, from Python, from AMQP ---------------------------------------


async def test_rabbitsocks_publish_reaches_a_subscriber(tmp_path: Path) -> None:
    (publish,) = shell_examples(block("sh", ".venv/bin/activate"))
    assert publish.command == f". .venv/bin/activate\nrabbitsocks publish -t {TOPIC} '{PAYLOAD}'"
    assert f"both consoles log `{FRAME}`" in README
    async with default_server() as server, aiohttp.ClientSession() as http:
        client = await WebSocketClient.connect(http, server.listeners[0].port)
        await client.join(TOPIC)
        # The default configuration names 127.0.0.1:8081; a reader's server listens there.
        env = shell_env(RABBITSOCKS_RPC_HTTP=f"127.0.0.1:{rpc_http_port(server)}")
        done = await run_shell(publish.command, env, cwd=venv_link(tmp_path))
        done.check(publish.output)
        assert await client.next_text() == FRAME
        await client.close()


async def test_the_python_snippet_prints_the_join_then_the_message() -> None:
    snippet = python_block("websockets.connect")
    body, run = snippet.rstrip().rsplit("\n", 1)
    assert run == "asyncio.run(main())"  # the test runs main() on its own loop instead
    joined, message = comments_after_print(snippet)
    assert message == FRAME
    async with default_server() as server:
        source = body.replace("127.0.0.1:8080", f"127.0.0.1:{server.listeners[0].port}")
        printed = PrintCapture()
        namespace: dict[str, Any] = {"print": printed}
        exec(compile(source, "README.md", "exec"), namespace)
        task = asyncio.get_running_loop().create_task(namespace["main"]())
        try:
            assert await printed.next(task) == joined
            await publish_over_rpc(rpc_http_port(server))
            assert await printed.next(task) == message
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert printed.lines.empty()


@pytest.mark.rabbitmq
async def test_the_pika_one_liner_reaches_a_subscriber_on_rabbitmq() -> None:
    section = README.split("### On RabbitMQ")[1].split("###")[0]
    serve = block("sh", "RABBITSOCKS_AMQP_URL=")
    assert serve in section
    (url,) = re.findall(r"^RABBITSOCKS_AMQP_URL=(\S+) scripts/serve$", serve)
    (pika,) = shell_examples(block("sh", "import pika"))
    assert pika.output == ""  # it prints nothing
    assert f"receives\n`{FRAME}`" in section
    amqp_url()  # fails with how to start RabbitMQ when it is down
    # amq.topic is shared with every other test run: a routing key of this test's own.
    topic = f"news.{unique()}"
    command = pika.replace(f"'{TOPIC}'", f"'{topic}'").command
    async with default_server(RABBITSOCKS_AMQP_URL=url) as server, aiohttp.ClientSession() as h:
        assert server.services.default_broker == "amqp"
        assert set(server.services.brokers) == {"amqp", "memory"}
        await until_connected(server.services.brokers["amqp"])
        client = await WebSocketClient.connect(h, server.listeners[0].port)
        await client.join(topic)
        (await run_shell(command)).check("")
        assert await client.next_text() == FRAME.replace(TOPIC, topic)
        await client.close()


# --- the rabbitsocks command --------------------------------------------------------------


def help_of(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli_main([*args, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_command_and_option_the_readme_lists_exists(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = block("sh", "rabbitsocks --version").splitlines()
    assert lines[-1] == "rabbitsocks --version"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"rabbitsocks {__version__}"
    for line in lines[:-1]:
        command, _, comment = line.partition("#")
        words = shlex.split(command.replace("[", " ").replace("]", " "))
        assert words[0] == "rabbitsocks"
        usage = help_of(capsys, words[1])
        mentioned = command + comment.replace("python -m rabbitsocks", "")
        for option in re.findall(r"(?<![\w-])(-{1,2}[a-z][\w-]*)", mentioned):
            assert re.search(rf"(?<![\w-]){option}\b", usage), f"{words[1]} has no {option}"
        if "--via http|goridge|amqp" in comment:
            assert "{http,goridge,amqp}" in usage
        if "python -m rabbitsocks serve" in comment:
            assert (ROOT / "rabbitsocks" / "__main__.py").is_file()


def test_docker_compose_publishes_the_ports_the_readme_names() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    ports = {str(p).split("#")[0].strip() for p in compose["services"]["rabbitsocks"]["ports"]}
    assert ports == {"8080:8080", "127.0.0.1:8081:8081", "127.0.0.1:8082:8082"}
    assert "127.0.0.1:15672:15672" in compose["services"]["rabbitmq"]["ports"]
    section = README.split("### With Docker")[1].split("##")[0]
    for where in ("`localhost:8080`", "`127.0.0.1:8081`", "`127.0.0.1:8082`", "localhost:15672"):
        assert where in section


def test_every_link_of_the_readme_exists() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert "docs/performance.md" in links
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


# --- embedding -------------------------------------------------------------------------------


async def test_the_start_listener_snippet() -> None:
    snippet = python_block("start_listener")
    (shown,) = comments_after_print(snippet)
    printed = PrintCapture()
    await run_snippet(snippet, {"print": printed}, "README.md")
    line = await printed.next()
    # The README shows some port; the listener got another one.
    port = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert port is not None, line
    assert line == re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port[1]}", shown)
    # stop() released the port: nothing listens there any more.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", int(port[1]))


async def test_the_mount_snippet_serves_both_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = python_block("rabbitsocks.mount")
    started: list[tuple[Awaitable[web.Application], dict[str, Any]]] = []
    monkeypatch.setattr(web, "run_app", lambda app, **kw: started.append((app, kw)))
    exec(compile(snippet, "README.md", "exec"), {})
    ((make_app, where),) = started
    assert where == {"host": "127.0.0.1", "port": 8080}
    runner = web.AppRunner(await make_app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with client_pool() as clients:
            for transport in TRANSPORTS:
                client = await clients.connect(transport, port)
                await client.join(TOPIC)
    finally:
        await runner.cleanup()
