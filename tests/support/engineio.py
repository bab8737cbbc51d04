"""An Engine.IO v4 long-polling client by hand (aiohttp), for what client libraries will not
do: open sessions and never connect a namespace, multiply namespaces, send malformed
packets, stop polling."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, Self

import aiohttp

__all__ = ["Poller"]

SEPARATOR = "\x1e"


class Poller:
    """One Engine.IO session over HTTP long-polling."""

    def __init__(self, port: int, query: str = "") -> None:
        self.base = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling{query}"
        self.http = aiohttp.ClientSession()
        self.sid: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.close()

    @property
    def url(self) -> str:
        assert self.sid is not None
        return f"{self.base}&sid={self.sid}"

    async def handshake(self) -> tuple[int, str]:
        """Open the session: the status and body of the answer (``sid`` set on 200)."""
        async with self.http.get(self.base) as response:
            body = await response.text()
            if response.status == 200:
                self.sid = json.loads(body[1:])["sid"]
            return response.status, body

    async def post(self, *packets: str) -> tuple[int, str]:
        async with self.http.post(self.url, data=SEPARATOR.join(packets)) as response:
            return response.status, await response.text()

    async def poll(self) -> list[str]:
        """The packets of one long-poll; pings are answered and left out."""
        async with self.http.get(self.url) as response:
            assert response.status == 200, await response.text()
            packets = (await response.text()).split(SEPARATOR)
        if "2" in packets:
            await self.post("3")
        return [p for p in packets if p not in ("2", "6")]

    async def connect(self, namespace: str = "/", auth: Any = None) -> str:
        """Socket.IO CONNECT to ``namespace``: the answer packet (``40...`` or ``44...``)."""
        prefix = "" if namespace == "/" else namespace + ","
        data = json.dumps(auth) if auth is not None else ""
        assert (await self.post(f"40{prefix}{data}"))[0] == 200
        while True:
            for packet in await self.poll():
                if packet.startswith(("40", "44")):
                    return packet

    async def send(self, data: Any, namespace: str = "/") -> tuple[int, str]:
        """A ``message`` event, as ``socket.send(data)`` emits it."""
        prefix = "" if namespace == "/" else namespace + ","
        return await self.post(f"42{prefix}" + json.dumps(["message", data]))
