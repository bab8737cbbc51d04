"""The command line: ``rabbitsocks serve``, ``rabbitsocks check``.

A thin layer over the programmatic API: ``serve`` builds a ``Server`` from the configuration
and runs it until SIGINT or SIGTERM. Errors are one sentence on stderr; a bad configuration
exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rabbitsocks import __version__
from rabbitsocks.callback import options_mapping
from rabbitsocks.config import ENVIRONMENT, BrokerConfig, Config, default_config_path, load_config
from rabbitsocks.errors import ConfigError, RabbitSocksError
from rabbitsocks.logs import configure_logging, mask_url, scrub
from rabbitsocks.plan import Plan, plan_config
from rabbitsocks.publish_cli import add_publish_parser, publish_command

__all__ = ["main"]

logger = logging.getLogger("rabbitsocks")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    env_help = "\n".join(f"  {var:28} {what}" for var, what in ENVIRONMENT.items())
    parser = argparse.ArgumentParser(
        prog="rabbitsocks",
        description="A bridge between browsers (WebSocket, Socket.IO) and RabbitMQ.",
        epilog=f"environment overrides:\n{env_help}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rabbitsocks {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the listeners of a configuration",
        description="Run the listeners of a configuration until SIGINT or SIGTERM. With no"
        " -c, the built-in default: a pubsub listener on 127.0.0.1:8080 on the in-process"
        " memory broker (or on RabbitMQ when RABBITSOCKS_AMQP_URL is set).",
    )
    serve.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
    _add_app_dir(serve)
    serve.add_argument(
        "--log-format", choices=("text", "json"), help="override log.format for this run"
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="override log.level for this run",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N server processes sharing the ports (SO_REUSEPORT), one AMQP queue each",
    )
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # "i/N": set by the supervisor
    serve.add_argument("--run-dir", help=argparse.SUPPRESS)  # the workers' internal sockets
    serve.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default), or asyncio",
    )

    check = commands.add_parser(
        "check",
        help="validate a configuration and print what it would start",
        description="Validate a configuration (keys, types, callbacks) and print the"
        " listeners and brokers it would start. Exit status 2 when it is invalid.",
    )
    check.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
    _add_app_dir(check)
    add_publish_parser(commands)
    return parser


def _add_app_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir",
        metavar="DIR",
        default=".",
        help="look for callback modules and hooks in DIR first (default: the current"
        " directory, as `python -m rabbitsocks` does)",
    )


def _use_app_dir(app_dir: str) -> str:
    """Put ``app_dir`` first on the import path; its absolute path.

    ``python -m rabbitsocks`` finds modules in the current directory because Python puts
    it first on ``sys.path``; the ``rabbitsocks`` console script gets its own directory
    there instead. Both now look in ``--app-dir`` (uvicorn's option, and its default).
    """
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return EXIT_CONFIG
    app_dir = _use_app_dir(args.app_dir) if args.command in ("check", "serve") else None
    try:
        config = load_config(args.config)
        # check and serve resolve the callbacks the same way, so that what one accepts
        # the other does; publish needs no callback.
        plan = plan_config(config) if args.command in ("check", "serve") else None
    except ConfigError as exc:
        print(f"rabbitsocks: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if plan is not None:
        config = plan.config
    if args.command == "check":
        print(describe(config))
        return 0
    if args.command == "publish":
        try:
            print(asyncio.run(publish_command(args, config)))
        except RabbitSocksError as exc:
            print(f"rabbitsocks: not published: {exc}", file=sys.stderr)
            return 1
        return 0
    configure_logging(args.log_level or config.log.level, args.log_format or config.log.format)
    worker, workers = 0, 1
    if args.worker:
        index, _, count = args.worker.partition("/")
        worker, workers = int(index), int(count)
    elif args.workers < 1:
        print("rabbitsocks: --workers: expected a positive number", file=sys.stderr)
        return EXIT_CONFIG
    elif args.workers > 1:
        from rabbitsocks.workers import check_workers, supervise

        try:
            check_workers(config, args.workers)
        except ConfigError as exc:
            print(f"rabbitsocks: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        passthrough = ["--loop", args.loop]
        if app_dir is not None:
            passthrough += ["--app-dir", app_dir]
        if args.config:
            passthrough += ["-c", args.config]
        if args.log_format:
            passthrough += ["--log-format", args.log_format]
        if args.log_level:
            passthrough += ["--log-level", args.log_level]
        return supervise(args.workers, passthrough, config.shutdown_timeout + 5)
    try:
        run_dir = Path(args.run_dir) if args.run_dir else None
        _run(serve(config, worker=worker, workers=workers, plan=plan, run_dir=run_dir), args.loop)
    except ConfigError as exc:
        print(f"rabbitsocks: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def describe(config: Config) -> str:
    """What ``check`` prints: the listeners and brokers a configuration would start."""
    lines = [f"{config.source}: OK"]
    for listener in config.listeners:
        tls = " (TLS)" if listener.tls else ""
        lines.append(f"listener {listener.interface}{tls}: callback {listener.callback}")
        for key, value in options_mapping(listener.options).items():
            # An option may hold a URL with credentials (pubsub's join_auth.url).
            lines.append(f"  {key}: {scrub(repr(value))}")
    lines.append("broker memory: in-process")
    memory = config.brokers.get("memory")
    if memory is not None:
        lines += _history_lines(memory)
    for name, broker in config.brokers.items():
        if broker.type == "amqp":
            urls = ", ".join(mask_url(u) for u in broker.url)
            lines.append(f"broker {name}: {urls} exchange {broker.exchange}")
            lines += _history_lines(broker)
    lines.append(f"default broker: {config.effective_default_broker}")
    if config.rpc.goridge is not None:
        lines.append(f"rpc goridge: {config.rpc.goridge}")
    if config.rpc.http is not None:
        token = " (bearer token required)" if config.rpc.token else ""
        lines.append(f"rpc http: {config.rpc.http}{token}")
    return "\n".join(lines)


def _history_lines(broker: BrokerConfig) -> list[str]:
    lines = []
    for history in broker.history:
        if broker.type == "amqp":
            where = f"stream {history.stream_name(broker.exchange)}"
        else:
            where = "in process"
        count = f", {history.max_messages} messages" if history.max_messages else ""
        lines.append(
            f"  history {history.topics}: {where}, kept {history.max_age:g} s,"
            f" {history.max_bytes} bytes{count}; replays up to {history.replay_limit} messages"
        )
    return lines


def _run(main: Any, loop: str) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise ConfigError(
                    "--loop", "uvloop", "uvloop is not installed (pip install 'rabbitsocks[speed]')"
                ) from None
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def hint(config: Config, server: Any) -> str | None:
    """One suggestion to try the running server, for the first minute of a new user."""
    listener = server.listeners[0] if server.listeners else None
    if listener is None:
        return None
    source = "" if config.source == str(default_config_path()) else f" -c {config.source}"
    if listener.config.callback == "callbacks.pubsub" and config.rpc.http is not None:
        return (
            f"try it: join topic 'demo' from a client of {listener.urls[0]}, then run"
            f" `rabbitsocks publish{source} -t demo hello`"
        )
    return f"try it: python -m websockets {listener.urls[0]}"


def _stop_when_orphaned(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """A worker's stdin is a pipe from its supervisor: end of file means it is gone."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(fd, 4096):
            loop.remove_reader(fd)
            logger.warning("the supervisor is gone; shutting down")
            stop.set()

    loop.add_reader(fd, readable)


async def serve(
    config: Config,
    *,
    worker: int = 0,
    workers: int = 1,
    plan: Plan | None = None,
    run_dir: Path | None = None,
) -> None:
    """Run ``config`` until SIGINT or SIGTERM, then shut down gracefully."""
    from rabbitsocks.server import Server

    server = Server(config, worker=worker, workers=workers, plan=plan, run_dir=run_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if workers > 1:
        _stop_when_orphaned(loop, stop)
    await server.start()
    for listener in server.listeners:
        http = [
            u.replace("ws", "http", 1).replace("/websocket/", "/socket.io/") for u in listener.urls
        ]
        logger.info(
            "listening on %s (WebSocket) and %s (Socket.IO), callback %s",
            ", ".join(listener.urls),
            ", ".join(http) if listener.engineio else "-",
            listener.config.callback,
        )
        if listener.config.demo:
            pages = [u.replace("ws", "http", 1).removesuffix("websocket/") for u in listener.urls]
            logger.info("demo page on %s", ", ".join(pages))
    if server.rpc is not None:
        logger.info("RPC on %s", ", ".join(server.rpc.urls))
    if server.admin_url is not None:
        logger.info("admin on %s (/metrics, /health, /ready)", server.admin_url)
    if (suggestion := hint(config, server)) is not None:
        logger.info(suggestion)
    # What exists now (modules, configuration, listeners) lives as long as the process:
    # keep it out of every later full collection, whose pause grows with what it scans.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
        logger.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await server.stop()
    logger.info("stopped")
