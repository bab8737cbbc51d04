"""A TCP relay to RabbitMQ that a test can cut: an outage of the test's own, which leaves
RabbitMQ alone for every other test running against it, and ends when the test says.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from yarl import URL

from tests.support.pubsub import free_port

__all__ = ["TcpRelay", "tcp_relay"]


class TcpRelay:
    """Relays 127.0.0.1:<port> to the AMQP URL's host and port."""

    def __init__(self, target: str) -> None:
        self.target = URL(target)
        self.port = free_port()  # refusing until listen()
        self.url = str(self.target.with_host("127.0.0.1").with_port(self.port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        """Accept and relay connections (again)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    def refuse(self) -> None:
        """Stop accepting connections; those already relayed carry on."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def cut(self) -> None:
        """Drop every relayed connection at once, as a dead network would (no Close)."""
        for writer in list(self._writers):
            writer.transport.abort()

    def down(self) -> None:
        """An outage: refuse new connections and cut the open ones."""
        self.refuse()
        self.cut()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.host or "127.0.0.1", self.target.port or 5672
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except Exception:
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def tcp_relay(target: str) -> AsyncIterator[TcpRelay]:
    """A listening relay to ``target``, taken down at the end."""
    relay = TcpRelay(target)
    await relay.listen()
    try:
        yield relay
    finally:
        relay.down()
