"""What a transport needs to accept connections for one listener, and nothing more.

The listener builds one ``Acceptor`` and hands it to each of its transports; they never see
the listener itself. ``accept`` is the common part of every handshake (the gate, then the
callback's ``init`` with the connection current), ``connect`` makes the ``Connection`` once
the transport has answered the handshake, and the acceptor is that connection's ``Host``:
its limits, its counters, and where it is released when it is over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from rabbitsocks.callback import CallbackRunner
from rabbitsocks.config import LimitsConfig, SocketIOConfig, WebSocketConfig
from rabbitsocks.connection import (
    Connection,
    ConnectionInfo,
    ConnectRequest,
    Transport,
    enter_connection,
    new_connection_id,
    reset_connection,
)
from rabbitsocks.errors import ConnectionRefused
from rabbitsocks.stats import ListenerStats
from rabbitsocks.transports.addresses import ClientAddresses
from rabbitsocks.transports.batching import WriteBatcher
from rabbitsocks.transports.gate import Gate, Refusal, Slot
from rabbitsocks.transports.heartbeat import Heartbeat

__all__ = ["Accepted", "Acceptor"]

logger = logging.getLogger("rabbitsocks.acceptor")


@dataclass(slots=True)
class Accepted:
    """A peer the gate and ``init`` accepted, whose handshake is still to be answered."""

    info: ConnectionInfo
    state: Any
    slot: Slot


class Acceptor:
    """One listener's connections, as its transports see it."""

    def __init__(
        self,
        *,
        name: str,
        callback: CallbackRunner,
        options: Any,
        gate: Gate,
        limits: LimitsConfig,
        websocket: WebSocketConfig,
        socketio: SocketIOConfig,
        stats: ListenerStats,
        addresses: ClientAddresses | None = None,
    ) -> None:
        self.name = name
        self.callback = callback
        self.options = options
        self.gate = gate
        self.limits = limits
        self.websocket = websocket
        self.socketio = socketio
        self.stats = stats
        #: Who the client of a request is (the TCP peer, or what trusted proxies say).
        self.addresses = addresses if addresses is not None else ClientAddresses()
        self.batcher = WriteBatcher()
        interval = websocket.heartbeat
        self.heartbeat = Heartbeat(interval) if interval > 0 else None
        self.max_outbound_bytes = limits.max_outbound_bytes
        self.max_outbound_frames = limits.max_outbound_frames
        self.max_inbound_frames = limits.max_inbound_frames
        self.max_inbound_bytes = limits.max_inbound_bytes
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def closing(self) -> bool:
        return self.gate.closing

    @property
    def connections(self) -> int:
        """Connections counted against the limits (see ``gate``)."""
        return len(self.gate.registry)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in a task kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def accept(
        self,
        request: ConnectRequest,
        path: str,
        *,
        wire: str = "",
        subprotocol: str | None = None,
        slot: Slot | None = None,
    ) -> Accepted | Refusal:
        """The gate, then the callback's ``init``: who the connection is and its first
        state, or the refusal to answer. ``slot``: one the caller holds (see ``Gate``)."""
        admitted = await self.gate.admit(request, slot)
        if isinstance(admitted, Refusal):
            return admitted
        connection_id = new_connection_id()
        info = ConnectionInfo(
            id=connection_id,
            listener=self.name,
            transport=request.transport,
            path=path,
            remote=request.remote,
            claims=admitted.claims,
            request=request,
            subprotocol=subprotocol,
            wire=wire or connection_id,
        )
        token = enter_connection(info)
        try:
            state = await self.callback.init(path, self.options)
        except ConnectionRefused as exc:
            refusal = Refusal(exc.status, exc.reason)
        except Exception as exc:
            logger.info("callback %s refused %s: %s", self.callback.name, request.path, exc)
            refusal = Refusal(403, str(exc))
        else:
            return Accepted(info, state, admitted.slot)
        finally:
            reset_connection(token)
        if slot is None:
            self.gate.registry.release(admitted.slot)
        self.stats.errors["refused_init"] += 1
        return refusal

    def refuse(self, accepted: Accepted) -> None:
        """The handshake could not be answered after all (the peer left): no connection."""
        self.gate.registry.release(accepted.slot)

    def connect(self, accepted: Accepted, transport: Transport) -> Connection:
        """The handshake is answered: the connection, whose ``open`` starts now."""
        conn = Connection(self.callback, transport, accepted.info, accepted.state, self)
        conn.ticket = accepted.slot
        accepted.slot.owner = conn
        conn.start()
        return conn

    def release(self, conn: Connection) -> None:
        slot = conn.ticket
        if isinstance(slot, Slot):
            self.gate.registry.release(slot)

    def close_all(self, code: int, reason: str) -> None:
        """Close everything that holds a slot (shutdown)."""
        for slot in self.gate.registry:
            if slot.owner is not None:
                slot.owner.close(code, reason)
