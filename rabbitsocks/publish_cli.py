"""``rabbitsocks publish``: publish one message from a shell, through RPC or AMQP.

The endpoint comes from the configuration (``-c``, or the default one) unless ``--url``
names it: ``--via http`` uses ``rpc.http``, ``--via goridge`` uses ``rpc.goridge``, and
``--via amqp`` publishes straight to the broker's exchange. Without ``--via``, the first
of those that is configured is used.
"""

from __future__ import annotations

import argparse
import sys
from typing import Literal

from rabbitsocks.config import Config, split_amqp_urls
from rabbitsocks.errors import RabbitSocksError

__all__ = ["add_publish_parser", "publish_command"]

Via = Literal["http", "goridge", "amqp"]


def add_publish_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        "publish",
        help="publish a message to topics (through RPC or AMQP)",
        description="Publish PAYLOAD (or standard input, with -) to every --topic, through"
        " the RPC endpoint or the AMQP broker of a configuration. Exit status 1 when the"
        " message was not published (or, without --async, not confirmed).",
    )
    publish.add_argument("payload", metavar="PAYLOAD|-", help="the message body; - reads stdin")
    publish.add_argument(
        "-t", "--topic", action="append", required=True, help="a routing key (repeatable)"
    )
    publish.add_argument(
        "--async",
        dest="async_",
        action="store_true",
        help="PublishAsync: do not wait for the broker's confirms",
    )
    publish.add_argument(
        "--via",
        choices=("http", "goridge", "amqp"),
        help="how to publish (default: the first of http, goridge, amqp that is configured)",
    )
    publish.add_argument("--broker", help="the broker name (default: the server's default)")
    publish.add_argument("-c", "--config", metavar="FILE", help="where to find the endpoints")
    publish.add_argument(
        "--url",
        help="the endpoint instead of the configuration's: http://host:port/rpc,"
        " host:port (goridge) or amqp://user:pass@host/",
    )
    publish.add_argument("--token", help="bearer token for --via http (RABBITSOCKS_RPC_TOKEN)")


def _choose(config: Config, via: Via | None, url: str | None) -> tuple[Via, str]:
    rpc = config.rpc
    amqp = config.brokers.get("amqp")
    if via is None:
        if url is not None:
            via = "amqp" if url.startswith("amqp") else "http" if "://" in url else "goridge"
        elif rpc.http is not None:
            via = "http"
        elif rpc.goridge is not None:
            via = "goridge"
        elif amqp is not None:
            via = "amqp"
        else:
            raise RabbitSocksError(
                f"{config.source} configures no rpc.http, rpc.goridge or amqp broker to"
                " publish through; pass --url, or set RABBITSOCKS_AMQP_URL"
            )
    if url is not None:
        return via, url
    if via == "http" and rpc.http is not None:
        return via, f"http://{_hostport(rpc.http.host, rpc.http.port)}/rpc"
    if via == "goridge" and rpc.goridge is not None:
        return via, _hostport(rpc.goridge.host, rpc.goridge.port)
    if via == "amqp" and amqp is not None:
        return via, " ".join(amqp.url)
    raise RabbitSocksError(
        f"{config.source} has no endpoint for --via {via} (configure"
        f" {'rpc.' + via if via != 'amqp' else 'brokers.amqp'} or pass --url)"
    )


def _hostport(host: str | None, port: int) -> str:
    host = host or "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def publish_command(args: argparse.Namespace, config: Config) -> str:
    """Publish as ``args`` say; returns the sentence to print. Raises RabbitSocksError."""
    payload = sys.stdin.buffer.read() if args.payload == "-" else args.payload.encode()
    topics: list[str] = args.topic
    via, url = _choose(config, args.via, args.url)
    wait = not args.async_
    if via == "http":
        from rabbitsocks.rpc.client import HttpRpcClient

        token = args.token or config.rpc.token
        async with HttpRpcClient(url, token) as http:
            await http.publish(topics, payload, broker=args.broker, wait=wait)
    elif via == "goridge":
        from rabbitsocks.rpc.client import GoridgeClient

        host, _, port = url.rpartition(":")
        async with GoridgeClient(host.strip("[]") or "127.0.0.1", int(port)) as goridge:
            await goridge.publish(topics, payload, broker=args.broker, wait=wait)
    else:
        await _publish_amqp(config, url, topics, payload, wait)
    done = "confirmed" if wait else "handed over, not waiting for confirms"
    return f"published {len(payload)} bytes to {', '.join(topics)} via {via} ({done})"


async def _publish_amqp(
    config: Config, url: str, topics: list[str], payload: bytes, wait: bool
) -> None:
    from rabbitsocks.brokers.amqp import AmqpBroker
    from rabbitsocks.errors import BrokerUnavailable
    from rabbitsocks.topics import validate_topic

    for topic in topics:
        validate_topic(topic, wildcards=False)
    settings = config.brokers.get("amqp")
    broker = AmqpBroker(
        "amqp",
        split_amqp_urls(url),
        settings.exchange if settings else "amq.topic",
        reconnect_max=0.5,
    )
    await broker.start(lambda delivery: None)
    try:
        if not broker.connected:
            raise BrokerUnavailable(f"cannot connect to RabbitMQ at {broker.safe_url}")
        for topic in topics:
            await broker.publish(topic, payload, confirm=wait)
    finally:
        await broker.close()
